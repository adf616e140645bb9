"""HF ``datasets`` loading (Hub ids, imagefolder, save_to_disk, offline default), transforms, collator."""

from .augment import BatchAugment, ImageCollator
from .loading import PRESETS, ImageData, digits_dataset, image_transform, load_image_data

__all__ = ["BatchAugment", "ImageCollator", "ImageData", "PRESETS", "digits_dataset", "image_transform",
           "load_image_data"]
