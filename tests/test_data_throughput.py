"""benchmarks/data_throughput.py runs end to end on a few JPEGs named as the ImageNet sample names them."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image
from timm.data import ImageNetInfo

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                      "data_throughput.py")


def test_benchmark_runs_and_reports_both_paths(tmp_path):
    synsets = ImageNetInfo("imagenet-1k").label_names()
    rng = np.random.default_rng(0)
    for k, (w, h) in enumerate([(300, 240), (240, 320), (260, 250)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / f"{synsets[k * 7]}_class{k}.JPEG")
    spec = importlib.util.spec_from_file_location("data_throughput", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main([str(tmp_path), "--workers", "0", "--passes", "1", "--batch_size", "2"])
    assert [(r["path"], r["workers"], r["images"]) for r in rows] == [("train", 0, 3), ("eval", 0, 3)]
    assert all(r["hf_kd"] > 0 and r["torchvision"] > 0 and r["loader"] > 0 for r in rows)
    assert "| train: decode + random-resized crop + flip | 0 |" in bench.table(rows)
