"""timm backbones as transformers ``PreTrainedModel``s, on transformers' own ``TimmWrapperForImageClassification``.

We subclass the stock wrapper (same ``TimmWrapperConfig``, ``model_type="timm_wrapper"``) so that an exported folder
loads with stock ``AutoModelForImageClassification``, ``pipeline("image-classification")`` and
``timm.create_model("local-dir:..." / "hf-hub:...", pretrained=True)``, without hf_kd installed for archs timm ships.
The subclass adds only what the stock class lacks (measured; docs/design/overview.md, "Models"):

- the stock ``_init_weights`` re-initialises every conv/linear with N(0, 0.02), discarding timm's own init (kaiming,
  zero-init-last BN); ours keeps timm's init;
- built from scratch, the stock class saves ``timm_model.``-prefixed keys that timm cannot load, and no
  ``pretrained_cfg``; ours saves timm-native keys and the ``pretrained_cfg`` (mean/std/input size) that the image
  processor and ``pipeline`` read;
- ``forward_kd`` returns logits, the multi-stage feature maps and the pre-logits vector in one pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification
from transformers.conversion_mapping import get_checkpoint_conversion_mapping
from transformers.utils import ModelOutput

from ..constants import default_crop_pct
from . import cifar  # noqa: F401  (registers the cifar_* archs into timm)

__all__ = ["TimmStudent", "KDOutput", "check_architecture", "create_student", "load_student", "MissingStagesError"]


class MissingStagesError(ValueError):
    """A method needs feature stages that this architecture cannot give."""


@dataclass
class KDOutput(ModelOutput):
    """Everything a distillation loss needs from one forward pass.

    logits: (B, K); stages: list of stage feature maps, shallow to deep (timm ``forward_intermediates``);
    pre_logits: (B, D) pooled feature fed to the classifier.
    """

    logits: torch.Tensor = None
    stages: Optional[list] = None
    pre_logits: Optional[torch.Tensor] = None


class TimmStudent(TimmWrapperForImageClassification):
    """A timm backbone as an AutoModel-loadable classifier; see the module docstring for what it adds."""

    def __init__(self, config: TimmWrapperConfig):
        if getattr(config, "model_args", None):
            # timm's own Hub configs of fine-tuned models record create_model's num_classes in model_args; the
            # wrapper passes num_classes itself (from num_labels), and twice is a TypeError
            config.model_args = {k: v for k, v in config.model_args.items() if k != "num_classes"}
        super().__init__(config)
        # save_pretrained reverts this PrefixChange -> timm-native keys (the stock class drops it when built from
        # scratch; get_model_conversion_mapping(self) would skip it for an out-of-tree subclass).
        self._weight_conversions = get_checkpoint_conversion_mapping("timm_wrapper")
        # transformers picks the loss from the class name; ours does not end in ForImageClassification
        self.loss_type = "ForImageClassification"
        if getattr(config, "model_args", None) is None:
            config.model_args = {}  # timm's config parser fails on model_args: null
        if getattr(config, "pretrained_cfg", None) is None:
            cfg = {k: v for k, v in dict(self.timm_model.pretrained_cfg).items() if k not in ("architecture", "tag")}
            config.pretrained_cfg = _jsonable(cfg)
        config.pretrained_cfg["num_classes"] = config.num_labels

    def _init_weights(self, module):
        """Keep timm's own initialisation (the stock wrapper overwrites it with N(0, 0.02))."""

    @property
    def architecture(self) -> str:
        return self.config.architecture

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers', plus for hf_kd's ``cifar_*`` backbones the ``auto_map`` and generated
        ``modeling_hf_kd.py`` that let the folder load without hf_kd (``hf_kd.models.remote_code``)."""
        from . import remote_code

        if not remote_code.needs_remote_code(self.architecture):
            return super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            os.makedirs(save_directory, exist_ok=True)
            remote_code.write_modeling_file(save_directory)
        self.config.auto_map = remote_code.auto_map()
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            del self.config.auto_map  # only the saved config carries it

    def forward_kd(self, pixel_values: torch.Tensor, stages: bool = True) -> KDOutput:
        """Logits, stage feature maps (shallow -> deep) and pre-logits in a single forward pass.

        With ``stages=False`` only logits and pre-logits are computed (no intermediate list kept).
        """
        m = self.timm_model
        if stages:
            if not hasattr(m, "forward_intermediates"):
                raise MissingStagesError(
                    f"timm architecture '{self.architecture}' has no forward_intermediates(), so it cannot give the "
                    "feature stages this method needs; pick an architecture that supports it (timm >= 1.0 CNNs/ViTs, "
                    "or the cifar_* backbones hf_kd registers).")
            last, feats = m.forward_intermediates(pixel_values)
        else:
            last, feats = m.forward_features(pixel_values), None
        pre = m.forward_head(last, pre_logits=True)
        return KDOutput(logits=m.get_classifier()(pre), stages=feats, pre_logits=pre)

    @torch.no_grad()
    def stage_shapes(self, input_size: Sequence[int] | None = None) -> list[tuple[int, ...]]:
        """(C, H, W) of every stage for one input of ``input_size`` (default: the config's), via a dry run."""
        size = tuple(input_size or self.config.pretrained_cfg["input_size"])
        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters())
            out = self.forward_kd(torch.zeros(1, *size, device=p.device, dtype=p.dtype))
        finally:
            self.train(was_training)
        return [tuple(s.shape[1:]) for s in out.stages]

    def require_stages(self, n: int, method: str, input_size: Sequence[int] | None = None) -> list[tuple]:
        """The last ``n`` stages as (C, H, W), or a clear error naming the architecture and the method."""
        shapes = self.stage_shapes(input_size)
        spatial = [s for s in shapes if len(s) == 3]
        if len(spatial) < n:
            raise MissingStagesError(
                f"{method} needs {n} spatial feature stages, but timm architecture '{self.architecture}' gives "
                f"{len(spatial)} ({shapes}). Use a CNN backbone with at least {n} stages, e.g. cifar_resnet32.")
        return spatial[-n:]


def _timm_labels(model) -> Optional[list[str]]:
    """The class names of a pretrained timm model where timm knows them (its ImageNet label sets: the readable
    descriptions, as transformers names a timm Hub model's classes), else None (numbered classes)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    return [str(d) for d in ImageNetInfo(subset).label_descriptions()] if subset else None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def check_architecture(architecture: str, what: str = "backbone") -> None:
    """A clear error for a name timm does not know, listing the closest known names first (a typo such as
    ``cifar_resnt32`` gets ``cifar_resnet32``). Cheap: the recipes call it before any data loads."""
    import timm

    if timm.is_model(architecture):
        return
    import difflib

    names = timm.list_models()
    close = difflib.get_close_matches(architecture, names, n=8, cutoff=0.6)
    close += [m for m in names if architecture.split("_")[0] in m and m not in close][:8 - len(close)]
    raise ValueError(
        f"Unknown {what} '{architecture}': timm has no such architecture (after `import hf_kd`, which adds "
        f"{', '.join(cifar.CIFAR_ARCHITECTURES)}). Closest names: {', '.join(close) or 'none'}. See "
        "`timm.list_models()`.")


def _image_size_args(architecture: str, input_size: Sequence[int] | None, model_args: dict) -> dict:
    """timm architectures built for one input size (ViT, DeiT, Swin, ...: ``fixed_input_size`` in their default
    ``pretrained_cfg``) get the data's size as ``img_size``, unless given: built at 224 px, a ViT refuses 32-px
    images at the first step."""
    import timm

    if input_size is None or "img_size" in model_args:
        return model_args
    default = timm.get_pretrained_cfg(architecture, allow_unregistered=False) if "." not in architecture else None
    if default is None or not getattr(default, "fixed_input_size", False):
        return model_args
    size = tuple(int(v) for v in input_size[1:])
    return model_args if size == tuple(default.input_size[1:]) else {**model_args, "img_size": size}


def create_student(
    architecture: str,
    num_labels: int,
    label_names: Sequence[str] | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: Sequence[int] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    crop_mode: str | None = None,
    model_args: dict | None = None,
) -> TimmStudent:
    """Build a freshly initialised timm backbone as a ``TimmStudent``.

    ``mean``/``std``/``input_size`` and the evaluation resize (``crop_pct``, ``interpolation``, ``crop_mode``)
    describe the preprocessing the model is trained and evaluated with; they travel in ``config.pretrained_cfg`` so
    that the image processor and ``pipeline`` preprocess exactly the same way (``ImageData.preprocessing`` gives all
    six). The evaluation resize always replaces timm's: that belongs to timm's pretrained weights (e.g. crop_pct 0.95,
    bicubic for resnet18), not to this freshly initialised model; left out, it is hf_kd's default for the input size
    (``load_image_data``'s: crop_pct 1 up to 64 px else 0.875, bilinear, centre crop).
    """
    import timm

    check_architecture(architecture)
    labels = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
    if len(labels) != num_labels:
        raise ValueError(f"{len(labels)} label names given for num_labels={num_labels}")
    config = TimmWrapperConfig(
        architecture=architecture,
        num_labels=num_labels,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)} if len(set(labels)) == len(labels) else None,
        model_args=_image_size_args(architecture, input_size, dict(model_args or {})),
    )
    student = TimmStudent(config)
    cfg = config.pretrained_cfg
    if mean is not None:
        cfg["mean"] = [float(v) for v in mean]
    if std is not None:
        cfg["std"] = [float(v) for v in std]
    if input_size is not None:
        cfg["input_size"] = [int(v) for v in input_size]
    # the image processor (timm's eval transform), the head-less AutoModel and timm read these
    cfg["crop_pct"] = float(crop_pct if crop_pct is not None else default_crop_pct(max(cfg["input_size"][1:])))
    cfg["interpolation"] = interpolation or "bilinear"
    cfg["crop_mode"] = crop_mode or "center"
    for key in ("test_input_size", "test_crop_pct"):  # timm's settings for testing its pretrained weights
        cfg.pop(key, None)
    return student


def load_student(path_or_repo: str, num_labels: int | None = None, **kwargs) -> TimmStudent:
    """Load a model as a ``TimmStudent`` (it gets ``forward_kd``): a teacher, or a student to continue from.

    ``path_or_repo``: an exported hf_kd / ``timm_wrapper`` folder or Hub id (``timm/resnet50.a1_in1k`` included), or
    ``timm:<name>`` for a timm model with its pretrained weights (``timm.create_model(name, pretrained=True)``;
    ``num_labels`` gives a freshly initialised classifier for a different label set).
    """
    if path_or_repo.startswith("timm:"):
        import timm

        name = path_or_repo[len("timm:"):]
        model = timm.create_model(name, pretrained=True, **({"num_classes": num_labels} if num_labels else {}))
        student = create_student(name.split(".")[0], model.num_classes, None if num_labels else _timm_labels(model),
                                 model_args=kwargs.pop("model_args", None))
        student.timm_model.load_state_dict(model.state_dict())
        cfg = {k: v for k, v in dict(model.pretrained_cfg).items() if k not in ("architecture", "tag")}
        student.config.pretrained_cfg = {**_jsonable(cfg), "num_classes": model.num_classes}
        return student.eval()  # as from_pretrained returns a model
    if num_labels is not None:  # a new classifier for a different label set
        kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    revision = {k: v for k, v in kwargs.items() if k == "revision"}
    model_type = TimmWrapperConfig.get_config_dict(path_or_repo, **revision)[0].get("model_type")
    if model_type not in (None, "timm_wrapper"):  # timm's own Hub configs have no model_type
        raise ValueError(f"{path_or_repo} holds a '{model_type}' model; hf_kd students are timm backbones "
                         "(model_type 'timm_wrapper'). To use it as a teacher, load it with "
                         "hf_kd.load_teacher(path_or_id).")
    student, info = TimmStudent.from_pretrained(path_or_repo, output_loading_info=True, **kwargs)
    if num_labels is not None and info["mismatched_keys"]:
        # transformers leaves a resized head uninitialised (memory garbage, NaN seen) and relies on _init_weights,
        # which keeps timm's init and so does nothing: give it timm's fresh classifier
        student.timm_model.reset_classifier(num_labels)
    return student
