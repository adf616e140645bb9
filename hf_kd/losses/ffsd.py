"""FFSD losses (Li et al., "Distilling a Powerful Student Model via Online Knowledge Distillation", IEEE TNNLS 2022),
as the official code SJLeo/FFSD ``CIFARTrainer.py`` computes them (docs/methods/ffsd.md, "The loss terms").

Notation: att(F) = mean over channels of F^2, shape (B, 1, H, W); nrm(v) = per-sample L2 normalisation of the
flattened tensor (``F.normalize``, eps 1e-12); Lat(X, Y) = mean over all B*D entries of (nrm(X) - nrm(Y))^2 (a mean
over elements, not a per-sample sum, hence the large lambdas). Every cross-network target is detached inside the
function that uses it, exactly where the official code detaches, so the sum of all objectives can be minimised with
one backward pass (each network only receives the gradient of its own objective).

Pure functions of tensors, one per equation; ``ffsd_losses`` assembles them for one training step.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .kd import kd_kl_div
from .precision import upcast_half

__all__ = ["attention_map", "attention_loss", "shifted_attention", "diversity_loss", "diversity_target", "dml_loss",
           "self_distillation_loss", "fusion_module_loss", "leader_fusion_loss", "trans_fusion_loss",
           "decoder_loss", "lambda_warmup", "ffsd_losses"]


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """att(F) = mean_c F_c^2: (B, C, H, W) -> (B, 1, H, W), at least in float32 (``upcast_half``)."""
    return upcast_half(f).pow(2).mean(1, keepdim=True)


def attention_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Lat(X, Y) = mean over B*D elements of (nrm(X) - nrm(Y))^2, X and Y flattened per sample to (B, D).

    The official ``attention_loss`` / ``fusion_loss``; used on attention maps and (in the decoder objective) on full
    C*H*W feature maps. No detach here: callers detach the target side.
    """
    x = F.normalize(upcast_half(x).flatten(1), dim=1)
    y = F.normalize(upcast_half(y).flatten(1), dim=1)
    return (x - y).pow(2).mean()


def shifted_attention(a_hat: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """The diversity target built from a normalised attention vector (docs/methods/ffsd.md, "The loss terms":
    diversity loss, steps 2-3).

    a_hat: (B, D) unit-norm attention; norm: (B, 1) norm n of the *un-normalised* attention. With tau_b the k-th
    smallest entry of a_hat_b, k = floor(D / 3): entries below tau keep their value, entries above become n - a_hat,
    entries equal to tau become n / 2 (the official sign-based formula; it mixes the raw norm with unit vectors).
    """
    k = a_hat.shape[1] // 3
    if k < 1:
        raise ValueError(f"FFSD's diversity target needs an attention map of at least 3 positions, got "
                         f"{a_hat.shape[1]}")
    tau = a_hat.kthvalue(k, dim=1, keepdim=True).values
    return torch.where(a_hat < tau, a_hat, torch.where(a_hat > tau, norm - a_hat, norm / 2))


def diversity_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """D(x, y): diversity-enhancement loss between attention maps (official ``diversity_loss``).

    x = att(F^3_m) of student m (receives gradient), y = att(F^3_{m-1}) of the previous student (detached here, as the
    official call site does). n = ||y_b||, then D = mean over elements of (nrm(x) - shifted_attention(nrm(y), n))^2.
    Raw values are O(10-1000), hence lambda_div = 1e-5.
    """
    y = upcast_half(y.detach()).flatten(1)
    norm = y.norm(dim=1, keepdim=True)
    target = shifted_attention(F.normalize(y, dim=1), norm)
    return (F.normalize(upcast_half(x).flatten(1), dim=1) - target).pow(2).mean()


def diversity_target(f: torch.Tensor) -> torch.Tensor:
    """The previous student's last map shifted towards the diversity target (official ``diversity_target``).

    f: (B, C, H, W), detached. a = att(f) flattened, n = ||a||, a_hat = nrm(a), a_tilde = shifted_attention(a_hat, n);
    returns f + (a_tilde - a_hat) * n / C, the (B, 1, H, W) shift broadcast over channels.
    """
    f = f.detach()
    b, c, h, w = f.shape
    a = attention_map(f).flatten(1)
    norm = a.norm(dim=1, keepdim=True)
    a_hat = F.normalize(a, dim=1)
    shift = (shifted_attention(a_hat, norm) - a_hat) * norm / c
    return f + shift.view(b, 1, h, w).to(f.dtype)


def dml_loss(logits: torch.Tensor, others: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Deep mutual learning term of a common student: T^2 / (M-1) * sum_{j != m} KL(softmax(z_j/T) || softmax(z_m/T)).

    ``others`` are the M-1 other common students' logits (detached inside ``kd_kl_div``); batchmean KL.
    """
    if not others:
        raise ValueError("DML needs at least one other student")
    return sum(kd_kl_div(logits, z, temperature) for z in others) / len(others)


def self_distillation_loss(maps: Sequence[torch.Tensor], decoded: Sequence[torch.Tensor]) -> torch.Tensor:
    """Shallow stages mimic a decoder's output (official ``self_distillation_loss``):
    sum_l Lat(att(F^l), att(Dec(.)^l).detach()) over the decoder's outputs (shallow first) and the matching stages.

    ``decoded`` are the outputs of a decoder in eval mode (BN running statistics): for common student m >= 1 the decoder
    m fed with the previous student's ``diversity_target``; for the leader its decoder fed with the fused map h.
    No gradient reaches the decoder.
    """
    return sum(attention_loss(attention_map(f), attention_map(d.detach())) for f, d in zip(maps, decoded))


def fusion_module_loss(fusion_logits: torch.Tensor, student_logits: Sequence[torch.Tensor], labels: torch.Tensor,
                       temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fusion module objective terms: (CE(z_f, y), T^2 KL(softmax(zbar/T) || softmax(z_f/T))), zbar = the mean of
    the common students' logits (detached)."""
    ensemble = torch.stack([z.detach() for z in student_logits]).mean(0)
    return F.cross_entropy(fusion_logits, labels), kd_kl_div(fusion_logits, ensemble, temperature)


def leader_fusion_loss(leader_last: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """Lat(att(F^3_L), att(h).detach()): the leader's last map mimics the fused map h of the fusion module."""
    return attention_loss(attention_map(leader_last), attention_map(fused.detach()))


def trans_fusion_loss(trans: torch.Tensor, fusion_input: torch.Tensor) -> torch.Tensor:
    """Lat(att(t_L), att(u)): the trans-fusion branch output t_L (B, M*C, S, S) mimics the fusion module's input u, the
    concatenation of the common students' detached last maps (so only the leader and its branch learn)."""
    return attention_loss(attention_map(trans), attention_map(fusion_input.detach()))


def decoder_loss(decoded: Sequence[torch.Tensor], maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder objective terms (official ``train_self_distillation_model``), unweighted:
    (sum_l Lat(Dec^l, F^l.detach()), sum_l Lat(att(Dec^l), att(F^l).detach())).

    ``decoded`` = Dec(F^3.detach()) of a decoder in train mode on its own network's deepest map, shallow first;
    ``maps`` = that network's stages it reconstructs. The first term is a full-feature normalised MSE over C*H*W.
    """
    feature = sum(attention_loss(d, f.detach()) for d, f in zip(decoded, maps))
    attention = sum(attention_loss(attention_map(d), attention_map(f.detach())) for d, f in zip(decoded, maps))
    return feature, attention


def lambda_warmup(value: float, epoch: int, warmup_epochs: int = 5) -> float:
    """FFSD's exp warm-up of lambda_div / lambda_fusion / lambda_sd (official ``lambda_warmup``), 1-based epochs:
    value * exp(-5 (1 - e/5)^2) for e <= 5, else value. Factors 0.041, 0.165, 0.449, 0.819, 1.0 for e = 1..5."""
    if epoch <= warmup_epochs:
        return value * math.exp(-5.0 * (1.0 - float(epoch) / warmup_epochs) ** 2)
    return value


def ffsd_losses(out: dict, labels: torch.Tensor, temperature: float, lambda_diversity: float, lambda_fusion: float,
                lambda_self_distillation: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The sum of every FFSD objective for one training step, and the unweighted terms by name.

    ``out`` is ``FFSDModel``'s training forward (see there for the keys); the lambdas are already warmed up. Total =
    sum_m L_m + L_fusion + L_leader + sum of the decoder objectives, with (docs/methods/ffsd.md, "The loss terms"):

    - L_m = CE + DML (+ lambda_div * (diversity + self-distillation) for m >= 1; the official code weights the
      student-side self-distillation with lambda_div, not lambda_sd);
    - L_fusion = CE + T^2 KL(ensemble || fusion);
    - L_leader = CE + T^2 KL(fusion || leader) + lambda_fusion * (fusion + trans-fusion + self-distillation);
    - L_dec = lambda_sd * (feature + attention) per decoder.
    """
    terms: dict[str, torch.Tensor] = {}
    logits, maps = out["student_logits"], out["student_maps"]
    total = 0.0
    for m, z in enumerate(logits):
        terms[f"student{m}_ce"] = F.cross_entropy(z, labels)
        terms[f"student{m}_dml"] = dml_loss(z, [o for j, o in enumerate(logits) if j != m], temperature)
        total = total + terms[f"student{m}_ce"] + terms[f"student{m}_dml"]
        if m > 0:
            terms[f"student{m}_diversity"] = diversity_loss(attention_map(maps[m][-1]), attention_map(maps[m - 1][-1]))
            terms[f"student{m}_sd"] = self_distillation_loss(maps[m][:-1], out["student_sd_targets"][m])
            total = total + lambda_diversity * (terms[f"student{m}_diversity"] + terms[f"student{m}_sd"])
    terms["fusion_ce"], terms["fusion_kd"] = fusion_module_loss(out["fusion_logits"], logits, labels, temperature)
    total = total + terms["fusion_ce"] + terms["fusion_kd"]

    leader_maps = out["leader_maps"]
    terms["leader_ce"] = F.cross_entropy(out["leader_logits"], labels)
    terms["leader_kd"] = kd_kl_div(out["leader_logits"], out["fusion_logits"], temperature)
    terms["leader_fusion"] = leader_fusion_loss(leader_maps[-1], out["fused"])
    terms["leader_trans_fusion"] = trans_fusion_loss(out["trans_fusion"], out["fusion_input"])
    terms["leader_sd"] = self_distillation_loss(leader_maps[:-1], out["leader_sd_target"])
    total = total + terms["leader_ce"] + terms["leader_kd"] + lambda_fusion * (
        terms["leader_fusion"] + terms["leader_trans_fusion"] + terms["leader_sd"])

    decoders = [(f"decoder{m}", out["student_decoded"][m], maps[m]) for m in range(1, len(maps))]
    decoders.append(("leader_decoder", out["leader_decoded"], leader_maps))
    for name, decoded, target in decoders:
        terms[f"{name}_feature"], terms[f"{name}_attention"] = decoder_loss(decoded, target[:-1])
        total = total + lambda_self_distillation * (terms[f"{name}_feature"] + terms[f"{name}_attention"])
    return total, terms
