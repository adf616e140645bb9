"""Teachers of every kind, and the one rule by which each sees the training images.

``load_teacher(path_or_id)`` returns a ``TimmStudent`` for ``timm_wrapper`` folders / ids (hf_kd exports, ``timm/...``
Hub ids) and ``timm:<name>`` (as ``load_student``), and a ``TransformersTeacher`` for every other ``model_type``: the
model loaded with ``AutoModelForImageClassification``, with its image processor read into a ``TeacherPreprocess``.
Both expose ``forward_kd(pixel_values)`` on the teacher's *own* input.

The input contract (``InputSpec``, ``TeacherInput``), the same for every teacher kind: the student's augmented view
(one random crop/flip per image, as the student sees it) reaches the teacher through the teacher's own preprocessing,
batched on the device: the student's normalisation undone (back to [0, 1] pixels), the view resized to the teacher's
input size with the teacher's resampling, then the teacher's rescale and mean/std. The view is not centre-cropped
again: it already is a crop of the image, the same content the student is scored on, and a second crop would
hide part of it from the teacher (timm's distillation task also only re-normalises). The teacher's size and
statistics come from its ``pretrained_cfg`` (timm / hf_kd) or its image processor (transformers; the network input
size is the processor's crop size, else its resize size). Where the teacher's preprocessing equals the student's the
batch passes unchanged.

PEFD's teacher feature (``pre_logits``) of a transformers teacher is the input of its classification head, captured
by a forward pre-hook on it, so it is exactly the pooled representation the head reads, whatever the family; its
width is measured by a dry run (``hf_kd.modules.projector_kd.pre_logits_dim``). Per family (transformers 5.x heads):

- ViT, DeiT (``ForImageClassification``): the CLS token of the final layer-normed hidden state
  (``last_hidden_state[:, 0]``); BEiT / Data2VecVision: mean of the patch tokens through the pooler's LayerNorm
  (``pooler_output``, ``use_mean_pooling=True``, their default), else the CLS token.
- ConvNeXt / ConvNeXt V2, Swin / Swin V2, ResNet, RegNet, MobileNet V1/V2, EfficientNet: ``pooler_output`` (the
  globally average-pooled last stage; ConvNeXt adds its final LayerNorm, Swin pools its layer-normed tokens),
  flattened to (B, D).
- DINOv2: the CLS token concatenated with the mean of the patch tokens (width 2 x hidden size).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses.precision import upcast_half
from .student import KDOutput, MissingStagesError, TimmStudent, load_student

__all__ = ["InputSpec", "TeacherInput", "TeacherPreprocess", "TransformersTeacher", "input_spec", "load_teacher",
           "check_preprocess"]

logger = logging.getLogger(__name__)

# PIL resampling codes (what image processors store in ``resample``) -> torch interpolation modes
_PIL_TO_TORCH = {0: "nearest", 2: "bilinear", 3: "bicubic",
                 # no torch equivalent: the closest antialiased filter (logged when used)
                 1: "bicubic", 4: "bilinear", 5: "bilinear"}
_PIL_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# attribute names under which transformers' *ForImageClassification models keep their classification head
HEAD_NAMES = ("classifier", "head", "fc", "score")


def _interpolation(resample) -> tuple[str, str]:
    """(torch mode, the processor's own name) from a processor's ``resample`` (PIL int/enum or torchvision mode)."""
    value = getattr(resample, "value", resample)
    if isinstance(value, str):  # torchvision InterpolationMode
        name = value.lower()
        return {"nearest-exact": "nearest", "lanczos": "bicubic", "box": "bilinear", "hamming": "bilinear"}.get(
            name, name), name
    code = 2 if value is None else int(value)
    if code not in _PIL_TO_TORCH:
        raise ValueError(f"Unknown image-processor resample code {resample!r}")
    return _PIL_TO_TORCH[code], _PIL_NAMES[code]


def _size_dict(size) -> dict:
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    items = size.items() if hasattr(size, "items") else vars(size).items()
    return {k: v for k, v in items if v is not None}


@dataclass
class TeacherPreprocess:
    """What a transformers image processor does to an image, as batched tensor operations.

    ``resize``: ("size", (h, w)) to a fixed size, or ("shortest_edge", s) keeping the aspect ratio; ``crop``: centre
    crop (h, w) after the resize, or None; ``scale``: the processor's ``rescale_factor`` relative to 1/255 (pixels
    arrive in [0, 1]); ``mean`` / ``std``: its normalisation (None: ``do_normalize`` off).
    """

    resize: Optional[tuple]
    crop: Optional[tuple]
    interpolation: str
    resample_name: str
    scale: float = 1.0
    mean: Optional[tuple] = None
    std: Optional[tuple] = None
    _stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_image_processor(cls, processor) -> "TeacherPreprocess":
        """Read ``size`` / ``crop_pct`` / ``crop_size`` / ``resample`` / ``rescale_factor`` / ``image_mean`` /
        ``image_std`` and their ``do_*`` switches, as ``BaseImageProcessor.preprocess`` applies them."""
        get = lambda name, default=None: getattr(processor, name, default)  # noqa: E731
        size = _size_dict(get("size"))
        resize = crop = None
        if get("do_resize", True) and size:
            if "height" in size and "width" in size:
                resize = ("size", (int(size["height"]), int(size["width"])))
            elif "shortest_edge" in size:
                s = int(size["shortest_edge"])
                crop_pct = get("crop_pct")
                if crop_pct is not None and not _size_dict(get("crop_size")):  # ConvNeXt-style processors
                    if s < 384:  # resize the short side to s / crop_pct, then centre-crop s x s
                        resize, crop = ("shortest_edge", int(s / crop_pct)), (s, s)
                    else:  # warp to s x s, no crop
                        resize = ("size", (s, s))
                else:
                    resize = ("shortest_edge", s)
            else:
                raise ValueError(f"{type(processor).__name__} resizes with size={size}; hf_kd rebuilds teacher "
                                 "inputs for size {height, width} or {shortest_edge} only. Pass a teacher whose "
                                 "image processor uses one of those.")
        if get("do_center_crop", False) and crop is None:
            cs = _size_dict(get("crop_size"))
            if "height" in cs and "width" in cs:
                crop = (int(cs["height"]), int(cs["width"]))
        mode, name = _interpolation(get("resample"))
        if mode != name:
            logger.warning(f"Teacher image processor resamples with {name}; torch has no batched equivalent, using "
                           f"antialiased {mode}.")
        scale = float(get("rescale_factor", 1 / 255)) * 255.0 if get("do_rescale", True) else 255.0
        mean = std = None
        if get("do_normalize", True):
            mean, std = tuple(float(v) for v in get("image_mean")), tuple(float(v) for v in get("image_std"))
        return cls(resize=resize, crop=crop, interpolation=mode, resample_name=name, scale=scale, mean=mean,
                   std=std)

    def __call__(self, pixels01: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float pixels in [0, 1] -> the teacher's ``pixel_values`` (in the dtype of ``pixels01``)."""
        x = pixels01
        if self.resize is not None:
            h, w = x.shape[-2:]
            if self.resize[0] == "size":
                out = self.resize[1]
            else:  # transformers' get_resize_output_image_size(default_to_square=False)
                s = self.resize[1]
                out = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
            if tuple(out) != (h, w):
                aa = self.interpolation in ("bilinear", "bicubic")
                x = F.interpolate(x, size=tuple(out), mode=self.interpolation, antialias=aa,
                                  **({} if self.interpolation == "nearest" else {"align_corners": False}))
                x = x.clamp(0.0, 1.0)  # processors resize 8-bit images: bicubic overshoot is clipped
        if self.crop is not None:
            ch, cw = self.crop
            h, w = x.shape[-2:]
            if ch > h or cw > w:
                raise ValueError(f"Teacher centre crop {self.crop} is larger than the resized input {(h, w)}")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        x = x * self.scale
        if self.mean is not None:
            mean, std = channel_stats(self._stats, self.mean, self.std, x)
            x = (x - mean) / std
        return x


def channel_stats(cache: dict, mean: Sequence[float], std: Sequence[float], x: torch.Tensor):
    """``mean``/``std`` as (1, C, 1, 1) tensors in ``x``'s dtype and device, made once per (dtype, device) and kept
    in ``cache``: no host-to-device copy in every training step."""
    key = (x.dtype, x.device)
    if key not in cache:
        cache[key] = tuple(torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in (mean, std))
    return cache[key]


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """(attribute name, module) of the classification head of a transformers ``*ForImageClassification``."""
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return name, head
    raise ValueError(f"{type(model).__name__} has no single classification head ({' / '.join(HEAD_NAMES)}), so "
                     "hf_kd cannot read the pooled feature it classifies. Use a standard *ForImageClassification "
                     "model (e.g. DeiTForImageClassification rather than ...WithTeacher).")


class TransformersTeacher(nn.Module):
    """A transformers ``AutoModelForImageClassification`` as a frozen teacher with ``forward_kd``.

    ``forward_kd(pixel_values)`` takes the teacher's own input (what its image processor gives; the trainer makes it
    from the student's batch with ``TeacherInput``) and returns ``KDOutput(logits, pre_logits)``: ``pre_logits`` is
    what the classification head reads (module docstring). ``preprocess`` is the image processor as batched ops.
    """

    def __init__(self, model: nn.Module, preprocess: TeacherPreprocess, name: Optional[str] = None):
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.name = name
        self.head_name, head = find_head(model)
        self._head_input = None
        head.register_forward_pre_hook(self._keep_head_input)

    def _keep_head_input(self, module, args):
        self._head_input = args[0]

    @property
    def config(self):
        return self.model.config

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def architecture(self) -> str:
        return (getattr(self.config, "architectures", None) or [type(self.model).__name__])[0]

    def forward_kd(self, pixel_values: torch.Tensor, stages: bool = False) -> KDOutput:
        if stages:
            raise MissingStagesError(
                f"The transformers teacher '{self.architecture}' gives logits and its pooled feature only, not the "
                "feature stages this method needs; use a timm_wrapper teacher (load_student) for feature-map methods.")
        self._head_input = None
        logits = self.model(pixel_values=pixel_values).logits
        pre, self._head_input = self._head_input, None
        if pre is None:
            raise RuntimeError(f"The head '{self.head_name}' of {self.architecture} did not run in forward.")
        return KDOutput(logits=logits, pre_logits=pre.flatten(1))

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> KDOutput:
        return self.forward_kd(pixel_values)


@dataclass(frozen=True)
class InputSpec:
    """The input a network was trained on: ``size`` (h, w), or ``shortest_edge`` (the shorter side, aspect kept);
    the resampling that makes it (``interpolation``, a torch mode); ``scale`` (pixels in [0, 1] are multiplied by
    it before normalising: a transformers processor's ``rescale_factor`` relative to 1/255); ``mean`` / ``std``
    (None: not normalised)."""

    size: Optional[tuple] = None
    shortest_edge: Optional[int] = None
    interpolation: str = "bilinear"
    scale: float = 1.0
    mean: Optional[tuple] = None
    std: Optional[tuple] = None

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """The teacher's (h, w) for a view of (h, w) pixels (transformers' shortest-edge rule where it applies)."""
        if self.size is not None:
            return tuple(self.size)
        if self.shortest_edge is not None:
            s = self.shortest_edge
            return (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        return h, w

    def example_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one input, for dry runs (a shortest-edge network gets a square)."""
        h, w = self.size or (self.shortest_edge,) * 2
        return (len(self.mean) if self.mean else 3, int(h), int(w))

    def describe(self) -> str:
        size = "x".join(map(str, self.size)) if self.size else f"shorter side {self.shortest_edge}"
        norm = f"mean {_rounded(self.mean)}, std {_rounded(self.std)}" if self.mean else "not normalised"
        return f"{size} px ({self.interpolation}), {norm}"


def _rounded(values) -> list:
    return [round(float(v), 4) for v in values]


def input_spec(model) -> InputSpec:
    """The ``InputSpec`` of any teacher (or student): a ``TransformersTeacher`` from its image processor (network
    input = the crop if the processor crops, else the resize), anything with a timm ``pretrained_cfg`` (hf_kd
    exports, ``timm/...`` ids, ``timm:<name>``) from ``input_size`` / ``interpolation`` / ``mean`` / ``std``."""
    p = getattr(model, "preprocess", None)
    if isinstance(p, TeacherPreprocess):
        size = edge = None
        if p.crop is not None:
            size = tuple(p.crop)
        elif p.resize is not None and p.resize[0] == "size":
            size = tuple(p.resize[1])
        elif p.resize is not None:
            edge = int(p.resize[1])
        return InputSpec(size=size, shortest_edge=edge, interpolation=p.interpolation, scale=p.scale,
                         mean=p.mean, std=p.std)
    cfg = getattr(getattr(model, "config", None), "pretrained_cfg", None)
    if not cfg or "input_size" not in cfg:
        raise ValueError(f"{type(model).__name__} carries no preprocessing (config.pretrained_cfg with input_size, "
                         "mean, std): hf_kd cannot tell which images it was trained on. Load teachers with "
                         "hf_kd.load_teacher(path_or_id).")
    mode, _ = _interpolation(cfg.get("interpolation") or "bilinear")
    mode = mode if mode in ("nearest", "bilinear", "bicubic") else "bilinear"  # timm's "random": train-time only
    mean, std = cfg.get("mean"), cfg.get("std")
    return InputSpec(size=tuple(int(v) for v in cfg["input_size"][1:]), interpolation=mode,
                     mean=tuple(float(v) for v in mean) if mean is not None else None,
                     std=tuple(float(v) for v in std) if std is not None else None)


class TeacherInput:
    """The student's normalised training batch -> a teacher's own input (the module docstring's contract).

    Undo the student's (x/255 - mean) / std, resize the view to the teacher's size with its interpolation
    (antialiased, clipped to [0, 1] as an 8-bit image would be), rescale and normalise with the teacher's
    statistics. Batched on the batch's device; the statistics are made once per (dtype, device): no host copy or sync
    per step. Half-precision batches are upcast to float32 first (undoing a bf16 normalisation loses bits); float32
    and float64 keep their dtype. Where the teacher's preprocessing equals the student's (same statistics, same
    size) the batch is returned as it is.
    """

    def __init__(self, student_mean: Sequence[float], student_std: Sequence[float], spec: InputSpec):
        self.student_mean = tuple(float(v) for v in student_mean)
        self.student_std = tuple(float(v) for v in student_std)
        self.spec = spec
        self.same_normalization = spec.scale == 1.0 and spec.mean is not None and all(
            math.isclose(a, b, rel_tol=0, abs_tol=1e-6) for a, b in
            zip(self.student_mean + self.student_std, spec.mean + spec.std)) and len(spec.mean) == len(student_mean)
        self._student_stats, self._teacher_stats = {}, {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = self.spec.output_size(h, w)
        if self.same_normalization and out == (h, w):
            return x
        x = upcast_half(x)
        mean, std = channel_stats(self._student_stats, self.student_mean, self.student_std, x)
        x = (x * std + mean).clamp(0.0, 1.0)
        if out != (h, w):
            mode = self.spec.interpolation
            x = F.interpolate(x, size=out, mode=mode, antialias=mode in ("bilinear", "bicubic"),
                              **({} if mode == "nearest" else {"align_corners": False})).clamp(0.0, 1.0)
        if self.spec.scale != 1.0:
            x = x * self.spec.scale
        if self.spec.mean is not None:
            mean, std = channel_stats(self._teacher_stats, self.spec.mean, self.spec.std, x)
            x = (x - mean) / std
        return x

    def describe(self, student_size: Sequence[int]) -> Optional[str]:
        """None when the teacher takes the student's batch as it is, else what changes, e.g. "teacher sees 224x224
        px (bicubic), mean [...], std [...]; student 32x32 px, mean [...], std [...]"."""
        h, w = (int(v) for v in student_size[-2:])
        if self.same_normalization and self.spec.output_size(h, w) == (h, w):
            return None
        th, tw = self.spec.output_size(h, w)
        spec = dataclasses.replace(self.spec, size=(th, tw), shortest_edge=None)
        return (f"teacher sees {spec.describe()}; student {h}x{w} px, mean {_rounded(self.student_mean)}, std "
                f"{_rounded(self.student_std)}")


def load_teacher(path_or_repo: str, **kwargs) -> TimmStudent | TransformersTeacher:
    """A frozen teacher from a Hub id or local folder of any image-classification model type.

    ``timm_wrapper`` (hf_kd exports, ``timm/...`` ids) and ``timm:<name>`` load as ``TimmStudent`` (``load_student``);
    any other ``model_type`` loads with ``AutoModelForImageClassification`` and ``AutoImageProcessor`` as a
    ``TransformersTeacher``. ``kwargs`` (e.g. ``revision``) go to ``from_pretrained``.
    """
    if path_or_repo.startswith("timm:"):
        return load_student(path_or_repo, **kwargs)
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(path_or_repo, **{k: v for k, v in kwargs.items() if k == "revision"})
    if config.model_type == "timm_wrapper":
        return load_student(path_or_repo, **kwargs)
    model = AutoModelForImageClassification.from_pretrained(path_or_repo, **kwargs)
    try:
        processor = AutoImageProcessor.from_pretrained(
            path_or_repo, **{k: v for k, v in kwargs.items() if k == "revision"})
    except (OSError, ValueError) as e:
        raise ValueError(f"{path_or_repo} has no image processor config (preprocessor_config.json): hf_kd needs it "
                         f"to feed the teacher as it was trained. Save one with the model "
                         f"(image_processor.save_pretrained(folder)). ({e})") from None
    preprocess = TeacherPreprocess.from_image_processor(processor)
    check_preprocess(preprocess, processor, path_or_repo)
    return TransformersTeacher(model, preprocess, name=path_or_repo)


def check_preprocess(preprocess: TeacherPreprocess, processor, name: str, tolerance: float = 0.05) -> None:
    """Refuse a teacher whose image processor does more than ``TeacherPreprocess`` rebuilds (LeViT's and
    PoolFormer's resize rules, EfficientNet's ``include_top``, MobileViT's BGR flip, ...): both preprocess one smooth
    probe image and must agree in shape and, after normalisation, within ``tolerance`` (matching families differ by
    <= 0.02, from the clamp after a bicubic resize; the others by 0.7 or more)."""
    probe = F.interpolate(torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)), size=(32, 32),
                          mode="bilinear", align_corners=False)
    want = processor(images=probe * 255.0, return_tensors="pt")["pixel_values"].float()
    try:
        got = preprocess(probe)
    except ValueError as e:  # e.g. a crop larger than the resize
        found = str(e)
    else:
        gap = (got - want).abs().max().item() if got.shape == want.shape else None
        found = (f"shape {tuple(got.shape)} against {tuple(want.shape)}" if gap is None else
                 None if gap <= tolerance else f"a difference of {gap:.3g}")
    if found is not None:
        raise ValueError(
            f"Teacher {name}: its {type(processor).__name__} preprocesses images in a way hf_kd does not rebuild on "
            f"the device ({found} on a probe image), so the teacher would see inputs unlike its training data. hf_kd "
            f"supports processors that resize (size or shortest_edge, ConvNeXt's crop_pct), centre-crop, rescale and "
            f"normalise, as ViT, DeiT, BEiT, ConvNeXt, Swin, ResNet, RegNet and MobileNet's do. Use such a teacher, "
            f"or a timm model (timm:<name>).")
