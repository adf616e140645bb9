"""Classic knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network")."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch (``reduction='batchmean'``).

    The T^2 factor keeps the gradient magnitude independent of T (Hinton et al. 2015, Sec. 2). The teacher side is
    detached here, so the teacher never receives a gradient whatever the caller passes.
    Shapes: student_logits, teacher_logits (B, K) -> scalar.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2
