"""``DistillationModel`` (every trainable module of a run) and ``DistillationOutput`` (what its ``forward`` returns).

One output contract for every method: ``logits`` holds the evaluation heads, stacked (B, H, K) with the exported
student's head first when the model has H > 1 heads, (B, K) when it has one (so ``Trainer.predict`` gives a
single-head model's plain logits); ``heads`` is always (B, H, K). A method's subclass of ``DistillationOutput`` adds
the named tensors its loss reads. The trainer's base ``compute_loss`` scores the exported head at evaluation and
hands the whole output to the method's ``method_loss`` in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from transformers.utils import ModelOutput

from ..models import TimmStudent

__all__ = ["DistillationModel", "DistillationOutput"]


@dataclass
class DistillationOutput(ModelOutput):
    """``logits``: the evaluation heads of the batch (``DistillationModel.head_names``): (B, H, K) stacked, the
    exported student first, or (B, K) for one head. ``pre_logits``: the exported student's pooled feature (B, D)
    when the method reads it."""

    logits: Optional[torch.Tensor] = None
    pre_logits: Optional[torch.Tensor] = None

    @property
    def heads(self) -> torch.Tensor:
        """``logits`` as (B, H, K) whatever the number of heads; ``heads[:, 0]`` is the exported student's."""
        return self.logits if self.logits.dim() == 3 else self.logits[:, None]


class DistillationModel(nn.Module):
    """All trainable modules of a distillation run: ``student`` (exported) and ``aux`` (checkpoints only).

    Methods subclass it, override ``forward`` (returning a ``DistillationOutput``) and, with more than one head,
    ``head_names``. Everything trainable must run through ``forward`` so that DDP syncs its gradients.
    """

    _keys_to_ignore_on_save = None  # read by Trainer on a non-strict load
    # compute_loss returns a per-batch mean and ignores num_items_in_batch. Without this, transformers sees **kwargs
    # in forward, skips dividing the loss by gradient_accumulation_steps and multiplies it by the world size under
    # DDP: gradients k times too large with k micro-batches or k processes.
    accepts_loss_kwargs = False

    def __init__(self, student: TimmStudent, **aux: nn.Module):
        super().__init__()
        self.student = student
        self.aux = nn.ModuleDict(aux)

    @property
    def head_names(self) -> list[str]:
        """Names of the evaluation heads, in the order of ``logits``' second axis (the exported student first)."""
        return ["student"]

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                **step) -> DistillationOutput:
        """``step``: the trainer's per-step inputs (``DistillationTrainer.step_inputs``); unused here."""
        out = self.student.forward_kd(pixel_values, stages=False)
        return DistillationOutput(logits=out.logits, pre_logits=out.pre_logits)
