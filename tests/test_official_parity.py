"""benchmarks/official_parity.py: which runs it trains, skips and resumes, the config of its hf_kd side, its table."""

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def par():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    spec = importlib.util.spec_from_file_location("official_parity", os.path.join(ROOT, "benchmarks",
                                                                                  "official_parity.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def opts(tmp_path, **kw):
    base = dict(out=str(tmp_path), dataset="cifar100-folder",
                dataset_title="CIFAR-100 (60k pool, stratified 50k/10k re-split)", max_train_samples=5000,
                max_eval_samples=None, train_images=5000, student="cifar_resnet20", epochs=8, batch_size=64, lr=0.05,
                weight_decay=5e-4, eval_every=4, bf16=False, threads=1, setting_flags="",
                teacher_architecture="cifar_resnet56", teacher_epochs=16)
    return argparse.Namespace(**{**base, **kw})


def test_hf_kd_side_is_the_accuracy_tables_run(par, tmp_path):
    """The recipe config is the CPU accuracy table's FFSD config (benchmarks/results/cifar100-cpu/results.json) for
    the seed and folder: the comparison is against the run the table reports."""
    table = json.loads((Path(ROOT) / "benchmarks/results/cifar100-cpu/results.json").read_text())
    recorded = next(r for r in table["runs"] if r["method"] == "ffsd" and r["seed"] == 1)["config"]
    cfg = par.hf_kd_config(opts(tmp_path, dataset=recorded["dataset"]), "ffsd", 1, Path(recorded["output_dir"]))
    assert cfg == recorded


def test_pefd_side_is_the_accuracy_tables_run_with_the_shared_teacher(par, tmp_path):
    """PEFD's recipe config is the table's, with the parity folder's own teacher (trained with the table's teacher
    settings, which the teacher run's config shows)."""
    table = json.loads((Path(ROOT) / "benchmarks/results/cifar100-cpu/results.json").read_text())
    recorded = next(r for r in table["runs"] if r["method"] == "projector_kd" and r["seed"] == 2)["config"]
    o = opts(tmp_path, dataset=recorded["dataset"])
    cfg = par.hf_kd_config(o, "projector_kd", 2, Path(recorded["output_dir"]))
    assert cfg["teacher"] == str(tmp_path / "runs" / "_teacher" / "cifar_resnet56-seed0")
    assert {k: v for k, v in cfg.items() if k != "teacher"} == {k: v for k, v in recorded.items() if k != "teacher"}
    assert table["settings"]["teacher"] == o.teacher_architecture
    assert table["settings"]["teacher_epochs"] == o.teacher_epochs


def test_official_keys_are_the_official_cifar_resnet_names(par):
    """The teacher's weights reach the official models/resnet.py under its names: conv1/bn1/layer{1,2,3}.j/fc."""
    import re

    from hf_kd.models.student import create_student

    keys = create_student("cifar_resnet56", num_labels=100).state_dict()
    names = {par.official_key(k) for k in keys}
    assert len(names) == len(keys)
    assert par.official_key("timm_model.stem.0.weight") == "conv1.weight"
    assert par.official_key("timm_model.stages.2.8.bn2.running_var") == "layer3.8.bn2.running_var"
    pattern = r"(conv1|bn1)\.\w+|layer[123]\.\d+\.(conv[12]|bn[12]|downsample\.[01])\.\w+|fc\.(weight|bias)"
    assert [n for n in names if not re.fullmatch(pattern, n)] == []


def test_a_method_joins_an_existing_folder_but_its_settings_cannot_change(par, tmp_path, monkeypatch):
    """A later sitting may add PEFD to a folder of FFSD runs; a changed hyperparameter of a method already there is
    refused (its runs would be mixed with others)."""
    monkeypatch.setattr(par, "official_checkout", lambda m: tmp_path)
    monkeypatch.setattr(par, "checkout_provenance", lambda path: {"commit": "0" * 40, "clean": True})
    monkeypatch.setattr(par, "ensure_teacher", lambda o: {"architecture": o.teacher_architecture, "epochs": 16,
                                                          "seed": 0, "final_top1": 15.0, "folder": "x"})
    monkeypatch.setattr(par, "execute", lambda o, method, side, seed: None)
    monkeypatch.setattr(par, "summarize", lambda out, settings: (out / "results.md").write_text("table"))

    class Data:
        train, eval = range(5000), range(10000)
        source = {"eval_split": "test"}

    import hf_kd.data

    monkeypatch.setattr(hf_kd.data, "load_image_data", lambda *a, **k: Data())
    argv = ["official_parity.py", "--out", str(tmp_path / "out"), "--seeds", "5", "--dataset", "cifar100-copy"]
    monkeypatch.setattr(sys, "argv", argv + ["--methods", "ffsd"])
    par.main()
    monkeypatch.setattr(sys, "argv", argv + ["--methods", "projector_kd"])
    par.main()
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert set(settings["method_hyperparameters"]) == {"ffsd", "projector_kd"}
    assert settings["teacher"]["architecture"] == "cifar_resnet56"
    import accuracy

    changed = dict(accuracy.method_fields("ffsd"), temperature=3.0)
    monkeypatch.setattr(accuracy, "method_fields", lambda m: changed if m == "ffsd" else {})
    monkeypatch.setattr(sys, "argv", argv + ["--methods", "ffsd"])
    with pytest.raises(SystemExit, match=r"method_hyperparameters\[ffsd\]"):
        par.main()


def test_runs_resume_skip_and_record_threads(par, tmp_path, monkeypatch):
    o = opts(tmp_path, threads=3)
    run_dir = tmp_path / "runs" / "ffsd" / "hf_kd-seed5"
    (run_dir / "checkpoint-78").mkdir(parents=True)
    (run_dir / "checkpoint-78" / "trainer_state.json").write_text("{}")
    (run_dir / "checkpoint-156").mkdir()  # cut short while being written
    calls = []

    def fake_call(cmd, env=None, **kw):
        calls.append((cmd, env))
        if "--_official_run" in cmd:
            out = dict(final_top1=13.0, final_top5=36.0, heads={"leader": 13.0}, evals=[])
            (Path(cmd[cmd.index("--_run_dir") + 1]) / "official.json").write_text(json.dumps(out))
        else:
            history = [{"epoch": 4.0, "eval_top1": 0.09, "eval_top5": 0.3, "eval_student0_top1": 0.1},
                       {"epoch": 8.0, "eval_top1": 0.125, "eval_top5": 0.35, "eval_student0_top1": 0.13}]
            (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        return 0

    monkeypatch.setattr(par.subprocess, "call", fake_call)
    res = par.execute(o, "ffsd", "hf_kd", 5)
    cmd, env = calls[0]
    assert cmd[-2:] == ["--resume_from_checkpoint", str(run_dir / "checkpoint-78")]
    assert env["OMP_NUM_THREADS"] == "3" and res["threads"] == 3
    assert (res["final_top1"], res["heads"]["leader"], res["heads"]["student0"]) == (12.5, 12.5, 13.0)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 5
    assert not list(run_dir.glob("checkpoint-*"))
    par.execute(o, "ffsd", "hf_kd", 5)
    assert len(calls) == 1  # finished: skipped
    off = par.execute(o, "ffsd", "official", 5)
    assert off["final_top1"] == 13.0 and calls[1][1]["OMP_NUM_THREADS"] == "3"
    par.execute(o, "ffsd", "official", 5)
    assert len(calls) == 2


def test_table_has_n_per_side_and_the_welch_interval(par, tmp_path):
    settings = dict(dataset="d", dataset_title="CIFAR-100 (x)", train_subset="5,000 images", eval_images="10,000",
                    schedule="8 epochs", hardware="CPU", threads="1 thread(s) per run", official_code={"ffsd": "x"},
                    command="c", dates="2026-12-06", method_titles={"ffsd": "FFSD (leader), cifar_resnet20"})
    values = {"official": [13.0, 13.5, 13.2], "hf_kd": [12.5, 12.9]}
    for side, xs in values.items():
        for seed, x in enumerate(xs):
            d = tmp_path / "runs" / "ffsd" / f"{side}-seed{seed}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps(dict(method="ffsd", side=side, seed=seed, final_top1=x,
                                                           threads=1)))
    summary = par.summarize(tmp_path, settings)
    row = summary["rows"][0]
    assert (row["official"]["n"], row["hf_kd"]["n"]) == (3, 2)
    d = row["difference"]
    assert d["hf_kd_minus_official"] == pytest.approx(12.7 - 13.233333, abs=1e-5)
    assert d["ci95"][0] < d["hf_kd_minus_official"] < d["ci95"][1]
    md = (tmp_path / "results.md").read_text()
    assert "(n = 3)" in md and "(n = 2)" in md and "-0.53 [" in md
    # a results folder kept without runs/ still summarizes
    import shutil

    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "runs").mkdir()
    assert par.summarize(tmp_path, settings)["rows"][0]["official"]["n"] == 3


def test_official_checkout_must_be_a_git_checkout_outside_the_repository(par, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_KD_OFFICIAL", raising=False)
    monkeypatch.delenv("HF_KD_OFFICIAL_FFSD", raising=False)
    with pytest.raises(SystemExit, match="HF_KD_OFFICIAL"):
        par.official_checkout("ffsd")
    monkeypatch.setenv("HF_KD_OFFICIAL_FFSD", str(tmp_path))
    with pytest.raises(SystemExit, match="not a git checkout"):
        par.official_checkout("ffsd")
    monkeypatch.setenv("HF_KD_OFFICIAL_FFSD", ROOT)
    with pytest.raises(SystemExit, match="inside the hf_kd repository"):
        par.official_checkout("ffsd")


def test_hf_kd_data_path_for_an_official_loop(par):
    """The data-path swap: HfKdBatches gives the official loop hf_kd's batches (a new permutation per epoch, the last
    partial batch dropped, one BatchAugment call per batch with the data's statistics) in the loop's tuple format."""
    import numpy as np
    import torch

    from hf_kd.data.augment import BatchAugment

    class Images:  # the fields official_cifar_datasets' datasets carry
        images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
        labels = list(range(10))
        mean, std, index = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), True

    batches = par.HfKdBatches(Images(), 4)
    assert len(batches) == 2
    torch.manual_seed(0)
    first = list(batches)
    assert [len(b[2]) for b in first] == [4, 4] and len({*first[0][2].tolist(), *first[1][2].tolist()}) == 8
    second = list(batches)
    assert not torch.equal(torch.cat([b[2] for b in first]), torch.cat([b[2] for b in second]))
    torch.manual_seed(0)  # the same draws as the recipe's BatchAugment on the same uint8 batch
    perm = torch.randperm(10)
    pixels = torch.from_numpy(Images.images).permute(0, 3, 1, 2)
    x = BatchAugment(Images.mean, Images.std, "cifar", padding=4)(pixels[perm[:4]], train=True)
    assert torch.equal(first[0][0], x) and torch.equal(first[0][1], perm[:4])
