"""HF ``datasets`` loading (Hub ids, imagefolder, save_to_disk, offline default), transforms, collator."""

from .augment import BatchAugment, ImageCollator
from .memory import InMemoryImages
from .loading import PRESETS, ImageData, balanced_subset, digits_dataset, image_transform, load_image_data

__all__ = ["BatchAugment", "ImageCollator", "ImageData", "InMemoryImages", "PRESETS", "balanced_subset",
           "digits_dataset", "image_transform", "load_image_data"]
