"""hf_kd: knowledge distillation for image classification, native to the HuggingFace stack.

``import hf_kd`` registers the CIFAR backbones (``cifar_*``) in timm and nothing more; every other name below is
imported on first use (``hf_kd._lazy``), so loading an exported model needs no Trainer, datasets or plotting import.
Each method's trainer and arguments class (``hf_kd.KDTrainer``, ``hf_kd.FFSDArguments``, ...) comes from the method
registry (``hf_kd.methods``).
"""

from ._lazy import lazy_getattr
from .models.cifar import CIFAR_ARCHITECTURES  # registers the cifar_* archs in timm

__version__ = "0.1.0"
_LAZY = {
    **dict.fromkeys(["BatchAugment", "ImageCollator", "ImageData", "load_image_data"], ".data"),
    "kd_kl_div": ".losses",
    **dict.fromkeys(["TimmStudent", "TransformersTeacher", "create_student", "load_student", "load_teacher"],
                   ".models"),
    **dict.fromkeys(["DistillationModel", "DistillationOutput", "DistillationTrainer", "NonFiniteLossError"],
                    ".trainers"),
    "DistillationArguments": ".arguments",
    **dict.fromkeys(["methods", "get_method"], ".methods"),
}


def _method_names():
    from .methods import exported_names

    return exported_names()


def _defining_module(attr):
    from .methods import defining_module

    return defining_module(attr)


_registry_getattr = lazy_getattr(__name__, _LAZY, more=_defining_module)


def __getattr__(attr: str):
    if attr == "__all__":  # `from hf_kd import *`: the static names and every method's classes
        return sorted(["CIFAR_ARCHITECTURES", *_LAZY, *_method_names()])
    return _registry_getattr(attr)


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_method_names()))
