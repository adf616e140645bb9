"""Batched augmentation on the training device, and the collator.

The datasets yield uint8 images; ``BatchAugment`` turns a uint8 batch into the normalised float batch the model sees.
In training it applies the papers' CIFAR augmentation (random crop with 4-pixel padding + horizontal flip) to the
whole batch at once with torch ops on the batch's device; for ImageNet-style data the random-resized crop is done per
sample in the dataset transform and only the flip is batched here. Because the randomness is drawn from torch's
global RNG inside the training step (not in DataLoader workers), the Trainer's RNG checkpointing makes a mid-epoch
resume exact (docs/design/overview.md, "Exact resume"). ``RandomResizedCropAugment`` is LightSKD's CIFAR crop,
batched the same way.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

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
        x = x.to(torch.float32, copy=True).div_(255.0)  # a copy: the caller's tensor is never written
        if self.mean.device != x.device:  # moved once, not copied to the device in every step
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return x.sub_(self.mean).div_(self.std)  # in place: the same operations, without batch-sized temporaries

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
        if p == 0:  # flip only (ImageNet-style data): the gather's pixels exactly, at a fraction of its cost on a CPU
            out = x.clone()
            rows = flip[:, 0].nonzero()[:, 0]
            out[rows] = x[rows].flip(-1)
            return out
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


class RandomResizedCropAugment(BatchAugment):
    """Batched ``RandomResizedCrop(H x W)`` + horizontal flip (p 0.5) + normalisation, with torch ops on the device.

    Crop boxes are drawn per sample as torchvision's ``RandomResizedCrop.get_params`` does: up to 10 tries of an area
    fraction ~ U(scale) and a log-uniform aspect ratio in ``ratio``, the first box that fits wins, else a centre crop
    clamped to ``ratio``. Each box is resized back to the input's H x W with bilinear interpolation (half-pixel
    centres, samples clamped to the box: what ``F.interpolate(..., align_corners=False)`` of the cropped image gives).
    Differences from the official per-image PIL pipeline: the result is not rounded to uint8 before normalising, and
    the random draws come from torch's RNG in the training step (so a mid-epoch resume is exact).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 attempts: int = 10):
        super().__init__(mean, std, "none")
        self.kind = "random_resized_crop"
        self.scale, self.ratio, self.attempts = tuple(scale), tuple(ratio), attempts

    def __repr__(self):
        return (f"RandomResizedCropAugment(scale={self.scale}, ratio={self.ratio}, "
                f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})")

    def crop_boxes(self, b: int, h: int, w: int, device) -> torch.Tensor:
        """(B, 4) integer boxes (top, left, height, width), torchvision's sampling rule batched."""
        area = h * w
        target = area * torch.empty(b, self.attempts, device=device).uniform_(*self.scale)
        log_r = torch.empty(b, self.attempts, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(log_r)
        cw = torch.round(torch.sqrt(target * aspect))
        ch = torch.round(torch.sqrt(target / aspect))
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # first attempt that fits
        cw, ch, found = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0], ok.any(dim=1)
        # fallback: centre crop of the whole image, aspect clamped to `ratio`
        in_ratio = w / h
        if in_ratio < min(self.ratio):
            fw, fh = w, int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            fw, fh = int(round(h * max(self.ratio))), h
        else:
            fw, fh = w, h
        cw = torch.where(found, cw, torch.full_like(cw, fw))
        ch = torch.where(found, ch, torch.full_like(ch, fh))
        u = torch.rand(b, 2, device=device)
        top = torch.where(found, torch.floor(u[:, 0] * (h - ch + 1)), torch.full_like(ch, (h - fh) // 2))
        left = torch.where(found, torch.floor(u[:, 1] * (w - cw + 1)), torch.full_like(cw, (w - fw) // 2))
        return torch.stack([top, left, ch, cw], dim=1)

    def draw(self, shape: Sequence[int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The random parameters of a (B, C, H, W) training batch: ``crop_boxes`` and the flip flags (B, 1)."""
        b, _, h, w = shape
        return self.crop_boxes(b, h, w, device), torch.rand(b, 1, device=device) < 0.5

    def resized_crop_flip(self, x: torch.Tensor, params: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """uint8/float (B, C, H, W) pixels -> float (B, C, H, W) pixels (0-255 range), cropped, resized, flipped;
        ``params`` = ``draw(x.shape)`` (drawn here on the batch's device when not given)."""
        b, _, h, w = x.shape
        dev = x.device
        box, flip = self.draw(x.shape, dev) if params is None else params
        top, left, ch, cw = (box[:, k:k + 1] for k in range(4))
        r = torch.arange(h, device=dev, dtype=torch.float32)
        c = torch.arange(w, device=dev, dtype=torch.float32)
        c = torch.where(flip, (w - 1) - c, c)  # flip = read the columns of the resized crop in reverse
        ys = (top + (r + 0.5) * ch / h - 0.5).clamp(min=top, max=top + ch - 1)  # (B, H) source rows
        xs = (left + (c + 0.5) * cw / w - 0.5).clamp(min=left, max=left + cw - 1)  # (B, W) source cols
        gy = (2 * ys + 1) / h - 1  # pixel -> [-1, 1] coordinates of grid_sample(align_corners=False)
        gx = (2 * xs + 1) / w - 1
        grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], dim=-1)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)

    def augment(self, x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.normalize(self.resized_crop_flip(x, params)).contiguous()

    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        if train:
            x = self.resized_crop_flip(x)
        return self.normalize(x).contiguous()


class ImageCollator:
    """Stacks ``pixel_values`` (uint8) and ``labels`` into a batch; passes a ready batch through."""

    def __call__(self, features: list[dict] | dict) -> dict:
        if isinstance(features, dict):  # already a batch (InMemoryImages.__getitems__)
            return features
        return {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features]),
                "labels": torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)}
