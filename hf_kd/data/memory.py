"""Fast data path for small images: decode the whole split once into a uint8 tensor, fetch whole batches by index.

The per-sample path (``datasets`` + ``with_transform`` + PIL) reaches about 1.1k img/s on 2 CPU cores, far below
what a GPU trains a CIFAR ResNet at; a decoded uint8 tensor indexed per batch (``__getitems__``) with the
augmentation batched on the device (``BatchAugment``) reaches tens of thousands (docs/design/overview.md,
"Data path"). CIFAR-100's 50k training images take about 150 MB this way. The augmentation distribution is unchanged: the same ``BatchAugment``
runs on the same uint8 pixels.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class InMemoryImages(Dataset):
    """A decoded split: ``pixels`` uint8 (N, 3, H, W) and ``labels`` int64 (N,).

    ``__getitems__`` returns a ready batch dict, which ``ImageCollator`` passes through, so a DataLoader batch costs
    one tensor gather instead of N Python fetches.
    """

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor):
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or len(pixels) != len(labels):
            raise ValueError(f"expected uint8 (N,3,H,W) pixels and N labels, got {tuple(pixels.shape)} "
                             f"{pixels.dtype} and {len(labels)} labels")
        self.pixels, self.labels = pixels, labels.long()

    @classmethod
    def from_dataset(cls, dataset, chunk: int = 2048) -> "InMemoryImages":
        """Decode a dataset yielding ``{"pixel_values": uint8 (3,H,W), "labels"}`` once (e.g. ``ImageData.train``)."""
        pixels, labels = [], []
        for start in range(0, len(dataset), chunk):
            rows = dataset[start:start + chunk]
            pixels.append(torch.stack(list(rows["pixel_values"])))
            labels.append(torch.as_tensor(rows["labels"]))
        return cls(torch.cat(pixels), torch.cat(labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}

    def __getitems__(self, indices: list[int]) -> dict:
        idx = torch.as_tensor(indices)
        return {"pixel_values": self.pixels[idx], "labels": self.labels[idx]}
