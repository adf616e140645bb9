"""Recipes: CLI + YAML parsing, presets, and the new-user path (train a teacher + KD student, load the export)."""

import glob
import os

import pytest
from processes import run_process

from hf_kd.methods import methods
from hf_kd.recipes import parse_args
from hf_kd.trainers import KDArguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_yaml_then_cli_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("student: cifar_resnet32\ntemperature: 2.5\nlr_milestones: [3, 5]\nnum_train_epochs: 9\n"
                   "optim_args: momentum=0.9,nesterov=True\n")
    m, d, a = parse_args(KDArguments, {"output_dir": str(tmp_path)},
                         ["--config", str(cfg), "--num_train_epochs", "2", "--dataset", "cifar10"])
    assert m.student == "cifar_resnet32" and a.temperature == 2.5 and a.lr_milestones == [3, 5]
    assert a.num_train_epochs == 2 and d.dataset == "cifar10" and a.optim_args == "momentum=0.9,nesterov=True"


def test_defaults_are_the_quick_offline_run(tmp_path):
    m, d, a = parse_args(KDArguments, {"output_dir": str(tmp_path)}, [])
    assert d.dataset == "digits"
    assert a.report_to in ([], ["none"], "none")
    with pytest.raises(SystemExit):
        parse_args(KDArguments, {}, ["--no_such_flag", "1"])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "recipes", "configs", "*.yaml"))),
                         ids=os.path.basename)
def test_every_preset_parses(path):
    """Every preset belongs to exactly one method of the registry (by its ``preset_prefix``) and parses with that
    method's arguments; a preset no method claims is an error, not a skip."""
    name = os.path.basename(path)
    owners = [cls for cls in methods().values() if name.startswith(cls.preset_prefix)]
    assert len(owners) == 1, f"{name}: claimed by {[c.method_name for c in owners]} (preset_prefix of each method)"
    m, d, a = parse_args(owners[0].args_class, {}, ["--config", path])
    if "_imagenet1k_" in name:  # the ImageNet protocols: 89-305 epochs, the official global batch in one process
        assert d.dataset == "imagenet-1k" and a.num_train_epochs >= 89 and a.per_device_train_batch_size >= 128
        assert m.student in ("resnet18", "resnet34", "resnet50")
    else:
        assert d.dataset == "cifar100" and a.num_train_epochs > 100


@pytest.mark.slow
def test_new_user_path_kd_recipe_then_pipeline(tmp_path):
    """accelerate launch recipes/kd.py (teacher trained on the fly) -> AutoModel + pipeline."""
    out = tmp_path / "kd"
    cmd = ["accelerate", "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", os.path.join(ROOT, "recipes", "kd.py"),
           "--output_dir", str(out), "--max_steps", "3", "--teacher_epochs", "0.1", "--teacher_architecture",
           "cifar_resnet20", "--max_train_samples", "128", "--max_eval_samples", "32", "--eval_strategy", "no",
           "--save_strategy", "no", "--use_cpu", "true"]
    run = run_process(cmd, timeout=900, cwd=tmp_path)  # killed with its workers if the test is interrupted
    assert run.returncode == 0, run.stderr[-4000:]
    assert "[hf_kd] kd: student cifar_resnet20 exported to" in run.stdout
    assert os.path.isfile(tmp_path / "kd_teacher" / "model.safetensors")  # the teacher, outside the export
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors", "modeling_hf_kd.py",
                                       "trainer_state.json", "training_args.bin", "training_curves.png"]
    # the export as a user loads it (a fresh interpreter loading an export: tests/test_models.py)
    from transformers import AutoModelForImageClassification, pipeline

    from hf_kd.data import digits_dataset

    AutoModelForImageClassification.from_pretrained(str(out))
    res = pipeline("image-classification", model=str(out))(digits_dataset()["test"][0]["image"])
    assert len(res) == 5 and all(r["label"] in [str(i) for i in range(10)] for r in res), res


@pytest.mark.slow
def test_card_names_the_data_title_subset_and_reproduces_them(tmp_path, one_thread):
    """The card (and its model-index) carry the dataset's title, the eval split and the subset drawn; the reproduce
    YAML keeps the data flags; trainer_state.json (every evaluation) lands beside the export."""
    import json

    import yaml
    from huggingface_hub import ModelCard

    from hf_kd.recipes import run
    from hf_kd.trainers import SupervisedTrainer

    out = tmp_path / "ce"
    run(SupervisedTrainer, defaults=dict(student="cifar_resnet20", output_dir=str(out)), argv=[
        "--max_train_samples", "100", "--max_eval_samples", "50", "--dataset_title", "Digits (scikit-learn)",
        "--max_steps", "2", "--per_device_train_batch_size", "16", "--eval_strategy", "steps", "--eval_steps", "2",
        "--save_strategy", "no", "--use_cpu", "true"])
    card = ModelCard.load(out / "README.md")
    result = card.data.eval_results[0]
    assert result.dataset_name == "Digits (scikit-learn)" and result.dataset_type == "sklearn:digits"
    assert result.dataset_split == "test"
    assert "train subset: 100 of 1,437 images (class-balanced random subset, seed 0: 10 per class" in card.text
    assert "eval subset: 50 of 360 images" in card.text
    cfg = yaml.safe_load(card.text.split("```yaml")[1].split("```")[0])
    assert cfg["max_train_samples"] == 100 and cfg["dataset_title"] == "Digits (scikit-learn)"
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("eval_top1" in e for e in history) == 1  # the step-2 evaluation is reused, not repeated


def test_quick_run_settings_do_not_leak_into_other_runs(tmp_path):
    """MixSKD's quick digits run uses a quarter-width 1-block network and a step schedule; those must not reach a
    run on other data or from a preset (they did: the accuracy matrix's MixSKD rows trained that network)."""
    from hf_kd.trainers.mixskd import MixSKDArguments

    quick = dict(model_args='{"blocks": [1, 1, 1, 1]}', warmup_epochs=1, lr_milestones=[3, 4])
    m, d, a = parse_args(MixSKDArguments, {"output_dir": str(tmp_path)}, [], quick=quick)
    assert m.model_args == quick["model_args"] and a.lr_milestones == [3, 4] and a.warmup_epochs == 1
    for argv in (["--dataset", "cifar100"], ["--config", os.path.join(ROOT, "recipes", "configs",
                                                                         "mixskd_cifar100_resnet18.yaml")]):
        m, d, a = parse_args(MixSKDArguments, {"output_dir": str(tmp_path)}, argv, quick=quick)
        assert m.model_args != quick["model_args"] and a.lr_milestones != [3, 4], argv


def test_accuracy_benchmark_configs_parse_to_the_common_settings(tmp_path, monkeypatch):
    """What each recipe really trains from the accuracy benchmark's config: the same student and schedule, none of
    the recipe's quick-run settings (model_args, milestones, warm-up)."""
    import argparse
    import importlib.util
    import runpy

    import yaml

    import hf_kd.recipes

    spec = importlib.util.spec_from_file_location("accuracy", os.path.join(ROOT, "benchmarks", "accuracy.py"))
    acc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(acc)
    o = argparse.Namespace(dataset="digits", dataset_title=None, max_train_samples=128, max_eval_samples=None,
                           train_images=128, student="cifar_resnet20", teacher_architecture="cifar_resnet56",
                           teacher_epochs=2, epochs=2, batch_size=32, lr=0.05, weight_decay=5e-4, eval_every=1,
                           bf16=False)
    for method, (recipe, _, _) in acc.METHODS.items():
        cfg = tmp_path / f"{method}.yaml"
        cfg.write_text(yaml.safe_dump(acc.run_config(o, method, 0, tmp_path / method, tmp_path / "t")))
        parsed = {}

        def fake_run(cls, defaults=None, argv=None, quick=None):
            parsed["args"] = parse_args(cls.args_class, defaults, ["--config", str(cfg)], quick=quick)

        monkeypatch.setattr(hf_kd.recipes, "run", fake_run)
        runpy.run_path(os.path.join(ROOT, "recipes", f"{recipe}.py"), run_name="__main__")
        m, d, a = parsed["args"]
        assert m.student == "cifar_resnet20" and not m.model_args, method
        assert not a.lr_milestones and a.warmup_epochs == 0 and a.learning_rate == 0.05, method
        assert a.weight_decay == 5e-4 and str(a.lr_scheduler_type.value) == "cosine", method


def test_a_teacher_given_to_a_method_that_refuses_one_is_an_error(tmp_path, monkeypatch):
    """The recipe runner reads ``uses_teacher``: --teacher for FFSD / LightSKD / MixSKD / CE is refused before any data
    loads (it used to be ignored without a word)."""
    import hf_kd.recipes

    monkeypatch.setattr(hf_kd.recipes, "load_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    refused = [cls for cls in methods().values() if cls.uses_teacher == "refused"]
    assert refused
    for cls in refused:
        with pytest.raises(ValueError, match="uses no pre-trained teacher.*drop --teacher"):
            hf_kd.recipes.run(cls, defaults=dict(output_dir=str(tmp_path / cls.method_name)),
                              argv=["--teacher", "someone/teacher"])

