"""``SelfKDTrainer``: LightSKD self-knowledge distillation, DRG + DSR, no teacher network.

"Lightweight Self-Knowledge Distillation with Multi-source Information Fusion" (arXiv 2305.09183, submitted to TNNLS);
implemented after the intended method of the official code xucong-parsifal/LightSKD ``train.py`` (which does not run
as released; the fixes are the "Decisions for hf_kd" of METHODS.md, section 3). With z the backbone logits, z_a the
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
``random_resized_crop`` is on (the default "auto": on for data whose batched augmentation is the CIFAR pad-crop and no
``--augmentation`` / ``--pad_mode`` override). ``norm_mean``/``norm_std`` override the normalisation (the preset sets
LightSKD's CIFAR-10 values); they are written into the exported config so inference preprocesses the same way.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data import BatchAugment
from ..losses.self_kd import drg_loss, dsr_loss, sorted_logits
from ..models import TimmStudent
from ..models.student import MissingStagesError
from ..modules.self_kd import LightSKDAdapter
from .base import DistillationArguments, DistillationModel, DistillationTrainer
from .fast import mark_persistent

__all__ = ["SelfKDArguments", "SelfKDModel", "SelfKDTrainer", "RandomResizedCropAugment", "LIGHTSKD_CIFAR_MEAN",
           "LIGHTSKD_CIFAR_STD"]

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
    alpha: float = field(default=0.2, metadata={"help": "Weight of the DRG term (README: 0.2)."})
    beta: float = field(default=1.0, metadata={"help": "Weight of the DSR term (README: 1.0)."})
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


class RandomResizedCropAugment(BatchAugment):
    """Batched ``RandomResizedCrop(H x W)`` + horizontal flip (p 0.5) + normalisation, with torch ops on the device.

    Crop boxes are drawn per sample as torchvision's ``RandomResizedCrop.get_params`` does: up to 10 tries of an area
    fraction ~ U(scale) and a log-uniform aspect ratio in ``ratio``, the first box that fits wins, else a centre crop
    clamped to ``ratio``. Each box is resized back to the input's H x W with bilinear interpolation (half-pixel
    centres, samples clamped to the box: what ``F.interpolate(..., align_corners=False)`` of the cropped image gives).
    Differences from the official per-image PIL pipeline: the result is not rounded to uint8 before normalising, and
    the random draws come from torch's RNG in the training step (so a mid-epoch resume is exact).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 attempts: int = 10):
        super().__init__(mean, std, "none")
        self.kind = "random_resized_crop"
        self.scale, self.ratio, self.attempts = tuple(scale), tuple(ratio), attempts

    def __repr__(self):
        return (f"RandomResizedCropAugment(scale={self.scale}, ratio={self.ratio}, "
                f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})")

    def crop_boxes(self, b: int, h: int, w: int, device) -> torch.Tensor:
        """(B, 4) integer boxes (top, left, height, width), torchvision's sampling rule batched."""
        area = h * w
        target = area * torch.empty(b, self.attempts, device=device).uniform_(*self.scale)
        log_r = torch.empty(b, self.attempts, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(log_r)
        cw = torch.round(torch.sqrt(target * aspect))
        ch = torch.round(torch.sqrt(target / aspect))
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # first attempt that fits
        cw, ch, found = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0], ok.any(dim=1)
        # fallback: centre crop of the whole image, aspect clamped to `ratio`
        in_ratio = w / h
        if in_ratio < min(self.ratio):
            fw, fh = w, int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            fw, fh = int(round(h * max(self.ratio))), h
        else:
            fw, fh = w, h
        cw = torch.where(found, cw, torch.full_like(cw, fw))
        ch = torch.where(found, ch, torch.full_like(ch, fh))
        u = torch.rand(b, 2, device=device)
        top = torch.where(found, torch.floor(u[:, 0] * (h - ch + 1)), torch.full_like(ch, (h - fh) // 2))
        left = torch.where(found, torch.floor(u[:, 1] * (w - cw + 1)), torch.full_like(cw, (w - fw) // 2))
        return torch.stack([top, left, ch, cw], dim=1)

    def draw(self, shape: Sequence[int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The random parameters of a (B, C, H, W) training batch: ``crop_boxes`` and the flip flags (B, 1)."""
        b, _, h, w = shape
        return self.crop_boxes(b, h, w, device), torch.rand(b, 1, device=device) < 0.5

    def resized_crop_flip(self, x: torch.Tensor, params: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """uint8/float (B, C, H, W) pixels -> float (B, C, H, W) pixels (0-255 range), cropped, resized, flipped;
        ``params`` = ``draw(x.shape)`` (drawn here on the batch's device when not given)."""
        b, _, h, w = x.shape
        dev = x.device
        box, flip = self.draw(x.shape, dev) if params is None else params
        top, left, ch, cw = (box[:, k:k + 1] for k in range(4))
        r = torch.arange(h, device=dev, dtype=torch.float32)
        c = torch.arange(w, device=dev, dtype=torch.float32)
        c = torch.where(flip, (w - 1) - c, c)  # flip = read the columns of the resized crop in reverse
        ys = (top + (r + 0.5) * ch / h - 0.5).clamp(min=top, max=top + ch - 1)  # (B, H) source rows
        xs = (left + (c + 0.5) * cw / w - 0.5).clamp(min=left, max=left + cw - 1)  # (B, W) source cols
        gy = (2 * ys + 1) / h - 1  # pixel -> [-1, 1] coordinates of grid_sample(align_corners=False)
        gx = (2 * xs + 1) / w - 1
        grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], dim=-1)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)

    def augment(self, x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.normalize(self.resized_crop_flip(x, params)).contiguous()

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        if train:
            x = self.resized_crop_flip(x)
        return self.normalize(x).contiguous()


class SelfKDModel(DistillationModel):
    """The backbone plus ``aux["adapter"]`` on stage ``stage_index``; forward -> (logits, adapter logits or None)."""

    def __init__(self, student: TimmStudent, adapter: Optional[LightSKDAdapter], stage_index: int):
        super().__init__(student, **({"adapter": adapter} if adapter is not None else {}))
        self.stage_index = stage_index

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **kwargs):
        if "adapter" not in self.aux:
            return self.student.forward_kd(pixel_values, stages=False).logits, None
        out = self.student.forward_kd(pixel_values, stages=True)
        return out.logits, self.aux["adapter"](out.stages[self.stage_index])


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
    method_title = ("Lightweight Self-Knowledge Distillation with Multi-source Information Fusion "
                    "(arXiv 2305.09183, submitted to TNNLS)")
    citation = """@article{wang2023lightweight,
  title={Lightweight Self-Knowledge Distillation with Multi-source Information Fusion},
  author={Wang, Xucong and Han, Pengchao and Guo, Lei},
  journal={arXiv preprint arXiv:2305.09183},
  year={2023}
}"""

    def __init__(self, model=None, args: SelfKDArguments = None, teacher: Optional[TimmStudent] = None, **kwargs):
        if teacher is not None:
            raise ValueError(f"{type(self).__name__} (LightSKD) is self-distillation and uses no teacher network; "
                             "leave teacher unset.")
        super().__init__(model=model, args=args, **kwargs)
        self.dsr_previous: Optional[torch.Tensor] = None  # sorted, detached logits of the previous training batch
        self._set_lightskd_augmentation()
        self.add_callback(_ResetDSRAtEpochEnd(self))

    # --- model and data ---------------------------------------------------------------------------------------------
    def build_model(self, student: TimmStudent, args: SelfKDArguments) -> SelfKDModel:
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

    def _set_lightskd_augmentation(self):
        """Swap in LightSKD's random-resized crop (see ``SelfKDArguments``), with the normalisation the base chose
        (the data's, or ``norm_mean``/``norm_std``), which it has already written into the exported config."""
        a, aug = self.args, self.augmentation
        rrc = a.random_resized_crop
        if rrc is None:  # an explicit --augmentation or --pad_mode asks for the data layer's pad-crop
            rrc = aug.kind == "cifar" and not a.augmentation and not a.pad_mode
        if rrc:
            self.augmentation = RandomResizedCropAugment(aug.mean.flatten().tolist(), aug.std.flatten().tolist())

    def used_hyperparameters(self) -> dict:
        return {**super().used_hyperparameters(),
                "random_resized_crop": isinstance(self.augmentation, RandomResizedCropAugment)}

    @property
    def adapter(self) -> Optional[LightSKDAdapter]:
        aux = self.accelerator.unwrap_model(self.model).aux
        return aux["adapter"] if "adapter" in aux else None

    @property
    def eval_head_names(self) -> list[str]:
        return ["student", "adapter"]  # the adapter's accuracy is reported when it exists (eval_adapter_top1)

    # --- loss -------------------------------------------------------------------------------------------------------
    def _objective(self, model, x, y, previous: Optional[torch.Tensor]):
        """(loss, terms, logits, adapter logits) of a batch; the DSR term against ``previous`` when given."""
        logits, adapter_logits = model(pixel_values=x)
        a = self.args
        terms = {"ce": F.cross_entropy(logits, y)}
        loss = terms["ce"]
        if adapter_logits is not None:
            terms["ce_adapter"] = F.cross_entropy(adapter_logits, y)
            loss = loss + terms["ce_adapter"]
        if a.use_drg:
            terms["drg"] = drg_loss(logits, adapter_logits, a.temperature)
            loss = loss + a.alpha * terms["drg"]
        if previous is not None:
            terms["dsr"] = dsr_loss(logits, previous.to(logits.device), a.temperature)
            loss = loss + a.beta * terms["dsr"]
        return loss, terms, logits, adapter_logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        # the buffer is training state: evaluation neither reads nor moves it; empty on each epoch's first batch
        dsr = self.args.use_dsr and model.training
        loss, terms, logits, adapter_logits = self._objective(model, x, y, self.dsr_previous if dsr else None)
        if dsr:  # updated whether or not DRG is on (the official code updates it inside `if DRG`, a bug)
            self.dsr_previous = sorted_logits(logits.detach())
        self.log_terms(terms)
        if not return_outputs:
            return loss
        heads = logits if adapter_logits is None else torch.stack([logits, adapter_logits], dim=1)
        return loss, {"logits": heads}

    # --- fast path: the DSR buffer as a fixed device tensor, written inside the compiled step -------------------------
    def fast_step_inputs(self, batch_size: int) -> dict:
        if not self.args.use_dsr:
            return {}
        buf = getattr(self, "_dsr_buffer", None)
        if buf is None or buf.shape[0] != batch_size:
            buf = mark_persistent(torch.zeros(batch_size, self.student.config.num_labels, device=self.args.device))
            self._dsr_buffer = buf
        previous = self.dsr_previous
        if previous is not None and previous is not buf:  # restored from a checkpoint
            buf.copy_(previous, non_blocking=True)
        return {"previous": buf if previous is not None else None, "buffer": buf}

    def fast_objective(self, model, pixel_values, labels, previous=None, buffer=None):
        loss, terms, logits, _ = self._objective(model, pixel_values, labels, previous)
        if buffer is not None:  # written after the update: `previous` is the same tensor, read by the backward
            self.fast_copy_after_step(buffer, sorted_logits(logits.detach()))
        self.log_terms(terms)
        return loss

    def fast_step_done(self) -> None:
        if self.args.use_dsr:
            self.dsr_previous = self._dsr_buffer

    # --- DSR buffer: reset per train() call and epoch, saved with checkpoints ----------------------------------------
    def train(self, *args, **kwargs):
        self.dsr_previous = None  # a resumed run restores it from the checkpoint inside train()
        return super().train(*args, **kwargs)

    def _dsr_state_path(self, folder: str) -> str:
        return os.path.join(folder, DSR_STATE_FILE.format(rank=self.args.process_index))

    def _save_checkpoint(self, model, trial):
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        # a checkpoint written on an epoch's last step resumes at the next epoch's start, where the buffer is empty
        mid_epoch = self.state.epoch is not None and not float(self.state.epoch).is_integer()
        buf = self.dsr_previous if mid_epoch and self.dsr_previous is not None else None
        torch.save({"sorted_logits": None if buf is None else buf.detach().cpu(), "world_size": self.args.world_size,
                    "global_step": self.state.global_step}, self._dsr_state_path(folder))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
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
