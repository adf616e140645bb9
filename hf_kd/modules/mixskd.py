"""MixSKD's training-only modules (Yang et al., ECCV 2022; winycg/Self-KD-Lib ``models/resnet_mixskd.py``,
``models/resnet_imagenet_mixskd.py``, ``methods/adversarial.py``; /work/shared/METHODS.md section 4.2).

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

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.student import MissingStagesError, TimmStudent

__all__ = ["backbone_stages", "AuxiliaryBranch", "build_auxiliary_branches", "SelfTeacher", "Discriminator"]


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
