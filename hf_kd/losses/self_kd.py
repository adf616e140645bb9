"""LightSKD losses (arXiv 2305.09183, "Lightweight Self-Knowledge Distillation with Multi-source Information Fusion";
official code xucong-parsifal/LightSKD ``train.py``). Pure functions of tensors.

With T the temperature (4 in the official code), z the backbone logits and z_a the adapter logits:

- DRG, distillation with reverse guidance: the shallow adapter head is the teacher of the final head,
  ``T^2 * KL(softmax(z_a / T) || softmax(z / T))`` (batchmean), the adapter side detached.
- DSR, distillation with shape-wise regularisation: the *sorted* logits of the current batch are pulled towards the
  sorted logits of the previous mini-batch (a buffer, detached), ``T^2 * KL(softmax(s_prev / T) || softmax(s / T))``
  with ``s = sort(z)`` ascending per row (batchmean). It compares different images: a prior on the shape of the
  ranked output distribution, not a per-sample consistency.
"""

from __future__ import annotations

import torch

from .kd import kd_kl_div

__all__ = ["sorted_logits", "drg_loss", "dsr_loss"]


def sorted_logits(logits: torch.Tensor) -> torch.Tensor:
    """Each row of ``logits`` (B, K) sorted in ascending order (the official ``utils.output_process``).

    Differentiable: the gradient of each sorted entry goes back to the logit it came from.
    """
    if logits.dim() != 2:
        raise ValueError(f"sorted_logits expects (B, K) logits, got shape {tuple(logits.shape)}")
    return torch.sort(logits, dim=1).values


def drg_loss(logits: torch.Tensor, adapter_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """DRG term ``T^2 * KL(softmax(z_a/T) || softmax(z/T))``, batchmean, z_a detached.

    Only the final head (and the backbone under it) receives this gradient; the adapter learns from its own
    cross-entropy only (official ``train.py``: ``outputs_d.detach()``).
    Shapes: logits, adapter_logits (B, K) -> scalar.
    """
    if logits.shape != adapter_logits.shape:
        raise ValueError(f"drg_loss: backbone logits {tuple(logits.shape)} and adapter logits "
                         f"{tuple(adapter_logits.shape)} must have the same shape")
    return kd_kl_div(logits, adapter_logits, temperature)  # detaches the teacher side (the adapter)


def dsr_loss(logits: torch.Tensor, previous_sorted: torch.Tensor, temperature: float) -> torch.Tensor:
    """DSR term ``T^2 * KL(softmax(s_prev/T) || softmax(sort(z)/T))``, batchmean, ``s_prev`` detached.

    ``logits`` (B, K): the current batch's backbone logits (sorted here); ``previous_sorted`` (B, K): the sorted
    logits of the previous mini-batch (already sorted, e.g. the ``sorted_logits`` of the previous step). Both batches
    must have the same size B, which ``dataloader_drop_last=True`` guarantees for training batches.
    """
    if previous_sorted.shape != logits.shape:
        raise ValueError(
            f"dsr_loss: the previous batch's sorted logits have shape {tuple(previous_sorted.shape)} but the current "
            f"logits {tuple(logits.shape)}. DSR compares consecutive batches of the same size: train with "
            "dataloader_drop_last=True (and the same per-device batch size throughout).")
    return kd_kl_div(sorted_logits(logits), previous_sorted, temperature)
