"""One entry point for image-classification data: ``load_image_data``.

It returns train/eval ``datasets.Dataset``s that yield ``{"pixel_values": uint8 (3,H,W) tensor, "labels": int}``,
plus what the model must know (label names, mean/std, input size, augmentation). Random augmentation of CIFAR-size
data is not done here but batched in the training step (``BatchAugment``): it is faster and it makes resuming from a
checkpoint exact (HF_NOTES §3.3, §6).

Sources: the presets below (Hub ids, the same code path a user with internet runs), any other Hub id, a local folder
written by ``save_to_disk``, a local folder of data files in the layout of a downloaded Hub dataset (parquet shards
such as ``train-00000-of-00003.parquet``, also under ``data/``), an ``imagefolder`` directory, and ``"digits"``: an
offline default of real images (the 8x8 handwritten digits bundled with scikit-learn, upsampled to 32x32 RGB) that
needs no download.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from datasets import Image as ImageFeature
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..constants import default_crop_pct, is_small_image
from .augment import BatchAugment

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_MEAN, DIGITS_STD = (0.3052,) * 3, (0.3236,) * 3


@dataclass(frozen=True)
class Preset:
    path: str
    image_column: str
    label_column: str
    train_split: str
    eval_split: str
    image_size: int
    mean: tuple
    std: tuple
    augmentation: str


PRESETS = {
    "cifar100": Preset("uoft-cs/cifar100", "img", "fine_label", "train", "test", 32, CIFAR100_MEAN, CIFAR100_STD,
                       "cifar"),
    "cifar10": Preset("uoft-cs/cifar10", "img", "label", "train", "test", 32, CIFAR10_MEAN, CIFAR10_STD, "cifar"),
    "imagenet-1k": Preset("ILSVRC/imagenet-1k", "image", "label", "train", "validation", 224, IMAGENET_MEAN,
                          IMAGENET_STD, "imagenet"),
    "digits": Preset("sklearn:digits", "image", "label", "train", "test", 32, DIGITS_MEAN, DIGITS_STD, "cifar"),
}
PRESETS["uoft-cs/cifar100"], PRESETS["uoft-cs/cifar10"] = PRESETS["cifar100"], PRESETS["cifar10"]
PRESETS["ILSVRC/imagenet-1k"] = PRESETS["imagenet-1k"]

_IMAGE_NAMES = ("image", "img", "pixel_values")
_LABEL_NAMES = ("label", "labels", "fine_label")


@dataclass
class ImageData:
    """Train/eval datasets in the uniform (pixel_values uint8, labels) view, and what a model needs to know.

    ``crop_pct`` / ``interpolation`` / ``crop_mode`` are the evaluation preprocessing (timm's meaning: resize the
    shorter side to ``floor(size / crop_pct)``, centre-crop ``size``); ``preprocessing`` hands them, with mean/std
    and input size, to ``create_student`` so that the exported image processor does exactly the same.
    """

    train: Dataset
    eval: Dataset
    label_names: list
    mean: tuple
    std: tuple
    input_size: tuple  # (3, H, W)
    augmentation: str  # "cifar" (batched pad-crop + flip), "imagenet" (random-resized-crop + batched flip), "none"
    name: str = ""
    pad_mode: str = "constant"
    source: dict = field(default_factory=dict)
    crop_pct: Optional[float] = None  # None: hf_kd's rule for the input size (``constants.default_crop_pct``)
    interpolation: str = "bilinear"
    crop_mode: str = "center"

    def __post_init__(self):
        if self.crop_pct is None:
            self.crop_pct = default_crop_pct(self.input_size[-1])

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def preprocessing(self) -> dict:
        """The evaluation preprocessing as ``create_student`` keywords (mean, std, input_size, crop_pct,
        interpolation, crop_mode): the student's ``pretrained_cfg`` then makes ``pipeline`` preprocess as hf_kd did."""
        return dict(mean=self.mean, std=self.std, input_size=self.input_size, crop_pct=self.crop_pct,
                    interpolation=self.interpolation, crop_mode=self.crop_mode)

    def in_memory(self) -> "ImageData":
        """The same data with both splits decoded once into uint8 tensors (the fast path; small images only)."""
        from .memory import InMemoryImages

        if not is_small_image(self.input_size[-1]):
            raise ValueError(f"in_memory is for small images (CIFAR-size); {self.name} has input size "
                             f"{self.input_size} and would not fit in RAM as one tensor")
        return dataclasses.replace(self, train=InMemoryImages.from_dataset(self.train),
                                   eval=InMemoryImages.from_dataset(self.eval))

    def batch_augment(self, augmentation: Optional[str] = None, pad_mode: Optional[str] = None) -> BatchAugment:
        return BatchAugment(self.mean, self.std, augmentation or self.augmentation, pad_mode=pad_mode or self.pad_mode)


def digits_dataset() -> DatasetDict:
    """scikit-learn's bundled handwritten digits (1797 real 8x8 scans, 10 classes) as 32x32 RGB PIL images.

    Split 80/20 per class with a fixed seed, so the default run is the same everywhere and needs no download.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False).clamp(0, 1)
    x = (x * 255).round().to(torch.uint8)[:, 0].numpy()
    images = [Image.fromarray(np.repeat(a[:, :, None], 3, axis=2)) for a in x]
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=0.2, random_state=0, stratify=d.target)
    features = datasets.Features({"image": ImageFeature(), "label": ClassLabel(names=[str(n) for n in d.target_names])})

    def part(idx):
        return Dataset.from_dict({"image": [images[i] for i in idx], "label": [int(d.target[i]) for i in idx]},
                                 features=features)

    return DatasetDict(train=part(idx_train), test=part(idx_test))


_DATA_FILE_EXTENSIONS = (".parquet", ".arrow", ".csv", ".json", ".jsonl")


def _has_data_files(folder: str) -> bool:
    """Whether ``folder`` holds tabular data files (a downloaded Hub dataset), not only images."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # skip .cache / .git of `hf download`
        if any(f.endswith(_DATA_FILE_EXTENSIONS) for f in files):
            return True
    return False


def _load_source(dataset: str, cache_dir: Optional[str], revision: Optional[str]) -> DatasetDict:
    if dataset == "sklearn:digits":
        return digits_dataset()
    if os.path.isdir(dataset):
        if any(os.path.exists(os.path.join(dataset, f)) for f in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(dataset)
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)
        if _has_data_files(dataset):
            # Hub layout on disk: datasets infers the splits from the file names (train-*, test-*) or from the
            # README's `configs`, and the features (ClassLabel names, Image) from the parquet schema.
            return datasets.load_dataset(dataset, cache_dir=cache_dir)
        return drop_unreadable_images(datasets.load_dataset("imagefolder", data_dir=dataset, cache_dir=cache_dir))
    return datasets.load_dataset(dataset, cache_dir=cache_dir, revision=revision)


def _readable(batch: dict, column: str) -> dict:
    """Whether each image of a batch decodes completely (``decode=False`` rows: ``{"path", "bytes"}``)."""
    from PIL import Image

    ok = []
    for ref in batch[column]:
        try:
            with Image.open(io.BytesIO(ref["bytes"]) if ref.get("bytes") else ref["path"]) as img:
                img.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale; still reads every byte, so truncation shows
                img.load()
            ok.append(True)
        except Exception:  # noqa: BLE001 - truncated, corrupt, not an image: all unreadable
            ok.append(False)
    return {"_readable": ok}


def drop_unreadable_images(raw: DatasetDict, column: str = "image") -> DatasetDict:
    """Drop the images of an ``imagefolder`` that do not decode (a truncated JPEG, a corrupt file), with a warning
    naming them, so that training never stops at step N on PIL's "image file is truncated".

    Every image is decoded once (JPEGs at 1/8 scale); ``datasets`` caches the result with the dataset, so later runs
    on the same folder skip the work.
    """
    out = {}
    for split, ds in raw.items():
        if column not in ds.column_names or not isinstance(ds.features[column], ImageFeature):
            out[split] = ds
            continue
        refs = ds.cast_column(column, ImageFeature(decode=False))
        flags = refs.map(_readable, batched=True, batch_size=256, fn_kwargs=dict(column=column),
                         remove_columns=refs.column_names, desc=f"checking {split} images")["_readable"]
        bad = [i for i, good in enumerate(flags) if not good]
        if bad:
            names = [refs[i][column].get("path") or f"row {i}" for i in bad[:10]]
            warnings.warn(f"Skipping {len(bad)} of {len(ds)} {split} images that cannot be decoded (truncated or "
                          f"corrupt): {', '.join(map(str, names))}{', ...' if len(bad) > 10 else ''}. Replace or "
                          "delete those files to use them.", stacklevel=2)
            ds = ds.select([i for i, good in enumerate(flags) if good])
        out[split] = ds
    return DatasetDict(out)


def _pick_column(ds: Dataset, given: Optional[str], names: Sequence[str], feature_type, what: str) -> str:
    cols = ds.column_names
    if given is not None:
        if given not in cols:
            raise ValueError(f"{what} column '{given}' not found; the dataset has columns {cols}. "
                             f"Pass --{what}_column with one of them.")
        return given
    for n in names:
        if n in cols:
            return n
    typed = [c for c, f in ds.features.items() if isinstance(f, feature_type)]
    if len(typed) == 1:
        return typed[0]
    raise ValueError(f"Cannot tell which column holds the {what}s: found columns {cols} "
                     f"({ {c: type(f).__name__ for c, f in ds.features.items()} }). "
                     f"Pass --{what}_column (one of {cols}).")


def _label_names(ds: Dataset, column: str) -> list:
    feat = ds.features[column]
    if isinstance(feat, ClassLabel):
        return list(feat.names)
    values = sorted(set(ds[column]))
    if not all(isinstance(v, (int, np.integer)) for v in values) or values[0] < 0:
        raise ValueError(f"Label column '{column}' holds {type(values[0]).__name__} values; hf_kd needs integer "
                         "class ids or a ClassLabel feature (`ds.class_encode_column`).")
    return [str(i) for i in range(int(values[-1]) + 1)]


def balanced_subset(labels: Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``n`` rows, as class-balanced as the labels allow.

    Every class gives ``n // num_classes`` rows (one more for a random choice of classes when ``n`` does not divide);
    a class with too few rows gives all it has and the rest comes from the others. Rows within a class are drawn
    uniformly at random. A prefix (``select(range(n))``) of a class-sorted dataset (an ``imagefolder``) would hold
    only the first classes.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    perm = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[perm]
    order = np.argsort(shuffled, kind="stable")  # grouped by class, random order within each class
    starts = np.searchsorted(shuffled[order], shuffled[order], side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - starts  # position of each shuffled row within its class
    # all classes' 1st draws, then all 2nd draws, ...; ties (the last, partial round) broken by the random order
    take = np.lexsort((np.arange(len(labels)), rank))[:n]
    return np.sort(perm[take])


def _subset(ds: Dataset, n: Optional[int], label_column: str, seed: int, what: str, record: dict) -> Dataset:
    if not n or n >= len(ds):
        return ds
    labels = ds.with_format("numpy")[label_column][:]  # one columnar read (a plain column is read row by row)
    idx = balanced_subset(labels, n, seed)
    counts = np.bincount(labels[idx])
    counts = counts[counts > 0]
    record[f"{what}_subset"] = dict(size=int(n), of=len(ds), seed=int(seed), classes=int(len(counts)),
                                    per_class_min=int(counts.min()), per_class_max=int(counts.max()))
    return ds.select(idx)


def describe_subset(sub: Optional[dict]) -> Optional[str]:
    """``'5,000 of 50,000 images (class-balanced random subset, seed 0: 50 per class, 100 classes)'``."""
    if not sub:
        return None
    per = (f"{sub['per_class_min']}" if sub["per_class_min"] == sub["per_class_max"]
           else f"{sub['per_class_min']}-{sub['per_class_max']}")
    return (f"{sub['size']:,} of {sub['of']:,} images (class-balanced random subset, seed {sub['seed']}: {per} per "
            f"class, {sub['classes']} classes)")


def image_transform(size: int, train: bool, augmentation: str, crop_pct: float = 1.0, interpolation="bilinear",
                    crop_mode: str = "center"):
    """PIL RGB -> uint8 (3, size, size). Only ImageNet-style training crops here; the rest is batched on device.

    Eval (and CIFAR-style train) is timm's own eval transform (``timm.data.create_transform(is_training=False)``,
    stopped before the float conversion, which ``BatchAugment`` does): the PIL image's shorter side resized to
    ``floor(size / crop_pct)`` with ``interpolation``, then a centre crop of ``size`` x ``size``. That is what the
    exported image processor runs under ``pipeline`` (the student's ``pretrained_cfg`` carries these settings), so
    the export sees exactly the pixels hf_kd evaluated. A ``size`` x ``size`` image with ``crop_pct`` 1 passes
    unchanged (CIFAR).
    """
    if train and augmentation == "imagenet":
        crop = T.RandomResizedCrop(size, interpolation=InterpolationMode(interpolation), antialias=True)
        return T.Compose([T.ToImage(), crop, T.ToDtype(torch.uint8)])
    from timm.data import create_transform

    # use_prefetcher: timm's transform without ToTensor/Normalize, i.e. a uint8 (3, size, size) tensor
    return create_transform(input_size=size, is_training=False, use_prefetcher=True, crop_pct=crop_pct,
                            crop_mode=crop_mode, interpolation=interpolation)


def load_image_data(
    dataset: str = "digits",
    *,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    train_split: Optional[str] = None,
    eval_split: Optional[str] = None,
    image_size: Optional[int] = None,
    augmentation: Optional[str] = None,
    num_labels: Optional[int] = None,
    max_train_samples: Optional[int] = None,
    max_eval_samples: Optional[int] = None,
    subset_seed: int = 0,
    eval_fraction: float = 0.1,
    crop_pct: Optional[float] = None,
    interpolation: str = "bilinear",
    cache_dir: Optional[str] = None,
    revision: Optional[str] = None,
    seed: int = 0,
) -> ImageData:
    """Load ``dataset`` (a preset name, Hub id, ``save_to_disk`` folder, local folder of Hub-layout parquet shards or
    ``imagefolder`` dir) as ``ImageData``.

    Preset names: ``digits`` (offline default), ``cifar100``, ``cifar10``, ``imagenet-1k``. ``num_labels``, when
    given, must equal the dataset's class count (clear error otherwise). ``max_train_samples`` /
    ``max_eval_samples`` draw a class-balanced random subset with ``subset_seed`` (``balanced_subset``), recorded in
    ``ImageData.source``; ``seed`` only seeds the held-out split of a dataset that has no eval split. ``crop_pct``
    (default: 1 for images of at most 64 px, else 0.875) and ``interpolation`` set the evaluation resize
    (``image_transform``).
    """
    preset = PRESETS.get(dataset)
    raw = _load_source(preset.path if preset else dataset, cache_dir, revision)
    if isinstance(raw, Dataset):
        raw = DatasetDict(train=raw)
    copy_of = None if preset else _copy_of_preset(raw, dataset)
    if copy_of:  # a downloaded copy of a preset (e.g. `hf download uoft-cs/cifar100`): the preset's settings
        preset = PRESETS[copy_of]
    train_split = train_split or (preset.train_split if preset else "train")
    if train_split not in raw:
        raise ValueError(f"Split '{train_split}' not found in {dataset}; it has splits {list(raw)}. "
                         "Pass --train_split.")
    if eval_split is None:
        eval_split = preset.eval_split if preset else next((s for s in ("test", "validation", "valid", "val")
                                                            if s in raw), None)
    train = raw[train_split]
    if eval_split is None:  # only a train split: hold out a seeded random fraction
        parts = train.train_test_split(test_size=eval_fraction, seed=seed)
        train, evald = parts["train"], parts["test"]
    elif eval_split not in raw:
        raise ValueError(f"Split '{eval_split}' not found in {dataset}; it has splits {list(raw)}. "
                         "Pass --eval_split.")
    else:
        evald = raw[eval_split]

    image_column = _pick_column(train, image_column or (preset.image_column if preset else None), _IMAGE_NAMES,
                                ImageFeature, "image")
    label_column = _pick_column(train, label_column or (preset.label_column if preset else None), _LABEL_NAMES,
                                ClassLabel, "label")
    for name, part in (("eval", evald),):
        missing = [c for c in (image_column, label_column) if c not in part.column_names]
        if missing:
            raise ValueError(f"The {name} split lacks columns {missing}; it has {part.column_names}.")
    label_names = _label_names(train, label_column)
    if num_labels is not None and num_labels != len(label_names):
        raise ValueError(f"The model has num_labels={num_labels} but {dataset} has {len(label_names)} classes in "
                         f"column '{label_column}' (columns: {train.column_names}). Build the model with "
                         f"num_labels={len(label_names)} or pick the right --label_column.")

    subsets: dict = {}
    train = _subset(train, max_train_samples, label_column, subset_seed, "train", subsets)
    evald = _subset(evald, max_eval_samples, label_column, subset_seed, "eval", subsets)

    if preset:
        size, mean, std, aug = preset.image_size, preset.mean, preset.std, preset.augmentation
    else:
        size, mean, std = _probe_size(train, image_column), IMAGENET_MEAN, IMAGENET_STD
        aug = "cifar" if is_small_image(size) else "imagenet"
    size = image_size or size
    aug = augmentation or aug
    if aug not in ("cifar", "imagenet", "none"):
        raise ValueError(f"augmentation must be 'cifar', 'imagenet' or 'none', got '{aug}'")
    crop_pct = crop_pct or default_crop_pct(size)

    def make(split_train: bool):
        tf = image_transform(size, split_train, aug, crop_pct, interpolation)

        def apply(batch):
            return {"pixel_values": [tf(img.convert("RGB")) for img in batch[image_column]],
                    "labels": list(batch[label_column])}

        return apply

    train = train.with_transform(make(True))
    evald = evald.with_transform(make(False))
    return ImageData(train=train, eval=evald, label_names=label_names, mean=tuple(mean), std=tuple(std),
                     input_size=(3, size, size), augmentation=aug, name=dataset,
                     source=dict(dataset=preset.path if preset and not copy_of else dataset,
                                 **({"copy_of": preset.path} if copy_of else {}), image_column=image_column,
                                 label_column=label_column, train_split=train_split, eval_split=eval_split,
                                 **subsets), crop_pct=crop_pct, interpolation=interpolation)


_PRESET_CLASSES = {"cifar100": 100, "cifar10": 10, "imagenet-1k": 1000}


def _copy_of_preset(raw: DatasetDict, path: str) -> Optional[str]:
    """The preset a local folder is a copy of: same splits, image/label columns and class count (CIFAR, ImageNet)."""
    if not os.path.isdir(path):
        return None
    for name, num_classes in _PRESET_CLASSES.items():
        p = PRESETS[name]
        part = raw.get(p.train_split)
        if part is None or p.eval_split not in raw or not {p.image_column, p.label_column} <= set(part.column_names):
            continue
        feat = part.features[p.label_column]
        if isinstance(feat, ClassLabel) and feat.num_classes == num_classes:
            return name
    return None


def _probe_size(ds: Dataset, image_column: str) -> int:
    img = ds[0][image_column]
    return int(min(img.size))
