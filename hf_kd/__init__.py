"""hf_kd: knowledge distillation for image classification, native to the HuggingFace stack.

``import hf_kd`` registers the CIFAR backbones (``cifar_*``) in timm and nothing more; every other name below is
imported on first use (``hf_kd._lazy``), so loading an exported model needs no Trainer, datasets or plotting import.
"""

from ._lazy import lazy_getattr
from .models.cifar import CIFAR_ARCHITECTURES  # registers the cifar_* archs in timm

__version__ = "0.1.0"
_LAZY = {
    **dict.fromkeys(["BatchAugment", "ImageCollator", "ImageData", "load_image_data"], ".data"),
    "kd_kl_div": ".losses",
    **dict.fromkeys(["TimmStudent", "TransformersTeacher", "create_student", "load_student", "load_teacher"],
                   ".models"),
    **dict.fromkeys(["DistillationArguments", "DistillationModel", "DistillationTrainer", "FFSDArguments",
                     "FFSDTrainer", "KDArguments", "KDTrainer", "MixSKDArguments", "MixSKDTrainer",
                     "ProjectorKDArguments", "ProjectorKDTrainer", "SelfKDArguments", "SelfKDTrainer",
                     "SupervisedTrainer"], ".trainers"),
}
__getattr__ = lazy_getattr(__name__, _LAZY)
__all__ = sorted(["CIFAR_ARCHITECTURES", *_LAZY])


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
