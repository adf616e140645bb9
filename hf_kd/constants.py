"""Numbers hf_kd uses in more than one place, named once."""

from __future__ import annotations

# Images whose longer side is at most this many pixels are "small" (CIFAR-like): the batched pad-crop augmentation,
# no eval crop (crop_pct 1), in-memory decoding on a GPU. Larger ones get the ImageNet-style pipeline.
SMALL_IMAGE_MAX_SIDE = 64

# timm's eval crop for larger images: resize the short side to size / crop_pct, then centre-crop size x size.
IMAGENET_CROP_PCT = 0.875


def is_small_image(size: int) -> bool:
    """True for CIFAR-like inputs (side <= ``SMALL_IMAGE_MAX_SIDE``)."""
    return size <= SMALL_IMAGE_MAX_SIDE


def default_crop_pct(size: int) -> float:
    """The eval crop rule: no crop for small images, timm's 0.875 otherwise."""
    return 1.0 if is_small_image(size) else IMAGENET_CROP_PCT
