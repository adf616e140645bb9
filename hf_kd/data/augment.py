"""Batched augmentation on the training device, and the collator.

The datasets yield uint8 images; ``BatchAugment`` turns a uint8 batch into the normalised float batch the model sees.
In training it applies the papers' CIFAR augmentation (random crop with 4-pixel padding + horizontal flip) to the
whole batch at once with torch ops on the batch's device; for ImageNet-style data the random-resized crop is done per
sample in the dataset transform and only the flip is batched here. Because the randomness is drawn from torch's
global RNG inside the training step (not in DataLoader workers), the Trainer's RNG checkpointing makes a mid-epoch
resume exact (HF_NOTES §3.3).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


class BatchAugment:
    """uint8 pixels (B,3,H,W) -> normalised float (B,3,H,W); random pad-crop/flip only when ``train``.

    ``kind``: "cifar" (pad ``padding`` + random crop back to HxW + horizontal flip p=0.5), "imagenet" (flip only),
    "none" (normalise only). ``pad_mode``: "constant" (zeros, as torchvision's RandomCrop(32, padding=4)) or
    "reflect" (FFSD's Pad(4, reflect)).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], kind: str = "cifar", padding: int = 4,
                 pad_mode: str = "constant"):
        if kind not in ("cifar", "imagenet", "none"):
            raise ValueError(f"unknown augmentation '{kind}' (expected cifar, imagenet or none)")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.kind, self.padding, self.pad_mode = kind, padding, pad_mode

    def __repr__(self):
        return (f"BatchAugment(kind={self.kind!r}, padding={self.padding}, pad_mode={self.pad_mode!r}, "
                f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 255] (uint8, or float after a reflect-padded crop) -> (x/255 - mean) / std."""
        x = x.float() / 255.0
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def draw(self, shape: Sequence[int], device=None) -> tuple[torch.Tensor, ...]:
        """The random parameters of one training batch of ``shape`` (B, C, H, W): per-sample crop offsets i, j and
        flip flags, drawn from torch's global RNG on ``device`` (the same draws, in the same order, whatever runs
        ``augment`` afterwards). Nothing is drawn when ``kind`` is "none"."""
        if self.kind == "none":
            return ()
        b, p = shape[0], self.padding if self.kind == "cifar" else 0
        i = torch.randint(0, 2 * p + 1, (b, 1), device=device)
        j = torch.randint(0, 2 * p + 1, (b, 1), device=device)
        flip = torch.rand(b, 1, device=device) < 0.5
        return i, j, flip

    def crop_flip(self, x: torch.Tensor, crop: bool = True, params: Sequence[torch.Tensor] = None) -> torch.Tensor:
        """Random crop of the ``padding``-padded image back to (H, W) and random horizontal flip, per sample;
        ``params`` = ``draw(...)`` (drawn here on the batch's device when not given)."""
        b, _, h, w = x.shape
        dev = x.device
        p = self.padding if crop else 0
        xp = F.pad(x, (p, p, p, p), mode=self.pad_mode) if p else x
        if params is None:
            i = torch.randint(0, 2 * p + 1, (b, 1), device=dev)
            j = torch.randint(0, 2 * p + 1, (b, 1), device=dev)
            flip = torch.rand(b, 1, device=dev) < 0.5
        else:
            i, j, flip = params
        rows = i + torch.arange(h, device=dev)  # (B, H)
        ar = torch.arange(w, device=dev)
        cols = torch.where(flip, j + (w - 1) - ar, j + ar)  # (B, W)
        out = xp[torch.arange(b, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B,H,W,C)
        return out.permute(0, 3, 1, 2)

    def augment(self, x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """The training transform of a uint8 batch with the random parameters ``params`` = ``draw(x.shape)``
        (deterministic given them: the fast path draws on the host and runs this inside its compiled step)."""
        if self.kind != "none":  # pad with black pixels before normalising, as torchvision does
            x = self.crop_flip(x if self.pad_mode == "constant" else x.float(), crop=self.kind == "cifar",
                               params=params)
        return self.normalize(x).contiguous()

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.kind != "none":  # pad with black pixels before normalising, as torchvision does
            x = self.crop_flip(x if self.pad_mode == "constant" else x.float(), crop=self.kind == "cifar")
        return self.normalize(x).contiguous()


class ImageCollator:
    """Stacks ``pixel_values`` (uint8) and ``labels`` into a batch; passes a ready batch through."""

    def __call__(self, features: list[dict] | dict) -> dict:
        if isinstance(features, dict):  # already a batch (InMemoryImages.__getitems__)
            return features
        return {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features]),
                "labels": torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)}
