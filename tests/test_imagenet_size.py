"""Every trainer at 224 px: KD, PEFD, FFSD and MixSKD with their ImageNet architectures (timm's ResNet-34 / ResNet-18
at tiny widths) train, evaluate, export and reload (``AutoModelForImageClassification``, ``load_student``) on JPEG
photographs of several sizes, none square, in an imagefolder made here; on one process and on two (gloo)."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from processes import run_process
from test_distributed import ENV, launch_cmd
from transformers import AutoModelForImageClassification

import hf_kd

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "train_224.py")
SIZES = [(320, 240), (240, 300), (500, 375), (281, 333)]  # width x height


def photo(w, h, seed):
    """A smooth colour pattern with noise, as a photograph compresses."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(9 * x + c + seed) * np.cos(7 * y - c) for c in range(3)], -1) * 100 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for split in ("train", "validation"):
        for c, name in enumerate(("ant", "bee")):
            (root / split / name).mkdir(parents=True)
            for i, (w, h) in enumerate(SIZES):
                photo(w, h, seed=10 * c + i + (100 if split == "validation" else 0)).save(
                    root / split / name / f"{i}.jpg", quality=90)
    return str(root)


def script():
    spec = importlib.util.spec_from_file_location("train_224", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_exports(out, world_size):
    """Each method: trained on ``world_size`` processes, evaluated, exported once; the export reloads through
    transformers' Auto class and ``load_student`` and gives the trained student's logits on the eval batch."""
    for name in script().METHODS:
        info = json.load(open(os.path.join(out, f"{name}_info.json")))
        assert info["world_size"] == world_size and info["steps"] == 2, (name, info)
        assert {"eval_loss", "eval_top1"} <= set(info["metrics"]), (name, info)
        saved = torch.load(os.path.join(out, f"{name}_eval.pt"))
        assert saved["pixel_values"].shape[1:] == (3, 224, 224)
        folder = os.path.join(out, name)
        for model in (AutoModelForImageClassification.from_pretrained(folder), hf_kd.load_student(folder)):
            with torch.no_grad():
                logits = model.eval()(pixel_values=saved["pixel_values"]).logits
            torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-5)
        assert model.config.pretrained_cfg["input_size"] == [3, 224, 224], name


def test_every_method_is_trained_at_224_px_or_says_why_not():
    """The 224-px runs take their methods from the registry; the ones left out are registered methods, with a reason."""
    from hf_kd.methods import methods

    module = script()
    assert set(module.NOT_AT_224) <= set(methods()) and all(module.NOT_AT_224.values()), module.NOT_AT_224
    assert len(module.METHODS) + len(module.NOT_AT_224) == len(methods())


@pytest.mark.slow
def test_every_trainer_at_224_px_on_one_process(photos, tmp_path):
    trainers = script().train_all(photos, str(tmp_path))
    for name, trainer in trainers.items():
        assert trainer.train_dataset[0]["pixel_values"].shape == (3, 224, 224), name
    check_exports(str(tmp_path), 1)


@pytest.mark.slow
def test_every_trainer_at_224_px_on_two_processes(photos, tmp_path):
    """One launch runs the four methods in turn (one start-up of the two processes)."""
    run = run_process(launch_cmd(2, SCRIPT) + [photos, str(tmp_path)], timeout=900, env=ENV)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-5000:]
    check_exports(str(tmp_path), 2)
