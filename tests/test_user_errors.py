"""A new user's common mistakes get a clear error that names the problem and the fix, before any heavy work
(docs/guides/troubleshooting.md).

Each test is named after the mistake; each fails on the code before the fix (a silent wrong result, or a raw error
from a library below hf_kd).
"""

import dataclasses
import os
import signal
import sys
import textwrap
import threading
import time

import pytest
import torch

import hf_kd
from hf_kd import (DistillationArguments, FFSDArguments, KDArguments, KDTrainer, MixSKDArguments,
                   ProjectorKDArguments, SelfKDArguments, SelfKDTrainer, SupervisedTrainer, create_student)
from hf_kd.methods import methods
from hf_kd.recipes import parse_args, run

from processes import run_process

pytestmark = pytest.mark.usefixtures("one_thread")

# the base class and every registered method's (hf_kd.methods): a new method is checked without editing this file
ARGS_CLASSES = list(dict.fromkeys([DistillationArguments, *(cls.args_class for cls in methods().values())]))
TINY = dict(channels=[8, 8, 16, 16], blocks=[1, 1, 1])
TINY_JSON = '{"channels": [8, 8, 16, 16], "blocks": [1, 1, 1]}'
QUICK = ["--max_steps", "1", "--max_train_samples", "32", "--max_eval_samples", "16", "--eval_strategy", "no",
         "--save_strategy", "no", "--use_cpu", "true", "--student", "cifar_resnet20", "--model_args", TINY_JSON,
         "--teacher_epochs", "0.01", "--teacher_architecture", "cifar_resnet20", "--per_device_train_batch_size", "8"]


def tiny(data):
    torch.manual_seed(0)
    return create_student("cifar_resnet20", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                          model_args=TINY)


# --- 1. a run that would train nothing --------------------------------------------------------------------------------
def test_fewer_examples_than_one_batch_is_refused_by_the_trainer(data, tmp_path):
    small = data.train.select(range(6))
    args = DistillationArguments(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=8,
                                 gradient_accumulation_steps=2, dataloader_drop_last=True, report_to=[], use_cpu=True)
    trainer = SupervisedTrainer(model=tiny(data), args=args, train_dataset=small)
    with pytest.raises(ValueError, match=r"6 examples, fewer than one batch of 8 .*x gradient_accumulation_steps 2 = 16"
                                         r".*train 0 steps.*--per_device_train_batch_size \(at most 6\)"):
        trainer.train()
    assert trainer.state.global_step == 0 and not os.path.exists(tmp_path / "model.safetensors")


def test_fewer_examples_than_one_batch_is_refused_by_the_recipe(tmp_path):
    """recipes/self_kd.py on 6 training images with batch 8 and drop_last: an error, no export, no card."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="6 examples.*dataloader_drop_last false"):
        run(SelfKDTrainer, defaults=dict(output_dir=str(out)), argv=[*QUICK, "--max_train_samples", "6",
                                                                       "--max_steps", "10"])
    assert not os.path.exists(out / "README.md")


# --- 2. every method's arguments are validated --------------------------------------------------------------------
# The rule: a field named `*temperature*` is a softmax temperature (> 0); a field named `*_weight`, `lambda_*` (but
# not lambda_warmup_epochs, a schedule length) or LightSKD's `alpha`/`beta` weighs a loss term (>= 0). The tests below
# call each registered method's arguments class (the registry, so a new method is covered) and check that its range
# check enforces exactly what the rule names.
def _named_by_the_rule(cls) -> tuple[list[str], list[str]]:
    names = [f.name for f in dataclasses.fields(cls)]
    temps = [n for n in names if "temperature" in n]
    weights = [n for n in names if (n.endswith("_weight") or n.startswith("lambda_") or n in ("alpha", "beta"))
               and n != "lambda_warmup_epochs"]
    return temps, weights


def _numeric_fields(cls) -> list[str]:
    """The class's own int/float fields (TrainingArguments checks its own)."""
    from transformers import TrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    return [f.name for f in dataclasses.fields(cls) if f.name not in inherited and not isinstance(f.default, bool)
            and isinstance(f.default, (int, float))]


@pytest.mark.parametrize("cls", ARGS_CLASSES, ids=lambda c: c.__name__)
def test_the_range_check_names_no_field_outside_the_rule(cls):
    """A negative value of a field the rule does not name is not refused as a temperature or a loss weight."""
    temps, weights = _named_by_the_rule(cls)
    for name in set(_numeric_fields(cls)) - set(temps) - set(weights):
        try:
            cls(output_dir="x", **{name: -1 if isinstance(getattr(cls, name, 0), int) else -0.5})
        except ValueError as e:
            assert f"--{name} is a softmax temperature" not in str(e) and f"--{name} is a loss weight" not in str(e)


def test_the_rule_names_the_registered_methods_fields():
    """The rule still finds fields (a renamed field would leave the tests below checking nothing)."""
    named = {cls.__name__: _named_by_the_rule(cls) for cls in ARGS_CLASSES}
    assert all(temps for cls, (temps, _) in named.items() if cls != "DistillationArguments"), named
    assert sum(len(w) for _, w in named.values()) >= 5, named


@pytest.mark.parametrize("cls", [c for c in ARGS_CLASSES if any(_named_by_the_rule(c))], ids=lambda c: c.__name__)
def test_every_temperature_and_loss_weight_is_range_checked(cls):
    temps, weights = _named_by_the_rule(cls)
    for name in weights:
        with pytest.raises(ValueError, match=rf"--{name} is a loss weight and must be >= 0"):
            cls(output_dir="x", **{name: -0.5})
        cls(output_dir="x", **{name: 0.0})  # 0 switches one term off: allowed
    for name in temps:
        for bad in (0.0, -1.0):
            with pytest.raises(ValueError, match=rf"--{name} is a softmax temperature and must be > 0, got {bad}"):
                cls(output_dir="x", **{name: bad})


def test_kd_recipe_with_negative_temperature_and_weight_is_refused():
    """The issue's command: recipes/kd.py --temperature -1 --kd_weight -0.5 trained and exported."""
    with pytest.raises(ValueError, match=r"(?s)--temperature .* got -1.0.*--kd_weight .* got -0.5"):
        parse_args(KDArguments, {"output_dir": "x"}, ["--temperature", "-1", "--kd_weight", "-0.5"])


@pytest.mark.parametrize("cls,zeros", [(KDArguments, ["ce_weight", "kd_weight"]),
                                       (ProjectorKDArguments, ["ce_weight", "kd_weight", "feature_weight"])])
def test_all_loss_weights_zero_is_refused(cls, zeros):
    with pytest.raises(ValueError, match="every loss weight is 0"):
        cls(output_dir="x", **dict.fromkeys(zeros, 0.0))


def test_methods_with_an_unweighted_cross_entropy_accept_zero_weights():
    SelfKDArguments(output_dir="x", alpha=0.0, beta=0.0)
    FFSDArguments(output_dir="x", lambda_diversity=0.0, lambda_fusion=0.0, lambda_self_distillation=0.0)


def test_the_old_per_method_checks_live_in_the_shared_place():
    with pytest.raises(ValueError, match="--num_students must be >= 2"):
        FFSDArguments(output_dir="x", num_students=1)
    with pytest.raises(ValueError, match="--num_projectors must be >= 1"):
        ProjectorKDArguments(output_dir="x", num_projectors=0)
    with pytest.raises(ValueError, match="--adapter_stage must be >= 0"):
        SelfKDArguments(output_dir="x", adapter_stage=-1)
    with pytest.raises(ValueError, match=r"--discriminator must be one of \['fixed', 'adversarial', 'off'\]"):
        MixSKDArguments(output_dir="x", discriminator="gan")
    for cls in (FFSDArguments, ProjectorKDArguments, SelfKDArguments, MixSKDArguments):
        assert "__post_init__" not in vars(cls) or cls is SelfKDArguments  # only LightSKD's DSR/drop_last remains


# --- 3. an earlier export is not overwritten silently ---------------------------------------------------------------
def _earlier_run(out):
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"x")


def test_a_second_run_into_the_same_output_dir_is_refused(tmp_path):
    out = tmp_path / "kd"
    _earlier_run(out)
    with pytest.raises(ValueError, match=r"already holds another run \(config.json, model.safetensors, checkpoint-4\)"
                                         r".*--resume_from_checkpoint.*--overwrite_output_dir"):
        run(SupervisedTrainer, defaults=dict(output_dir=str(out)), argv=QUICK)
    assert (out / "model.safetensors").read_bytes() == b"x" and (out / "checkpoint-4").is_dir()


def test_overwrite_output_dir_starts_over_without_the_old_checkpoints(tmp_path):
    out = tmp_path / "sup"
    _earlier_run(out)
    trainer = run(SupervisedTrainer, defaults=dict(output_dir=str(out)), argv=[*QUICK, "--overwrite_output_dir"])
    assert trainer.args.overwrite_output_dir and not (out / "checkpoint-4").exists()
    assert (out / "model.safetensors").stat().st_size > 1000  # the new export


# --- 5. a teacher that does not exist -----------------------------------------------------------------------------
def test_missing_local_teacher_folder_fails_before_the_data_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_kd.recipes, "load_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(FileNotFoundError, match="--teacher /no/such/dir: no such folder"):
        run(KDTrainer, defaults=dict(output_dir=str(tmp_path / "o")), argv=[*QUICK, "--teacher", "/no/such/dir"])


def test_misspelt_teacher_folder_offline_names_the_close_match(tmp_path, monkeypatch):
    """`--teacher outputs/teachr` looks like a Hub id: offline it fails at once and points at outputs/teacher."""
    (tmp_path / "outputs" / "teacher").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_kd.recipes, "load_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(ConnectionError, match=r"(?s)'outputs/teachr' is neither a local folder nor cached.*"
                                              r"HF_HUB_OFFLINE.*Did you mean: outputs/teacher\?"):
        run(KDTrainer, defaults=dict(output_dir="o"), argv=[*QUICK, "--teacher", "outputs/teachr"])


def count_hub_requests(monkeypatch) -> list:
    """The repo ids of every ``HfApi.repo_info`` call from now on (the checks' one request to the Hub)."""
    from huggingface_hub import HfApi

    requests, real = [], HfApi.repo_info
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kw: (requests.append(repo_id),
                                                                          real(self, repo_id, **kw))[1])
    return requests


def test_unreachable_hub_teacher_fails_at_once(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: connection refused
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    from hf_kd.checks import check_teacher

    requests = count_hub_requests(monkeypatch)
    with pytest.raises(ConnectionError, match=r"'someone/teacher' is not a local folder, and the Hub "
                                              r"\(http://127.0.0.1:9\) cannot be reached"):
        check_teacher("someone/teacher")
    assert requests == ["someone/teacher"]  # one request, no retries


def _hub_unreachable(monkeypatch, tmp_path):
    """The Hub endpoint a closed local port (connection refused at once), online mode, empty caches, and the data
    loader replaced by a failure: each check must answer before any data loads."""
    from huggingface_hub import constants

    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # huggingface_hub reads it at import: also patch it
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hf_kd.recipes, "load_data", lambda *a, **k: pytest.fail("data loaded before the check"))


def test_kd_recipe_with_an_unreachable_hub_teacher_fails_before_the_data_loads(tmp_path, monkeypatch):
    """`recipes/kd.py --teacher someone/teacher` with the Hub unreachable: a clear error naming the teacher and the
    Hub, before the data loads (the code before the fix loaded the data, then retried the network 5 times)."""
    import runpy

    _hub_unreachable(monkeypatch, tmp_path)
    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "kd.py")
    monkeypatch.setattr(sys, "argv", [recipe, *QUICK, "--output_dir", str(tmp_path / "o"),
                                      "--teacher", "someone/teacher"])
    with pytest.raises(ConnectionError, match=r"(?s)--teacher 'someone/teacher' is not a local folder, and the Hub "
                                              r"\(http://127.0.0.1:9\) cannot be reached.*reachable Hub id"):
        runpy.run_path(recipe, run_name="__main__")


def test_recipe_with_an_unknown_dataset_and_an_unreachable_hub_fails_before_the_data_loads(tmp_path, monkeypatch):
    """`--dataset cifar1000` with the Hub unreachable: the error names the accepted forms and the close preset, before
    the data loads (the code before the fix handed the name to datasets, which retried for about 100 s)."""
    _hub_unreachable(monkeypatch, tmp_path)
    with pytest.raises(ConnectionError, match=r"(?s)--dataset 'cifar1000' is not a local folder, and the Hub "
                                              r"\(http://127.0.0.1:9\) cannot be reached.*a preset \(cifar10, "
                                              r"cifar100, digits, imagenet-1k\).*Did you mean: cifar100"):
        run(SupervisedTrainer, defaults=dict(output_dir=str(tmp_path / "o")),
            argv=[*QUICK, "--dataset", "cifar1000", "--dataset_cache_dir", str(tmp_path / "ds_cache")])


def test_teacher_folder_without_an_export_is_named(tmp_path):
    from hf_kd.checks import check_teacher

    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no exported model"):
        check_teacher(str(tmp_path / "checkpoint-5"))


# --- 6. unknown dataset names -----------------------------------------------------------------------------------------
def test_unknown_dataset_name_offline_lists_the_presets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match=r"(?s)--dataset 'cifar1000' is neither a local folder nor cached.*"
                                              r"a preset \(cifar10, cifar100, digits, imagenet-1k\), a Hub dataset id"
                                              r".*a local folder.*Did you mean: cifar100"):
        run(SupervisedTrainer, defaults=dict(output_dir=str(tmp_path / "o")), argv=[*QUICK, "--dataset", "cifar1000"])


def test_unknown_dataset_name_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from hf_kd.checks import check_dataset

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    requests = count_hub_requests(monkeypatch)
    with pytest.raises(ConnectionError, match="cannot be reached.*a preset"):
        check_dataset("cifar1000", cache_dir=str(tmp_path))
    assert requests == ["cifar1000"]  # one request, no retries
    with pytest.raises(FileNotFoundError, match=r"--dataset ./no/such: no such folder"):
        check_dataset("./no/such")


# --- 7. a truncated checkpoint ----------------------------------------------------------------------------------------
def test_truncated_checkpoint_names_the_file_and_the_previous_checkpoint(data, tmp_path):
    args = DistillationArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8,
                                 save_strategy="steps", save_steps=1, report_to=[], use_cpu=True)
    SupervisedTrainer(model=tiny(data), args=args, train_dataset=data.train).train()
    weights = tmp_path / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    trainer = SupervisedTrainer(model=tiny(data), args=args, train_dataset=data.train)
    with pytest.raises(ValueError, match=rf"(?s)checkpoint-2 is damaged: {weights} cannot be read.*"
                                         rf"--resume_from_checkpoint {tmp_path / 'checkpoint-1'}"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


# --- 8. config typos ----------------------------------------------------------------------------------------------
def test_yaml_key_typo_is_an_unknown_argument(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("num_train_epoch: 1\n")
    with pytest.raises(SystemExit, match=r"--num_train_epoch \(did you mean --num_train_epochs\?\)") as e:
        parse_args(KDArguments, {"output_dir": "x"}, ["--config", str(cfg)])
    assert str(cfg) in str(e.value)


def test_abbreviated_cli_flag_is_an_unknown_argument():
    with pytest.raises(SystemExit, match=r"--temp \(did you mean"):
        parse_args(KDArguments, {"output_dir": "x"}, ["--temp", "2"])


# --- 4. corrupt images ------------------------------------------------------------------------------------------------
def test_truncated_jpeg_in_an_imagefolder_is_skipped_with_a_warning_naming_it(tmp_path):
    import numpy as np
    from PIL import Image

    from hf_kd import load_image_data

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.jpg")
    bad = tmp_path / "dog" / "9.jpg"
    good = (tmp_path / "dog" / "0.jpg").read_bytes()
    bad.write_bytes(good[:len(good) // 2])  # PIL: "image file is truncated"
    with pytest.warns(UserWarning, match=rf"Skipping 1 of 11 train images .*{bad}"):
        data = load_image_data(str(tmp_path), eval_fraction=0.2)
    assert len(data.train) + len(data.eval) == 10
    decoded = data.in_memory()  # decodes every image: no "Truncated File Read" at step N
    assert decoded.train.pixels.shape[1:] == (3, 32, 32)


# --- 12. import time ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_import_hf_kd_loads_only_what_registering_the_backbones_needs():
    """`import hf_kd` registers the cifar_* backbones in timm and imports no Trainer, datasets, evaluate, matplotlib
    or scikit-learn; every public name still resolves on first use (benchmarks/import_time.py measures the cost).

    torchvision.models is still imported, by timm itself (timm 1.0: ``import timm`` -> timm.layers._fx ->
    torchvision.models.feature_extraction), which hf_kd needs in order to register its backbones; what hf_kd controls
    is asserted: after `import timm`, `import hf_kd` adds only hf_kd's own modules (no torchvision module)."""
    code = textwrap.dedent("""
        import sys, timm
        before = set(sys.modules)
        import hf_kd
        added = sorted(set(sys.modules) - before)
        assert all(m == "hf_kd" or m.startswith("hf_kd.") for m in added), [m for m in added if "hf_kd" not in m]
        heavy = [m for m in ("transformers", "transformers.trainer", "datasets", "evaluate", "matplotlib", "jinja2",
                             "sklearn", "scipy", "hf_kd.trainers.base", "hf_kd.data.loading") if m in sys.modules]
        assert not heavy, heavy
        assert timm.is_model("cifar_resnet20")
        for name in hf_kd.__all__:
            getattr(hf_kd, name)
        from hf_kd.data import digits_dataset
        from hf_kd.models import MissingStagesError
        assert "transformers.trainer" in sys.modules and hf_kd.KDTrainer.__name__ == "KDTrainer"
        print("OK")
    """)
    run_ = run_process([sys.executable, "-c", code], timeout=600)
    assert run_.returncode == 0 and "OK" in run_.stdout, run_.stderr[-3000:]


# --- 13. test hygiene: no orphan processes --------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc") or not hasattr(signal, "pthread_kill"), reason="needs Linux /proc")
def test_interrupting_a_test_ends_the_launched_process_and_its_children(tmp_path):
    """Like `accelerate launch recipe.py`: a launcher whose child does the work. Ctrl-C during run_process must end
    both; subprocess.run would kill the launcher only and leave the child running as an orphan."""
    pid_file = tmp_path / "child.pid"
    launcher = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        child.wait()
    """)

    def interrupt_when_started():
        deadline = time.monotonic() + 300
        while not pid_file.exists() or not pid_file.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl-C in the test process

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_process([sys.executable, "-c", launcher], timeout=600)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the launched process's child outlived the interrupted test"


def test_tests_start_processes_only_through_run_process():
    here = os.path.dirname(os.path.abspath(__file__))
    offenders = []
    for name in sorted(os.listdir(here)):
        if name.endswith(".py") and name not in ("processes.py", os.path.basename(__file__)):
            text = open(os.path.join(here, name)).read()
            offenders += [f"{name}: {call}" for call in ("subprocess.run(", "subprocess.Popen(", "subprocess.call(",
                                                         "subprocess.check_output(", "os.system(") if call in text]
    assert not offenders, f"use processes.run_process (ends the process group on interruption): {offenders}"


# --- 9. the model card shows what the run used and how to load it from where it is -------------------------------
def _card_trainer(data, tmp_path, cls=None, **kw):
    from hf_kd import FFSDTrainer

    cls = cls or FFSDTrainer
    args = cls.args_class(output_dir=str(tmp_path / "outputs" / "ffsd"), report_to=[], use_cpu=True, **kw)
    return cls(model=tiny(data), args=args, train_dataset=data.train, augmentation=data.batch_augment())


def test_card_use_snippet_loads_the_local_folder_before_a_push(data, tmp_path):
    trainer = _card_trainer(data, tmp_path)
    out = trainer.args.output_dir
    trainer.write_model_card(str(tmp_path))
    card = (tmp_path / "README.md").read_text()
    use = card[card.index("## Use"):]
    # a cifar_* student: its modeling code travels with it (trust_remote_code)
    assert f'pipeline("image-classification", model="{out}", trust_remote_code=True)' in use
    assert f'timm.create_model("local-dir:{out}", pretrained=True)' in use
    assert 'model="ffsd"' not in card and "hf-hub:ffsd" not in card
    trainer.hub_model_id = "someone/ffsd-resnet"  # what Trainer.init_hf_repo sets when the run pushes
    trainer.write_model_card(str(tmp_path))
    use = (tmp_path / "README.md").read_text().split("## Use")[1]
    assert 'model="someone/ffsd-resnet"' in use and 'timm.create_model("hf-hub:someone/ffsd-resnet"' in use


def test_card_shows_the_values_the_run_used_not_none(data, tmp_path):
    trainer = _card_trainer(data, tmp_path, weight_decay=3e-4)
    trainer.write_model_card(str(tmp_path))
    card = (tmp_path / "README.md").read_text()
    assert "| `decoder_weight_decay` | `0.0003` |" in card  # defaults to weight_decay
    assert "| `augmentation` | `cifar` |" in card and "batched\naugmentation `cifar`" in card
    assert "| `pad_mode` | `constant` |" in card
    assert "dataloader_pin_memory" not in card and "ddp_find_unused_parameters" not in card  # machine-decided
    assert "`None`" not in card.split("Training hyperparameters:")[0].split("Distillation hyperparameters")[1]
    from hf_kd import SelfKDTrainer

    self_kd = _card_trainer(data, tmp_path / "s", cls=SelfKDTrainer)
    self_kd.write_model_card(str(tmp_path))
    card = (tmp_path / "README.md").read_text()
    assert "| `random_resized_crop` | `True` |" in card and "| `augmentation` | `random_resized_crop` |" in card


# --- 10. readable training curves -------------------------------------------------------------------------------------
def _ffsd_like_history(epochs: int = 4) -> list[dict]:
    """What an FFSD run logs: 19 loss terms, one of them (diversity) ~1000x the rest, 8 heads x top-1/top-5."""
    heads = ["", "student0_", "student1_", "fusion_", "trans_fusion_", "ensemble_", "students_oracle_", "average_"]
    log = []
    for e in range(1, epochs + 1):
        log.append({"epoch": e - 0.5, "loss": 5.0 / e, "loss_diversity": 1200.0 - 100 * e, "loss_ce": 2.0 / e,
                    **{f"loss_t{i}": 0.1 * i / e for i in range(1, 17)}})
        log.append({"epoch": float(e), **{f"eval_{h}top1": 0.1 * e + 0.01 * i for i, h in enumerate(heads)},
                    **{f"eval_{h}top5": 0.3 + 0.1 * e for h in heads}})
    return log


def test_training_curves_are_readable(tmp_path, monkeypatch):
    """The figure the model card's training_curves.png is drawn from, captured where plot_training_curves saves it."""
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    from hf_kd.cards import plot_training_curves

    saved = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), savefig(fig, *a, **k))[1])
    assert plot_training_curves(_ffsd_like_history(), str(tmp_path / "curves.png"))
    assert len(saved) == 1 and (tmp_path / "curves.png").stat().st_size > 0
    fig = saved[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert fig.axes[0].get_yscale() == "log"  # diversity (~1000) does not flatten the other terms
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 3 and "top-1" in titles[1] and "top-5" in titles[2], titles  # eval heads split
    loss, top1, top5 = fig.axes
    for ax, n in ((loss, 19), (top1, 8), (top5, 8)):
        colours = [to_hex(line.get_color()) for line in ax.get_lines()]
        assert len(colours) == n and len(set(colours)) == n, (ax.get_title(), colours)  # one distinct colour each
        legend = ax.get_legend().get_window_extent(renderer)
        assert legend.x0 >= ax.get_window_extent(renderer).x1, ax.get_title()  # the legend is outside the panel
    for ax in top1, top5:
        assert {line.get_label() for line in ax.get_lines()} >= {"exported model", "students_oracle", "ensemble"}
    boxes = [ax.get_legend().get_window_extent(renderer) for ax in fig.axes]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])  # no legend covers another


# --- 11. noise hf_kd causes -----------------------------------------------------------------------------------------
def test_no_pin_memory_warning_on_a_machine_without_an_accelerator_and_user_flags_are_kept(data, tmp_path,
                                                                                          monkeypatch):
    """A run on a machine without a GPU that does not say --use_cpu (transformers turns pin_memory off only for
    use_cpu): torch warned "pin_memory ... no accelerator is found" on every DataLoader."""
    import warnings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    args = DistillationArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[])
    assert not args.use_cpu
    assert args.dataloader_pin_memory is False and args.ddp_find_unused_parameters is False
    kept = DistillationArguments(output_dir=str(tmp_path), ddp_find_unused_parameters=True)
    assert kept.ddp_find_unused_parameters is True  # a value the user set is the user's
    trainer = SupervisedTrainer(model=tiny(data), args=args, train_dataset=data.train)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        next(iter(trainer.get_train_dataloader()))
    assert not [w for w in caught if "pin_memory" in str(w.message)], [str(w.message) for w in caught]
