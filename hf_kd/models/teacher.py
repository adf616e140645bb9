"""Any transformers image classifier (ViT, ConvNeXt, Swin, BEiT, ResNet, MobileNet, ...) as a frozen teacher.

``load_teacher(path_or_id)`` returns a ``TimmStudent`` for ``timm_wrapper`` folders / ids and ``timm:<name>`` (as
``load_student``), and a ``TransformersTeacher`` for every other ``model_type``: the model loaded with
``AutoModelForImageClassification`` plus its image processor's preprocessing, exposing the same ``forward_kd`` the
distillation trainers call.

The teacher keeps its own preprocessing. It receives the batch the student sees (after the student's augmentation
and normalisation) and rebuilds, batched on the device, what its image processor would have produced from those
pixels: undo the student's normalisation (back to [0, 1]), resize with the processor's interpolation (and centre-crop
where the processor does), then rescale/normalise with the processor's mean/std (``TeacherPreprocess``).

PEFD's teacher feature (``pre_logits``) is the input of the classification head, captured by a forward pre-hook on
it, so it is exactly the pooled representation the head reads, whatever the family; its width is measured by a dry
run (``hf_kd.modules.projector_kd.pre_logits_dim``). Per family (transformers 5.x heads):

- ViT, DeiT (``ForImageClassification``): the CLS token of the final layer-normed hidden state
  (``last_hidden_state[:, 0]``); BEiT / Data2VecVision: mean of the patch tokens through the pooler's LayerNorm
  (``pooler_output``, ``use_mean_pooling=True``, their default), else the CLS token.
- ConvNeXt / ConvNeXt V2, Swin / Swin V2, ResNet, RegNet, MobileNet V1/V2, EfficientNet: ``pooler_output`` (the
  globally average-pooled last stage; ConvNeXt adds its final LayerNorm, Swin pools its layer-normed tokens),
  flattened to (B, D).
- DINOv2: the CLS token concatenated with the mean of the patch tokens (width 2 x hidden size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses.precision import upcast_half
from .student import KDOutput, MissingStagesError, TimmStudent, load_student

__all__ = ["TeacherPreprocess", "TransformersTeacher", "load_teacher", "bind_student_input", "check_preprocess"]

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

    ``forward_kd(pixel_values)`` takes the student's normalised batch, rebuilds the teacher's input
    (``TeacherPreprocess``; the student's mean/std are set by the trainer through ``bind_student_input``) and returns
    ``KDOutput(logits, pre_logits)``: ``pre_logits`` is what the classification head reads (module docstring).
    """

    own_preprocessing = True  # takes the student's batch as it is; casts to its dtype after preprocessing

    def __init__(self, model: nn.Module, preprocess: TeacherPreprocess, name: Optional[str] = None):
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.name = name
        self.head_name, head = find_head(model)
        self._head_input = None
        head.register_forward_pre_hook(self._keep_head_input)
        # until the trainer binds the student's normalisation, inputs are taken as normalised like the teacher's
        self.set_student_normalization(preprocess.mean or (0.0,), preprocess.std or (1.0,))

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

    def set_student_normalization(self, mean: Sequence[float], std: Sequence[float]):
        """The normalisation of the batches ``forward_kd`` receives: (x/255 - mean) / std per channel."""
        self.student_mean, self.student_std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self._student_stats = {}

    def teacher_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The student's normalised batch -> the teacher's ``pixel_values`` (batched, same device; half precision
        upcast to float32 for the resize, float32/float64 kept: ``upcast_half``)."""
        x = upcast_half(pixel_values)
        mean, std = channel_stats(self._student_stats, self.student_mean, self.student_std, x)
        return self.preprocess((x * std + mean).clamp_(0.0, 1.0))

    def forward_kd(self, pixel_values: torch.Tensor, stages: bool = False) -> KDOutput:
        if stages:
            raise MissingStagesError(
                f"The transformers teacher '{self.architecture}' gives logits and its pooled feature only, not the "
                "feature stages this method needs; use a timm_wrapper teacher (load_student) for feature-map methods.")
        x = self.teacher_inputs(pixel_values)
        p = next(self.model.parameters())
        self._head_input = None
        logits = self.model(pixel_values=x.to(p.dtype)).logits
        pre, self._head_input = self._head_input, None
        if pre is None:
            raise RuntimeError(f"The head '{self.head_name}' of {self.architecture} did not run in forward.")
        return KDOutput(logits=logits, pre_logits=pre.flatten(1))

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> KDOutput:
        return self.forward_kd(pixel_values)


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


def bind_student_input(teacher, mean: Sequence[float], std: Sequence[float]) -> None:
    """Tell a ``TransformersTeacher`` how the student's batches are normalised (no-op for other teachers)."""
    if isinstance(teacher, TransformersTeacher):
        teacher.set_student_normalization(mean, std)
