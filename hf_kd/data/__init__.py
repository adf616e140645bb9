"""HF ``datasets`` loading (Hub ids, imagefolder, save_to_disk, offline default), transforms, collator.

Names load on first use (``datasets`` and torchvision's transforms are heavy imports)."""

from .._lazy import lazy_getattr

_LAZY = {"BatchAugment": ".augment", "ImageCollator": ".augment", "RandomResizedCropAugment": ".augment", "InMemoryImages": ".memory",
         **dict.fromkeys(["PRESETS", "ImageData", "balanced_subset", "digits_dataset", "image_transform",
                          "load_image_data"], ".loading")}
__getattr__ = lazy_getattr(__name__, _LAZY)
__all__ = ["BatchAugment", "ImageCollator", "ImageData", "InMemoryImages", "PRESETS", "RandomResizedCropAugment", "balanced_subset",
           "digits_dataset", "image_transform", "load_image_data"]
