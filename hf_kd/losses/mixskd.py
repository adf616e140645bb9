"""MixSKD losses (Yang et al., "MixSKD: Self-Knowledge Distillation from Mixup for Image Recognition", ECCV 2022).

Pure functions of tensors, written after the training loop of winycg/Self-KD-Lib (``main_mixskd_imagenet.py`` /
``main_mixskd_cifar.py``; docs/methods/mixskd.md, "The loss terms"). Notation: a batch of B originals x with labels y, a
scalar lambda ~ Beta(alpha, alpha) and a permutation pi of the B rows give the mixup images

    x_mix = lambda * x + (1 - lambda) * x[pi]          labels (y, y[pi])

and one forward of cat([x, x_mix]) gives, for every head k = 1..H (the auxiliary heads first, the backbone head
LAST, as in the official code), logits z_k and final-resolution features A_k for both halves. The "interpolated"
quantities mix the originals' outputs the same way as the images: z_bar_k = lambda z_k(x) + (1-lambda) z_k(x)[pi].

Lists of per-head tensors are always ordered k = 1..H with the backbone head last.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .kd import kd_kl_div
from .precision import upcast_half

__all__ = ["draw_mixup", "mix_images", "mixup_images", "interpolate", "mixup_cross_entropy", "mixskd_classification", "mixskd_kl",
           "mixskd_feature_mse", "discriminator_targets", "discriminator_bce"]


def draw_mixup(seed: int, step: int, k: int, batch_size: int, alpha: float) -> tuple[float, torch.Tensor]:
    """One batch's mixup draw ``(lam, perm)``, a pure function of ``(seed, step, k)``.

    lam ~ Beta(alpha, alpha) (one scalar for the whole batch; alpha <= 0 gives 0.5, as Self-KD-Lib's CIFAR script)
    and perm is a uniform random permutation of ``range(batch_size)`` (a CPU ``int64`` tensor), both from
    ``numpy.random.default_rng([seed, step, k])`` (``seed`` taken modulo 2**64 so that a negative seed works).

    The official code draws the same two quantities from the *global* RNGs (``np.random.beta`` and
    ``torch.randperm``). Drawing them from a generator keyed by the run's seed, the optimizer step and the index
    ``k`` of the micro-batch within that step keeps their distribution and makes the draw independent of everything
    else that consumes the global RNGs: two layouts that see the same micro-batch (1 process with gradient
    accumulation vs several DDP processes) draw the same mixup, a resumed run draws exactly the mixups of an
    uninterrupted one, and every process and micro-batch draws its own.
    """
    rng = np.random.default_rng([int(seed) % 2**64, int(step), int(k)])
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 0.5
    return lam, torch.from_numpy(rng.permutation(batch_size))


def mixup_images(x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor):
    """Mixup of a batch with a permutation of itself (Zhang et al. 2018; Self-KD-Lib ``mixup_data``).

    Returns ``(x_mix, y_a, y_b)`` with x_mix = lam * x + (1 - lam) * x[perm], y_a = y and y_b = y[perm].
    """
    return mix_images(x, lam, perm), y, y[perm]


def mix_images(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """x_mix = lam * x + (1 - lam) * x[perm], the images of ``mixup_images``."""
    return lam * x + (1.0 - lam) * x[perm]


def interpolate(originals: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """The originals' outputs mixed like the images: lam * t + (1 - lam) * t[perm] (logits z_bar_k, features A_bar_k).

    ``originals`` holds the B rows of the original images only (the first half of the concatenated forward).
    """
    return lam * originals + (1.0 - lam) * originals[perm]


def mixup_cross_entropy(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
    """MCE(p) = lam * CE(p, y_a) + (1 - lam) * CE(p, y_b) (Self-KD-Lib ``mixup_criterion``; CE is a batch mean)."""
    return lam * F.cross_entropy(logits, y_a) + (1.0 - lam) * F.cross_entropy(logits, y_b)


def mixskd_classification(orig_logits: Sequence[torch.Tensor], mixup_logits: Sequence[torch.Tensor],
                          ens_logits: torch.Tensor, ens_mix_logits: torch.Tensor, y: torch.Tensor,
                          y_b: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The label terms ``(L_cls, L_mixcls)`` (docs/methods/mixskd.md, "The loss terms").

    L_cls    = sum_k CE(z_k(x), y)
    L_mixcls = sum_k MCE(z_k(x_mix)) + MCE(Psi(A_bar)) + MCE(Psi(A(x_mix)))

    ``orig_logits``/``mixup_logits``: per head (B, K) for the originals / the mixup images; ``ens_logits`` is the
    self-teacher Psi on the interpolated features, ``ens_mix_logits`` Psi on the mixup images' features. y_a = y.
    L_mixcls is the only term through which the self-teacher learns.
    """
    l_cls = sum(F.cross_entropy(z, y) for z in orig_logits)
    l_mix = sum(mixup_cross_entropy(z, y, y_b, lam) for z in mixup_logits)
    l_mix = l_mix + mixup_cross_entropy(ens_logits, y, y_b, lam) + mixup_cross_entropy(ens_mix_logits, y, y_b, lam)
    return l_cls, l_mix


def mixskd_kl(interp_logits: Sequence[torch.Tensor], mixup_logits: Sequence[torch.Tensor],
              ens_logits: torch.Tensor, ens_mix_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_kl (docs/methods/mixskd.md, "The loss terms"), every term KL_T(s <- t) = T^2 KL(softmax(t/T) ||
    softmax(s/T)) (batchmean), t detached.

    - backbone head (the LAST entry), crossed with the self-teacher:
      KL_T(z_bar_H <- Psi(A(x_mix))) + KL_T(z_H(x_mix) <- Psi(A_bar));
    - auxiliary heads k < H, mutually: KL_T(z_bar_k <- z_k(x_mix)) + KL_T(z_k(x_mix) <- z_bar_k).

    The self-teacher logits never receive gradient from this term, nor does the teacher side of the mutual pairs.
    """
    if len(interp_logits) != len(mixup_logits):
        raise ValueError(f"{len(interp_logits)} interpolated vs {len(mixup_logits)} mixup heads")
    loss = kd_kl_div(interp_logits[-1], ens_mix_logits, temperature) \
        + kd_kl_div(mixup_logits[-1], ens_logits, temperature)
    for z_bar, z_mix in zip(interp_logits[:-1], mixup_logits[:-1]):
        loss = loss + kd_kl_div(z_bar, z_mix, temperature) + kd_kl_div(z_mix, z_bar, temperature)
    return loss


def mixskd_feature_mse(interp_feats: Sequence[torch.Tensor], mixup_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_fea = sum_k mean((A_bar_k - A_k(x_mix))^2) (``F.mse_loss``, mean over all elements). Neither side detached:
    both the interpolated originals' features and the mixup images' features are pulled together."""
    if len(interp_feats) != len(mixup_feats):
        raise ValueError(f"{len(interp_feats)} interpolated vs {len(mixup_feats)} mixup feature maps")
    return sum(F.mse_loss(a, b) for a, b in zip(interp_feats, mixup_feats))


def discriminator_targets(batch: int, device=None, dtype=torch.float32, fool: bool = False) -> torch.Tensor:
    """(2B, 2) one-hot targets: [1, 0] for the B interpolated rows (first), [0, 1] for the B mixup rows.

    ``fool=True`` swaps them (the network's target in the adversarial option: the non-saturating GAN loss).
    """
    first = torch.zeros(2, device=device, dtype=dtype)  # made on the device: no host-to-device copy
    first[1 if fool else 0] = 1.0
    return torch.cat([first.expand(batch, 2), first.flip(0).expand(batch, 2)])


def discriminator_bce(d_logits: Sequence[torch.Tensor], fool: bool = False) -> torch.Tensor:
    """L_gan = sum_k BCEWithLogits_mean(D_k(GAP([A_bar_k; A_k(x_mix)])), targets) (Self-KD-Lib
    ``methods/adversarial.py``); each ``d_logits[k]`` is (2B, 2) with the B interpolated rows first.

    With ``fool=False`` these are the discriminator's own targets (what the released code has the network minimise);
    ``fool=True`` uses the swapped targets.
    """
    loss = 0.0
    for d in d_logits:
        if d.shape[0] % 2:
            raise ValueError(f"discriminator logits need 2B rows (interpolated then mixup), got {tuple(d.shape)}")
        d = upcast_half(d)
        target = discriminator_targets(d.shape[0] // 2, d.device, d.dtype, fool)
        loss = loss + F.binary_cross_entropy_with_logits(d, target)
    return loss
