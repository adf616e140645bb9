"""FFSD's auxiliary networks (Li et al., "Distilling a Powerful Student Model via Online Knowledge Distillation",
IEEE TNNLS 2022; official code SJLeo/FFSD ``models/fusion_module.py`` and ``models/self_distillation.py``).

- ``FusionModule``: fuses the concatenated, detached last feature maps of the M common students into one map h
  (the fused feature) and classifies it.
- ``TransFusionModule``: the leader's extra branch; maps the leader's last feature map (C channels) to M*C channels
  so that its attention can be matched with the fusion module's input.
- ``SelfDistillationDecoder``: transposed convolutions that turn a deepest-stage map into maps shaped like the
  shallower stages (the self-distillation module).

Shapes are taken from the backbone's stages (channels C, spatial S), not hard-coded to the CIFAR ResNet's 64 / 8.
All three live in ``FFSDModel`` (the leader, the common students and these modules: FFSD's ``DistillationModel``)
and are never exported.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses.ffsd import diversity_target
from ..models.student import MissingStagesError, TimmStudent
from .base import DistillationModel, DistillationOutput

__all__ = ["FFSDModel", "FFSDOutput", "FusionModule", "TransFusionModule", "SelfDistillationDecoder",
           "ffsd_conv_init"]


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
    """Feature fusion over M common students (docs/methods/ffsd.md, "The networks": fusion module).

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
    """The leader's trans-fusion branch (docs/methods/ffsd.md, "The networks": trans-fusion branch).

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
    """Self-distillation module (docs/methods/ffsd.md, "The networks": decoders).

    ``channels`` = (C_deep, ..., C_shallow), e.g. (64, 32, 16) for a CIFAR ResNet's (layer3, layer2, layer1): one
    block ConvTranspose2d(k3, s2, p1, output_padding 1, no bias) -> BN -> ReLU per step, each doubling the spatial
    size. ``forward`` returns the block outputs **shallow first** (the official code reverses its hook list), so
    output l lines up with stage l. For the CIFAR ResNets/WRNs this is exactly the official C -> C/2 -> C/4
    ``SelfDistillationModel`` (C -> C/2 -> C/4 -> C/8 for the ImageNet ResNets); other channel lists are its
    ``DIYSelfDistillationModel`` variant. PyTorch default init (the official module sets none).
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

@dataclass
class FFSDOutput(DistillationOutput):
    """What ``ffsd_losses`` reads (training only): the leader's logits and tapped maps (``ffsd_stage_shapes``), its
    trans-fusion branch output, the common students' logits and maps, the fusion module's input, logits and fused
    map, the decoders' self-distillation targets (eval-mode passes, no grad; None for student 0) and reconstructions."""

    leader_logits: Optional[torch.Tensor] = None
    leader_maps: Optional[list] = None
    trans_fusion: Optional[torch.Tensor] = None
    student_logits: Optional[list] = None
    student_maps: Optional[list] = None
    fusion_input: Optional[torch.Tensor] = None
    fusion_logits: Optional[torch.Tensor] = None
    fused: Optional[torch.Tensor] = None
    student_sd_targets: Optional[list] = None
    leader_sd_target: Optional[torch.Tensor] = None
    student_decoded: Optional[list] = None
    leader_decoded: Optional[torch.Tensor] = None


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module):
    """Run ``modules`` in eval mode (BN running statistics) and restore their modes afterwards."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


_STEMS = ("stem", "act1")  # timm feature_info names of a stem (hf_kd cifar_* nets, timm ResNets)


def ffsd_stage_shapes(leader: TimmStudent) -> list[tuple]:
    """(C, H, W) of the stages FFSD taps, shallow to deep: every stage after the stem, as the official networks hook
    layer1..layer3 (CIFAR ResNets / WRNs) and layer1..layer4 (ImageNet ResNets); the last 3 where timm's feature
    info names no stem."""
    info = [f["module"] for f in leader.timm_model.feature_info]
    stem = bool(info) and info[0].split(".")[0] in _STEMS
    return leader.require_stages(len(info) - 1 if stem and len(info) > 3 else 3, "FFSD")


class FFSDModel(DistillationModel):
    """The leader (``student``, exported) and ``aux``: ``students`` (M common students), ``trans_fusion`` (the
    leader's branch), ``fusion`` (fusion module), ``decoders`` (M-1, for students 1..M-1) and ``leader_decoder``.

    Feature maps are the stages after the stem of ``forward_kd(...).stages`` (``ffsd_stage_shapes``): for cifar_resnet*
    layer1/2/3, for cifar_wrn_* block1, block2 and relu(bn(block3)), for timm's ImageNet ResNets layer1..layer4 --
    the maps the official code hooks.
    """

    def __init__(self, student: TimmStudent, students: Sequence[TimmStudent], trans_fusion: TransFusionModule,
                 fusion: FusionModule, decoders: Sequence[SelfDistillationDecoder],
                 leader_decoder: SelfDistillationDecoder):
        super().__init__(student, students=nn.ModuleList(students), trans_fusion=trans_fusion, fusion=fusion,
                         decoders=nn.ModuleList(decoders), leader_decoder=leader_decoder)
        if len(students) < 2 or len(decoders) != len(students) - 1:
            raise ValueError(f"FFSD needs >= 2 common students and one decoder for each but the first, got "
                             f"{len(students)} students and {len(decoders)} decoders")

    @classmethod
    def build(cls, leader: TimmStudent, num_students: int = 2) -> "FFSDModel":
        """Common students are fresh ``TimmStudent``s of the leader's config (each with timm's own init); module
        shapes come from the stages ``ffsd_stage_shapes`` picks (every stage after the stem)."""
        if num_students < 2:
            raise ValueError(f"FFSD needs num_students >= 2, got {num_students}")
        shapes = ffsd_stage_shapes(leader)
        for (_, h, w), (_, h2, w2) in zip(shapes[:-1], shapes[1:]):
            if (h, w) != (2 * h2, 2 * w2):
                raise MissingStagesError(
                    f"FFSD's self-distillation decoders double the spatial size at each step, so its stages must "
                    f"halve it (S, S/2, S/4, ...); architecture '{leader.architecture}' gives {shapes}. Use a backbone "
                    "with stride-2 stages such as cifar_resnet32 or cifar_wrn_16_2.")
        channels = [c for c, _, _ in shapes][::-1]  # deepest first
        c3, h3, w3 = shapes[-1]
        if h3 * w3 < 3:
            raise MissingStagesError(f"FFSD's diversity loss needs a last stage of at least 3 positions; "
                                     f"'{leader.architecture}' gives {h3}x{w3} at this input size.")
        students = [TimmStudent(copy.deepcopy(leader.config)) for _ in range(num_students)]
        return cls(leader, students, TransFusionModule(c3, num_students),
                   FusionModule(c3, leader.config.num_labels, num_students),
                   [SelfDistillationDecoder(channels) for _ in range(num_students - 1)],
                   SelfDistillationDecoder(channels))

    @property
    def num_students(self) -> int:
        return len(self.aux["students"])

    @property
    def head_names(self) -> list[str]:
        """The leader (exported), the common students, the fusion module and the students' ensemble (mean logits)."""
        return ["leader", *(f"student{m}" for m in range(self.num_students)), "fusion", "ensemble"]

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **step) -> FFSDOutput:
        """``logits``: (B, M + 3, K), the heads of ``head_names``. Training adds every tensor the FFSD objectives
        need (``hf_kd.losses.ffsd.ffsd_losses``)."""
        leader = self.student.forward_kd(pixel_values)
        n = len(self.aux["leader_decoder"].blocks) + 1  # the stages FFSD taps (``ffsd_stage_shapes``)
        leader_maps = leader.stages[-n:]
        outs = [s.forward_kd(pixel_values) for s in self.aux["students"]]
        logits, maps = [o.logits for o in outs], [o.stages[-n:] for o in outs]
        fusion_input = torch.cat([m[-1].detach() for m in maps], dim=1)  # students get nothing from the fusion side
        fusion_logits, fused = self.aux["fusion"](fusion_input)
        heads = torch.stack([leader.logits, *logits, fusion_logits, torch.stack(logits).mean(0)], dim=1)
        if not self.training:
            return FFSDOutput(logits=heads)
        trans = self.aux["trans_fusion"](leader_maps[-1])
        decoders, leader_decoder = self.aux["decoders"], self.aux["leader_decoder"]
        m_range = range(1, len(maps))
        # decoders in eval mode give the self-distillation targets, before their own train-mode pass
        # (docs/methods/ffsd.md, "One backward")
        with torch.no_grad(), _eval_mode(*decoders, leader_decoder):
            sd_targets = [None] + [decoders[m - 1](diversity_target(maps[m - 1][-1])) for m in m_range]
            leader_sd_target = leader_decoder(fused.detach())
        # their own objective: reconstruct their network's shallow stages from its (detached) deepest map
        decoded = [None] + [decoders[m - 1](maps[m][-1].detach()) for m in m_range]
        return FFSDOutput(logits=heads, leader_logits=leader.logits, leader_maps=leader_maps, trans_fusion=trans,
                          student_logits=logits, student_maps=maps, fusion_input=fusion_input,
                          fusion_logits=fusion_logits, fused=fused, student_sd_targets=sd_targets,
                          leader_sd_target=leader_sd_target, student_decoded=decoded,
                          leader_decoded=leader_decoder(leader_maps[-1].detach()))
