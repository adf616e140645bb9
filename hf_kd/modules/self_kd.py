"""LightSKD's DRG adapter: an attention-masked auxiliary classifier on the backbone's layer-2 feature map.

Follows ``backbone/adapter.py::Istr_2`` of xucong-parsifal/LightSKD, with its channel counts derived from the stage
it is attached to (C = the layer-2 channels) instead of hard-coded. The released ``adapter_2()`` builds
``Istr_2(Bottleneck)`` (C = 512), which only fits ResNet-50/101 and fails on the ResNet-18 the code pairs it with; the
BasicBlock variant (C = 128) is what fits ResNet-18 (docs/methods/self_kd.md, "Decisions"), and
``LightSKDAdapter(128, K)`` is exactly that variant.

Layers (no conv has a bias; PyTorch default initialisation, as the official code does not re-initialise them):

- attention mask: SepConv(C -> C, stride 2) -> BN(C) -> ReLU -> bilinear upsampling back to the input's size
  (align_corners=True) -> Sigmoid. The ReLU before the sigmoid puts the mask in [0.5, 1).
- masked feature: f = mask * x.
- head: SepConv(C -> 2C, stride 2) -> SepConv(2C -> 4C, stride 2) -> global average pool -> Linear(4C, K).

``SepConv(cin, cout, s)`` = depthwise 3x3 (stride s) -> pointwise 1x1 (cin -> cin) -> BN -> ReLU -> depthwise 3x3 ->
pointwise 1x1 (cin -> cout) -> BN -> ReLU (the official ``SepConv``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillationModel, DistillationOutput

__all__ = ["SepConv", "LightSKDAdapter", "SelfKDModel", "SelfKDOutput"]


class SepConv(nn.Module):
    """Two depthwise-separable 3x3 convolutions, each followed by BN + ReLU; the first has stride ``stride``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        c = in_channels
        self.op = nn.Sequential(
            nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
            nn.Conv2d(c, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class LightSKDAdapter(nn.Module):
    """DRG adapter (``Istr_2``) for a (B, C, H, W) stage map -> (B, num_classes) logits; see the module docstring."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"LightSKDAdapter needs in_channels >= 1 and num_classes >= 1, got {in_channels}, "
                             f"{num_classes}")
        c = in_channels
        self.in_channels, self.num_classes = c, num_classes
        self.attention = nn.Sequential(SepConv(c, c), nn.BatchNorm2d(c), nn.ReLU())
        self.features = nn.Sequential(SepConv(c, 2 * c), SepConv(2 * c, 4 * c), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(4 * c, num_classes)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """Attention mask in [0.5, 1), same shape as ``x``.

        The official code upsamples by a fixed factor 2 (``nn.Upsample(scale_factor=2)``); upsampling to the input's
        own size is the same for even H, W (align_corners=True uses the sizes only) and also works for odd ones.
        """
        a = self.attention(x)
        a = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return torch.sigmoid(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"LightSKDAdapter built for (B, {self.in_channels}, H, W) feature maps got "
                             f"{tuple(x.shape)}")
        f = self.mask(x) * x
        return self.fc(self.features(f).flatten(1))


@dataclass
class SelfKDOutput(DistillationOutput):
    """``student_logits``: the backbone's (B, K); ``adapter_logits``: the layer-2 adapter's (B, K), or None without
    an adapter (``logits`` stacks the two for evaluation)."""

    student_logits: Optional[torch.Tensor] = None
    adapter_logits: Optional[torch.Tensor] = None


class SelfKDModel(DistillationModel):
    """The backbone plus ``aux["adapter"]`` on stage ``stage_index`` (none when LightSKD runs without it).

    ``logits``: (B, 2, K), the backbone then the adapter, or the backbone's (B, K) without an adapter."""

    def __init__(self, student, adapter: Optional[LightSKDAdapter], stage_index: int):
        super().__init__(student, **({"adapter": adapter} if adapter is not None else {}))
        self.stage_index = stage_index

    @property
    def head_names(self) -> list[str]:
        return ["student", "adapter"] if "adapter" in self.aux else ["student"]

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **step) -> SelfKDOutput:
        if "adapter" not in self.aux:
            out = self.student.forward_kd(pixel_values, stages=False)
            return SelfKDOutput(logits=out.logits, pre_logits=out.pre_logits, student_logits=out.logits)
        out = self.student.forward_kd(pixel_values, stages=True)
        adapter = self.aux["adapter"](out.stages[self.stage_index])
        return SelfKDOutput(logits=torch.stack([out.logits, adapter], dim=1), pre_logits=out.pre_logits,
                            student_logits=out.logits, adapter_logits=adapter)
