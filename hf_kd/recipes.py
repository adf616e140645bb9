"""What every recipe script shares: CLI/YAML parsing, data, student/teacher set-up, train, evaluate, export, push.

A recipe is ``run(SomeTrainer, defaults={...})``. Arguments come from three dataclasses parsed by
``HfArgumentParser``: ``ModelArguments``, ``DataArguments`` and the trainer's own ``TrainingArguments`` subclass, so
every ``TrainingArguments`` flag works. ``--config file.yaml`` supplies values first; flags given after it win.
With no arguments at all a recipe runs its quick ``defaults`` on the offline ``digits`` data.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Optional

import yaml
from accelerate import PartialState
from transformers import HfArgumentParser, set_seed

from .checks import (check_dataset, check_enough_examples, check_output_dir, check_output_dir_apart,
                     check_output_dir_writable, check_teacher)
from .constants import is_small_image
from .data import load_image_data
from .models import create_student, load_student, load_teacher
from .models.student import check_architecture
from .sync import every_process

__all__ = ["ModelArguments", "DataArguments", "QUICK_DEFAULTS", "parse_args", "run", "build_teacher",
           "auto_teacher_settings", "TEACHER_SETTINGS_NAME"]

# In an auto-trained teacher's export: the settings it was trained with (``auto_teacher_settings``).
TEACHER_SETTINGS_NAME = "hf_kd_teacher_settings.json"

# A few minutes on a laptop CPU on the offline digits data; the YAML presets in recipes/configs give the papers'.
QUICK_DEFAULTS = dict(dataset="digits", num_train_epochs=5, per_device_train_batch_size=64,
                      per_device_eval_batch_size=128, learning_rate=0.05, optim="sgd",
                      optim_args="momentum=0.9,nesterov=True", weight_decay=5e-4, lr_scheduler_type="cosine",
                      eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, logging_steps=10,
                      report_to="none", dataloader_drop_last=True, teacher_architecture="cifar_resnet56",
                      teacher_epochs=5)


@dataclass
class ModelArguments:
    student: str = field(default="cifar_resnet20", metadata={"help": "timm architecture of the student "
                                                                     "(cifar_* backbones are hf_kd's)."})
    teacher: Optional[str] = field(default=None, metadata={
        "help": "Frozen teacher: a Hub id or local folder of any image classifier (an hf_kd/timm_wrapper export, "
                "or any transformers AutoModelForImageClassification model type: ViT, ConvNeXt, ...; it keeps its "
                "own preprocessing). If unset, a KD recipe trains teacher_architecture on the same data first (into "
                "<output_dir>_teacher, reused by later runs with the same settings only)."})
    teacher_architecture: str = field(default="cifar_resnet32x4", metadata={"help": "Architecture of an auto-"
                                                                                     "trained teacher."})
    teacher_epochs: float = field(default=10.0, metadata={"help": "Epochs of an auto-trained teacher."})
    model_args: Optional[str] = field(default=None, metadata={"help": "JSON dict of extra timm.create_model "
                                                                      "kwargs for the student, e.g. '{\"drop_rate\": 0.3}'."})


@dataclass
class DataArguments:
    dataset: str = field(default="digits", metadata={
        "help": "digits (offline default) | cifar100 | cifar10 | imagenet-1k | a Hub id | a save_to_disk folder | "
                "a local folder of Hub-layout parquet shards (`hf download <id> --repo-type dataset`) | an "
                "imagefolder directory | a parquet, CSV or JSON file (its image column may hold file paths)."})
    dataset_title: Optional[str] = field(default=None, metadata={
        "help": "How the model card and its model-index name the data (default: the --dataset value), e.g. "
                "'CIFAR-100 (60k pool, stratified 50k/10k re-split)' for a re-split local copy."})
    image_column: Optional[str] = field(default=None, metadata={"help": "Image column (auto-detected)."})
    label_column: Optional[str] = field(default=None, metadata={"help": "Label column (auto-detected)."})
    train_split: Optional[str] = field(default=None, metadata={
        "help": "Training split (default: the preset's, else 'train')."})
    eval_split: Optional[str] = field(default=None, metadata={
        "help": "Evaluation split, which must be labelled (default: the preset's, else the first labelled one of "
                "the usual test/validation names; without one, 10% of train is held out, stratified by label, "
                "with --subset_seed)."})
    image_size: Optional[int] = field(default=None, metadata={
        "help": "Input size in pixels (default: a preset's, else the median shorter side of up to 1000 train images)."})
    max_train_samples: Optional[int] = field(default=None, metadata={
        "help": "Train on a class-balanced random subset of this many images (drawn with subset_seed)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={
        "help": "Evaluate on a class-balanced random subset of this many images (drawn with subset_seed)."})
    subset_seed: int = field(default=0, metadata={
        "help": "Seed of the max_*_samples subsets; separate from --seed so runs with different seeds see the "
                "same images."})
    dataset_cache_dir: Optional[str] = field(default=None, metadata={
        "help": "Cache folder of the datasets library for Hub data (default: its own, ~/.cache/huggingface)."})
    in_memory: Optional[bool] = field(default=None, metadata={
        "help": "Decode small-image splits once into uint8 tensors (the fast path). Default: on when a GPU is "
                "present and images are CIFAR-size."})


def _yaml_to_argv(path: str) -> list[str]:
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    argv = []
    for key, value in cfg.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def make_parser(args_class) -> HfArgumentParser:
    """The recipes' parser. ``allow_abbrev=False``: argparse would otherwise take any unambiguous prefix of a flag
    (a YAML typo ``num_train_epoch``, a CLI ``--lr``) as the full name; here every such key is an unknown argument."""
    return HfArgumentParser((ModelArguments, DataArguments, args_class), allow_abbrev=False)


def unknown_arguments_error(rest: list[str], parser: HfArgumentParser, config: Optional[str] = None) -> str:
    """Name every unknown key, where it came from (the YAML or the command line) and the closest known flags."""
    known = sorted({"--" + o[2:].replace("-", "_") for a in parser._actions for o in a.option_strings
                    if o.startswith("--")})
    lines = []
    for word in rest:
        if not word.startswith("-"):
            continue
        key = word.split("=", 1)[0]
        close = difflib.get_close_matches(key, known, n=1)
        lines.append(f"{key}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    where = f" (from the command line or the YAML {config})" if config else ""
    return (f"Unknown arguments{where}: {', '.join(lines) or rest}. Flags must be spelled out in full (no "
            "abbreviations); see --help for the list.")


def parse_args(args_class, defaults: Optional[dict] = None, argv: Optional[list[str]] = None,
               quick: Optional[dict] = None):
    """(ModelArguments, DataArguments, args_class) from ``defaults`` < ``--config`` YAML < CLI flags.

    ``quick``: a recipe's settings for its quick offline run only (a smaller network, a gentler schedule). They
    apply when no ``--config`` is given and the data is the offline default (``digits``); any other run starts from
    the method's own defaults, so that e.g. ``recipes/mixskd.py --dataset cifar100`` trains the network it names.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("--config needs a YAML file path")
        config = argv[i + 1]
        argv = _yaml_to_argv(config) + argv[:i] + argv[i + 2:]

    def parse(extra: dict):
        parser = make_parser(args_class)
        parser.set_defaults(**{**QUICK_DEFAULTS, **(defaults or {}), **extra})
        *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if rest:
            raise SystemExit(unknown_arguments_error(rest, parser, config))
        return parsed

    model_args, data_args, training_args = parse({})
    if quick and config is None and data_args.dataset == QUICK_DEFAULTS["dataset"]:
        model_args, data_args, training_args = parse(quick)
    return model_args, data_args, training_args


def load_data(data_args: DataArguments):
    """The run's data. A held-out eval split (data without one) is drawn with --subset_seed, not --seed: runs with
    different seeds are scored on the same images."""
    # datasets writes its caches (download, Arrow files, split indices) to temporary names and renames them; the
    # main process of each node goes first, so it writes them once and the others read them (no double download)
    with PartialState().local_main_process_first():
        data = load_image_data(
            data_args.dataset, image_column=data_args.image_column, label_column=data_args.label_column,
            train_split=data_args.train_split, eval_split=data_args.eval_split, image_size=data_args.image_size,
            max_train_samples=data_args.max_train_samples, max_eval_samples=data_args.max_eval_samples,
            subset_seed=data_args.subset_seed, cache_dir=data_args.dataset_cache_dir)
    in_memory = data_args.in_memory
    if in_memory is None:
        import torch

        in_memory = torch.cuda.is_available() and is_small_image(data.input_size[-1])
    return data.in_memory() if in_memory else data


def build_student(model_args: ModelArguments, data, architecture: Optional[str] = None):
    # the data's evaluation preprocessing goes into the student's pretrained_cfg: the export's image processor
    # (and pipeline) then computes exactly what hf_kd evaluated
    return create_student(architecture or model_args.student, data.num_labels, data.label_names,
                          **data.preprocessing,
                          model_args=json.loads(model_args.model_args) if model_args.model_args else None)


def auto_teacher_settings(model_args: ModelArguments, data, training_args) -> dict:
    """What an auto-trained teacher's weights depend on: its network, the data it saw and its schedule. Recorded in its
    export (``TEACHER_SETTINGS_NAME``); a later run reuses the teacher only when its own settings are the same."""
    source = data.source
    settings = {
        "architecture": model_args.teacher_architecture,
        "model_args": json.loads(model_args.model_args) if model_args.model_args else None,
        "epochs": model_args.teacher_epochs,
        "dataset": source.get("dataset"), "train_split": source.get("train_split"),
        "eval_split": source.get("eval_split"),  # None: the training images are what a seeded hold-out leaves
        "train_subset": source.get("train_subset"), "image_column": source.get("image_column"),
        "label_column": source.get("label_column"), "input_size": list(data.input_size),
        "augmentation": data.augmentation,
        "seed": training_args.seed,
        "total_batch_size": training_args.per_device_train_batch_size * max(1, training_args.world_size),
        "learning_rate": training_args.learning_rate,
        "optim": getattr(training_args.optim, "value", training_args.optim), "optim_args": training_args.optim_args,
        "weight_decay": training_args.weight_decay,
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        "dataloader_drop_last": training_args.dataloader_drop_last,
    }
    return json.loads(json.dumps(settings))  # as read back from the file: lists, not tuples


def teacher_settings_differences(folder: str, settings: dict) -> list[str]:
    """How the teacher exported in ``folder`` was trained differently from ``settings`` (empty: the same). A folder
    without a record (an older hf_kd's export) differs."""
    path = os.path.join(folder, TEACHER_SETTINGS_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return [f"no record of the settings it was trained with ({TEACHER_SETTINGS_NAME} is missing or unreadable)"]
    return [f"{key} {recorded.get(key)!r} when it was trained, {settings.get(key)!r} in this run"
            for key in sorted(set(recorded) | set(settings)) if recorded.get(key) != settings.get(key)]


def reuse_auto_teacher(out: str, settings: dict, overwrite: bool) -> bool:
    """Whether the teacher already exported to ``out`` is this run's: exported (every process sees its
    ``config.json``) with the same settings. One with other settings is an error naming them, unless
    ``--overwrite_output_dir`` asks to retrain it. Every process calls it and takes the same branch."""
    # config.json is moved into an export last (hf_kd.sync.write_atomically): with it, the folder is complete
    if not all(every_process(os.path.isfile(os.path.join(out, "config.json")))):
        return False
    differences = next((d for d in every_process(teacher_settings_differences(out, settings)) if d), [])
    if not differences:
        return True
    if overwrite:
        if PartialState().is_main_process:
            print(f"[hf_kd] --overwrite_output_dir: retraining the teacher in {out} ({'; '.join(differences)})")
        return False
    raise ValueError(
        f"The teacher an earlier run trained into {out} (no --teacher given) does not fit this run: "
        f"{'; '.join(differences)}. Retrain it with --overwrite_output_dir (which retrains a teacher whose settings "
        f"differ and keeps one that matches) or by deleting {out}; or pass --teacher {out} to distil from it as it is.")


def build_teacher(model_args: ModelArguments, data, training_args):
    """The given teacher, or one trained here with plain CE on the same data, into ``<output_dir>_teacher``.

    A teacher already there is reused only if it was trained with this run's settings (``auto_teacher_settings``,
    recorded in its export); other settings are an error naming them, or with ``--overwrite_output_dir`` it is
    retrained (``reuse_auto_teacher``).

    Under N processes the teacher is trained once, by all of them together (its ``TrainingArguments`` see the same
    launch, so it runs under DDP like the student); its ``save_model`` returns on every process only once the main
    process has written the export, and only then does any process read it. Every process takes the same path: an
    export is reused only if every process sees it (``hf_kd.sync.every_process``). Across machines without a shared
    disk, ``--save_on_each_node`` makes each machine's main process write its copy.
    """
    if model_args.teacher:
        return load_teacher(model_args.teacher), model_args.teacher
    out = training_args.output_dir.rstrip("/") + "_teacher"
    config = os.path.join(out, "config.json")
    settings = auto_teacher_settings(model_args, data, training_args)
    if not reuse_auto_teacher(out, settings, getattr(training_args, "overwrite_output_dir", False)):
        from .trainers import DistillationArguments, SupervisedTrainer

        if PartialState().is_main_process:
            print(f"[hf_kd] no --teacher given: training a {model_args.teacher_architecture} teacher into {out}")
        targs = DistillationArguments(
            output_dir=out, num_train_epochs=model_args.teacher_epochs,
            per_device_train_batch_size=training_args.per_device_train_batch_size,
            learning_rate=training_args.learning_rate, optim=training_args.optim, optim_args=training_args.optim_args,
            weight_decay=training_args.weight_decay, lr_scheduler_type="cosine", eval_strategy="no",
            save_strategy="no", report_to=[], seed=training_args.seed, use_cpu=training_args.use_cpu,
            bf16=training_args.bf16, fp16=training_args.fp16, logging_steps=training_args.logging_steps,
            dataloader_drop_last=training_args.dataloader_drop_last,
            save_on_each_node=training_args.save_on_each_node)  # each machine writes its copy, if asked
        trainer = SupervisedTrainer(model=build_student(model_args, data, model_args.teacher_architecture),
                                    args=targs, train_dataset=data.train, eval_dataset=data.eval,
                                    augmentation=data.batch_augment())
        describe_data(trainer, data)
        trainer.extra_export_files = {TEACHER_SETTINGS_NAME: settings}  # in the same atomic export
        trainer.train()
        trainer.evaluate()
        trainer.save_model()  # collective: returns once the main process has written the whole export
        if not os.path.isfile(config):
            raise FileNotFoundError(
                f"Process {PartialState().process_index} cannot see the teacher the main process exported to {out}: "
                "the machines of this launch do not share that disk. Pass --save_on_each_node true (each machine "
                "then writes its own copy), or an --output_dir on a shared filesystem, or a trained --teacher.")
    return load_student(out), out


def describe_data(trainer, data, data_args: Optional[DataArguments] = None) -> None:
    """What the model card says about the data: its id, title, eval split, any subset drawn, and what was read from
    the data (input size, mean/std, augmentation, evaluation preprocessing, splits, columns)."""
    from .data.loading import describe_subset

    trainer.dataset_name = data.source.get("dataset")
    trainer.dataset_title = getattr(data_args, "dataset_title", None)
    trainer.dataset_split = data.source.get("eval_split")
    trainer.dataset_inferred = data.source.get("inferred")
    trainer.dataset_subsets = {k: describe_subset(data.source.get(f"{k}_subset")) for k in ("train", "eval")
                               if data.source.get(f"{k}_subset")}
    if data_args is not None:  # the data flags the reproduce YAML needs besides --dataset
        trainer.data_config = {f.name: getattr(data_args, f.name) for f in dataclasses.fields(data_args)
                               if f.name != "dataset" and getattr(data_args, f.name) != f.default}


def check_inputs(model_args: ModelArguments, data_args: DataArguments, training_args, uses_teacher: str) -> None:
    """Fail in seconds, before any data loads, on an output_dir that is taken, cannot be written or lies in the
    teacher's or the data's folder, an unknown student (or auto-teacher) architecture, a teacher the method refuses
    or cannot find, or an unknown dataset (``uses_teacher``: the trainer's declaration)."""
    check_output_dir_apart(training_args.output_dir, model_args.teacher, data_args.dataset)
    check_output_dir_writable(training_args)
    check_architecture(model_args.student, "--student")
    if uses_teacher == "required" and not model_args.teacher:  # a teacher would be trained first
        check_architecture(model_args.teacher_architecture, "--teacher_architecture")
    check_output_dir(training_args)  # may delete the previous run's checkpoints: after the checks above
    if model_args.teacher:
        if uses_teacher == "refused":
            raise ValueError(f"--teacher {model_args.teacher}: this method uses no pre-trained teacher (its networks "
                             "teach each other or themselves); drop --teacher.")
        check_teacher(model_args.teacher)
    check_dataset(data_args.dataset, data_args.dataset_cache_dir)


def best_and_final(log_history: list[dict]) -> tuple[Optional[float], Optional[float]]:
    accs = [e["eval_top1"] for e in log_history if "eval_top1" in e]
    return (max(accs), accs[-1]) if accs else (None, None)


def describe_results(trainer) -> str:
    """The printout's account of the exported weights' evaluation: the best checkpoint's when
    ``--load_best_model_at_end`` loaded it (the final evaluation beside it), else the final evaluation."""
    from .cards import best_metric_key, evaluation_of_export

    exported, final = evaluation_of_export(trainer)
    if exported is None:
        return "no evaluation ran"
    best, _ = best_and_final(trainer.state.log_history)

    def scores(e: dict) -> str:
        return ", ".join(f"{k[len('eval_'):]} {e[k]:.4f}" for k in ("eval_top1", "eval_top5", "eval_loss") if k in e)

    if final is None:
        return f"eval of the exported weights (step {exported.get('step')}): {scores(exported)}; best top1 over " \
               f"evaluations {best:.4f}"
    return (f"exported the best checkpoint {os.path.basename(trainer.loaded_best_checkpoint)} "
            f"(--load_best_model_at_end, by {best_metric_key(trainer.args)}), its eval: {scores(exported)}; "
            f"final eval (step {final.get('step')}, not exported): {scores(final)}; best top1 over evaluations "
            f"{best:.4f}")


def run(trainer_cls, defaults: Optional[dict] = None, argv: Optional[list[str]] = None, quick: Optional[dict] = None):
    """Parse, build, train, evaluate, export the student to --output_dir, push if asked. Returns the trainer.

    ``defaults`` apply to every run of the recipe; ``quick`` only to its no-config run on the offline digits data
    (see ``parse_args``). The teacher follows ``trainer_cls.uses_teacher``: "required" loads ``--teacher`` or, without
    it, trains one first; "optional" loads ``--teacher`` when given; "refused" rejects ``--teacher``.

    A non-finite loss stops the run with ``NonFiniteLossError`` (nothing exported). The export holds the final
    weights, or the best checkpoint's with ``--load_best_model_at_end``; the printout and the card report the
    evaluation of the weights exported. ``--resume_from_checkpoint true`` resumes the last complete checkpoint."""
    model_args, data_args, training_args = parse_args(trainer_cls.args_class, defaults, argv, quick)
    uses_teacher = trainer_cls.uses_teacher
    check_inputs(model_args, data_args, training_args, uses_teacher)
    set_seed(training_args.seed)
    data = load_data(data_args)
    check_enough_examples(len(data.train), training_args)
    wants_teacher = uses_teacher == "required" or (uses_teacher == "optional" and model_args.teacher)
    teacher, teacher_name = build_teacher(model_args, data, training_args) if wants_teacher else (None, None)
    set_seed(training_args.seed)
    trainer = trainer_cls(model=build_student(model_args, data), teacher=teacher, args=training_args,
                          train_dataset=data.train, eval_dataset=data.eval, augmentation=data.batch_augment())
    describe_data(trainer, data, data_args)
    trainer.teacher_name = teacher_name
    trainer.command = "accelerate launch " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    trainer.export_state = True  # trainer_state.json (every loss term and evaluation) in the same atomic export
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)  # "true": the last checkpoint
    last = next((e for e in reversed(trainer.state.log_history) if "eval_top1" in e), None)
    evaluated = last is not None and last.get("step") == trainer.state.global_step
    if not evaluated and trainer.loaded_best_checkpoint is None:
        trainer.evaluate()  # the final weights (the best checkpoint's evaluation is in the history already)
    if training_args.push_to_hub:
        # exports the student (config, weights, card, curves) to output_dir, then uploads only those files to
        # --hub_model_id; if the upload fails the export stays and the error says how to retry
        trainer.push_to_hub()
    else:
        trainer.save_model()
    if trainer.is_world_process_zero():
        print(f"[hf_kd] {trainer.method_name}: student {model_args.student} exported to {training_args.output_dir}; "
              f"{describe_results(trainer)}" + (f"; pushed to {trainer.hub_model_id}" if training_args.push_to_hub
                                                 else ""))
    return trainer
