"""CIFAR backbones of the seed papers, registered into timm's model registry.

After ``import hf_kd``, ``timm.create_model("cifar_resnet32", num_classes=100)`` builds them like any timm model,
with ``forward_features`` / ``forward_head(pre_logits=True)`` / ``forward_intermediates`` and ``features_only``.

- ``cifar_resnet{20,32,56,110}``: He et al. 2016, Sec. 4.2 (16-32-64 channels, 3 stages of (depth-2)/6 basic
  blocks). Shortcuts are 1x1 conv + BN where the shape changes and convs use N(0, sqrt(2/(k*k*out))) init, as in
  SJLeo/FFSD ``models/resnet_cifar.py`` and RepDistiller ``models/resnet.py``.
- ``cifar_resnet{8,32}x4``: the CRD/RepDistiller teacher-student pair (32-64-128-256 channels).
- ``cifar_wrn_{16,40}_{2}`` (and ``_1``): Zagoruyko & Komodakis 2016, pre-activation wide basic blocks.
  Convs have no bias (RepDistiller); FFSD's copy adds conv biases, a quirk we do not reproduce.
- ``cifar_resnet18``: ImageNet ResNet-18 layers with a 3x3 stride-1 stem and no max-pool (kuangliu/pytorch-cifar,
  used by LightSKD and MixSKD). ``stem_act=False`` drops the stem ReLU, as MixSKD's CIFAR ResNet-18 does;
  ``init="torch_default"`` keeps PyTorch's layer init, as kuangliu's ResNet-18 (LightSKD) does.

Stages returned by ``forward_intermediates`` (32x32 input): ResNets give [stem, layer1, layer2, layer3(, layer4)];
WRNs give [stem, block1, block2, relu(bn(block3))] -- the maps FFSD hooks (pre-activation for the first blocks,
post BN-ReLU for the last one).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

__all__ = ["CifarResNet", "CifarWideResNet", "CIFAR_ARCHITECTURES"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + shortcut)


class _CifarNet(nn.Module):
    """timm model interface shared by the CIFAR nets: subclasses set ``stem``, ``stages``, ``final_act``, ``fc``."""

    num_features: int
    feature_info: list

    def _init_weights(self, init: str = "kaiming_normal"):
        """``kaiming_normal``: convs N(0, sqrt(2/(k*k*out))), BN 1/0 (the FFSD, CRD and Self-KD-Lib CIFAR nets);
        ``torch_default``: keep PyTorch's own layer init (kuangliu's CIFAR ResNet-18, used by LightSKD)."""
        if init == "torch_default":
            return
        if init != "kaiming_normal":
            raise ValueError(f"unknown init '{init}' (expected kaiming_normal or torch_default)")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # --- timm interface -------------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg"):
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.final_act(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs [stem, stage1, ..., stageN]; the last one after ``final_act`` (timm semantics)."""
        if output_fmt != "NCHW":
            raise ValueError(f"{type(self).__name__} only supports output_fmt='NCHW'")
        n = len(self.stages) + 1
        take, max_index = feature_take_indices(n, indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take:
            intermediates.append(x)
        last = len(self.stages)
        blocks = self.stages if not stop_early else self.stages[:max_index]
        for i, stage in enumerate(blocks, start=1):
            x = stage(x)
            if i == last:
                x = self.final_act(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if len(blocks) < last:  # stopped early: finish the trunk so ``x`` is the final map
            for stage in self.stages[len(blocks):]:
                x = stage(x)
            x = self.final_act(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take, max_index = feature_take_indices(len(self.stages) + 1, indices)
        self.stages = self.stages[:max_index]
        if prune_head:
            self.reset_classifier(0)
        return take


class CifarResNet(_CifarNet):
    """CIFAR ResNet with basic blocks; ``channels`` = (stem, stage1, stage2, ...), ``blocks`` per stage."""

    def __init__(self, channels=(16, 16, 32, 64), blocks=(5, 5, 5), num_classes: int = 100, in_chans: int = 3,
                 stem_act: bool = True, init: str = "kaiming_normal", **kwargs):
        super().__init__()
        self.num_classes = num_classes
        stem = [_conv3x3(in_chans, channels[0]), nn.BatchNorm2d(channels[0])]
        if stem_act:
            stem.append(nn.ReLU(inplace=True))
        self.stem = nn.Sequential(*stem)
        stages, cin = [], channels[0]
        self.feature_info = [dict(num_chs=channels[0], reduction=1, module="stem")]
        reduction = 1
        for i, (planes, n) in enumerate(zip(channels[1:], blocks)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            layers = [BasicBlock(cin, planes, stride)] + [BasicBlock(planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = planes
            self.feature_info.append(dict(num_chs=planes, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.final_act = nn.Identity()
        self.num_features = self.head_hidden_size = cin
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(init)


class WideBasic(nn.Module):
    """Pre-activation wide basic block (BN-ReLU-conv x2, optional dropout); ends with the residual add."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.drop_rate = drop_rate
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # the projection shortcut reads the pre-activated input, as in the reference WRN code
        return out + (x if self.equal else self.shortcut(pre))


class CifarWideResNet(_CifarNet):
    """WRN-depth-k (Zagoruyko & Komodakis 2016): widths 16, 16k, 32k, 64k; (depth-4)/6 blocks per stage."""

    def __init__(self, depth: int = 16, widen_factor: int = 2, num_classes: int = 100, in_chans: int = 3,
                 drop_rate: float = 0.0, **kwargs):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.stem = _conv3x3(in_chans, widths[0])
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="stem")]
        stages, cin, reduction = [], widths[0], 1
        for i, w in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            reduction *= stride
            layers = [WideBasic(cin if j == 0 else w, w, stride if j == 0 else 1, drop_rate) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            cin = w
            self.feature_info.append(dict(num_chs=w, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.final_act = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.num_features = self.head_hidden_size = cin
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        nn.init.zeros_(self.fc.bias)


def _cfg(**kwargs):
    cfg = dict(num_classes=100, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, crop_mode="center",
               interpolation="bilinear", mean=CIFAR100_MEAN, std=CIFAR100_STD, first_conv="stem.0",
               classifier="fc", license="apache-2.0")
    return {**cfg, **kwargs}


_RESNETS = {
    "cifar_resnet20": dict(channels=(16, 16, 32, 64), blocks=(3, 3, 3)),
    "cifar_resnet32": dict(channels=(16, 16, 32, 64), blocks=(5, 5, 5)),
    "cifar_resnet56": dict(channels=(16, 16, 32, 64), blocks=(9, 9, 9)),
    "cifar_resnet110": dict(channels=(16, 16, 32, 64), blocks=(18, 18, 18)),
    "cifar_resnet8x4": dict(channels=(32, 64, 128, 256), blocks=(1, 1, 1)),
    "cifar_resnet32x4": dict(channels=(32, 64, 128, 256), blocks=(5, 5, 5)),
    "cifar_resnet18": dict(channels=(64, 64, 128, 256, 512), blocks=(2, 2, 2, 2)),
}
_WRNS = {
    "cifar_wrn_16_1": dict(depth=16, widen_factor=1),
    "cifar_wrn_16_2": dict(depth=16, widen_factor=2),
    "cifar_wrn_40_1": dict(depth=40, widen_factor=1),
    "cifar_wrn_40_2": dict(depth=40, widen_factor=2),
}
CIFAR_ARCHITECTURES = tuple(_RESNETS) + tuple(_WRNS)

default_cfgs = generate_default_cfgs(
    {f"{name}.untrained": _cfg(pool_size=(4, 4) if name == "cifar_resnet18" else (8, 8)) for name in _RESNETS}
    | {f"{name}.untrained": _cfg(first_conv="stem") for name in _WRNS}
)


def _build(cls, variant: str, pretrained: bool, **kwargs):
    return build_model_with_cfg(cls, variant, pretrained, feature_cfg=dict(feature_cls="getter"), **kwargs)


def _register(name: str, cls, arch_kwargs: dict):
    def fn(pretrained: bool = False, **kwargs):
        return _build(cls, name, pretrained, **{**arch_kwargs, **kwargs})

    fn.__name__ = name
    fn.__doc__ = f"{name} ({cls.__name__} {arch_kwargs}); see hf_kd.models.cifar."
    fn.__module__ = __name__
    globals()[name] = register_model(fn)


for _name, _kw in _RESNETS.items():
    _register(_name, CifarResNet, _kw)
for _name, _kw in _WRNS.items():
    _register(_name, CifarWideResNet, _kw)
