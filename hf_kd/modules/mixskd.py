"""MixSKD's training-only modules (Yang et al., ECCV 2022; winycg/Self-KD-Lib ``models/resnet_mixskd.py``,
``models/resnet_imagenet_mixskd.py``, ``methods/adversarial.py``; docs/methods/mixskd.md, "The networks").

- ``AuxiliaryBranch``: branch k takes the output of backbone stage k and runs *fresh copies* (new weights, same
  architecture and initialisation scheme) of the remaining stages k+1..N, so that it ends at the backbone's final
  resolution and width, then global average pooling and its own ``nn.Linear`` classifier. For the 4-stage ResNet-18 the
  three branches are layer2'-layer3'-layer4', layer3'-layer4' and layer4'.
- ``SelfTeacher`` (Psi): concatenation of the N final-resolution features -> 1x1 conv N*C -> C (no bias, no BN, no
  ReLU) -> GAP -> Linear(C, K).
- ``Discriminator``: GAP -> Linear(C, 128) -> ReLU -> Linear(128, 2), one per feature.

Backbones: the cifar_* nets of ``hf_kd.models.cifar`` (``stages`` + ``final_act``) and timm ``ResNet``s
(``layer1..layer4``). Anything else gets a ``MissingStagesError`` naming the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses.mixskd import interpolate, mix_images
from ..models.student import MissingStagesError, TimmStudent
from .base import DistillationModel, DistillationOutput

__all__ = ["backbone_stages", "AuxiliaryBranch", "build_auxiliary_branches", "SelfTeacher", "Discriminator",
           "DISCRIMINATOR_MODES", "MixSKDModel", "MixSKDOutput"]

DISCRIMINATOR_MODES = ("fixed", "adversarial", "off")


def backbone_stages(timm_model: nn.Module, architecture: str = "") -> tuple[list[nn.Module], nn.Module]:
    """The stage modules of a backbone, shallow to deep, and the activation applied after the last one.

    - hf_kd cifar_* nets: ``stages`` (an ``nn.Sequential``) and ``final_act`` (``Identity`` for the ResNets, BN+ReLU
      for the WRNs);
    - timm ``ResNet`` (resnet18/34/50/..., incl. its variants): ``layer1..layer4`` and no final activation.
    """
    from timm.models.resnet import ResNet

    from ..models.cifar import _CifarNet

    if isinstance(timm_model, _CifarNet):
        return list(timm_model.stages), timm_model.final_act
    if isinstance(timm_model, ResNet):
        return [timm_model.layer1, timm_model.layer2, timm_model.layer3, timm_model.layer4], nn.Identity()
    raise MissingStagesError(
        f"MixSKD builds its auxiliary branches from fresh copies of the backbone's later stages, so it needs a "
        f"backbone whose stages it knows how to copy; timm architecture '{architecture or type(timm_model).__name__}' "
        f"({type(timm_model).__name__}) is not one. Supported: hf_kd's cifar_* backbones (e.g. cifar_resnet18 with "
        "model_args={'stem_act': False}, the MixSKD CIFAR ResNet-18) and timm ResNets (resnet18, resnet50, ...).")


class AuxiliaryBranch(nn.Module):
    """Fresh copies of the backbone stages after the tapped one (+ the final activation), GAP and a classifier.

    forward(stage_k_output) -> (feature A_k (B, C, h, w), logits (B, K)).
    """

    def __init__(self, stages: Sequence[nn.Module], final_act: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(*stages, final_act)
        self.fc = nn.Linear(num_features, num_classes)  # PyTorch default init, as Self-KD-Lib's fc1..fc3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.body(x)
        return feat, self.fc(F.adaptive_avg_pool2d(feat, 1).flatten(1))


def build_auxiliary_branches(student: TimmStudent) -> nn.ModuleList:
    """N-1 auxiliary branches for an N-stage backbone: branch k (k = 1..N-1) copies stages k+1..N.

    Each branch is cut from its own freshly created timm model of the student's architecture (same ``model_args``),
    so its weights are new and initialised the way the backbone's own stages are (Self-KD-Lib builds the branches
    with the backbone's block class and init). Draws from torch's global RNG: seed before building for repeatable
    weights.
    """
    import timm

    arch = student.config.architecture
    stages, _ = backbone_stages(student.timm_model, arch)
    n = len(stages)
    if n < 2:
        raise MissingStagesError(f"MixSKD needs a backbone with at least 2 stages; '{arch}' has {n}.")
    model_args = dict(getattr(student.config, "model_args", None) or {})
    branches = []
    for k in range(1, n):
        fresh = timm.create_model(arch, pretrained=False, num_classes=student.config.num_labels, **model_args)
        fresh_stages, fresh_act = backbone_stages(fresh, arch)
        branches.append(AuxiliaryBranch(fresh_stages[k:], fresh_act, fresh.num_features, student.config.num_labels))
    return nn.ModuleList(branches)


class SelfTeacher(nn.Module):
    """Psi (Self-KD-Lib ``ResNet_Final_Auxiliary_Classifer``): cat of ``num_inputs`` feature maps of width C ->
    Conv1x1(num_inputs*C -> C, no bias; no BN, no ReLU) -> GAP -> Linear(C, K). PyTorch default init."""

    def __init__(self, num_inputs: int, channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(num_inputs * channels, channels, kernel_size=1, bias=False)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.conv(torch.cat(list(feats), dim=1))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class Discriminator(nn.Module):
    """D_k (Self-KD-Lib ``methods/adversarial.py``): GAP -> Linear(C, 128) -> ReLU -> Linear(128, 2).

    ``detach_params=True`` evaluates D with its weights cut from the graph: gradient reaches the input features but
    not D (the network's side of the adversarial option).
    """

    def __init__(self, channels: int, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        if x.dim() > 2:
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        params = [p.detach() if detach_params else p for p in (self.fc1.weight, self.fc1.bias,
                                                               self.fc2.weight, self.fc2.bias)]
        return F.linear(F.relu(F.linear(x, params[0], params[1])), params[2], params[3])


@dataclass
class MixSKDOutput(DistillationOutput):
    """Per-head lists are ordered k = 1..H: auxiliary branches first, the backbone LAST (official order).

    logits: every head stacked (B, H, K) with the BACKBONE FIRST (the exported model; what evaluation and prediction
    score), over the original images only in training; head_logits/features: per head, over all rows of the forward
    (2B in training: the originals, then their mixup);
    interp_features/mixup_features: A_bar_k (B, C, h, w) and A_k(x_mix); ens_logits = Psi(A_bar),
    ens_mix_logits = Psi(A(x_mix)); d_logits: D_k on [A_bar_k; A_k(x_mix)] (2B, 2) as the network sees them;
    d_logits_detached: D_k on detached features (the discriminators' own training term, adversarial only).
    """

    head_logits: Optional[list] = None
    features: Optional[list] = None
    interp_features: Optional[list] = None
    mixup_features: Optional[list] = None
    ens_logits: Optional[torch.Tensor] = None
    ens_mix_logits: Optional[torch.Tensor] = None
    d_logits: Optional[list] = None
    d_logits_detached: Optional[list] = None


class MixSKDModel(DistillationModel):
    """The backbone (``student``, exported) + ``aux``: ``branches`` (N-1 ``AuxiliaryBranch``), ``self_teacher``
    (``SelfTeacher``) and, unless discriminator="off", ``discriminators`` (N ``Discriminator``; frozen with
    requires_grad=False when "fixed": never optimised, but registered so that checkpoints hold them)."""

    def __init__(self, student: TimmStudent, num_classes: int, discriminator: str = "fixed",
                 discriminator_hidden: int = 128, train_self_teacher: bool = True):
        if discriminator not in DISCRIMINATOR_MODES:
            raise ValueError(f"discriminator must be one of {DISCRIMINATOR_MODES}, got '{discriminator}'")
        stages, _ = backbone_stages(student.timm_model, student.config.architecture)
        n = len(stages)
        student.require_stages(n, "MixSKD")
        branches = build_auxiliary_branches(student)
        channels = student.timm_model.num_features
        aux = dict(branches=branches, self_teacher=SelfTeacher(n, channels, num_classes))
        if discriminator != "off":
            aux["discriminators"] = nn.ModuleList(Discriminator(channels, discriminator_hidden) for _ in range(n))
        super().__init__(student, **aux)
        self.num_stages = n
        self.discriminator = discriminator
        if discriminator == "fixed":  # the released code never registers them: no gradient, no update, no decay
            self.aux["discriminators"].requires_grad_(False)
        if not train_self_teacher:  # released CIFAR objective: Psi gets no gradient at all (SGD skips it)
            self.aux["self_teacher"].requires_grad_(False)
        self._check_shapes()

    @property
    def head_names(self) -> list[str]:
        """Evaluation order: the backbone first (the exported model), then branch 1..N-1."""
        return ["backbone"] + [f"branch{k}" for k in range(1, self.num_stages)]

    @torch.no_grad()
    def _check_shapes(self):
        size = tuple(self.student.config.pretrained_cfg["input_size"])
        was = self.training
        self.eval()
        try:
            p = next(self.student.parameters())
            out = self.forward(torch.zeros(1, *size, device=p.device, dtype=p.dtype))
        finally:
            self.train(was)
        shapes = [tuple(f.shape[1:]) for f in out.features]
        if len(set(shapes)) != 1:
            raise ValueError(f"MixSKD: auxiliary branches of '{self.student.config.architecture}' do not end at the "
                             f"backbone's final feature shape: {shapes}")

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, lam: Optional[float] = None,
                perm: Optional[torch.Tensor] = None, **step) -> MixSKDOutput:
        """Eval: every head on ``pixel_values``. Train: ONE forward of cat([x, x_mix]) (2B rows, BN statistics shared
        by both halves), x_mix = lam x + (1 - lam) x[perm] (``mix_images``), with ``lam`` and ``perm`` the
        trainer's mixup draw."""
        b = pixel_values.shape[0]
        if self.training:
            if lam is None or perm is None:
                raise ValueError("MixSKDModel in training mode needs lam and perm (the mixup draw); "
                                 "MixSKDTrainer.step_inputs makes them.")
            if perm.shape[0] != b:
                raise ValueError(f"perm has {perm.shape[0]} entries for a batch of {b}")
            pixel_values = torch.cat([pixel_values, mix_images(pixel_values, lam, perm)])
        out = self.student.forward_kd(pixel_values, stages=True)
        taps = out.stages[-self.num_stages:]
        feats, logits = [], []
        for k, branch in enumerate(self.aux["branches"]):
            f, z = branch(taps[k])
            feats.append(f)
            logits.append(z)
        feats.append(taps[-1])
        logits.append(out.logits)
        heads = torch.stack([logits[-1][:b], *(z[:b] for z in logits[:-1])], dim=1)
        if not self.training:
            return MixSKDOutput(logits=heads, head_logits=logits, features=feats)
        interp = [interpolate(f[:b], lam, perm) for f in feats]
        mixed = [f[b:] for f in feats]
        psi = self.aux["self_teacher"]
        d_logits = d_logits_detached = None
        if self.discriminator != "off":
            ds = self.aux["discriminators"]
            adversarial = self.discriminator == "adversarial"
            d_logits = [d(torch.cat([fi, fm]), detach_params=adversarial) for d, fi, fm in zip(ds, interp, mixed)]
            if adversarial:
                d_logits_detached = [d(torch.cat([fi.detach(), fm.detach()])) for d, fi, fm in
                                     zip(ds, interp, mixed)]
        return MixSKDOutput(logits=heads, head_logits=logits, features=feats, interp_features=interp,
                            mixup_features=mixed, ens_logits=psi(interp), ens_mix_logits=psi(mixed),
                            d_logits=d_logits, d_logits_detached=d_logits_detached)
