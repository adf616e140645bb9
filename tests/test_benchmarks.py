"""benchmarks/accuracy.py: resume logic, the statistics of its table, the per-method settings it runs."""

import argparse
import importlib.util
import json
import math
import os
import shutil
import threading
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location("accuracy", os.path.join(ROOT, "benchmarks", "accuracy.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def opts(tmp_path, **kw):
    base = dict(out=str(tmp_path), dataset="digits", dataset_title=None, max_train_samples=128,
                max_eval_samples=None, train_images=128, student="cifar_resnet20", teacher_architecture="cifar_resnet56",
                teacher_epochs=2, epochs=2, batch_size=32, lr=0.05, weight_decay=5e-4, eval_every=1, bf16=False,
                threads=1)
    return argparse.Namespace(**{**base, **kw})


def test_interrupted_run_resumes_from_its_last_checkpoint_and_finished_runs_are_skipped(acc, tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "kd-seed1"
    for step in (4, 8):
        (run_dir / f"checkpoint-{step}").mkdir(parents=True)
        (run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (run_dir / "checkpoint-12").mkdir()  # being written when interrupted: no trainer_state.json
    calls = []

    def fake_call(cmd, **kw):
        calls.append(cmd)
        history = [{"epoch": 1.0, "loss": 2.0, "loss_kd": 1.0, "step": 4},
                   {"epoch": 1.0, "eval_top1": 0.5, "eval_top5": 0.9, "step": 4},
                   {"epoch": 2.0, "eval_top1": 0.4, "eval_top5": 0.8, "step": 8}]
        (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        return 0

    monkeypatch.setattr(acc.subprocess, "call", fake_call)
    o = opts(tmp_path)
    result = acc.execute(o, "kd", 1, tmp_path / "runs" / "teacher-seed0", threading.Lock())
    assert calls[0][-2:] == ["--resume_from_checkpoint", str(run_dir / "checkpoint-8")]
    assert (result["final_top1"], result["best_top1"]) == (0.4, 0.5)  # headline = last evaluation, not the best
    assert result["threads"] == 1  # what a bitwise re-run needs besides the config (CPU float reduction order)
    assert not list(run_dir.glob("checkpoint-*"))  # a finished run keeps its export, not its checkpoints
    cfg = result["config"]
    assert cfg["teacher"].endswith("teacher-seed0") and cfg["temperature"] == 4.0 and cfg["seed"] == 1
    acc.execute(o, "kd", 1, None, threading.Lock())
    assert len(calls) == 1  # finished: skipped


def test_every_run_shares_student_schedule_and_augmentation(acc, tmp_path):
    o = opts(tmp_path)
    configs = {m: acc.run_config(o, m, 0, tmp_path / m, tmp_path / "t") for m in acc.METHODS}
    shared = ("student", "num_train_epochs", "learning_rate", "weight_decay", "lr_scheduler_type", "augmentation",
              "pad_mode", "per_device_train_batch_size", "max_train_samples", "subset_seed", "optim_args")
    for key in shared:
        assert len({str(c[key]) for c in configs.values()}) == 1, key
    assert configs["self_kd"]["random_resized_crop"] is False  # the common augmentation, not LightSKD's RRC
    assert configs["ffsd"]["lambda_self_distillation"] == 1000.0 and configs["mixskd"]["mixup_alpha"] == 0.4
    assert "temperature" not in configs["ce"] and "teacher" not in configs["ffsd"]
    assert "lr_milestones" not in configs["kd"] and "norm_mean" not in configs["mixskd"]
    # evaluations fall on epoch ends of the images actually selected (--max_train_samples 0 means all of them)
    assert acc.common_config(opts(tmp_path, max_train_samples=0, train_images=1000))["eval_steps"] == 1000 // 32


def test_welch_interval_and_headline_table(acc, tmp_path):
    d, lo, hi = acc.welch_interval([0.5, 0.52, 0.54], [0.40, 0.41, 0.42])
    assert d == pytest.approx(0.11) and lo < 0.11 < hi and hi - lo == pytest.approx(2 * 3.2188 * 0.012910, rel=1e-3)  # df 2.94
    assert math.isnan(acc.welch_interval([0.5], [0.4, 0.41])[1])
    runs = [dict(method=m, seed=s, final_top1=f, final_top5=0.9, best_top1=f + 0.01, wall_seconds=60,
                 evals=[dict(epoch=1.0, top1=f)], losses=[]) for m, s, f in
            [("ce", 0, 0.40), ("ce", 1, 0.42), ("kd", 0, 0.45), ("kd", 1, 0.47)]]
    for r in runs:
        (tmp_path / "runs" / f"{r['method']}-{r['seed']}").mkdir(parents=True)
        (tmp_path / "runs" / f"{r['method']}-{r['seed']}" / "result.json").write_text(json.dumps(r))
    summary = acc.summarize(tmp_path, dict(dataset="digits"))
    md = (tmp_path / "results.md").read_text()
    assert "| KD (Hinton) | 46.00 ± 1.41 | 47.00 ± 1.41 (best of 1) | +5.00 [" in md
    assert (tmp_path / "accuracy.png").stat().st_size > 0 and summary["rows"][0]["method"] == "ce"


def fake_recipe(calls):
    """Stands in for a recipe process: records the run and writes the trainer state a finished run leaves."""

    def call(cmd, **kw):
        run_dir = Path(cmd[cmd.index("--config") + 1]).parent
        calls.append(run_dir.name)
        history = [{"epoch": 2.0, "loss": 1.0, "step": 8},
                   {"epoch": 2.0, "eval_top1": 0.3 + 0.01 * len(calls), "eval_top5": 0.6, "step": 8}]
        (run_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        return 0

    return call


@pytest.mark.slow
def test_a_matrix_spread_over_sittings_keeps_every_run_and_refuses_other_settings(acc, tmp_path, monkeypatch):
    """A later sitting (another machine, a results folder copied without runs/) adds to the matrix: the runs recorded
    in results.json count as finished, every method's hyperparameters and every sitting's command stay recorded. A
    sitting with another schedule stops before it changes anything; --rerun trains a method's runs again."""
    calls = []
    monkeypatch.setattr(acc.subprocess, "call", fake_recipe(calls))

    def sitting(*args):
        monkeypatch.setattr(acc.sys, "argv", ["accuracy.py", "--out", str(tmp_path), "--dataset", "digits",
                                              "--max_train_samples", "128", "--epochs", "2", "--eval_every", "2",
                                              "--teacher_epochs", "2", "--batch_size", "32", *args])
        acc.main()
        return json.loads((tmp_path / "settings.json").read_text())

    sitting("--methods", "ce", "kd", "--seeds", "0", "1")
    assert sorted(calls) == ["ce-seed0", "ce-seed1", "kd-seed0", "kd-seed1", "teacher-seed0"]
    shutil.rmtree(tmp_path / "runs")  # as committed: results.json and the table, no run folders
    table = (tmp_path / "results.md").read_text()
    sitting("--summarize")
    assert (tmp_path / "results.md").read_text() == table and not (tmp_path / "runs").exists()
    settings = sitting("--methods", "ce", "kd", "mixskd", "--seeds", "0", "1")
    assert sorted(calls[5:]) == ["mixskd-seed0", "mixskd-seed1"]  # ce, kd and the teacher were not trained again
    assert set(settings["method_hyperparameters"]) == {"ce", "kd", "mixskd"}
    assert [x["methods"] for x in settings["sittings"]] == [["ce", "kd"], ["ce", "kd", "mixskd"]]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert sorted((r["method"], r["seed"]) for r in summary["runs"]) == sorted(
        [(m, s) for m in ("ce", "kd", "mixskd") for s in (0, 1)] + [("teacher", 0)])
    assert "Run in 2 sittings: (1) CE baseline, KD (Hinton)" in (tmp_path / "results.md").read_text()

    before = (tmp_path / "results.json").read_text()
    with pytest.raises(SystemExit, match=r"num_train_epochs: 2 before, 4 now"):
        sitting("--methods", "ce", "--seeds", "0", "--epochs", "4", "--rerun", "ce")
    assert (tmp_path / "results.json").read_text() == before
    assert (tmp_path / "runs" / "ce-seed0" / "result.json").is_file()

    monkeypatch.setattr(acc, "method_fields", lambda m: {"temperature": 2.0} if m == "kd" else {})
    with pytest.raises(SystemExit, match=r"kd's hyperparameters: .*--rerun kd"):
        sitting("--methods", "kd", "--seeds", "0")
    with pytest.raises(SystemExit, match=r"kd's hyperparameters changed, but its runs of seeds \[1\] would stay"):
        sitting("--methods", "kd", "--seeds", "0", "--rerun", "kd")  # seed 1 would keep the old temperature
    settings = sitting("--methods", "kd", "--seeds", "0", "1", "--rerun", "kd")
    assert sorted(calls[7:]) == ["kd-seed0", "kd-seed1"] and settings["method_hyperparameters"]["kd"] == {
        "temperature": 2.0}
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert sorted(r["final_top1"] for r in runs if r["method"] == "kd") == pytest.approx([0.38, 0.39])
    assert len(runs) == 7
