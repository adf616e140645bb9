"""No silent failure, no lost work: a diverged run stops without an export, the documented resume works, output
folders are checked before training, and the card reports the weights it ships.

Each test fails on the code before the fix (a NaN export reported as a result, `--resume_from_checkpoint true`
refused, a raw `FileNotFoundError`, an export mixed with another run's log, a run lost after training, a teacher
overwritten or silently reused, a card reporting weights it does not hold).
"""

import glob
import json
import logging
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import hf_kd.recipes
from hf_kd import KDArguments, KDTrainer, NonFiniteLossError, SupervisedTrainer, create_student
from hf_kd.recipes import run

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(channels=[8, 8, 16, 32], blocks=[1, 1, 1])
TINY_JSON = json.dumps(TINY)
QUICK = ["--max_train_samples", "64", "--max_eval_samples", "32", "--per_device_train_batch_size", "16",
         "--use_cpu", "true", "--model_args", TINY_JSON, "--disable_tqdm", "true", "--report_to", "none"]
EXPORT = ("config.json", "model.safetensors", "README.md")
SETTINGS = "hf_kd_teacher_settings.json"  # what an auto-trained teacher was trained with


def tiny(data, seed=0):
    torch.manual_seed(seed)
    return create_student("cifar_resnet20", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                          model_args=TINY)


def args(cls, out, **kw):
    base = dict(output_dir=str(out), max_steps=6, per_device_train_batch_size=16, report_to=[], use_cpu=True,
                dataloader_drop_last=True, seed=0, optim="sgd", learning_rate=1e6, logging_steps=1,
                save_strategy="no", disable_tqdm=True)
    return cls(**{**base, **kw})


def finite(folder) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(os.path.join(folder, "model.safetensors")).values())


# --- 1. a non-finite loss stops the run -------------------------------------------------------------------------------
def test_non_finite_loss_stops_the_recipe_without_an_export(tmp_path):
    """`--learning_rate 1e6`: the run exported NaN weights, logged `loss 0`, reported its accuracy and exited 0."""
    out = tmp_path / "out"
    with pytest.raises(NonFiniteLossError, match=r"loss is not finite at step \d+ \(loss nan; found at the log "
                                                 r"of step \d+\).*nothing is exported.*--learning_rate"):
        run(SupervisedTrainer, defaults=dict(output_dir=str(out)),
            argv=[*QUICK, "--learning_rate", "1e6", "--max_steps", "8", "--logging_steps", "1",
                  "--eval_strategy", "no", "--save_strategy", "no"])
    assert not any(os.path.exists(out / name) for name in (*EXPORT, "trainer_state.json"))


def test_non_finite_loss_is_logged_as_nan_and_names_the_step_and_terms(data, tmp_path):
    """KD (terms kd and ce): the log shows the NaN (no running mean in its place, even when the filter that puts it
    there is asked for), the error names the step and every non-finite term, and an export asked for afterwards is
    refused."""
    teacher = tiny(data, seed=1)
    tr = KDTrainer(model=tiny(data), teacher=teacher, args=args(KDArguments, tmp_path, logging_nan_inf_filter=True),
                   train_dataset=data.train, augmentation=data.batch_augment())
    with pytest.raises(NonFiniteLossError) as error:
        tr.train()
    losses = [e for e in tr.state.log_history if "loss" in e]
    *before, last = losses
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in before)
    assert last["loss"] != last["loss"]  # NaN, logged as NaN
    bad = sorted(k for k, v in last.items() if k.startswith("loss_") and not torch.isfinite(torch.tensor(v)))
    assert bad and f"at step {last['step']} " in str(error.value)
    assert all(f"{k} " in str(error.value) for k in bad)
    with pytest.raises(NonFiniteLossError, match="Not exported"):
        tr.save_model()
    assert not os.path.exists(tmp_path / "config.json")


def test_no_checkpoint_of_non_finite_weights_is_saved(data, tmp_path):
    """A checkpoint every step, a log every 50: the steps since the last log, and the weights (a last update can
    make them NaN while its loss was finite), are checked before each save, so every checkpoint written holds finite
    weights."""
    tr = SupervisedTrainer(model=tiny(data), args=args(SupervisedTrainer.args_class, tmp_path, logging_steps=50,
                                                       save_strategy="steps", save_steps=1),
                           train_dataset=data.train, augmentation=data.batch_augment())
    with pytest.raises(NonFiniteLossError, match=r"not finite (at|after) step \d+.*found before a checkpoint save"
                                                 r".*no checkpoint is saved from step (\d+) on") as e:
        tr.train()
    step = int(e.value.args[0].split("no checkpoint is saved from step ")[1].split()[0])
    saved = sorted(glob.glob(str(tmp_path / "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[1]))
    assert saved and all(finite(p) for p in saved)
    assert int(saved[-1].rsplit("-", 1)[1]) < step


def test_fast_path_stops_at_the_next_log(data, tmp_path):
    """The fast path keeps the loss terms on the device: the NaN is found at the next log, naming the steps since the
    previous one (mode cuda_graph: on the CPU the uncompiled step, the function a GPU captures)."""
    tr = SupervisedTrainer(model=tiny(data), args=args(SupervisedTrainer.args_class, tmp_path, fast_path=True,
                                                       logging_steps=2, max_steps=8),
                           train_dataset=data.train, augmentation=data.batch_augment())
    tr.fast_step.mode = "cuda_graph"
    with pytest.raises(NonFiniteLossError, match=r"not finite at a step from (\d+) to (\d+) \(--logging_steps 1 "
                                                 r"names the step\) \(loss nan; found at the log of step"):
        tr.train()
    assert tr.args.logging_nan_inf_filter is False


@pytest.mark.slow
def test_a_diverged_trial_is_pruned_and_the_search_goes_on(data, tmp_path):
    """In an optuna search the error would end the whole search: the diverged trial is pruned instead."""
    pytest.importorskip("optuna")
    a = args(SupervisedTrainer.args_class, tmp_path, max_steps=6, logging_steps=2)
    tr = SupervisedTrainer(model_init=lambda: tiny(data), args=a, train_dataset=data.train, eval_dataset=data.eval,
                           augmentation=data.batch_augment())
    rates, scored = [1e6, 0.05], []

    def objective(metrics):
        scored.append(tr.args.learning_rate)
        return metrics["eval_top1"]

    best = tr.hyperparameter_search(
        hp_space=lambda t: {"learning_rate": t.suggest_float("learning_rate", rates[t.number], rates[t.number])},
        compute_objective=objective, n_trials=2, direction="maximize", backend="optuna")
    assert scored == [0.05] and best.hyperparameters["learning_rate"] == 0.05


# --- 2. the documented resume works -----------------------------------------------------------------------------------
def _run_with_checkpoints(out, steps=4, *extra):
    return run(SupervisedTrainer, defaults=dict(output_dir=str(out)),
               argv=[*QUICK, "--learning_rate", "0.05", "--max_steps", str(steps), "--eval_strategy", "no",
                     "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "2", *extra])


def _cut_short(out, step):
    """A checkpoint as Ctrl-C leaves it mid-save: the weights, no trainer_state.json."""
    os.makedirs(out / f"checkpoint-{step}")
    shutil.copy(out / "checkpoint-4" / "model.safetensors", out / f"checkpoint-{step}" / "model.safetensors")


def test_resume_from_checkpoint_true_resumes_the_last_complete_checkpoint(tmp_path, caplog):
    """`--resume_from_checkpoint true`, as the README and the "already holds another run" error advise: it failed
    with "Can't find a valid checkpoint at true". A checkpoint cut short while saving is skipped, with a warning."""
    out = tmp_path / "out"
    _run_with_checkpoints(out)
    _cut_short(out, 6)
    with caplog.at_level(logging.WARNING, logger="hf_kd"):
        trainer = _run_with_checkpoints(out, 8, "--resume_from_checkpoint", "true")
    assert "Skipping checkpoint-6" in caplog.text and "resuming from checkpoint-4" in caplog.text
    assert trainer.state.global_step == 8
    steps = [e["step"] for e in trainer.state.log_history if "loss" in e]
    assert steps == [2, 4, 6, 8]  # steps 1-4 from checkpoint-4's history, 5-8 trained now


def test_a_checkpoint_cut_short_named_explicitly_is_a_damaged_checkpoint(data, tmp_path):
    out = tmp_path / "out"
    _run_with_checkpoints(out)
    _cut_short(out, 6)
    tr = SupervisedTrainer(model=tiny(data), args=args(SupervisedTrainer.args_class, out, learning_rate=0.05),
                           train_dataset=data.train)
    with pytest.raises(ValueError, match=rf"(?s)checkpoint-6 is damaged: .*trainer_state.json cannot be read.*"
                                         rf"--resume_from_checkpoint {out / 'checkpoint-4'}"):
        tr.train(resume_from_checkpoint=str(out / "checkpoint-6"))


def test_resume_true_without_a_checkpoint_is_a_clear_error(data, tmp_path):
    tr = SupervisedTrainer(model=tiny(data), args=args(SupervisedTrainer.args_class, tmp_path, learning_rate=0.05),
                           train_dataset=data.train)
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint true: .* holds no complete checkpoint.*without "
                                         r"--resume_from_checkpoint"):
        tr.train(resume_from_checkpoint="true")


def test_ctrl_c_during_the_final_export_keeps_the_earlier_export_whole(tmp_path, monkeypatch):
    """The log (trainer_state.json) was written before the export: Ctrl-C in between left the new run's log beside
    the old run's weights and card. It is now part of the one atomic export."""
    out = tmp_path / "out"
    _run_with_checkpoints(out, 2)
    before = {n: (out / n).read_bytes() for n in (*EXPORT, "trainer_state.json")}

    def interrupted(trainer, folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(SupervisedTrainer, "write_model_card", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run_with_checkpoints(out, 4, "--overwrite_output_dir")
    assert {n: (out / n).read_bytes() for n in before} == before


def test_an_export_interrupted_while_moving_in_is_not_mistaken_for_a_complete_one(tmp_path, monkeypatch):
    from hf_kd import sync

    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_text("old")
    moves, replace = [], os.replace

    def replace_then_stop(src, dst):
        if moves:
            raise KeyboardInterrupt
        moves.append(dst)
        replace(src, dst)

    monkeypatch.setattr(sync.os, "replace", replace_then_stop)

    def write(folder):
        for name in ("config.json", "model.safetensors"):
            (tmp_path / folder / name).write_text("new")

    with pytest.raises(KeyboardInterrupt):
        sync.write_atomically(str(tmp_path), write)
    assert (tmp_path / "model.safetensors").read_text() == "new" and not (tmp_path / "config.json").exists()


# --- 3. output folders ------------------------------------------------------------------------------------------------
def _no_data(monkeypatch):
    monkeypatch.setattr(hf_kd.recipes, "load_data", lambda *a, **k: pytest.fail("data loaded before the check"))


def test_an_output_dir_that_cannot_be_written_fails_before_the_data_loads(tmp_path, monkeypatch):
    """Found only after training, when trainer_state.json was written (with save_strategy no: the whole run lost)."""
    _no_data(monkeypatch)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(PermissionError, match=r"output_dir .*a_file/out cannot be written \(.*a_file is a file"):
        run(SupervisedTrainer, defaults=dict(output_dir=str(tmp_path / "a_file" / "out")), argv=QUICK)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_fails_before_the_data_loads(tmp_path, monkeypatch):
    _no_data(monkeypatch)
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        with pytest.raises(PermissionError, match=r"output_dir .*ro/out cannot be written"):
            run(SupervisedTrainer, defaults=dict(output_dir=str(tmp_path / "ro" / "out")), argv=QUICK)
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_output_dir_in_the_teacher_or_dataset_folder_is_refused_whatever_the_flags(tmp_path, monkeypatch):
    """`--output_dir` = the `--teacher` folder with --overwrite_output_dir wrote the student over the teacher."""
    _no_data(monkeypatch)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    (teacher / "checkpoint-3").mkdir()
    (teacher / "checkpoint-3" / "trainer_state.json").write_text("{}")
    for out in (teacher, teacher / "student"):
        with pytest.raises(ValueError, match=rf"output_dir {out} is (the|inside the) --teacher folder"):
            run(KDTrainer, defaults=dict(output_dir=str(out)),
                argv=[*QUICK, "--teacher", str(teacher), "--overwrite_output_dir"])
    assert (teacher / "checkpoint-3").is_dir()  # not deleted by --overwrite_output_dir
    images = tmp_path / "images"
    (images / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match=rf"output_dir {images / 'out'} is inside the --dataset folder"):
        run(SupervisedTrainer, defaults=dict(output_dir=str(images / "out")),
            argv=[*QUICK, "--dataset", str(images), "--overwrite_output_dir"])


def _kd_with_auto_teacher(out, *extra):
    return run(KDTrainer, defaults=dict(output_dir=str(out)),
               argv=[*QUICK, "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
                     "--teacher_architecture", "cifar_resnet20", "--teacher_epochs", "0.25", *extra])


@pytest.mark.slow
def test_the_auto_trained_teacher_is_reused_only_with_the_same_settings(tmp_path, monkeypatch, capsys):
    out = tmp_path / "kd"
    teacher = tmp_path / "kd_teacher"
    _kd_with_auto_teacher(out)
    settings = json.loads((teacher / SETTINGS).read_text())
    assert settings["architecture"] == "cifar_resnet20" and settings["epochs"] == 0.25
    assert settings["dataset"] == "sklearn:digits" and settings["train_subset"]["size"] == 64
    assert settings["seed"] == 42 and settings["total_batch_size"] == 16 and settings["model_args"] == TINY
    weights = (teacher / "model.safetensors").read_bytes()
    capsys.readouterr()
    _kd_with_auto_teacher(out, "--overwrite_output_dir")  # the same settings: reused
    assert "training a cifar_resnet20 teacher" not in capsys.readouterr().out
    assert (teacher / "model.safetensors").read_bytes() == weights
    shutil.rmtree(out)  # no earlier student run in the way: only the teacher differs
    with pytest.raises(ValueError, match=r"(?s)The teacher an earlier run trained into .*kd_teacher .*does not fit "
                                         r"this run: epochs 0.25 when it was trained, 0.5 in this run.*"
                                         r"--overwrite_output_dir.*deleting.*--teacher"):
        _kd_with_auto_teacher(out, "--teacher_epochs", "0.5")
    _kd_with_auto_teacher(out, "--teacher_epochs", "0.5", "--overwrite_output_dir")  # retrained
    assert "retraining the teacher" in capsys.readouterr().out
    assert json.loads((teacher / SETTINGS).read_text())["epochs"] == 0.5


# --- 4. the card reports the weights it ships -------------------------------------------------------------------------
def test_card_and_printout_report_the_best_checkpoint_that_was_exported(data, tmp_path, capsys):
    """`--load_best_model_at_end true`: the export held the best checkpoint, the card and printout the last
    evaluation. lr 1.0 makes the first checkpoint the best by eval_loss, with another top-1 than the last."""
    from huggingface_hub import ModelCard

    from hf_kd import load_student

    out = tmp_path / "best"
    trainer = run(SupervisedTrainer, defaults=dict(output_dir=str(out)),
                  argv=[*QUICK, "--learning_rate", "1.0", "--max_steps", "4", "--eval_strategy", "steps",
                        "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1",
                        "--load_best_model_at_end", "true"])
    evals = {e["step"]: e for e in trainer.state.log_history if "eval_loss" in e}
    best_step = min(evals, key=lambda s: evals[s]["eval_loss"])
    best, final = evals[best_step], evals[max(evals)]
    assert best_step != max(evals) and best["eval_top1"] != final["eval_top1"]  # the case the test is about
    printed = capsys.readouterr().out
    assert f"exported the best checkpoint checkpoint-{best_step} (--load_best_model_at_end, by eval_loss)" in printed
    assert f"its eval: top1 {best['eval_top1']:.4f}, top5 {best['eval_top5']:.4f}, loss {best['eval_loss']:.4f}" \
        in printed
    assert f"final eval (step {max(evals)}, not exported): top1 {final['eval_top1']:.4f}" in printed
    card = ModelCard.load(out / "README.md")
    top1 = next(r for r in card.data.eval_results if r.metric_name == "Top-1 accuracy")
    assert top1.metric_value == round(best["eval_top1"], 4)
    text = " ".join(card.text.split())
    assert f"the best checkpoint of the run, `checkpoint-{best_step}` (step {best_step}, selected by `eval_loss` = " \
           f"{best['eval_loss']:.4f}" in text
    assert f"the final evaluation, at step {max(evals)}, of the last weights (not in this repository) scored top-1 " \
           f"{final['eval_top1']:.4f}" in text
    exported = SupervisedTrainer(model=load_student(str(out)), args=args(SupervisedTrainer.args_class, tmp_path / "e"),
                                 eval_dataset=trainer.eval_dataset)
    assert exported.evaluate()["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-4)  # what the export holds
