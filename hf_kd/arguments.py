"""``DistillationArguments``: ``TrainingArguments`` plus what every distillation run shares (its own module, so that
the trainers, the cards and the recipes read it without importing each other)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from transformers import TrainingArguments

from .trainers.fast import check_fast_path_args

__all__ = ["DistillationArguments"]

logger = logging.getLogger(__name__)


@dataclass
class DistillationArguments(TrainingArguments):
    """``TrainingArguments`` plus what every distillation run shares. Method trainers subclass it.

    Value ranges are declared per class and checked once, for every method, in ``__post_init__``
    (``check_ranges``): ``temperature_fields`` must be > 0, ``loss_weight_fields`` >= 0 with at least one > 0 unless
    the loss has a term no weight switches off (``unweighted_loss_terms``), ``minimum_values`` are lower bounds, and a
    field's ``metadata["choices"]`` (also read by argparse) lists its allowed values. A subclass's declarations add
    to its parents'. They are class attributes, not field metadata, because ``HfArgumentParser`` hands every
    metadata key to ``argparse.add_argument``.
    """

    temperature_fields: ClassVar[tuple[str, ...]] = ()
    loss_weight_fields: ClassVar[tuple[str, ...]] = ()
    unweighted_loss_terms: ClassVar[tuple[str, ...]] = ()
    minimum_values: ClassVar[dict[str, float]] = {"warmup_epochs": 0, "lr_gamma": 0}

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start a new run in an output_dir that already holds an export or checkpoints "
                                         "of another run: its checkpoint-* folders are deleted and its export is "
                                         "replaced; a recipe's auto-trained teacher (<output_dir>_teacher) trained "
                                         "with other settings is retrained. Without it (and without "
                                         "--resume_from_checkpoint) a recipe refuses such a folder. (transformers 5 "
                                         "dropped this TrainingArguments flag.)"})
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Off in hf_kd, and true is ignored with a warning: a run stops at the first "
                                         "non-finite loss (DistillationTrainer), which this transformers filter "
                                         "would replace in the log by the running mean."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the image column is decoded by the dataset transform."})
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Gradient clipping norm; 0 = off, as in the official code of every method "
                                       "here (transformers' default would clip at 1.0)."})
    lr_milestones: Optional[list[int]] = field(
        default=None, metadata={"help": "Epochs (0-based, as torch MultiStepLR stepped once per epoch) at which the "
                                        "learning rate is multiplied by lr_gamma. Overrides lr_scheduler_type."})
    lr_gamma: float = field(default=0.1, metadata={"help": "Multiplier at each of lr_milestones."})
    warmup_epochs: float = field(
        default=0.0, metadata={"help": "Linear per-step warm-up over this many epochs (with lr_milestones or "
                                       "lr_decay cosine)."})
    lr_decay: str = field(
        default="step", metadata={"choices": ["step", "cosine"],
                                  "help": "step: the lr_milestones schedule. cosine: after warmup_epochs, the lr "
                                          "follows a half cosine to 0 set once per epoch, lr * 0.5 * (1 + cos(pi * "
                                          "(epoch - warmup_epochs) / (num_train_epochs - warmup_epochs))) with the "
                                          "0-based epoch (MixSKD's ImageNet schedule). Overrides lr_scheduler_type."})
    decay_all_parameters: bool = field(
        default=True, metadata={"help": "Apply weight_decay to every parameter, BN and biases included, as the "
                                        "papers' code does (transformers' default exempts biases and norms)."})
    augmentation: Optional[str] = field(
        default=None, metadata={"help": "Override the data's batched augmentation: cifar | imagenet | none."})
    pad_mode: Optional[str] = field(
        default=None, metadata={"help": "Padding of the random crop: constant (zeros) | reflect."})
    norm_mean: Optional[list[float]] = field(
        default=None, metadata={"help": "Normalisation mean overriding the data's, one value per channel (a "
                                        "paper's statistics); written into the exported config."})
    norm_std: Optional[list[float]] = field(
        default=None, metadata={"help": "Normalisation std overriding the data's (give it with norm_mean)."})
    teacher_label_map: Optional[str] = field(
        default=None, metadata={"help": "A JSON object (or the path of a JSON file holding one) mapping each student "
                                        "label name to the teacher's label name or output index. Needed only where "
                                        "names cannot be matched (a side with numbered labels only, or other "
                                        "names); otherwise labels are matched by name (hf_kd.labels)."})
    channels_last: bool = field(
        default=False, metadata={"help": "Run every network (student, aux modules, teacher) and the input batch in "
                                         "channels_last memory format (faster convolutions on recent GPUs)."})
    sync_batchnorm: bool = field(
        default=False, metadata={"help": "Multi-GPU: convert every BatchNorm of the trained modules to "
                                         "SyncBatchNorm (batch statistics over all processes). GPU only."})
    fast_path: bool = field(
        default=False, metadata={"help": "Compile the whole training step (augmentation, forward, every loss term, "
                                         "gradients, optimizer update) into one graph, CUDA graphs on a GPU, with "
                                         "no host sync per step (hf_kd.trainers.fast). Same numerics; one process, "
                                         "no gradient accumulation, no fp16, optimizers SGD/Adam/AdamW. Raises "
                                         "per_device_eval_batch_size from the default 8 to 1024."})


    def __post_init__(self):
        super().__post_init__()
        if self.logging_nan_inf_filter:
            logger.warning("logging_nan_inf_filter is ignored: hf_kd stops the run at the first non-finite loss "
                           "instead of logging the running mean in its place.")
            self.logging_nan_inf_filter = False
        self.check_ranges()
        self.quiet_defaults()
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError("Give both norm_mean and norm_std (or neither).")
        if self.norm_mean is not None and (len(self.norm_mean) != len(self.norm_std) or min(self.norm_std) <= 0):
            raise ValueError(f"norm_mean/norm_std need one value per channel each and std > 0, got "
                             f"{self.norm_mean}, {self.norm_std}")
        self.check_schedule()
        if self.max_steps == 0:
            raise ValueError("--max_steps 0 would train nothing (and transformers would still take a step and "
                             "export); give a number of steps > 0, or -1 (the default) to train num_train_epochs.")
        if self.fast_path:
            check_fast_path_args(self)
            self.logging_nan_inf_filter = False  # torch.isnan(loss) in a Python `or`: a host sync every step
            # batches copied to the device without a sync (with pinned memory: off on the CPU, where there is no
            # copy to overlap and transformers would warn that pinning is off)
            self.accelerator_config.non_blocking = self.dataloader_pin_memory
            if self.per_device_eval_batch_size == 8:  # transformers' default; evaluation is launch-bound too
                self.per_device_eval_batch_size = 1024


    def check_schedule(self):
        """Schedule arguments are applied or refused, never ignored: ``warmup_epochs`` and ``lr_gamma`` belong to the
        ``lr_milestones`` schedule, and that schedule replaces transformers' (whose ``warmup_steps`` it would drop)."""
        if self.lr_decay == "cosine":
            if self.lr_milestones or self.lr_gamma != 0.1:
                raise ValueError("--lr_decay cosine takes no --lr_milestones / --lr_gamma (those are the step "
                                 "schedule's).")
            if self.warmup_epochs >= self.num_train_epochs:
                raise ValueError("--lr_decay cosine needs warmup_epochs < num_train_epochs: its period is "
                                 "num_train_epochs - warmup_epochs (a --max_steps run stops early on that curve).")
        if self.lr_milestones or self.lr_decay == "cosine":
            if self.warmup_steps:
                raise ValueError(f"--warmup_steps {self.warmup_steps} is transformers' warm-up, which the "
                                 "epoch schedule (--lr_milestones / --lr_decay cosine) replaces; give the warm-up as "
                                 "--warmup_epochs instead.")
            return
        unused = [f"--{n} {getattr(self, n)}" for n, default in (("warmup_epochs", 0.0), ("lr_gamma", 0.1))
                  if getattr(self, n) != default]
        if unused:
            raise ValueError(f"{' and '.join(unused)} apply to the --lr_milestones schedule, and none is given (the "
                             f"learning rate follows --lr_scheduler_type {self.lr_scheduler_type}). Give "
                             "--lr_milestones, or drop them (a warm-up for --lr_scheduler_type is --warmup_steps; a "
                             "value below 1 is a fraction of the training steps).")

    def quiet_defaults(self):
        """Defaults that only silence warnings hf_kd itself would cause (values the user set are kept).

        - ``dataloader_pin_memory`` off when training on the CPU: torch warns on every DataLoader that there is no
          accelerator to pin memory for.
        - ``ddp_find_unused_parameters`` False when unset: Trainer sets it True for a model that is not a
          ``PreTrainedModel`` (our ``DistillationModel``), and every DDP rank then warns that no parameter was unused
          (each method's forward uses every trainable module) and pays an extra graph traversal per step. A custom
          model with unused parameters gets DDP's own error, which says to pass --ddp_find_unused_parameters true.
        """
        accel = getattr(torch, "accelerator", None)
        has_accelerator = accel.is_available() if accel is not None else torch.cuda.is_available()
        self._quieted = []  # left out of the card's reproduce YAML: the same run on a GPU machine decides anew
        if self.use_cpu or not has_accelerator:  # (transformers may already have turned it off for use_cpu)
            self.dataloader_pin_memory = False
            self._quieted.append("dataloader_pin_memory")
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = False
            self._quieted.append("ddp_find_unused_parameters")

    def _declared(self, name: str):
        """The union of a range declaration (``temperature_fields``, ...) over this class and its parents."""
        merged = {}
        for cls in reversed(type(self).__mro__):
            value = vars(cls).get(name)
            if isinstance(value, dict):
                merged.update(value)
            elif value:
                merged.update(dict.fromkeys(value))
        return merged

    def check_ranges(self):
        """Check every declared range at once; one ``ValueError`` lists every bad value and how to fix it."""
        problems = []
        for name in self._declared("temperature_fields"):
            v = getattr(self, name)
            if v is None or not v > 0:
                problems.append(f"--{name} is a softmax temperature and must be > 0, got {v}")
        weights = list(self._declared("loss_weight_fields"))
        for name in weights:
            v = getattr(self, name)
            if v is None or not v >= 0:
                problems.append(f"--{name} is a loss weight and must be >= 0 (0 switches its term off), got {v}")
        for name, low in self._declared("minimum_values").items():
            v = getattr(self, name)
            if v is not None and not v >= low:
                problems.append(f"--{name} must be >= {low}, got {v}")
        inherited = {f.name for f in dataclasses.fields(TrainingArguments)}  # TrainingArguments checks its own
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and f.name not in inherited and getattr(self, f.name) not in choices:
                problems.append(f"--{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")
        if weights and not self._declared("unweighted_loss_terms") and not problems and \
                not any(getattr(self, n) > 0 for n in weights):
            problems.append(f"every loss weight is 0 ({', '.join(f'--{n}' for n in weights)}): the loss would be 0 "
                            "and nothing would train; give at least one of them a value > 0")
        if problems:
            raise ValueError(f"Invalid {type(self).__name__}:\n  - " + "\n  - ".join(problems) +
                             "\nSee --help for each argument's meaning and default.")
