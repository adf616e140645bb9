"""``SelfKDTrainer``: LightSKD self-knowledge distillation, DRG + DSR, no teacher network.

"Lightweight Self-Knowledge Distillation with Multi-source Information Fusion" (arXiv 2305.09183, submitted to TNNLS);
implemented after the intended method of the official code xucong-parsifal/LightSKD ``train.py`` (which does not run
as released; the fixes are in docs/methods/self_kd.md, "Decisions"). With z the backbone logits, z_a the
logits of the adapter on the backbone's layer-2 map, T = 4 and s = sort(z) per row:

    loss = CE(z, y) + CE(z_a, y) + alpha * T^2 KL(softmax(z_a/T).detach() || softmax(z/T))        # DRG, alpha 0.2
                                 + beta  * T^2 KL(softmax(s_prev/T)          || softmax(s/T))        # DSR, beta 1.0

- The adapter (``hf_kd.modules.self_kd.LightSKDAdapter``) is built for the channels of stage ``adapter_stage`` (2:
  ``forward_kd(...).stages[2]`` is layer2 for hf_kd's cifar ResNets and for timm ResNets, whose stage lists start with
  the stem); for ResNet-18 it is the BasicBlock variant of the official ``Istr_2``. It lives in the
  ``DistillationModel`` (``aux["adapter"]``: same optimizer, checkpoints) and is never exported.
- s_prev is the sorted, detached logits of the previous training mini-batch on this process. The buffer is updated
  every training step whether or not DRG is on (the official code updates it only inside ``if DRG``, a bug), it is
  empty at the start of every epoch (DSR is skipped on each epoch's first batch, as ``batch_idx != 0`` in the code),
  and it is saved with every checkpoint (one small file per process) so that a mid-epoch resume is exact.
- DSR needs consecutive batches of equal size, so ``dataloader_drop_last`` defaults to True and turning it off with
  ``use_dsr`` raises an error (the official loaders use ``drop_last=True``).

"The previous batch" under DDP and gradient accumulation:
- DDP: each process keeps its own buffer and compares its local batch with *its own* previous local batch (per-device
  batch size B); the DSR gradients are then averaged across processes like every other term. The buffer is a plain
  tensor on the trainer, not a registered module buffer, which DDP would overwrite with rank 0's at every forward
  (``broadcast_buffers``). With one process and batch 128 this is exactly the official setting; N processes of 128/N
  each apply the shape prior at batch size 128/N.
- Gradient accumulation: the buffer holds the previous *micro*-batch (the previous forward pass), so k micro-batches
  of B per optimizer step see the same sequence of DSR pairs as a run with batch B; the first micro-batch of each
  epoch is the one skipped. Each micro-batch loss is divided by k (``DistillationModel.accepts_loss_kwargs = False``),
  so the step's gradient is the mean over micro-batches, as for every other hf_kd term.

Optimisation as the official code: one SGD over backbone and adapter, weight decay on every parameter, no gradient
clipping (``max_grad_norm`` defaults to 0 in hf_kd, not transformers' 1.0).

Augmentation: LightSKD trains CIFAR with ``RandomResizedCrop(32)`` (scale 0.08-1, ratio 3/4-4/3) + horizontal flip and
CIFAR-10 normalisation statistics. ``RandomResizedCropAugment`` does that crop batched on the device with torch ops
(global RNG inside the step, so resume stays exact); it replaces the data layer's batched pad-crop when
``random_resized_crop`` is on (``hf_kd.data.augment``). Left unset (None), it is on for data whose batched
augmentation is the CIFAR pad-crop and no ``--augmentation`` / ``--pad_mode`` override. ``norm_mean``/``norm_std`` override the normalisation (the preset sets
LightSKD's CIFAR-10 values); they are written into the exported config so inference preprocesses the same way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from ..arguments import DistillationArguments
from ..data.augment import BatchAugment, RandomResizedCropAugment
from ..losses.self_kd import drg_loss, dsr_loss, sorted_logits
from ..models import TimmStudent
from ..models.student import MissingStagesError
from ..modules.self_kd import LightSKDAdapter, SelfKDModel, SelfKDOutput
from .base import DistillationTrainer

__all__ = ["SelfKDArguments", "SelfKDModel", "SelfKDTrainer", "LIGHTSKD_CIFAR_MEAN", "LIGHTSKD_CIFAR_STD"]

logger = logging.getLogger(__name__)

# LightSKD datasets.py normalises CIFAR (10 and 100) with these CIFAR-10 statistics
LIGHTSKD_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
LIGHTSKD_CIFAR_STD = (0.247, 0.243, 0.261)
DSR_STATE_FILE = "self_kd_dsr_state_rank{rank}.pt"


@dataclass
class SelfKDArguments(DistillationArguments):
    """Defaults follow xucong-parsifal/LightSKD ``train.py`` and its README (alpha 0.2, beta 1.0, T 4)."""

    temperature_fields: ClassVar[tuple[str, ...]] = ("temperature",)
    loss_weight_fields: ClassVar[tuple[str, ...]] = ("alpha", "beta")
    unweighted_loss_terms: ClassVar[tuple[str, ...]] = ("cross-entropy",)
    minimum_values: ClassVar[dict[str, float]] = {"adapter_stage": 0}

    use_drg: bool = field(default=True, metadata={
        "help": "DRG: distil the layer-2 adapter's detached predictions into the final head (alpha * T^2 KL)."})
    use_dsr: bool = field(default=True, metadata={
        "help": "DSR: match the sorted logits of each batch to those of the previous batch (beta * T^2 KL)."})
    alpha: float = field(default=0.2, metadata={"help": "Weight of the DRG term (official README: 0.2)."})
    beta: float = field(default=1.0, metadata={"help": "Weight of the DSR term (official README: 1.0)."})
    temperature: float = field(default=4.0, metadata={"help": "Softmax temperature T of DRG and DSR (code: 4)."})
    adapter_stage: int = field(default=2, metadata={
        "help": "Index into forward_kd(...).stages of the map the adapter reads; 2 = layer2 of cifar_resnet* and "
                "timm ResNets (their stage lists are [stem, layer1, layer2, ...])."})
    keep_adapter_without_drg: bool = field(default=True, metadata={
        "help": "With use_drg off, still train the adapter with its CE (as the official code does, which then acts "
                "as deep supervision of the first layers). False: no adapter at all without DRG."})
    random_resized_crop: Optional[bool] = field(default=None, metadata={
        "help": "LightSKD's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + flip, batched, instead of the data's "
                "pad-crop. Default (unset): on when the data's batched augmentation is the CIFAR pad-crop and neither "
                "--augmentation nor --pad_mode is given."})
    dataloader_drop_last: bool = field(default=True, metadata={
        "help": "Drop the last incomplete training batch. Required by DSR (consecutive batches of equal size)."})
    def __post_init__(self):
        super().__post_init__()
        if self.use_dsr and not self.dataloader_drop_last:
            raise ValueError(
                "LightSKD's DSR compares each training batch with the previous one and needs batches of equal size: "
                "set dataloader_drop_last=True (--dataloader_drop_last true), as the official loaders do, or turn "
                "DSR off (use_dsr=False).")


class _ResetDSRAtEpochEnd(TrainerCallback):
    """Empties the DSR buffer when an epoch ends, so the next epoch's first batch has no DSR term."""

    def __init__(self, trainer: "SelfKDTrainer"):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.dsr_previous = None


class SelfKDTrainer(DistillationTrainer):
    """LightSKD: CE on the backbone and on a layer-2 adapter, DRG (adapter -> final head) and DSR (sorted logits of
    consecutive batches); see the module docstring. No teacher: passing one is an error."""

    args_class = SelfKDArguments
    method_name = "self_kd"
    short_name = "LightSKD"
    reference_preset = "self_kd_cifar100_resnet18.yaml"
    paper = "https://arxiv.org/abs/2305.09183"
    method_title = ("Lightweight Self-Knowledge Distillation with Multi-source Information Fusion "
                    "(arXiv 2305.09183, submitted to TNNLS)")
    citation = """@article{wang2023lightweight,
  title={Lightweight Self-Knowledge Distillation with Multi-source Information Fusion},
  author={Wang, Xucong and Han, Pengchao and Guo, Lei},
  journal={arXiv preprint arXiv:2305.09183},
  year={2023}
}"""

    uses_teacher = "refused"

    def __init__(self, model=None, args: SelfKDArguments = None, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        self.dsr_previous = None  # sorted, detached logits of the previous training batch
        self.add_callback(_ResetDSRAtEpochEnd(self))

    # --- model and data ---------------------------------------------------------------------------------------------
    def build_model(self, student: TimmStudent, args: SelfKDArguments, teacher=None) -> SelfKDModel:
        if not (args.use_drg or args.keep_adapter_without_drg):
            return SelfKDModel(student, None, args.adapter_stage)
        what = f"LightSKD's DRG adapter (SelfKDTrainer, adapter_stage={args.adapter_stage})"
        student.require_stages(args.adapter_stage + 1, what)
        shapes = student.stage_shapes()
        if args.adapter_stage >= len(shapes) or len(shapes[args.adapter_stage]) != 3:
            raise MissingStagesError(
                f"{what} reads stage {args.adapter_stage} of '{student.architecture}', whose stages are {shapes}; "
                "pick an adapter_stage that indexes a (C, H, W) map.")
        channels = shapes[args.adapter_stage][0]
        return SelfKDModel(student, LightSKDAdapter(channels, student.config.num_labels), args.adapter_stage)

    def method_augmentation(self, augmentation: BatchAugment, args: SelfKDArguments) -> BatchAugment:
        """LightSKD's random-resized crop (see ``SelfKDArguments``) with the normalisation the base chose (the
        data's, or ``norm_mean``/``norm_std``, already written into the exported config)."""
        rrc = args.random_resized_crop
        if rrc is None:  # an explicit --augmentation or --pad_mode asks for the data layer's pad-crop
            rrc = augmentation.kind == "cifar" and not args.augmentation and not args.pad_mode
        if rrc:
            return RandomResizedCropAugment(augmentation.mean.flatten().tolist(), augmentation.std.flatten().tolist())
        return augmentation

    def used_hyperparameters(self) -> dict:
        return {**super().used_hyperparameters(),
                "random_resized_crop": isinstance(self.augmentation, RandomResizedCropAugment)}

    @property
    def adapter(self) -> Optional[LightSKDAdapter]:
        aux = self.accelerator.unwrap_model(self.model).aux
        return aux["adapter"] if "adapter" in aux else None

    # --- loss: DSR compares this batch with the previous one (``next_step_inputs`` carries its sorted logits) ------
    @property
    def dsr_previous(self) -> Optional[torch.Tensor]:
        """The previous training batch's sorted, detached logits (None: no DSR term on the next batch)."""
        return self.carried_inputs.get("previous")

    @dsr_previous.setter
    def dsr_previous(self, value: Optional[torch.Tensor]) -> None:
        self.carried_inputs["previous"] = value

    def next_step_inputs(self, outputs: SelfKDOutput, pixel_values, labels, **step) -> dict:
        """``previous`` for the next batch: this batch's sorted, detached logits. Updated whether or not DRG is on
        (the official code updates it inside ``if DRG``, a bug)."""
        return {"previous": sorted_logits(outputs.student_logits.detach())} if self.args.use_dsr else {}

    def method_loss(self, outputs: SelfKDOutput, pixel_values, labels, previous=None, **step):
        """CE + CE of the adapter + alpha DRG + beta DSR against ``previous`` (when given)."""
        logits, adapter_logits = outputs.student_logits, outputs.adapter_logits
        a = self.args
        terms = {"ce": F.cross_entropy(logits, labels)}
        loss = terms["ce"]
        if adapter_logits is not None:
            terms["ce_adapter"] = F.cross_entropy(adapter_logits, labels)
            loss = loss + terms["ce_adapter"]
        if a.use_drg:
            terms["drg"] = drg_loss(logits, adapter_logits, a.temperature)
            loss = loss + a.alpha * terms["drg"]
        if previous is not None:
            terms["dsr"] = dsr_loss(logits, previous.to(logits.device), a.temperature)
            loss = loss + a.beta * terms["dsr"]
        return loss, terms

    # --- DSR buffer: reset per train() call and epoch, saved with checkpoints ----------------------------------------
    def train(self, *args, **kwargs):
        self.dsr_previous = None  # a resumed run restores it from the checkpoint inside train()
        return super().train(*args, **kwargs)

    def _dsr_state_path(self, folder: str) -> str:
        return os.path.join(folder, DSR_STATE_FILE.format(rank=self.args.process_index))

    def save_checkpoint_model(self, output_dir: str) -> None:
        """The checkpoint's model files, plus this process's DSR buffer (every process writes its own)."""
        super().save_checkpoint_model(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        # a checkpoint written on an epoch's last step resumes at the next epoch's start, where the buffer is empty
        mid_epoch = self.state.epoch is not None and not float(self.state.epoch).is_integer()
        buf = self.dsr_previous if mid_epoch and self.dsr_previous is not None else None
        torch.save({"sorted_logits": None if buf is None else buf.detach().cpu(), "world_size": self.args.world_size,
                    "global_step": self.state.global_step}, self._dsr_state_path(output_dir))

    def load_checkpoint_model(self, resume_from_checkpoint: str, model) -> None:
        super().load_checkpoint_model(resume_from_checkpoint, model)
        path = self._dsr_state_path(resume_from_checkpoint)
        self.dsr_previous = None
        if not self.args.use_dsr:
            return
        if not os.path.isfile(path):
            logger.warning(f"{resume_from_checkpoint} has no {os.path.basename(path)} (LightSKD's DSR buffer for "
                           "this process): DSR restarts from an empty buffer, so the first resumed batch has no DSR "
                           "term and the resume is not exact.")
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        buf = state.get("sorted_logits")
        if buf is not None and (state.get("world_size") != self.args.world_size
                                or buf.shape[0] != self.args.per_device_train_batch_size):
            logger.warning(f"The DSR buffer in {resume_from_checkpoint} was written by {state.get('world_size')} "
                           f"process(es) with per-device batch {buf.shape[0]}; this run differs, so DSR restarts "
                           "from an empty buffer.")
            buf = None
        self.dsr_previous = buf
