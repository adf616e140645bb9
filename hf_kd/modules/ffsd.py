"""FFSD's auxiliary networks (Li et al., "Distilling a Powerful Student Model via Online Knowledge Distillation",
IEEE TNNLS 2022; official code SJLeo/FFSD ``models/fusion_module.py`` and ``models/self_distillation.py``).

- ``FusionModule``: fuses the concatenated, detached last feature maps of the M common students into one map h
  (the fused feature) and classifies it.
- ``TransFusionModule``: the leader's extra branch; maps the leader's last feature map (C channels) to M*C channels
  so that its attention can be matched with the fusion module's input.
- ``SelfDistillationDecoder``: transposed convolutions that turn a deepest-stage map into maps shaped like the two
  shallower stages (the self-distillation module).

Shapes are taken from the backbone's stages (channels C, spatial S), not hard-coded to the CIFAR ResNet's 64 / 8.
All three live in the trainer's ``DistillationModel`` and are never exported.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FusionModule", "TransFusionModule", "SelfDistillationDecoder", "ffsd_conv_init"]


def ffsd_conv_init(module: nn.Module) -> None:
    """The official init for FFSD's networks: every ``nn.Conv2d`` weight ~ N(0, sqrt(2 / (k_h * k_w * out_channels)))
    and every BatchNorm gamma = 1, beta = 0. Linear layers (and transposed convolutions) keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class FusionModule(nn.Module):
    """Feature fusion over M common students (METHODS 1.2 "FusionModule").

    u (B, M*C, S, S) -> depthwise 3x3 conv (no bias) -> BN -> ReLU -> 1x1 conv M*C -> C (no bias) -> BN -> ReLU = h
    (B, C, S, S), the fused feature map; h -> global average pool -> Linear(C, num_classes) = fusion logits.
    The official AvgPool2d(S) over an S x S map is the global average used here. Init: ``ffsd_conv_init`` (the
    official module initialises its convs and BNs that way; the Linear keeps the default init).
    """

    def __init__(self, channels: int, num_classes: int, num_students: int = 2):
        super().__init__()
        wide = channels * num_students
        self.conv1 = nn.Conv2d(wide, wide, 3, 1, 1, groups=wide, bias=False)
        self.bn1 = nn.BatchNorm2d(wide)
        self.conv2 = nn.Conv2d(wide, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        ffsd_conv_init(self)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u: (B, M*C, S, S), the concatenated detached student maps -> (logits (B, K), fused map h (B, C, S, S))."""
        x = F.relu(self.bn1(self.conv1(u)))
        h = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1)), h


class TransFusionModule(nn.Module):
    """The leader's trans-fusion branch (METHODS 1.2 "TransFusionModule").

    F (B, C, S, S) -> depthwise 3x3 conv (no bias) -> BN -> ReLU -> 1x1 conv C -> M*C (no bias) -> BN -> ReLU = t_L
    (B, M*C, S, S). Officially it is a submodule of the leader network, so the leader's init loop covers it:
    ``ffsd_conv_init``.
    """

    def __init__(self, channels: int, num_students: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels * num_students, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels * num_students)
        ffsd_conv_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class SelfDistillationDecoder(nn.Module):
    """Self-distillation module (METHODS 1.2 "Self-distillation decoder").

    ``channels`` = (C_deep, ..., C_shallow), e.g. (64, 32, 16) for a CIFAR ResNet's (layer3, layer2, layer1): one
    block ConvTranspose2d(k3, s2, p1, output_padding 1, no bias) -> BN -> ReLU per step, each doubling the spatial
    size. ``forward`` returns the block outputs **shallow first** (the official code reverses its hook list), so
    output l lines up with stage l. For the CIFAR ResNets/WRNs this is exactly the official C -> C/2 -> C/4
    ``SelfDistillationModel``; other channel lists are its ``DIYSelfDistillationModel`` variant. PyTorch default
    init (the official module sets none).
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"SelfDistillationDecoder needs at least 2 channel counts, got {list(channels)}")
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, bias=False), nn.BatchNorm2d(cout),
                          nn.ReLU(inplace=True))
            for cin, cout in zip(channels[:-1], channels[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs[::-1]
