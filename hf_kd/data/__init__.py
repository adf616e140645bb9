"""HF ``datasets`` loading (Hub ids, imagefolder, save_to_disk, data files, offline default), transforms, collator.

Names load on first use (``datasets`` and torchvision's transforms are heavy imports)."""

from .._lazy import lazy_getattr

_LAZY = {"BatchAugment": ".augment", "ImageCollator": ".augment", "RandomResizedCropAugment": ".augment",
         "InMemoryImages": ".memory",
         **dict.fromkeys(["PRESETS", "ImageData", "balanced_subset", "digits_dataset", "image_transform",
                          "load_image_data", "to_rgb"], ".loading"),
         **dict.fromkeys(["CIFAR10_LABELS", "CIFAR100_LABELS"], ".label_sets")}
__getattr__ = lazy_getattr(__name__, _LAZY)
__all__ = ["BatchAugment", "CIFAR10_LABELS", "CIFAR100_LABELS", "ImageCollator", "ImageData", "InMemoryImages",
           "PRESETS", "RandomResizedCropAugment", "balanced_subset", "digits_dataset", "image_transform", "load_image_data",
           "to_rgb"]
