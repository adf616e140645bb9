"""The projector ensemble of PEFD (Chen et al., "Improved Feature Distillation via Projector Ensemble", NeurIPS 2022).

The student's pooled penultimate feature f_s (B, d_s) is mapped into the teacher's feature space by q independent
projectors P_i(f) = ReLU(W_i f + b_i), W_i in R^{d_t x d_s}, and their outputs are averaged *after* the ReLU
(chenyd7/PEFD ``helper/loops.py::train_distill``):

    g(f_s) = (1/q) * sum_{i=1..q} ReLU(W_i f_s + b_i)

Each projector is a single ``nn.Linear`` with bias and PyTorch's default initialisation, as ``models/util.py::Reg`` in
the official code; the ReLU matches the non-negative (post-ReLU, average-pooled) teacher features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillationModel, DistillationOutput

__all__ = ["ProjectorEnsemble", "ProjectorKDModel", "ProjectorKDOutput", "pre_logits_dim"]


class ProjectorEnsemble(nn.Module):
    """q projectors Linear(d_s, d_t) + ReLU whose outputs are averaged after the ReLU: (B, d_s) -> (B, d_t).

    q = 3 by default: the official ``train_student.py`` builds a fourth projector but never trains or uses it, so q=3
    is the method as run (docs/methods/projector_kd.md, "Decisions").
    """

    def __init__(self, in_features: int, out_features: int, num_projectors: int = 3):
        super().__init__()
        if num_projectors < 1:
            raise ValueError(f"num_projectors must be >= 1, got {num_projectors}")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"feature dimensions must be positive, got d_s={in_features}, d_t={out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.linears = nn.ModuleList(nn.Linear(in_features, out_features) for _ in range(num_projectors))

    @property
    def num_projectors(self) -> int:
        return len(self.linears)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"ProjectorEnsemble expects pooled features of shape (B, {self.in_features}), got "
                             f"{tuple(features.shape)}")
        # ReLU on each projector's output first, then the mean over projectors (not ReLU of the mean).
        total = F.relu(self.linears[0](features))
        for linear in self.linears[1:]:
            total = total + F.relu(linear(features))
        return total / len(self.linears)

    def extra_repr(self) -> str:
        return f"num_projectors={self.num_projectors}, d_s={self.in_features}, d_t={self.out_features}"


@torch.no_grad()
def pre_logits_dim(model, input_size: Sequence[int]) -> int:
    """Width D of a model's pooled pre-logits feature (B, D) (a ``TimmStudent`` or a ``TransformersTeacher``), from
    a one-image dry run of ``input_size`` (C, H, W) in eval mode.

    Eval mode and no_grad, so BN running statistics and the RNG are left untouched; the training flag is restored.
    """
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        out = model.forward_kd(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype), stages=False)
    finally:
        model.train(was_training)
    pre = out.pre_logits
    if pre is None or pre.dim() != 2:
        shape = None if pre is None else tuple(pre.shape)
        raise ValueError(f"'{getattr(model, 'architecture', type(model).__name__)}' gives pre-logits of shape {shape}; PEFD needs a pooled "
                         "(B, D) penultimate feature. Use a backbone with global pooling before its classifier.")
    return int(pre.shape[1])


@dataclass
class ProjectorKDOutput(DistillationOutput):
    """``projected``: g(f_s), the student's pooled feature through the projector ensemble (B, d_t)."""

    projected: Optional[torch.Tensor] = None


class ProjectorKDModel(DistillationModel):
    """The student plus ``aux["projectors"]`` (a ``ProjectorEnsemble``)."""

    def __init__(self, student, projectors: ProjectorEnsemble):
        super().__init__(student, projectors=projectors)

    @classmethod
    def build(cls, student, teacher, num_projectors: int = 3) -> "ProjectorKDModel":
        """Projectors from the student's to the teacher's pooled-feature width, both measured by a dry run."""
        from ..models.teacher import input_spec

        d_s = pre_logits_dim(student, student.config.pretrained_cfg["input_size"])
        d_t = pre_logits_dim(teacher, input_spec(teacher).example_size())  # on the teacher's own input
        return cls(student, ProjectorEnsemble(d_s, d_t, num_projectors))

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None,
                **step) -> ProjectorKDOutput:
        out = self.student.forward_kd(pixel_values, stages=False)
        return ProjectorKDOutput(logits=out.logits, pre_logits=out.pre_logits,
                                 projected=self.aux["projectors"](out.pre_logits))
