"""``DistillationTrainer``: the plumbing every method shares, on top of ``transformers.Trainer``.

- ``self.model`` is a ``DistillationModel``: one ``nn.Module`` holding every trainable module (the student that gets
  exported, plus a method's auxiliary modules). It is the unit DDP wraps, the optimizer covers and checkpoints save.
- A frozen teacher, if any, lives outside it (``self.teacher``): eval mode, no grad, placed by Accelerate, never in
  the optimizer, a checkpoint or an export (docs/design/overview.md, "Trainers"; TRL's GKDTrainer does the same).
- Export contract: ``save_model`` / ``push_to_hub`` write only the student (config with preprocessing, timm-native
  safetensors, model card). Checkpoints written during training keep the whole ``DistillationModel`` + optimizer,
  scheduler and RNG state, so ``resume_from_checkpoint`` continues exactly (random augmentation runs batched in the
  step, see ``hf_kd.data.BatchAugment``). Each checkpoint also records the method and the teacher
  (``hf_kd.manifest``): a resume with another one is refused before any training.
- Each loss term is logged by name; evaluation reports top-1/top-5 through ``evaluate``.
- A non-finite loss (NaN or inf) stops the run with ``NonFiniteLossError`` at the next logging step, or earlier
  before an evaluation or checkpoint save; nothing is exported after it (``check_logged_loss``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from typing import ClassVar, NamedTuple, Optional

import safetensors.torch
from safetensors import SafetensorError
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import HPSearchBackend, HubStrategy, number_of_arguments

from ..arguments import DistillationArguments
from ..data import BatchAugment, ImageCollator
from ..losses.precision import upcast_half
from ..manifest import MANIFEST_NAME, read_manifest, resume_mismatch, teacher_identity, write_manifest
from ..labels import LabelMatch, load_label_map, match_labels
from ..metrics import ClassificationMetrics, topk_ids
from ..models import TimmStudent
from ..models.teacher import TeacherInput, input_spec
from ..modules.base import DistillationModel, DistillationOutput
from ..sync import main_process_writes, write_atomically
from .fast import FastStep, StepInGraph, check_fast_path_args, find_step_in_graph

__all__ = ["DistillationArguments", "DistillationModel", "DistillationOutput", "DistillationTrainer",
           "NonFiniteLossError", "StepLoss"]

logger = logging.getLogger(__name__)

# Per-step losses kept between two checks to name the first non-finite step (a long run without logs keeps the first
# ones only, and past them names the steps since the last check).
STEP_LOSSES_KEPT = 1024


def set_training_normalization(cfg: dict, mean: list, std: list) -> None:
    """Write the normalisation the student is trained with into its ``pretrained_cfg`` (what the export's image
    processor and ``pipeline`` read), saying so when it changes what the caller's config held."""
    old = [float(v) for v in list(cfg.get("mean", ())) + list(cfg.get("std", ()))]
    if len(old) != len(mean) + len(std) or any(abs(a - b) > 1e-6 for a, b in zip(old, list(mean) + list(std))):
        logger.warning(f"The student's config.pretrained_cfg mean/std {cfg.get('mean')} / {cfg.get('std')} are set to "
                       f"the normalisation it is trained with, {[round(v, 4) for v in mean]} / "
                       f"{[round(v, 4) for v in std]}, so that its export preprocesses as in training.")
    cfg["mean"], cfg["std"] = mean, std


def frozen_copy(teacher: nn.Module, dtype: Optional[torch.dtype] = None, channels_last: bool = False) -> nn.Module:
    """The trainer's own teacher: a copy of the caller's, in eval mode, without gradients, cast to ``dtype`` and
    in channels_last where asked, so that the model the caller passed is left exactly as it was (dtype, device,
    mode, ``requires_grad``). The copy is made on the teacher's device before the cast (a large fp32 teacher briefly
    exists twice there)."""
    import copy

    teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    if dtype is not None:
        teacher = teacher.to(dtype)
    return teacher.to(memory_format=torch.channels_last) if channels_last else teacher


def damaged_checkpoint_error(checkpoint: str, path: str, error: BaseException) -> ValueError:
    """The error for a checkpoint file that cannot be read: which file, that the checkpoint is damaged (e.g. the run
    was killed while saving it, or the disk filled up) and the previous checkpoint to resume from, if any."""
    parent = os.path.dirname(os.path.normpath(checkpoint))
    folder = parent or "."
    # complete checkpoints only (a save cut short has no trainer_state.json), the latest before this one
    earlier = sorted((n for n in os.listdir(folder) if 0 <= checkpoint_step(n) < checkpoint_step(checkpoint)
                      and is_complete_checkpoint(os.path.join(folder, n))), key=checkpoint_step) \
        if os.path.isdir(folder) else []
    hint = (f"Resume from the previous checkpoint instead: --resume_from_checkpoint {os.path.join(parent, earlier[-1])}"
            if earlier else "No earlier complete checkpoint is in the same folder: start the run again (without "
                            "--resume_from_checkpoint, with --overwrite_output_dir).")
    return ValueError(f"Checkpoint {checkpoint} is damaged: {path} cannot be read ({type(error).__name__}: "
                      f"{str(error)[:300]}); it was probably cut short while being written (run killed, disk full). "
                      f"{hint}")


class StepLoss(NamedTuple):
    """What one training batch gives (``DistillationTrainer.step_loss``)."""

    loss: torch.Tensor  # the training loss
    outputs: DistillationOutput  # the model's forward
    terms: dict  # name -> unweighted loss term, logged as loss_<name>
    carried: dict  # name -> tensor handed to the next step (``next_step_inputs``)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf: the weights are no longer usable, so the run stops without an export."""


def is_loss_key(name: str) -> bool:
    """A logged training loss: the total (``loss``, ``train_loss``) or one of its terms (``loss_<name>``)."""
    return name in ("loss", "train_loss") or name.startswith("loss_")


def is_complete_checkpoint(folder: str) -> bool:
    """Trainer writes ``trainer_state.json`` last into a checkpoint: without it the save was cut short."""
    return os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME))


def checkpoint_step(name: str) -> int:
    """The step of a ``checkpoint-N`` folder (-1 for any other name)."""
    base = os.path.basename(os.path.normpath(name))
    tail = base[len("checkpoint-"):]
    return int(tail) if base.startswith("checkpoint-") and tail.isdigit() else -1


def resume_checkpoint(output_dir: str, request) -> Optional[str]:
    """The checkpoint folder a ``resume_from_checkpoint`` value asks for, or None for a new run.

    True (or "true") is the last complete checkpoint of ``output_dir``; later checkpoints cut short while being saved
    (no ``trainer_state.json``: Ctrl-C, a killed job) are skipped with a warning. A folder given by name must be
    complete, else the error says it is damaged and names the checkpoint to resume from instead.
    """
    from ..checks import resume_request

    request = resume_request(request)
    if request is None:
        return None
    if request is True:
        found = sorted((n for n in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
                        if checkpoint_step(n) >= 0 and os.path.isdir(os.path.join(output_dir, n))), key=checkpoint_step)
        complete = [n for n in found if is_complete_checkpoint(os.path.join(output_dir, n))]
        if not complete:
            damaged = f" (only checkpoints cut short while being saved: {', '.join(found)})" if found else ""
            raise ValueError(f"--resume_from_checkpoint true: {output_dir} holds no complete checkpoint to resume "
                             f"from{damaged}. Start the run without --resume_from_checkpoint (with "
                             "--overwrite_output_dir if the folder holds an earlier export), or name a checkpoint "
                             "folder.")
        skipped = [n for n in found if checkpoint_step(n) > checkpoint_step(complete[-1])]
        if skipped:
            logger.warning(f"Skipping {', '.join(skipped)} in {output_dir}: cut short while being saved (no "
                           f"{TRAINER_STATE_NAME}); resuming from {complete[-1]}.")
        return os.path.join(output_dir, complete[-1])
    if not os.path.isdir(request):
        raise FileNotFoundError(f"--resume_from_checkpoint {request}: no such checkpoint folder. Give a "
                                f"checkpoint-N folder of the run, or true for the last one in --output_dir.")
    if not is_complete_checkpoint(request):
        path = os.path.join(request, TRAINER_STATE_NAME)
        raise damaged_checkpoint_error(request, path, FileNotFoundError(f"no {TRAINER_STATE_NAME}"))
    return request


def own_parameter_groups(cls, kwargs: dict) -> bool:
    """Whether an optimizer choice (``get_optimizer_cls_and_kwargs``) takes the trainer's parameter groups: a
    ``torch.optim.Optimizer`` class, not a factory (Muon, Dion) nor one that brings its own parameters (GaLore's
    "params", LOMO's "model", layer-wise "optimizer_dict")."""
    return (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
            and not {"params", "model", "optimizer_dict"} & set(kwargs))


class CheckBeforeUse(TrainerCallback):
    """Before the weights are evaluated, saved or trained no further (``control`` says so at a step's or an epoch's
    end, before ``Trainer`` acts on it), stop if a loss since the last log or the weights are not finite
    (``DistillationTrainer.check_logged_loss``)."""

    def __init__(self, trainer: "DistillationTrainer"):
        self.trainer = trainer

    def check(self, control) -> None:
        uses = [what for what, due in (("an evaluation", control.should_evaluate), ("a checkpoint save",
                control.should_save), ("the end of training", control.should_training_stop)) if due]
        if uses:
            self.trainer.check_unlogged_loss(" and ".join(uses), self.trainer.running_loss())
            self.trainer.check_finite_weights(" and ".join(uses))

    def on_step_end(self, args, state, control, **kwargs):
        self.check(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.check(control)


class DistillationTrainer(Trainer):
    """``Trainer`` for a student (a ``TimmStudent``) and the modules a distillation method adds.

    A method subclasses it and fills in:

    - its identity (read by the method registry ``hf_kd.methods``, the model card and the recipe runner):
      ``method_name``, ``method_title``, ``paper``, ``citation``, ``args_class``, ``uses_teacher`` ("required",
      "optional" or "refused", checked once in ``__init__``), and where they differ from the defaults
      ``recipe`` (``recipes/<recipe>.py``), ``card_template`` (``model_cards/<card_template>``), ``preset_prefix``
      (``recipes/configs/<preset_prefix>*.yaml``) and ``short_name`` (tables); ``reference_preset``, the preset with
      the paper's hyperparameters (the accuracy benchmark reads the method's own fields from it);
    - ``build_model(student, args, teacher)``: its ``DistillationModel``, whose ``forward`` returns a
      ``DistillationOutput`` and whose ``head_names`` name the evaluation heads (``build_metrics`` scores them);
    - ``method_loss(outputs, pixel_values, labels, **step)``: the training loss and its named terms;
    - where the loss needs values that change from step to step (``docs/design/fast_path.md``):
      ``step_inputs(batch_size, device)``, values made on the host for each step (FFSD's warmed-up lambdas, MixSKD's
      mixup draw), and ``next_step_inputs(outputs, pixel_values, labels, **step)``, tensors a step hands to the next
      one (LightSKD's sorted logits), kept in ``carried_inputs``. Both arrive in ``step``, as keyword arguments of the
      model's ``forward`` and of ``method_loss``. The same code runs in the eager step and in the fast path's
      compiled step; a method never needs to know which one runs it.

    The base ``compute_loss`` runs the model, scores the heads at evaluation (``eval_loss`` is the exported head's
    cross-entropy), calls ``method_loss`` in training, logs its terms and owns ``return_outputs``.

    What it does to the objects it is given: it trains the student in place, as ``Trainer`` does (in channels_last
    with ``--channels_last``), and sets its ``config.pretrained_cfg`` mean/std to the normalisation it is trained
    with (logged when that changes them), so that the model and its config agree. The teacher is left exactly as
    given: the trainer runs a frozen copy (``frozen_copy``: eval mode, no gradients, the mixed-precision dtype).
    """

    args_class: ClassVar[type] = DistillationArguments
    method_name: ClassVar[str] = "distillation"
    method_title: ClassVar[str] = "knowledge distillation"
    paper: ClassVar[Optional[str]] = None
    citation: ClassVar[Optional[str]] = None
    uses_teacher: ClassVar[str] = "optional"
    recipe: ClassVar[Optional[str]] = None
    card_template: ClassVar[Optional[str]] = None
    preset_prefix: ClassVar[Optional[str]] = None
    short_name: ClassVar[Optional[str]] = None  # how tables name the method (default: method_name)
    reference_preset: ClassVar[Optional[str]] = None  # the recipes/configs preset holding the paper's hyperparameters

    # What the model card says about the run beyond its arguments; the recipe runner sets them, all optional.
    dataset_name: Optional[str] = None  # the dataset's Hub id or local folder
    dataset_title: Optional[str] = None  # how to name the data when reporting numbers
    dataset_split: Optional[str] = None  # the evaluation split
    dataset_subsets: Optional[dict] = None  # "train"/"eval" -> the subset drawn (hf_kd.data.loading.describe_subset)
    dataset_inferred: Optional[dict] = None  # what was read from the data (ImageData.source["inferred"])
    data_config: Optional[dict] = None  # data flags for the card's reproduce YAML
    command: Optional[str] = None  # the launch command
    teacher_name: Optional[str] = None  # the teacher's Hub id or folder
    teacher_accuracy: Optional[float] = None
    baseline_metrics: Optional[dict] = None  # the same student without distillation: name, top1, top5
    card_tags: tuple = ()
    export_state: bool = False  # trainer_state.json in every export too (the recipes: the card's log history)
    extra_export_files: Optional[dict] = None  # file name -> JSON content, written into every export
    teacher_labels: LabelMatch = LabelMatch()  # which teacher output each student class reads (hf_kd.labels)
    teacher_notes: tuple = ()  # how the teacher's input and labels differ from the student's (log and card)

    def __init__(self, model: TimmStudent | DistillationModel = None, args: DistillationArguments = None,
                 teacher: Optional[TimmStudent] = None, augmentation: Optional[BatchAugment] = None,
                 data_collator=None, compute_metrics=None, preprocess_logits_for_metrics=None, **kwargs):
        model_init = kwargs.pop("model_init", None)
        if model is None and model_init is not None:  # hyperparameter search: the first student, from model_init
            model = model_init() if number_of_arguments(model_init) == 0 else model_init(None)
        if model is None:
            raise ValueError(f"{type(self).__name__} needs a student: model=create_student(...) or load_student(...)")
        if args is None:
            args = self.args_class(output_dir="hf_kd_output")
        if not isinstance(args, self.args_class):
            raise TypeError(f"{type(self).__name__} needs {self.args_class.__name__}, got {type(args).__name__}")
        self.check_teacher(teacher, model)
        wrapper = model if isinstance(model, DistillationModel) else self.build_model(model, args, teacher)
        if args.sync_batchnorm and args.world_size > 1:
            if args.device.type != "cuda":  # torch: "SyncBatchNorm layers only work with GPU modules"
                raise ValueError("sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on the CPU); drop "
                                 "--sync_batchnorm for CPU runs.")
            # in place: same parameter/buffer names, so checkpoints and the student export are unchanged
            wrapper = nn.SyncBatchNorm.convert_sync_batchnorm(wrapper)
        if teacher is not None:
            self.teacher_labels = match_labels(wrapper.student.config, teacher.config,
                                               load_label_map(args.teacher_label_map))
        elif args.teacher_label_map:
            raise ValueError("teacher_label_map is given but there is no teacher; drop --teacher_label_map.")
        student_cfg = wrapper.student.config.pretrained_cfg
        if augmentation is None:
            augmentation = BatchAugment(student_cfg["mean"], student_cfg["std"], "none")
        self._data_augmentation = augmentation  # a search trial's arguments are applied to it again (call_model_init)
        self.augmentation = self.training_augmentation(augmentation, args)
        # what the model sees at train time is what pipeline must feed it: the processor reads pretrained_cfg
        set_training_normalization(student_cfg, *self.input_normalization(args))
        super().__init__(
            model=wrapper, args=args, data_collator=data_collator or ImageCollator(),
            compute_metrics=compute_metrics or self.build_metrics(wrapper),
            preprocess_logits_for_metrics=preprocess_logits_for_metrics or topk_ids, **kwargs)
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.teacher = None
        # hashed as given, before the cast below: the same teacher gives the same manifest under --bf16 and fp32
        self._teacher_identity = teacher_identity(teacher)
        if teacher is not None:
            self.bind_teacher_input(teacher, student_cfg)
            # a frozen teacher only runs forward: keep it in the mixed-precision dtype, no fp32 copy on the device
            # (--bf16/--fp16, or `accelerate launch --mixed_precision ...`, which TrainingArguments reads)
            precision = getattr(args, "mixed_precision", None) or (
                "bf16" if args.bf16 else "fp16" if args.fp16 else "no")
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
            self.teacher = self.accelerator.prepare_model(frozen_copy(teacher, dtype, args.channels_last),
                                                          evaluation_mode=True)
        self._terms = {}  # name -> [sum over the steps since the last log (device), number of steps]
        self.reset_loss_check()
        self._in_checkpoint = False
        self.model_init = model_init  # Trainer.train rebuilds the model per trial through call_model_init
        self._own_metrics = compute_metrics is None  # rebuilt per trial with the model's heads (FFSD: num_students)
        if args.fast_path:
            check_fast_path_args(args, args.world_size)
        self._fast = FastStep(self) if args.fast_path else None
        self.carried_inputs: dict[str, Optional[torch.Tensor]] = {}  # next_step_inputs of the last training step
        self.add_callback(CheckBeforeUse(self))

    # --- what a method declares and builds ------------------------------------------------------------------------
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.uses_teacher not in ("required", "optional", "refused"):
            raise TypeError(f"{cls.__name__}.uses_teacher must be 'required', 'optional' or 'refused', got "
                            f"{cls.uses_teacher!r}")
        name = vars(cls).get("method_name")
        if name:  # defaults that follow from the method's name, unless the class sets its own
            for attr, default in (("recipe", name), ("card_template", f"{name}.md"), ("preset_prefix", f"{name}_"),
                                  ("short_name", name)):
                if vars(cls).get(attr) is None:
                    setattr(cls, attr, default)

    def check_teacher(self, teacher, model=None) -> None:
        """``uses_teacher``, checked once for every method: a required teacher that is missing, or a teacher given
        to a method that refuses one, is an error naming the fix."""
        name = f"{type(self).__name__} ({self.method_title})"
        if teacher is None and self.uses_teacher == "required" and not isinstance(model, DistillationModel):
            raise ValueError(f"{name} needs a teacher (it distils a pre-trained one): pass "
                             "teacher=load_teacher(path_or_hub_id) (recipes: --teacher <dir or id>, or leave it unset "
                             "to train one).")
        if teacher is not None and self.uses_teacher == "refused":
            raise ValueError(f"{name} uses no pre-trained teacher (no teacher network: its networks teach each other "
                             "or themselves); drop teacher=... (recipes: drop --teacher).")

    def build_model(self, student: TimmStudent, args: DistillationArguments,
                    teacher: Optional[nn.Module] = None) -> DistillationModel:
        """The method's ``DistillationModel`` around ``student`` (the teacher, if any, is given for shapes only: it
        stays outside the model)."""
        return DistillationModel(student)

    def build_metrics(self, model: DistillationModel):
        """``compute_metrics`` for the model's evaluation heads (built after the model, from its ``head_names``)."""
        return ClassificationMetrics(model.head_names, model.student.config.num_labels)

    def method_augmentation(self, augmentation: BatchAugment, args: DistillationArguments) -> BatchAugment:
        """The batched augmentation this method trains with (default: the data's, with the user's overrides)."""
        return augmentation

    def training_augmentation(self, augmentation: BatchAugment, args: DistillationArguments) -> BatchAugment:
        """The data's augmentation with the user's ``augmentation`` / ``pad_mode`` / ``norm_mean`` / ``norm_std``
        overrides, then the method's (``method_augmentation``)."""
        if args.augmentation or args.pad_mode or args.norm_mean or args.norm_std:
            augmentation = BatchAugment(args.norm_mean or augmentation.mean.flatten().tolist(),
                                        args.norm_std or augmentation.std.flatten().tolist(),
                                        args.augmentation or augmentation.kind, augmentation.padding,
                                        args.pad_mode or augmentation.pad_mode)
        return self.method_augmentation(augmentation, args)

    def input_normalization(self, args: DistillationArguments) -> tuple[list[float], list[float]]:
        """The mean/std the student is trained with (``norm_mean``/``norm_std`` exactly as given, else the
        augmentation's), which the exported config must hold."""
        mean = args.norm_mean or self.augmentation.mean.flatten().tolist()
        std = args.norm_std or self.augmentation.std.flatten().tolist()
        return [float(v) for v in mean], [float(v) for v in std]

    @property
    def eval_head_names(self) -> list[str]:
        return self.accelerator.unwrap_model(self.model).head_names

    def used_hyperparameters(self) -> dict:
        """The values this run used for arguments left unset (None: "the data's", "derived"), for the model card."""
        aug = self.augmentation
        used = {"augmentation": aug.kind, "norm_mean": [round(float(v), 4) for v in aug.mean.flatten().tolist()],
                "norm_std": [round(float(v), 4) for v in aug.std.flatten().tolist()]}
        if aug.kind == "cifar":
            used["pad_mode"] = aug.pad_mode
        return used

    def call_model_init(self, trial=None) -> DistillationModel:
        """A fresh student from ``model_init`` (per hyperparameter-search trial), wrapped by ``build_model`` with the
        method's auxiliary modules built afresh from the trial's arguments."""
        if trial is not None and self.hp_search_backend is not None:
            # Trainer.train applies the trial's arguments only after model_init; the aux modules need them now
            self._hp_search_setup(trial)
        model = super().call_model_init(trial)
        if isinstance(model, DistillationModel):
            return model
        teacher = self.accelerator.unwrap_model(self.teacher) if self.teacher is not None else None
        if teacher is not None:
            self.teacher_labels = match_labels(model.config, teacher.config,
                                               load_label_map(self.args.teacher_label_map))
        if trial is not None:  # the trial's arguments may choose the augmentation (e.g. LightSKD's random crop)
            self.augmentation = self.training_augmentation(self._data_augmentation, self.args)
        cfg = model.config.pretrained_cfg  # what pipeline must feed the exported student, as in __init__
        set_training_normalization(cfg, *self.input_normalization(self.args))
        if teacher is not None:
            self.bind_teacher_input(teacher, cfg)  # a searched norm_mean changes what the teacher's input undoes
        wrapper = self.build_model(model, self.args, teacher)
        if self._own_metrics:
            self.compute_metrics = self.build_metrics(wrapper)
        return wrapper.to(memory_format=torch.channels_last) if self.args.channels_last else wrapper

    @property
    def student(self) -> TimmStudent:
        return self.accelerator.unwrap_model(self.model).student

    # --- the loss: one contract for every method ----------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Training: ``method_loss`` of the model's output (its terms logged). Evaluation: the cross-entropy of the
        exported head as ``eval_loss``. ``return_outputs``: the evaluation heads (``DistillationOutput.logits``:
        (B, H, K), or (B, K) for a single head), for ``prediction_step`` and the metrics."""
        x, y = inputs["pixel_values"], inputs["labels"]
        if model.training:
            step = {**self.carried_inputs, **self.step_inputs(x.shape[0], x.device)}
            loss, out = self.training_loss(model, x, y, **step)
        else:
            out = model(pixel_values=x)
            loss = F.cross_entropy(out.heads[:, 0], y)
        return (loss, {"logits": out.logits}) if return_outputs else loss

    def step_loss(self, model, pixel_values: torch.Tensor, labels: torch.Tensor, **step) -> StepLoss:
        """One training batch: forward, ``method_loss`` and ``next_step_inputs``, with the per-step inputs ``step``.
        Logs and keeps nothing: the eager step (``training_loss``) and the fast path's compiled step both run it."""
        out = model(pixel_values=pixel_values, **step)
        loss, terms = self.method_loss(out, pixel_values, labels, **step)
        return StepLoss(loss, out, terms, self.next_step_inputs(out, pixel_values, labels, **step))

    def training_loss(self, model, pixel_values: torch.Tensor, labels: torch.Tensor, **step):
        """(loss, outputs) of one training batch in the eager step: ``step_loss``, its terms logged, its carried
        values kept in ``carried_inputs`` for the next step."""
        result = self.step_loss(model, pixel_values, labels, **step)
        self.log_terms(result.terms)
        self.carried_inputs.update(result.carried)
        return result.loss, result.outputs

    def method_loss(self, outputs: DistillationOutput, pixel_values: torch.Tensor, labels: torch.Tensor,
                  **step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's training loss and its named (unweighted) terms. Default: cross-entropy of the student."""
        return F.cross_entropy(outputs.heads[:, 0], labels), {}

    def step_inputs(self, batch_size: int, device) -> dict:
        """Values that change per step, made on the host before each training step and passed to ``forward`` and
        ``method_loss`` as keyword arguments: Python numbers (or dicts, lists, tuples of them), tensors, None.
        Default: none. On the fast path floats become device tensors (``docs/design/fast_path.md``)."""
        return {}

    def next_step_inputs(self, outputs: DistillationOutput, pixel_values: torch.Tensor, labels: torch.Tensor,
                         **step) -> dict[str, torch.Tensor]:
        """Tensors this training step hands to the next one (state carried across steps), by name: the next step
        gets each in ``step`` under the same name, and ``carried_inputs`` holds them in between (set an entry to
        None to start over, e.g. at an epoch's start; save and restore it with checkpoints). Return detached
        tensors. Default: none."""
        return {}

    def bind_teacher_input(self, teacher, student_cfg: dict) -> None:
        """``teacher_input``: how the student's batches (normalised with ``student_cfg``'s mean/std) become the
        teacher's own input (``hf_kd.models.teacher.TeacherInput``). Says once, in the log and the card, where the
        teacher's input differs from the student's and how the label names were matched."""
        self.teacher_input = TeacherInput(student_cfg["mean"], student_cfg["std"], input_spec(teacher))
        self.teacher_notes = [n for n in (self.teacher_input.describe(student_cfg["input_size"]),
                                          self.teacher_labels.note) if n]
        self._teacher_index = {}
        if self.teacher_notes and self.args.process_index == 0:
            logger.warning("Teacher: " + "; ".join(self.teacher_notes) + ".")

    @torch.no_grad()
    def teacher_forward(self, pixel_values: torch.Tensor, stages: bool = False):
        """The frozen teacher's ``KDOutput`` (eval mode, no grad, under the Trainer's autocast) on the student's
        batch: the batch through the teacher's own preprocessing (``teacher_input``), cast to the teacher's dtype,
        and its logits in the student's class order (``teacher_labels``: re-ordered or restricted by name)."""
        if self.teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher: pass teacher=load_teacher(path_or_hub_id).")
        x = self.teacher_input(pixel_values).to(next(self.teacher.parameters()).dtype)
        out = self.teacher.forward_kd(x, stages=stages)
        # a bf16/fp16 teacher hands fp32 targets to the losses; a float32/float64 one keeps its dtype
        out.logits, out.pre_logits = upcast_half(out.logits), upcast_half(out.pre_logits)
        if self.teacher_labels.index is not None:
            out.logits = out.logits.index_select(1, self.teacher_class_index(out.logits.device))
        return out

    def teacher_class_index(self, device) -> torch.Tensor:
        """``teacher_labels.index`` as a tensor on ``device``, made once (no host copy per step)."""
        if device not in self._teacher_index:
            self._teacher_index[device] = torch.tensor(self.teacher_labels.index, dtype=torch.long, device=device)
        return self._teacher_index[device]

    def log_terms(self, terms: dict[str, torch.Tensor]):
        """Record loss terms of a training step; averaged over the logging window and logged by name."""
        if self.model.training:  # running sums: nothing grows when no log fires (logging_strategy "no")
            for name, value in terms.items():
                value = value.detach().float()
                if name in self._terms:
                    total = self._terms[name]
                    total[0], total[1] = total[0] + value, total[1] + 1
                else:
                    self._terms[name] = [value, 1]

    # --- data -------------------------------------------------------------------------------------------------------
    def _scoring_every_sample(self, make, *a, **kw):
        """``dataloader_drop_last`` is for training batches (the papers' loaders, LightSKD's DSR); evaluation
        must score every sample, so it is switched off while an eval/test loader is built."""
        drop = self.args.dataloader_drop_last
        self.args.dataloader_drop_last = False
        try:
            return make(*a, **kw)
        finally:
            self.args.dataloader_drop_last = drop

    def get_eval_dataloader(self, eval_dataset=None):
        return self._scoring_every_sample(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset):
        return self._scoring_every_sample(super().get_test_dataloader, test_dataset)

    # --- inputs and logging ---------------------------------------------------------------------------------------
    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        pixels = inputs.get("pixel_values")
        if pixels is not None and pixels.dtype == torch.uint8:
            x = self.augmentation(pixels, train=self.model.training)
            inputs["pixel_values"] = x.contiguous(memory_format=torch.channels_last) if self.args.channels_last else x
        return inputs

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs:  # a training log: add the averaged terms
            logs.update({f"loss_{n}": round(v, 6) for n, v in sorted(self.pop_term_means().items())})
        super().log(logs, start_time)  # logged first, so the history shows the NaN that stops the run
        if "loss" in logs or "train_loss" in logs:
            self.check_logged_loss(logs)

    def pop_term_means(self) -> dict[str, float]:
        """Each loss term's mean over the steps since the last call (one device-to-host copy), then forget them."""
        means = {}
        if self._terms:
            names = sorted(self._terms)
            values = torch.stack([self._terms[n][0] / self._terms[n][1] for n in names])
            values = self.accelerator.reduce(values, reduction="mean") if self.args.world_size > 1 else values
            means.update(zip(names, values.tolist()))
            self._terms.clear()
        if self._fast is not None:
            means.update(self._fast.pop_terms())
        return means

    # --- stopping at a non-finite loss ------------------------------------------------------------------------------
    def reset_loss_check(self) -> None:
        """Forget the steps not yet checked (a new ``train`` call starts clean)."""
        self._unchecked_from: Optional[int] = None  # the first step since the last check
        self._step_losses: list = []  # eager path: (step, loss tensor) since the last check, to name the bad step
        self._non_finite: Optional[str] = None  # the error once the loss went non-finite: no export after it
        self._weights_checked_at: Optional[int] = None  # the step whose weights were last found finite

    def check_logged_loss(self, logs: dict[str, float]) -> None:
        """Stop at a non-finite logged loss or loss term (``NonFiniteLossError``; nothing exported after it).

        When a NaN or inf loss is found, whichever comes first after the step that produced it:

        - at the next logging step (every ``logging_steps``), here: the logged values are numbers Trainer has already
          read to the host, so this costs no extra sync; one NaN step makes the window's mean NaN. transformers'
          ``logging_nan_inf_filter``, which would log the running mean in its place, is off in hf_kd;
        - before an evaluation, a checkpoint save or the end of training (before the final evaluation and export):
          Trainer's running loss sum since the last log is read once (``check_unlogged_loss``), and the weights are
          checked (``check_finite_weights``: the update of a step with a finite loss can already make them NaN).

        So no evaluation, checkpoint or export ever uses weights from after a non-finite loss. The eager path names
        the first bad step (it keeps a reference to each step's loss until the check); the fast path names the steps
        since the last log.
        """
        bad = {k: v for k, v in logs.items() if is_loss_key(k) and isinstance(v, float) and not math.isfinite(v)}
        if bad:
            self.stop_at_non_finite(bad, f"found at the log of step {self.state.global_step}")
        self._unchecked_from, self._step_losses = None, []

    def check_unlogged_loss(self, reason: str, tr_loss: Optional[torch.Tensor] = None) -> None:
        """Stop if a step since the last log had a non-finite loss, before ``reason`` (an evaluation, a checkpoint
        save, the end of training) uses the weights. Reads Trainer's running loss sum (a NaN or inf in it stays):
        one host read, only when steps went unlogged. Every process calls it (the sum is reduced over them)."""
        tr_loss = self.running_loss() if tr_loss is None else tr_loss
        if self._unchecked_from is None or tr_loss is None:
            return
        total = tr_loss.detach().reshape(1).float()
        if self.args.world_size > 1:
            total = self.accelerator.reduce(total.clone(), reduction="sum")
        value = total.item()
        if not math.isfinite(value):
            terms = {f"loss_{n}": v for n, v in sorted(self.pop_term_means().items()) if not math.isfinite(v)}
            self.stop_at_non_finite({"loss": value, **terms}, f"found before {reason} at step {self.state.global_step}")
        self._unchecked_from, self._step_losses = None, []

    def running_loss(self) -> Optional[torch.Tensor]:
        """Trainer's on-device sum of the training losses since the last log (its ``_tr_loss``, set in ``train``;
        None before training). Read, never changed; docs/design/transformers_hooks.md."""
        return getattr(self, "_tr_loss", None)

    def non_finite_weights(self) -> list[str]:
        """The names of the model's floating-point tensors (parameters and buffers: BatchNorm statistics too) that
        hold a NaN or inf, over every process. One host read; every process calls it."""
        named = [(n, t) for n, t in self.accelerator.unwrap_model(self.model).state_dict().items()
                 if t.is_floating_point()]
        if not named:
            return []
        bad = torch.stack([~torch.isfinite(t).all() for _, t in named]).float()
        if self.args.world_size > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        return [n for (n, _), b in zip(named, bad.tolist()) if b]

    def check_finite_weights(self, reason: str) -> None:
        """Stop before ``reason`` (an evaluation, a checkpoint save, the end of training) if the weights hold a NaN or
        inf although every loss was finite: the last update diverged (a NaN/inf gradient), which the loss shows only
        at the next step. Once per step (a checkpoint save may ask again)."""
        step = self.state.global_step
        if self._weights_checked_at == step:
            return
        bad = self.non_finite_weights()
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            self.stop_at_non_finite({}, f"found before {reason} at step {step}", weights=shown)
        self._weights_checked_at = step

    def first_non_finite_step(self) -> Optional[int]:
        """The first step since the last check whose loss is NaN or inf (eager path; the fast path keeps no
        per-step loss), else None."""
        if not self._step_losses:
            return None
        steps, losses = zip(*self._step_losses)
        finite = torch.isfinite(torch.stack([l.detach().float().reshape(()) for l in losses])).tolist()
        return next((s for s, ok in zip(steps, finite) if not ok), None)

    def stop_at_non_finite(self, values: dict[str, float], found: str, weights: Optional[str] = None) -> None:
        """Raise ``NonFiniteLossError`` naming the step and the non-finite loss terms (or, with ``weights``, the
        tensors that went non-finite); refuse any later export. In an optuna hyperparameter search the trial is
        pruned instead, so the search goes on with the next trial."""
        first, last = self._unchecked_from or self.state.global_step, self.state.global_step
        if weights:
            what, first = (f"the weights are not finite after step {last}, although the losses were ({weights}; "
                           f"{found})"), last
        else:
            step = self.first_non_finite_step()
            where = (f"at step {step}" if step is not None else f"at step {last}" if first >= last else
                     f"at a step from {first} to {last} (--logging_steps 1 names the step)")
            shown = ", ".join(f"{k} {v}" for k, v in values.items())
            what = f"the loss is not finite {where} ({shown}; {found})"
        message = (f"Training stopped: {what}. The weights are no longer usable: nothing is exported, and no "
                   f"checkpoint is saved from step {first} on. Start again with a lower --learning_rate, a warm-up "
                   "(--warmup_steps, or --warmup_epochs with --lr_milestones), gradient clipping "
                   "(--max_grad_norm 1.0), or without --fp16/--bf16.")
        self._non_finite = message
        if self.hp_search_backend == HPSearchBackend.OPTUNA and getattr(self, "_trial", None) is not None:
            import optuna

            raise optuna.TrialPruned(message)
        raise NonFiniteLossError(message)

    def refuse_export_after_non_finite(self) -> None:
        """After a stop (even one a caller caught), no export or checkpoint of these weights."""
        if self._non_finite:
            raise NonFiniteLossError(f"Not exported: {self._non_finite}")

    # --- the fast path (hf_kd.trainers.fast) --------------------------------------------------------------------------
    @property
    def fast_step(self) -> Optional[FastStep]:
        """The fast path's step runner (None when ``fast_path`` is off); ``fast_step.compile_options`` are the
        ``torch.compile`` arguments."""
        return self._fast

    def training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step + 1
        if self._unchecked_from is None:
            self._unchecked_from = step
        if self._fast is None:
            loss = super().training_step(model, inputs, num_items_in_batch)
            if len(self._step_losses) < STEP_LOSSES_KEPT:  # references only: read if the loss turns out non-finite
                self._step_losses.append((step, loss))
            return loss
        step_inputs = self.step_inputs(inputs["pixel_values"].shape[0], self.args.device)
        loss, carried = self.fast_step(model, inputs, step_inputs, self.carried_inputs)
        self.carried_inputs.update(carried)
        return loss

    def _prepare_for_training(self, *args, **kwargs):
        if self._fast is not None:  # the compiled step updates the parameters; the Trainer's optimizer.step must not
            self.create_optimizer()
            if find_step_in_graph(self.optimizer) is None:  # (a second train() finds it inside Accelerate's)
                self.optimizer = StepInGraph(self.optimizer)
        return super()._prepare_for_training(*args, **kwargs)

    def _get_grad_norm(self, model, grad_norm=None):
        if self._fast is not None:  # computed (and clipped) in the compiled step: p.grad is never set
            return self._fast.grad_norm
        return super()._get_grad_norm(model, grad_norm)

    # --- optimizer and schedule -----------------------------------------------------------------------------------
    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """``decay_all_parameters``: every parameter, BatchNorm and biases included, as the papers' code decays them;
        otherwise transformers' rule (no decay for biases and norms)."""
        if self.args.decay_all_parameters:
            return [n for n, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def param_groups(self, model: nn.Module, prefixes: tuple[str, ...] = ("",), weight_decay: Optional[float] = None,
                     **extra) -> list[dict]:
        """Decay and no-decay groups (``get_decay_parameter_names``) of the trainable parameters whose names start
        with one of ``prefixes``, empty groups left out; ``extra`` (e.g. "lr") goes into each group. A method with
        per-module settings builds its optimizer from several calls (FFSD)."""
        wd = self.args.weight_decay if weight_decay is None else weight_decay
        decay = set(self.get_decay_parameter_names(model))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n.startswith(tuple(prefixes))]
        groups = ({"params": [p for n, p in named if n in decay], "weight_decay": wd, **extra},
                  {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0, **extra})
        return [g for g in groups if g["params"]]

    def create_optimizer(self, model=None):
        """transformers' optimizer choice (``optim``, ``optim_args``, ``optimizer_cls_and_kwargs``) over
        ``param_groups``. transformers' own ``create_optimizer`` would keep an empty no-decay group when every
        parameter decays (the default), which changes the optimizer's state layout; it still builds the optimizers
        that choose their own parameters (GaLore, LOMO, layer-wise, factories)."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            cls, kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if not own_parameter_groups(cls, kwargs):
                return super().create_optimizer(model)
            self.optimizer = cls(self.param_groups(opt_model), **kwargs)
        return self.optimizer

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, counted as ``Trainer`` does: a last, shorter accumulation group is a step too."""
        from ..checks import batches_per_epoch

        batches = batches_per_epoch(len(self.train_dataset), self.args)
        return max(1, math.ceil(batches / self.args.gradient_accumulation_steps))

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """``lr_milestones``: MultiStepLR semantics by epoch (the papers' schedules); ``lr_decay cosine``: a half cosine
        set once per epoch after the warm-up; either with an optional linear per-step warm-up."""
        if not self.args.lr_milestones and self.args.lr_decay != "cosine":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, self.epoch_schedule())
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def epoch_schedule(self):
        """The lr factor of optimizer step ``step`` (0-based) under ``lr_milestones`` / ``lr_decay``."""
        a, spe = self.args, self.steps_per_epoch()
        milestones, warm = sorted(a.lr_milestones or []), a.warmup_epochs * spe
        cosine, period = a.lr_decay == "cosine", a.num_train_epochs - a.warmup_epochs

        def factor(step: int) -> float:
            epoch = step // spe
            if warm and step < warm:  # the warm-up replaces the decay (cosine: the decay starts after it)
                return (step + 1) / warm * (1.0 if cosine else a.lr_gamma ** sum(epoch >= m for m in milestones))
            if cosine:
                return 0.5 * (1.0 + math.cos(math.pi * (epoch - a.warmup_epochs) / period))
            return a.lr_gamma ** sum(epoch >= m for m in milestones)

        return factor

    # --- saving: student-only export, full-state checkpoints --------------------------------------------------------
    # Two meanings, two names: ``save_model`` exports the student (``Trainer.save_model``'s documented meaning: a model
    # ``from_pretrained`` loads); ``save_checkpoint_model`` writes a checkpoint's full trainable state. transformers'
    # ``_save_checkpoint`` writes the checkpoint's weights by calling ``save_model``: ``_save_checkpoint`` below marks
    # that call so that it reaches ``save_checkpoint_model`` (docs/design/transformers_hooks.md).
    def _save_checkpoint(self, model, trial):
        self.refuse_export_after_non_finite()
        self.check_unlogged_loss("a checkpoint save")  # no checkpoint of NaN weights
        self.check_finite_weights("a checkpoint save")
        self._in_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._in_checkpoint = False

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        # reached from Trainer.save_model, which hf_kd calls for checkpoints only (save_checkpoint_model)
        if state_dict is None:  # safetensors refuses non-contiguous tensors, e.g. channels_last conv weights
            state_dict = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        return super()._save(output_dir, state_dict)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False):
        """Export the student (``export_student``: config, timm-native safetensors, model card) to ``output_dir``
        (default ``args.output_dir``), and push it when ``push_to_hub`` is set, as ``Trainer.save_model``.

        Every process calls it; the one that saves (``args.should_save``) writes and the others wait at a barrier
        until the export is complete (``hf_kd.sync.main_process_writes``), so any process may read the export when
        this returns (the recipes' auto-trained teacher is read by every process).
        """
        if self._in_checkpoint:  # transformers' _save_checkpoint writes the checkpoint's weights through save_model
            return self.save_checkpoint_model(output_dir)
        self.refuse_export_after_non_finite()
        self.check_finite_weights("the export")
        main_process_writes(output_dir or self.args.output_dir, self._write_export, writer=self.args.should_save,
                            prefix=".export-")
        if self.args.push_to_hub and not _internal_call:  # as Trainer.save_model
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def save_checkpoint_model(self, output_dir: str) -> None:
        """A checkpoint's model files: the whole ``DistillationModel`` state (Trainer's own save, for an exact
        resume) and the manifest (``checkpoint_manifest``) that a resume checks. Called on every process while
        transformers saves checkpoint ``output_dir`` (optimizer, scheduler and ``trainer_state.json`` follow); a
        method that keeps more state writes it here too (LightSKD's DSR buffer) and reads it back in
        ``load_checkpoint_model``."""
        super().save_model(output_dir, _internal_call=True)
        if self.args.should_save:  # beside the weights, before the checkpoint is pushed or resumed from
            write_manifest(output_dir, self.checkpoint_manifest())

    def export_student(self, output_dir: str):
        """Write the student alone (config + timm-native safetensors + model card) to ``output_dir``.

        Only the process that saves writes; nothing waits for it (``save_model`` is the collective export). Files are
        written to a temporary folder first and then moved into place, ``config.json`` last, so a failure midway never
        leaves a half-written export over a previous one (``hf_kd.sync.write_atomically``).
        """
        self.refuse_export_after_non_finite()
        if self.args.should_save:
            write_atomically(output_dir, self._write_export, prefix=".export-")

    def _write_export(self, folder: str):
        """The export's files, into the temporary folder ``write_atomically`` then moves into place as one."""
        self.student.save_pretrained(folder)
        self.write_model_card(folder)
        torch.save(self.args, os.path.join(folder, "training_args.bin"))
        if self.export_state:  # with the weights it describes: never an older export's beside a newer log
            self.state.save_to_json(os.path.join(folder, TRAINER_STATE_NAME))
        for name, content in (self.extra_export_files or {}).items():
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, sort_keys=True)

    def write_model_card(self, output_dir: str):
        from ..cards import write_model_card

        write_model_card(self, output_dir)

    def create_model_card(self, *args, **kwargs):
        """Trainer's card generator needs ``model.config`` (a wrapper has none): write hf_kd's card instead."""
        if self.is_world_process_zero():  # main process only, as Trainer's: nothing to wait for
            write_atomically(self.args.output_dir, self.write_model_card, prefix=".export-")

    def push_to_hub(self, commit_message: Optional[str] = "End of training", blocking: bool = True,
                    token: Optional[str] = None, revision: Optional[str] = None, private: Optional[bool] = None,
                    **kwargs):
        """Export the student (config, weights, card, curves) to ``output_dir`` and upload only those files to
        ``args.hub_model_id``: never the teacher, aux modules, checkpoints or TensorBoard runs (stock Trainer uploads
        all of ``output_dir`` but ``checkpoint-*``). Same arguments as ``Trainer.push_to_hub``: the repo is created
        (``private`` / ``args.hub_private_repo``) if needed, ``revision`` (default ``args.hub_revision``) is a branch,
        created from main when missing. A failed upload leaves the export in ``output_dir`` and raises an error that
        says how to retry (``hf_kd.hub.upload_export``). See ``hf_kd.hub.push_to_hub``."""
        from ..hub import push_to_hub

        return push_to_hub(self, commit_message=commit_message, blocking=blocking, token=token, revision=revision,
                           private=private, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Stock Trainer copies the checkpoint's full-state weights into output_dir and pushes them; export the
        student there instead, then upload the export files (and the checkpoint only if hub_strategy asks for it)."""
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if self.push_in_progress is not None and not self.push_in_progress.is_done():
            if not self.args.hub_always_push:
                return
            self._finish_current_push()  # the export below rewrites the files that push is reading
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        self.export_student(self.args.output_dir)
        from ..hub import push_folder

        self.push_in_progress = push_folder(self, checkpoint_folder)

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """``Trainer.train``, refusing up front a training set too small for one optimizer step, a checkpoint cut
        short while being saved, and a checkpoint written by another method or teacher (``check_resume``).

        ``resume_from_checkpoint``: a checkpoint folder, or True (also the string "true", as the recipes' flag
        arrives) for the last complete checkpoint of ``output_dir`` (``resume_checkpoint``)."""
        if self.train_dataset is not None and hasattr(self.train_dataset, "__len__"):
            from ..checks import check_enough_examples

            check_enough_examples(len(self.train_dataset), self.args)
        self._terms.clear()  # an earlier train() (a search trial) that ended between two logs leaves its tail
        if self._fast is not None:
            self._fast.pop_terms()
        checkpoint = resume_checkpoint(self.args.output_dir, resume_from_checkpoint)
        if checkpoint is not None:
            self.check_resume(checkpoint)
        self.reset_loss_check()
        self._loaded_best = None
        result = super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)
        best = self.state.best_model_checkpoint
        # Trainer loads the best checkpoint at the end under load_best_model_at_end when its weights are there
        if self.args.load_best_model_at_end and best and any(
                os.path.isfile(os.path.join(best, n)) for n in ("model.safetensors", "pytorch_model.bin",
                                                                "model.safetensors.index.json")):
            self._loaded_best = best
        return result

    def checkpoint_manifest(self) -> dict:
        """What a checkpoint records about its run: the method and the teacher (name, Hub revision, weights hash;
        ``hf_kd.manifest``). The name is the recipe's ``teacher_name`` when set, else what the teacher knows."""
        teacher = self._teacher_identity
        if teacher is not None and self.teacher_name:
            teacher = {**teacher, "name": self.teacher_name}
        return {"method": self.method_name, "trainer": type(self).__name__, "teacher": teacher}

    def check_resume(self, checkpoint: str) -> None:
        """Refuse a checkpoint written by another method or teacher (its manifest), before any training: its state
        might load (KD and plain cross-entropy keep the same keys) and the run would go on under another objective.
        A checkpoint without a manifest (an older hf_kd) resumes, with a warning that it could not be checked."""
        try:
            saved = read_manifest(checkpoint)
        except (OSError, ValueError) as e:  # ValueError: invalid JSON, e.g. a file cut short
            raise damaged_checkpoint_error(checkpoint, os.path.join(checkpoint, MANIFEST_NAME), e) from None
        if saved is None:
            logger.warning(f"Checkpoint {checkpoint} has no {MANIFEST_NAME} (written by an older hf_kd): the method "
                           "and teacher it was trained with cannot be checked. Resume it with the same ones.")
            return
        error = resume_mismatch(checkpoint, saved, self.checkpoint_manifest())
        if error:
            raise ValueError(error)

    def _load_optimizer_and_scheduler(self, checkpoint):
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)
        except (EOFError, RuntimeError, pickle.UnpicklingError) as e:  # torch.load of a truncated optimizer.pt
            if isinstance(e, RuntimeError) and not any(m in str(e) for m in ("PytorchStreamReader", "zip archive")):
                raise
            raise damaged_checkpoint_error(checkpoint, "its optimizer.pt / scheduler.pt", e) from None

    @property
    def loaded_best_checkpoint(self) -> Optional[str]:
        """The checkpoint whose weights the model holds after ``load_best_model_at_end``; None: the last weights."""
        return getattr(self, "_loaded_best", None)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        self.load_checkpoint_model(resume_from_checkpoint, self.model if model is None else model)

    def load_checkpoint_model(self, resume_from_checkpoint: str, model) -> None:
        """Load what ``save_checkpoint_model`` wrote: a strict load of the full ``DistillationModel`` state, with an
        error that says what does not match."""
        path = os.path.join(resume_from_checkpoint, "model.safetensors")
        if not os.path.isfile(path):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        try:
            state = safetensors.torch.load_file(path, device="cpu")
        except (SafetensorError, OSError) as e:  # "incomplete metadata", a truncated or corrupt file
            raise damaged_checkpoint_error(resume_from_checkpoint, path, e) from None
        hint = "Resume with the same method, backbone and method arguments as the run that wrote it."
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"Checkpoint {resume_from_checkpoint} does not match this {type(self).__name__} run: "
                             f"{str(e)[:1000]}. {hint}") from None
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"Checkpoint {resume_from_checkpoint} does not match this {type(self).__name__} run: missing "
                f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}. {hint}")
