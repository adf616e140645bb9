"""PEFD feature loss (Chen et al., "Improved Feature Distillation via Projector Ensemble", NeurIPS 2022): the
cosine feature-distillation loss on the projector-ensemble output.

With g_b the projector-ensemble output of sample b (see ``hf_kd.modules.projector_kd``) and f_t,b the frozen
teacher's pooled penultimate feature:

    L_PE = (1/B) * sum_b [ 1 - <g_b, f_t,b> / (||g_b|| * ||f_t,b||) ]

as ``helper/loops.py::train_distill`` (``--distill ours``) of chenyd7/PEFD computes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import upcast_half

__all__ = ["projector_cosine_loss", "DEFAULT_NORM_EPS"]

# Deviation from the official code (docs/methods/projector_kd.md, "Decisions"): the official loss divides by the
# plain L2 norms, so an all-zero ReLU output gives 0/0 = NaN. We divide by max(||v||, eps) instead (F.normalize). For any
# vector with norm >= eps the value and gradient are identical to the official ones; an all-zero projection gives
# cos = 0, i.e. a loss of exactly 1 for that sample and a finite gradient.
DEFAULT_NORM_EPS = 1e-12


def projector_cosine_loss(projected: torch.Tensor, teacher_features: torch.Tensor,
                          eps: float = DEFAULT_NORM_EPS) -> torch.Tensor:
    """1 - cos(g_b, f_t,b), averaged over the batch. Shapes: projected, teacher_features (B, D) -> scalar.

    The teacher side is detached (the official code computes it under ``torch.no_grad()``), so it never receives a
    gradient whatever the caller passes. Half-precision inputs are upcast to float32 (``upcast_half``) so that
    bf16/fp16 autocast does not degrade the norms; float32 and float64 are kept.
    """
    if projected.shape != teacher_features.shape or projected.dim() != 2:
        raise ValueError(f"PEFD loss needs projected student and teacher features of the same shape (B, D), got "
                         f"{tuple(projected.shape)} and {tuple(teacher_features.shape)}")
    g = F.normalize(upcast_half(projected), dim=1, eps=eps)
    t = F.normalize(upcast_half(teacher_features.detach()), dim=1, eps=eps)
    return (1.0 - (g * t).sum(dim=1)).mean()
