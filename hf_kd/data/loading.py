"""One entry point for image-classification data: ``load_image_data``.

It returns train/eval ``datasets.Dataset``s that yield ``{"pixel_values": uint8 (3,H,W) tensor, "labels": int}``,
plus what the model must know (label names, mean/std, input size, evaluation crop, augmentation). Random augmentation
of CIFAR-size data is not done here but batched in the training step (``BatchAugment``): it is faster and it makes
resuming from a checkpoint exact (docs/design/overview.md, "Exact resume" and "Data path").

Sources: the presets below (Hub ids, the same code path a user with internet runs), any other Hub id, a local folder
written by ``save_to_disk``, a local folder of data files in the layout of a downloaded Hub dataset (parquet shards
such as ``train-00000-of-00003.parquet``, also under ``data/``), an ``imagefolder`` directory, a single parquet / CSV
/ JSON file, and ``"digits"``: an offline default of real images (the 8x8 handwritten digits bundled with
scikit-learn, upsampled to 32x32 RGB) that needs no download.

Data is read, not guessed. What the caller does not give is read from the data and printed once (main process), and
recorded in ``ImageData.source["inferred"]`` for the model card: the input size (``probe_size``: the median shorter
side over many images), mean/std, augmentation, evaluation preprocessing, splits and label column. A local dataset
takes a preset's settings only when it is a copy of it (``copy_of_preset``: same label names and image size); classes
that are all ImageNet-1k synsets (the ILSVRC folders ``train/<synset>/``, or a subset of them) take ImageNet-1k's
input size, statistics and augmentation (``imagenet_classes``), the settings of the ImageNet teachers they meet. An
image column of file paths and a label column of class names are read as images and class ids; images of any mode
become 8-bit RGB (``to_rgb``); every label is checked against the label set before training.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Value
from datasets import Image as ImageFeature
from PIL import Image as PILImage
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..labels import imagenet_synsets
from ..labels import same_names as _same_names
from ..constants import SMALL_IMAGE_MAX_SIDE, default_crop_pct, is_small_image
from .augment import BatchAugment
from .label_sets import CIFAR10_LABELS, CIFAR100_LABELS

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_MEAN, DIGITS_STD = (0.3052,) * 3, (0.3236,) * 3

# How many images (evenly spaced rows of the train split) are looked at to read the input size; only their headers
# are read, so this is cheap even for full-size photographs.
PROBE_ROWS = 1000

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
    stored_size: Optional[int] = None  # every image of a copy has this size (CIFAR); None: sizes vary (ImageNet)


PRESETS = {
    "cifar100": Preset("uoft-cs/cifar100", "img", "fine_label", "train", "test", 32, CIFAR100_MEAN, CIFAR100_STD,
                       "cifar", stored_size=32),
    "cifar10": Preset("uoft-cs/cifar10", "img", "label", "train", "test", 32, CIFAR10_MEAN, CIFAR10_STD, "cifar",
                      stored_size=32),
    "imagenet-1k": Preset("ILSVRC/imagenet-1k", "image", "label", "train", "validation", 224, IMAGENET_MEAN,
                          IMAGENET_STD, "imagenet"),
    "digits": Preset("sklearn:digits", "image", "label", "train", "test", 32, DIGITS_MEAN, DIGITS_STD, "cifar"),
}
PRESETS["uoft-cs/cifar100"], PRESETS["uoft-cs/cifar10"] = PRESETS["cifar100"], PRESETS["cifar10"]
PRESETS["ILSVRC/imagenet-1k"] = PRESETS["imagenet-1k"]

_IMAGE_NAMES = ("image", "img", "pixel_values")
_LABEL_NAMES = ("label", "labels", "fine_label")
_EVAL_SPLITS = ("test", "validation", "valid", "val")  # looked for in this order; the first labelled one is taken


def preset_label_names(name: str) -> list[tuple]:
    """The label-name lists a copy of preset ``name`` may carry, in class-id order (ImageNet: timm's synsets, or its
    descriptions as the Hub's ``ILSVRC/imagenet-1k`` names them)."""
    if name == "cifar10":
        return [CIFAR10_LABELS]
    if name == "cifar100":
        return [CIFAR100_LABELS]
    if name == "imagenet-1k":
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        return [tuple(info.label_names()), tuple(info.label_descriptions())]
    return []


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


# A single data file given as the dataset -> the ``datasets`` builder that reads it
DATA_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def _load_file(path: str, cache_dir: Optional[str]) -> DatasetDict:
    """One parquet / CSV / JSON file as a dataset with a single ``train`` split."""
    builder = DATA_FILE_BUILDERS.get(os.path.splitext(path)[1].lower())
    if builder is None:
        raise ValueError(f"--dataset {path} is a file hf_kd cannot read as a dataset: single files are read when they "
                         f"end in {', '.join(DATA_FILE_BUILDERS)}. Give such a file, or a folder (imagefolder, "
                         "save_to_disk, Hub-layout data files).")
    return datasets.load_dataset(builder, data_files=path, cache_dir=cache_dir)


def _load_source(dataset: str, cache_dir: Optional[str], revision: Optional[str]) -> DatasetDict:
    if dataset == "sklearn:digits":
        return digits_dataset()
    if os.path.isfile(dataset):
        return _load_file(dataset, cache_dir)
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


def _paths_root(dataset: str) -> Optional[str]:
    """Where relative image paths of a local dataset start from: its folder, or the folder of its file."""
    if os.path.isdir(dataset):
        return os.path.abspath(dataset)
    if os.path.isfile(dataset):
        return os.path.dirname(os.path.abspath(dataset))
    return None


# what PIL raises for a file it cannot decode: OSError (truncated, unidentified, missing), SyntaxError / ValueError
# (a corrupt header or chunk), EOFError; a decompression bomb is refused too. Anything else is a bug, not the file.
UNREADABLE_IMAGE = (OSError, SyntaxError, ValueError, EOFError, PILImage.DecompressionBombError)


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
        except UNREADABLE_IMAGE:  # truncated, corrupt, not an image: all unreadable
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
    found = [n for n in names if n in cols]
    if len(found) > 1:  # e.g. 'label' and 'labels': picking one silently could train on the wrong targets
        raise ValueError(f"Several columns could hold the {what}s: {', '.join(found)} (columns: {cols}). Pass "
                         f"--{what}_column with the one to use.")
    if found:
        return found[0]
    typed = [c for c, f in ds.features.items() if isinstance(f, feature_type)]
    if len(typed) == 1:
        return typed[0]
    raise ValueError(f"Cannot tell which column holds the {what}s: found columns {cols} "
                     f"({ {c: type(f).__name__ for c, f in ds.features.items()} }). "
                     f"Pass --{what}_column (one of {cols}).")


def _is_text(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _is_integer(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))


def _kind(feature) -> str:
    """How an error names what a column holds: "images", "float32 values", "List values", ..."""
    if isinstance(feature, ImageFeature):
        return "images"
    if isinstance(feature, Value):
        return f"{feature.dtype} values"
    return f"{type(feature).__name__} values"


def _replace_column(ds: Dataset, column: str, values: list, feature) -> Dataset:
    """``ds`` with ``column`` replaced by ``values`` typed ``feature``, in the same column order. The other columns
    are not rewritten (no copy of the images, no cache file written beside the user's data)."""
    order = ds.column_names
    return ds.remove_columns(column).add_column(column, values, feature=feature).select_columns(order)


def _absolute(path: Optional[str], root: str) -> Optional[str]:
    if path is None or os.path.isabs(path) or "://" in path:
        return path
    return os.path.join(root, path)


def images_from_paths(raw: DatasetDict, column: str, root: Optional[str] = None) -> DatasetDict:
    """Every split's image column as ``datasets.Image``. A column of file paths (strings, e.g. from a CSV) is cast to
    images, relative paths taken from ``root`` (the dataset's folder, or the folder of its file; None: as given).
    A column of anything else is an error naming it."""
    out = {}
    for split, ds in raw.items():
        feature = ds.features.get(column)
        if feature is None or isinstance(feature, ImageFeature):
            out[split] = ds
            continue
        if isinstance(feature, dict) and {"bytes", "path"} <= set(feature):  # image records without the feature
            out[split] = ds.cast_column(column, ImageFeature())
            continue
        if not _is_text(feature):
            raise ValueError(f"Image column '{column}' holds {_kind(feature)}, not images or image file paths. Pass "
                             f"--image_column with the column of images or paths (columns: {ds.column_names}).")
        paths = ds.with_format("arrow")[column].to_pylist()
        if root is not None:
            paths = [_absolute(p, root) for p in paths]
        out[split] = _replace_column(ds, column, paths, Value("string")).cast_column(column, ImageFeature())
    return DatasetDict(out)


def labels_as_ids(raw: DatasetDict, column: str, train_split: str) -> tuple[DatasetDict, bool]:
    """Every split's label column as class ids, and whether names were encoded.

    Integer and ``ClassLabel`` columns are kept. A column of class names (strings, or booleans) becomes a
    ``ClassLabel`` whose names are the train split's distinct values, sorted (as ``Dataset.class_encode_column``
    orders them); every split uses those ids, an empty value is -1 (unlabelled), and a name the train split lacks is
    an error. Anything else (images, floats, lists: often ``--label_column`` naming the wrong column) is an error
    naming the column and the fix.
    """
    feature = raw[train_split].features[column]
    if isinstance(feature, ClassLabel) or _is_integer(feature):
        return raw, False
    if not (_is_text(feature) or (isinstance(feature, Value) and feature.dtype == "bool")):
        raise ValueError(f"Label column '{column}' holds {_kind(feature)}, not class labels. hf_kd needs class ids "
                         "(integers or a ClassLabel) or class names (strings); pass --label_column with that column "
                         f"(columns: {raw[train_split].column_names}).")
    values = {split: ds.with_format("arrow")[column].to_pylist() for split, ds in raw.items()
              if column in ds.column_names}
    names = sorted({str(v) for v in values[train_split] if v is not None})
    ids = {name: i for i, name in enumerate(names)}
    out = dict(raw)
    for split, column_values in values.items():
        unknown = Counter(str(v) for v in column_values if v is not None and str(v) not in ids)
        if unknown:
            shown = ", ".join(f"'{n}' ({c} rows)" for n, c in unknown.most_common(10))
            raise ValueError(f"The {split} split has class names in '{column}' that the {train_split} split lacks: "
                             f"{shown}. The label set is the train split's names ({len(names)}); fix those rows or "
                             "add such images to the train split.")
        encoded = [-1 if v is None else ids[str(v)] for v in column_values]
        out[split] = _replace_column(raw[split], column, encoded, ClassLabel(names=names))
    return DatasetDict(out), True


def _label_column(ds: Dataset, column: str):
    return ds.with_format("arrow")[column]  # one columnar read (rows one by one: 12 s on 1.28M labels)


def _label_names(ds: Dataset, column: str) -> list:
    """``ClassLabel`` names, else "0".."max" for integer class ids."""
    feat = ds.features[column]
    if isinstance(feat, ClassLabel):
        return list(feat.names)
    top = pc.max(_label_column(ds, column)).as_py()  # None: no labels at all
    return [str(i) for i in range(top + 1)] if top is not None else []


def label_counts(ds: Dataset, column: str) -> dict:
    """Rows per label value (None: empty), one columnar read."""
    counts = pc.value_counts(_label_column(ds, column))
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def _unlabelled(ds: Dataset, column: str) -> bool:
    """A split without labels: no label column, no rows, or every label -1 / empty (a competition's hidden test)."""
    return column not in ds.column_names or set(label_counts(ds, column)) <= {None, -1}


def check_labels(ds: Dataset, column: str, num_labels: int, split: str) -> None:
    """Every label of ``ds`` in the label set 0..num_labels-1; else an error naming the bad values and their counts
    (training would crash on them with "Target -1 is out of bounds", possibly only after hours)."""
    bad = {v: c for v, c in label_counts(ds, column).items() if v is None or not 0 <= v < num_labels}
    if not bad:
        return
    order = sorted(bad, key=lambda v: (v is None, v if v is not None else 0))
    shown = ", ".join(f"{'empty' if v is None else v} ({bad[v]} rows)" for v in order[:10])
    raise ValueError(f"The {split} split has labels outside the label set 0..{num_labels - 1} in column '{column}': "
                     f"{shown} (-1 usually means unlabelled). Remove those rows, pick another split (--train_split / "
                     "--eval_split) or the right --label_column.")


def choose_eval_split(raw: DatasetDict, requested: Optional[str], candidates: Sequence[str], train_split: str,
                      label_column: str) -> tuple[Optional[str], list]:
    """(the evaluation split, the candidate splits passed over because they have no labels).

    ``requested`` is used as given, but one without labels is an error (it cannot be scored). Otherwise the first of
    ``candidates`` that exists and has labels is taken: an unlabelled ``test`` split does not win over a labelled
    ``validation`` split. None: no labelled split, a part of train is held out.
    """
    if requested is not None:
        if requested not in raw:
            raise ValueError(f"Split '{requested}' not found; the dataset has splits {list(raw)}. Pass --eval_split.")
        if label_column in raw[requested].column_names and _unlabelled(raw[requested], label_column):
            raise ValueError(f"Eval split '{requested}' has no labels (every '{label_column}' is -1 or empty), so it "
                             f"cannot be scored. Pass a labelled --eval_split (splits: {list(raw)}), or none to hold "
                             "out a part of train.")
        return requested, []
    skipped = []
    for split in candidates:
        if split not in raw or split == train_split:
            continue
        if _unlabelled(raw[split], label_column):
            skipped.append(split)
            continue
        return split, skipped
    return None, skipped


def hold_out(train: Dataset, fraction: float, subset_seed: int, label_column: str,
             num_labels: int) -> tuple[Dataset, Dataset, dict]:
    """(train, eval, record): ``fraction`` of train held out for evaluation, stratified by label (every class keeps
    its share) and drawn with ``subset_seed``, so that runs with different ``--seed`` are scored on the same images.
    A class too rare to stratify falls back to a plain random split, with a warning, and the record says so."""
    if not isinstance(train.features[label_column], ClassLabel):  # stratifying needs a ClassLabel column
        train = train.cast_column(label_column, ClassLabel(num_classes=num_labels))
    try:
        parts = train.train_test_split(test_size=fraction, seed=subset_seed, stratify_by_column=label_column)
        stratified = True
    except ValueError as e:  # a class with 1 image, or fewer held-out images than classes
        warnings.warn(f"Holding out {fraction:g} of train unstratified: {e}", stacklevel=3)
        parts = train.train_test_split(test_size=fraction, seed=subset_seed)
        stratified = False
    record = dict(fraction=float(fraction), size=len(parts["test"]), of=len(train), subset_seed=int(subset_seed),
                  stratified=stratified)
    return parts["train"], parts["test"], record


def describe_held_out(record: Optional[dict], train_split: str = "train") -> Optional[str]:
    """``"10 % of train held out (3 of 30 images), stratified by label, subset_seed 0"``."""
    if not record:
        return None
    how = "stratified by label" if record["stratified"] else "random (not stratified: a class is too rare)"
    return (f"{record['fraction'] * 100:g} % of {train_split} held out ({record['size']:,} of {record['of']:,} "
            f"images), {how}, subset_seed {record['subset_seed']}")


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


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_FLOAT_RANGES = (1.0, 255.0, 65535.0)


def _to_8_bit(values: np.ndarray, top: float) -> np.ndarray:
    """Values in [0, top] -> uint8 [0, 255] (rounded, clipped; NaN as 0)."""
    x = np.nan_to_num(values.astype(np.float64)) * 255.0 / top
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def to_rgb(img) -> "PILImage.Image":
    """Any PIL image as 8-bit RGB, keeping what it shows.

    PIL's ``convert("RGB")`` clips 16- and 32-bit values at 255 (a 16-bit PNG becomes two grey levels) and gives a
    transparent pixel whatever colour is stored under it. The rules here:

    - 16-bit (``I;16``, its byte orders, and ``I`` as PIL opens 16-bit PNGs): 0..65535 scaled to 0..255 (value / 257,
      rounded; ``I`` values outside 0..65535 clipped);
    - float (``F``): scaled from the smallest of the ranges [0, 1], [0, 255], [0, 65535] that holds its values;
    - transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour): composited over white;
    - any other mode: PIL's conversion (grey ``L`` and ``1`` replicated, palettes looked up, ``CMYK``, ``YCbCr``).
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        values = np.asarray(img)
        top = 65535.0
        if img.mode == "F":
            peak = float(np.nanmax(values)) if values.size else 0.0
            top = next((t for t in _FLOAT_RANGES if peak <= t), _FLOAT_RANGES[-1])
        return PILImage.fromarray(_to_8_bit(values, top)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return PILImage.alpha_composite(PILImage.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


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
) -> ImageData:
    """Load ``dataset`` (a preset name, Hub id, ``save_to_disk`` folder, local folder of Hub-layout data files,
    ``imagefolder`` dir, or a parquet / CSV / JSON file) as ``ImageData``.

    Preset names: ``digits`` (offline default), ``cifar100``, ``cifar10``, ``imagenet-1k``. ``num_labels``, when
    given, must equal the dataset's class count (clear error otherwise). ``max_train_samples`` /
    ``max_eval_samples`` draw a class-balanced random subset with ``subset_seed`` (``balanced_subset``), recorded in
    ``ImageData.source``. Without a labelled eval split, ``eval_fraction`` of train is held out, stratified by label,
    with ``subset_seed`` too (``hold_out``). ``image_size`` overrides the input size read from the images
    (``probe_size``); ``crop_pct`` (default: 1 for images of at most 64 px, else 0.875) and ``interpolation`` set the
    evaluation resize (``image_transform``). What was read from the data is printed once and kept in
    ``ImageData.source["inferred"]``.
    """
    preset = PRESETS.get(dataset)
    raw = _load_source(preset.path if preset else dataset, cache_dir, revision)
    if isinstance(raw, Dataset):
        raw = DatasetDict(train=raw)
    copy_of = None if preset else copy_of_preset(raw, dataset)
    if copy_of:  # a downloaded copy of a preset (e.g. `hf download uoft-cs/cifar100`): the preset's settings
        preset = PRESETS[copy_of]
    train_split = train_split or (preset.train_split if preset else "train")
    if train_split not in raw:
        raise ValueError(f"Split '{train_split}' not found in {dataset}; it has splits {list(raw)}. "
                         "Pass --train_split.")

    image_column = _pick_column(raw[train_split], image_column or (preset.image_column if preset else None),
                                _IMAGE_NAMES, ImageFeature, "image")
    label_column = _pick_column(raw[train_split], label_column or (preset.label_column if preset else None),
                                _LABEL_NAMES, ClassLabel, "label")
    raw = images_from_paths(raw, image_column, _paths_root(dataset) if dataset not in PRESETS else None)
    raw, encoded = labels_as_ids(raw, label_column, train_split)
    label_names = _label_names(raw[train_split], label_column)
    if len(label_names) < 2:
        raise ValueError(f"{dataset} has {len(label_names)} class(es) in label column '{label_column}' "
                         f"({label_names}); classification needs at least 2. Pick the right --label_column (columns: "
                         f"{raw[train_split].column_names}) or add images of other classes.")
    if num_labels is not None and num_labels != len(label_names):
        raise ValueError(f"The model has num_labels={num_labels} but {dataset} has {len(label_names)} classes in "
                         f"column '{label_column}' (columns: {raw[train_split].column_names}). Build the model with "
                         f"num_labels={len(label_names)} or pick the right --label_column.")
    train = raw[train_split]
    check_labels(train, label_column, len(label_names), train_split)

    candidates = [preset.eval_split] if preset else _EVAL_SPLITS
    eval_split, unlabelled = choose_eval_split(raw, eval_split, candidates, train_split, label_column)
    train, evald, held_out = _eval_part(raw, train, eval_split, image_column, label_column, len(label_names),
                                        eval_fraction, subset_seed)
    subsets: dict = {}
    counts = len(train), len(evald)
    train = _subset(train, max_train_samples, label_column, subset_seed, "train", subsets)
    evald = _subset(evald, max_eval_samples, label_column, subset_seed, "eval", subsets)

    settings, why = preset, None
    if preset is None and imagenet_classes(label_names):  # e.g. train/<synset>/*.JPEG of 10 ImageNet classes
        settings, why = PRESETS["imagenet-1k"], "ImageNet-1k's: the classes are ImageNet synsets"
    size, mean, std, aug, rules = _input_settings(raw[train_split], image_column, settings, image_size, augmentation,
                                                  why)
    crop_pct = crop_pct or default_crop_pct(size)
    transforms = [_examples(image_transform(size, is_train, aug, crop_pct, interpolation), image_column, label_column)
                  for is_train in (True, False)]
    inferred = {
        "input size": f"{size} px: {rules['size']}",
        "mean/std": f"{_rounded(mean)} / {_rounded(std)}: {rules['stats']}",
        "augmentation": f"{aug}: {rules['augmentation']}",
        "evaluation preprocessing": (f"shorter side resized to {math.floor(size / crop_pct)} px ({interpolation}), "
                                     f"centre crop {size} x {size} (crop_pct {crop_pct:g}); the exported image "
                                     "processor does the same"),
        "splits": _describe_splits(train_split, eval_split, unlabelled, held_out, counts),
        "columns": (f"images '{image_column}', labels '{label_column}' ({len(label_names)} classes"
                    + (", class names encoded as ids in sorted order)" if encoded else ")")),
    }
    source = dict(dataset=preset.path if preset and not copy_of else dataset,
                  **({"copy_of": preset.path} if copy_of else {}), image_column=image_column,
                  label_column=label_column, train_split=train_split, eval_split=eval_split,
                  **({"eval_held_out": held_out} if held_out else {}), **subsets, inferred=inferred)
    report_inferred(dataset, inferred)
    return ImageData(train=train.with_transform(transforms[0]), eval=evald.with_transform(transforms[1]),
                     label_names=label_names, mean=tuple(mean), std=tuple(std), input_size=(3, size, size),
                     augmentation=aug, name=dataset, source=source, crop_pct=crop_pct, interpolation=interpolation)


def _examples(transform, image_column: str, label_column: str):
    """The ``with_transform`` function of a split: rows -> ``{"pixel_values": uint8 (3, H, W), "labels": id}``, every
    image made 8-bit RGB first (``to_rgb``)."""

    def apply(batch):
        return {"pixel_values": [transform(to_rgb(img)) for img in batch[image_column]],
                "labels": list(batch[label_column])}

    return apply


def _eval_part(raw: DatasetDict, train: Dataset, eval_split: Optional[str], image_column: str, label_column: str,
               num_labels: int, eval_fraction: float, subset_seed: int) -> tuple[Dataset, Dataset, Optional[dict]]:
    """(train, eval, held-out record): the chosen eval split with its labels checked, or, without one, a held-out
    part of train (``hold_out``)."""
    if eval_split is None:
        return hold_out(train, eval_fraction, subset_seed, label_column, num_labels)
    evald = raw[eval_split]
    missing = [c for c in (image_column, label_column) if c not in evald.column_names]
    if missing:
        raise ValueError(f"The eval split lacks columns {missing}; it has {evald.column_names}.")
    check_labels(evald, label_column, num_labels, eval_split)
    return train, evald, None


def imagenet_classes(label_names: Sequence[str]) -> bool:
    """Label names that are ImageNet-1k synsets (``n01440764``...: the folders of the ILSVRC layout, or a subset of
    them). Only synsets: a few descriptions ("hen", "cock") may name anyone's own classes."""
    synsets = imagenet_synsets(label_names)
    return bool(synsets) and list(map(str, label_names)) == synsets


def _input_settings(train: Dataset, image_column: str, preset: Optional[Preset], image_size: Optional[int],
                    augmentation: Optional[str], why: Optional[str] = None) -> tuple[int, tuple, tuple, str, dict]:
    """(input size, mean, std, augmentation, the rule that gave each). Given values win; then a preset's (``why``
    says where a preset's settings come from when the data is not a copy of it); else the size is read from the
    images (``probe_size``), the statistics are ImageNet's, and the augmentation is CIFAR's for inputs of at most
    ``SMALL_IMAGE_MAX_SIDE`` px, ImageNet's above."""
    why = why or (f"the {preset.path} preset's" if preset else None)
    if image_size:
        size, size_rule = image_size, "--image_size (given, not read from the images)"
    elif preset:
        size, size_rule = preset.image_size, why
    else:
        size, size_rule = probe_size(train, image_column)
        size_rule += "; --image_size overrides it"
    if preset:
        mean, std, stats_rule = preset.mean, preset.std, why
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        stats_rule = "ImageNet's (hf_kd's default for data that is not a preset)"
    aug = augmentation or (preset.augmentation if preset else ("cifar" if is_small_image(size) else "imagenet"))
    if aug not in ("cifar", "imagenet", "none"):
        raise ValueError(f"augmentation must be 'cifar', 'imagenet' or 'none', got '{aug}'")
    rules = dict(size=size_rule, stats=stats_rule, augmentation=_augmentation_rule(aug, augmentation, why))
    return size, mean, std, aug, rules


def _rounded(values) -> list:
    return [round(float(v), 4) for v in values]


def _augmentation_rule(aug: str, given: Optional[str], why: Optional[str]) -> str:
    what = {"cifar": "4-pixel pad, random crop and flip, batched", "imagenet": "random-resized crop and flip",
            "none": "no augmentation"}[aug]
    if given:
        return f"{what} (given)"
    if why:
        return f"{what} ({why})"
    return f"{what} (input size {'at most' if aug == 'cifar' else 'over'} {SMALL_IMAGE_MAX_SIDE} px)"


def _describe_splits(train_split: str, eval_split: Optional[str], unlabelled: list, held_out: Optional[dict],
                     counts: tuple) -> str:
    text = f"train '{train_split}' ({counts[0]:,} images), "
    text += (f"eval '{eval_split}' ({counts[1]:,} images)" if held_out is None
             else f"eval: {describe_held_out(held_out, train_split)}")
    if unlabelled:
        text += f"; passed over for evaluation, no labels: {', '.join(unlabelled)}"
    return text


def _is_main_process() -> bool:
    """Rank 0 of a distributed launch (torchrun and accelerate set RANK), or a plain single process. Read from the
    environment: a data loader should not initialise the distributed state."""
    return os.environ.get("RANK", "0") == "0"


def describe_inferred(inferred: dict) -> str:
    return "\n".join(f"  {what}: {text}" for what, text in inferred.items())


def report_inferred(dataset: str, inferred: dict) -> None:
    """Print what was read from the data, once (main process)."""
    if _is_main_process():
        print(f"[hf_kd] data {dataset}, as read:\n{describe_inferred(inferred)}", flush=True)


def copy_of_preset(raw: DatasetDict, path: str) -> Optional[str]:
    """The preset a local dataset is a copy of, or None. Only when it can be nothing else: the preset's splits and
    image/label columns, its label names exactly (``preset_label_names``, ``_same_names``), and for CIFAR images of
    the preset's size (every probed image 32 x 32). A local 10-class set with other names or larger images keeps its
    own settings (input size read from its images, ImageNet statistics) instead of being shrunk to 32 px with
    CIFAR-10's."""
    if not os.path.exists(path):
        return None
    for name in ("cifar100", "cifar10", "imagenet-1k"):
        p = PRESETS[name]
        part = raw.get(p.train_split)
        if part is None or p.eval_split not in raw or not {p.image_column, p.label_column} <= set(part.column_names):
            continue
        feat = part.features[p.label_column]
        if not isinstance(feat, ClassLabel) or not any(_same_names(feat.names, reference)
                                                       for reference in preset_label_names(name)):
            continue
        if p.stored_size is None or _all_of_size(part, p.image_column, p.stored_size):
            return name
    return None


def _all_of_size(ds: Dataset, column: str, size: int) -> bool:
    if not isinstance(ds.features[column], ImageFeature):
        return False
    sizes = image_sizes(ds, column)
    return bool(sizes) and all(s == (size, size) for s in sizes)


def image_sizes(ds: Dataset, column: str, limit: int = PROBE_ROWS) -> list[tuple[int, int]]:
    """(width, height) of up to ``limit`` evenly spaced rows of an ``Image`` column, read from the image headers
    (``PIL.Image.open`` does not decode; the column is read with ``decode=False``). Unreadable images are skipped."""
    n = len(ds)
    if n == 0:
        return []
    rows = np.unique(np.linspace(0, n - 1, num=min(n, limit)).round().astype(np.int64))
    refs = ds.select_columns([column]).select(rows).cast_column(column, ImageFeature(decode=False))
    sizes = []
    for ref in refs[column]:
        if not ref or not (ref.get("bytes") or ref.get("path")):
            continue
        try:
            with PILImage.open(io.BytesIO(ref["bytes"]) if ref.get("bytes") else ref["path"]) as img:
                sizes.append(img.size)
        except UNREADABLE_IMAGE:  # not an image, a missing file: skipped here, reported when read
            continue
    return sizes


def probe_size(ds: Dataset, column: str, limit: int = PROBE_ROWS) -> tuple[int, str]:
    """(input size, the rule that gave it): the median shorter side (the lower median, so an actual image's) over up
    to ``limit`` evenly spaced rows of ``ds``, read from the image headers (``image_sizes``). One odd image (a
    thumbnail ahead of photos) does not set the size of the whole run."""
    sizes = image_sizes(ds, column, limit)
    if not sizes:
        raise ValueError(f"No image of column '{column}' could be read to tell the input size (of {len(ds)} rows). "
                         "Check the images, or pass --image_size.")
    shorter = sorted(min(s) for s in sizes)
    size = shorter[(len(shorter) - 1) // 2]
    return size, (f"median shorter side of {len(sizes):,} of {len(ds):,} train images (evenly spaced, read from "
                  f"their headers; shorter sides {shorter[0]}-{shorter[-1]} px)")
