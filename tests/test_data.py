"""Data layer on local copies: CIFAR-format datasets, the Hub path, save_to_disk, imagefolder, digits; augmentation."""

import dataclasses
import os

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

from hf_kd.data import BatchAugment, ImageCollator, load_image_data
from hf_kd.data import loading

FINE = ["apple", "bee", "cup", "dog", "eel"]


def cifar_like(n=12, size=32, seed=0):
    """A local copy in the exact column layout of uoft-cs/cifar100 (img, fine_label, coarse_label)."""
    rng = np.random.default_rng(seed)
    feats = Features({"img": ImageFeature(), "fine_label": ClassLabel(names=FINE),
                      "coarse_label": ClassLabel(names=["x", "y"])})

    def part(m):
        return Dataset.from_dict({"img": [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
                                          for _ in range(m)],
                                  "fine_label": [i % 5 for i in range(m)], "coarse_label": [i % 2 for i in range(m)]},
                                 features=feats)

    return DatasetDict(train=part(n), test=part(n // 2))


def test_cifar100_hub_path_uses_preset_columns(monkeypatch):
    """The Hub path is the code a user with internet runs: same call, columns img/fine_label mapped."""
    calls = []
    local = cifar_like()

    def fake_load_dataset(path, *args, **kwargs):
        calls.append(path)
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_image_data("cifar100")
    assert calls == ["uoft-cs/cifar100"]
    assert data.label_names == FINE and data.augmentation == "cifar" and data.input_size == (3, 32, 32)
    assert data.mean == loading.CIFAR100_MEAN
    row = data.train[3]
    assert set(row) == {"pixel_values", "labels"} and row["labels"] == 3
    assert row["pixel_values"].dtype == torch.uint8 and row["pixel_values"].shape == (3, 32, 32)
    np.testing.assert_array_equal(row["pixel_values"].permute(1, 2, 0).numpy(), np.asarray(local["train"][3]["img"]))


def test_save_to_disk_autodetects_cifar_columns(tmp_path):
    cifar_like().save_to_disk(tmp_path / "c100")
    data = load_image_data(str(tmp_path / "c100"))
    assert data.source["image_column"] == "img" and data.source["label_column"] == "fine_label"
    assert data.num_labels == 5 and len(data.eval) == 6


def test_imagefolder(tmp_path):
    for split in ("train", "test"):
        for cls in ("ant", "bug"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(tmp_path / split / cls / f"{i}.png")
    data = load_image_data(str(tmp_path), image_size=32)
    assert data.label_names == ["ant", "bug"] and len(data.train) == 6
    assert data.train[0]["pixel_values"].shape == (3, 32, 32)


def test_digits_offline_default():
    data = load_image_data()
    assert data.num_labels == 10 and len(data.train) == 1437 and len(data.eval) == 360
    x = data.eval[0]["pixel_values"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and x.max() > 100  # real ink, not noise
    assert torch.equal(data.eval[0]["pixel_values"], x)  # eval is deterministic


def test_wrong_column_names_error_lists_columns(tmp_path):
    ds = DatasetDict(train=Dataset.from_dict({"picture": [Image.new("RGB", (8, 8))] * 2, "y": [0, 1]},
                                             features=Features({"picture": ImageFeature(), "y": datasets.Value("int64")})))
    ds.save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match=r"label column 'label' not found.*\['picture', 'y'\]"):
        load_image_data(str(tmp_path / "d"), label_column="label")
    data = load_image_data(str(tmp_path / "d"), label_column="y")  # integer labels without ClassLabel work
    assert data.num_labels == 2


def test_ambiguous_label_columns_error(tmp_path):
    feats = Features({"image": ImageFeature(), "a": ClassLabel(names=["p", "q"]), "b": ClassLabel(names=["r", "s"])})
    DatasetDict(train=Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * 2, "a": [0, 1], "b": [1, 0]},
                                        features=feats)).save_to_disk(tmp_path / "d")
    with pytest.raises(ValueError, match=r"Cannot tell which column holds the labels.*'a', 'b'"):
        load_image_data(str(tmp_path / "d"))


def test_num_labels_mismatch_error(tmp_path):
    cifar_like().save_to_disk(tmp_path / "c")
    with pytest.raises(ValueError, match="num_labels=100 but .* has 5 classes in column 'fine_label'"):
        load_image_data(str(tmp_path / "c"), num_labels=100)


def test_batch_augment_matches_per_sample_reference():
    """Batched pad-4 random crop + flip equals torchvision-style per-sample crops drawn with the same numbers."""
    aug = BatchAugment((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "cifar")
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(1)
    out = aug(x, train=True)
    torch.manual_seed(1)
    i, j = torch.randint(0, 9, (16, 1)), torch.randint(0, 9, (16, 1))
    flip = torch.rand(16, 1) < 0.5
    padded = F.pad(x.float(), (4, 4, 4, 4))  # black padding BEFORE normalising, as RandomCrop(32, padding=4)
    ref = []
    for k in range(16):
        crop = padded[k, :, i[k]:i[k] + 32, j[k]:j[k] + 32]
        ref.append(crop.flip(-1) if flip[k] else crop)
    ref = (torch.stack(ref) / 255 - 0.5) / 0.25
    torch.testing.assert_close(out, ref)
    assert flip.any() and (~flip).any() and (i != 4).any()


def test_imagenet_batch_flip_matches_per_sample_reference():
    """ImageNet-style data: flip only (the crop is done per sample in the dataset), with the same random draws (the
    unused crop offsets included, so that the RNG stream does not depend on how the flip is computed), exactly."""
    aug = BatchAugment((0.4, 0.5, 0.6), (0.2, 0.3, 0.25), "imagenet")
    x = torch.randint(0, 256, (16, 3, 20, 24), dtype=torch.uint8)
    torch.manual_seed(1)
    out = aug(x, train=True)
    torch.manual_seed(1)
    torch.randint(0, 1, (16, 1)), torch.randint(0, 1, (16, 1))
    flip = torch.rand(16, 1) < 0.5
    ref = torch.stack([x[k].flip(-1) if flip[k] else x[k] for k in range(16)])
    ref = (ref.float() / 255 - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.3, 0.25]).view(
        1, 3, 1, 1)
    assert torch.equal(out, ref) and out.is_contiguous()
    assert flip.any() and (~flip).any()
    torch.manual_seed(1)
    assert torch.equal(aug.augment(x, aug.draw(x.shape)), ref)  # the fast path's form


def test_batch_augment_eval_is_normalise_only_and_reflect_mode():
    aug = BatchAugment((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "cifar", pad_mode="reflect")
    x = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    assert torch.equal(aug(x, train=False), torch.full((2, 3, 32, 32), 2.0))
    assert torch.equal(aug(x, train=True), torch.full((2, 3, 32, 32), 2.0))  # reflect pads with image pixels
    with pytest.raises(ValueError, match="unknown augmentation"):
        BatchAugment((0.5,), (0.5,), "autoaugment")


def test_collator():
    batch = ImageCollator()([{"pixel_values": torch.zeros(3, 4, 4, dtype=torch.uint8), "labels": 1}] * 3)
    assert batch["pixel_values"].shape == (3, 3, 4, 4) and batch["labels"].dtype == torch.long


@pytest.mark.slow
def test_in_memory_fast_path_trains_identically(tmp_path):
    """Decoded-once uint8 tensors + batched fetch give bit-identical training to the datasets path."""
    from hf_kd import DistillationArguments, SupervisedTrainer, create_student
    from hf_kd.data import InMemoryImages

    data = load_image_data("digits", max_train_samples=48, max_eval_samples=16)
    fast = data.in_memory()
    assert isinstance(fast.train, InMemoryImages) and fast.train.pixels.dtype == torch.uint8
    assert torch.equal(fast.train[7]["pixel_values"], data.train[7]["pixel_values"])
    states, evals = [], []
    for d in (data, fast):
        torch.manual_seed(0)
        s = create_student("cifar_resnet8x4", 10, mean=d.mean, std=d.std)
        tr = SupervisedTrainer(model=s, args=DistillationArguments(
            output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=16, report_to=[], use_cpu=True,
            save_strategy="no", seed=0), train_dataset=d.train, eval_dataset=d.eval, augmentation=d.batch_augment())
        tr.train()
        states.append(tr.student.state_dict())
        evals.append(tr.evaluate())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    # the same weights score the same evaluation set alike, read from disk or from memory
    assert evals[0]["eval_top1"] == evals[1]["eval_top1"] and evals[0]["eval_top5"] == evals[1]["eval_top5"]
    assert evals[0]["eval_loss"] == pytest.approx(evals[1]["eval_loss"], rel=1e-6)
    with pytest.raises(ValueError, match="in_memory is for small images"):
        dataclasses.replace(data, input_size=(3, 224, 224)).in_memory()


# A local CIFAR-100 copy in the Hub's parquet layout (60k pool, stratified 50k/10k re-split), where a machine has one.
LOCAL_CIFAR100 = os.environ.get("HF_KD_CIFAR100", "")


@pytest.mark.parametrize("subdir", ["", "data"])
def test_local_parquet_folder_in_hub_layout(tmp_path, subdir):
    """A downloaded Hub dataset (`hf download ... --local-dir`): parquet shards, read with their splits and features.

    Before, any local folder was read as an imagefolder: "Instruction "train" corresponds to no data!"."""
    ds = cifar_like(n=12)
    folder = tmp_path / "c100"
    (folder / subdir).mkdir(parents=True)
    ds["train"].to_parquet(str(folder / subdir / "train-00000-of-00001.parquet"))
    ds["test"].to_parquet(str(folder / subdir / "test-00000-of-00001.parquet"))
    data = load_image_data(str(folder))
    assert (len(data.train), len(data.eval)) == (12, 6)
    assert data.source["image_column"] == "img" and data.source["label_column"] == "fine_label"
    assert data.label_names == FINE and data.source["eval_split"] == "test"
    assert data.train[4]["labels"] == 4 and data.train[4]["pixel_values"].shape == (3, 32, 32)
    assert "copy_of" not in data.source and data.mean == loading.IMAGENET_MEAN  # 5 classes: no preset's copy


def test_local_copy_of_cifar100_takes_the_preset_settings(tmp_path):
    """Columns img/fine_label with CIFAR-100's 100 label names, 32x32 images and train/test splits: a local copy of
    uoft-cs/cifar100 (other names or sizes are not: test_own_data.py)."""
    names = list(loading.CIFAR100_LABELS)
    feats = Features({"img": ImageFeature(), "fine_label": ClassLabel(names=names)})
    img = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    part = Dataset.from_dict({"img": [img] * 4, "fine_label": [0, 1, 2, 99]}, features=feats)
    for split in ("train", "test"):
        part.to_parquet(str(tmp_path / f"{split}-00000-of-00001.parquet"))
    data = load_image_data(str(tmp_path))
    assert data.source["copy_of"] == "uoft-cs/cifar100" and data.source["dataset"] == str(tmp_path)
    assert data.mean == loading.CIFAR100_MEAN and data.augmentation == "cifar" and data.label_names == names


@pytest.mark.skipif(not os.path.isdir(LOCAL_CIFAR100), reason="HF_KD_CIFAR100 (a local CIFAR-100 copy) is not set")
def test_local_real_cifar100_loads():
    data = load_image_data(LOCAL_CIFAR100)
    assert (len(data.train), len(data.eval)) == (50_000, 10_000)
    assert data.num_labels == 100 and data.label_names[:3] == ["apple", "aquarium_fish", "baby"]
    assert data.label_names[-1] == "worm" and data.source["copy_of"] == "uoft-cs/cifar100"
    row = data.eval[0]
    assert row["pixel_values"].shape == (3, 32, 32) and 0 <= row["labels"] < 100


def class_sorted_folder(root, classes=5, per_class=6):
    """An imagefolder sorted by class (as on disk): a prefix of it holds the first classes only."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_max_train_samples_is_a_balanced_random_sample_not_a_prefix(tmp_path):
    folder = class_sorted_folder(tmp_path / "sorted")
    labels = lambda d: sorted(d.train[i]["labels"] for i in range(len(d.train)))  # noqa: E731
    data = load_image_data(str(folder), max_train_samples=10, max_eval_samples=5)
    assert labels(data) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # every class, 2 each (a prefix: classes 0 and 1 only)
    assert sorted(data.eval[i]["labels"] for i in range(5)) == [0, 1, 2, 3, 4]
    sub = data.source["train_subset"]
    assert sub == dict(size=10, of=30, seed=0, classes=5, per_class_min=2, per_class_max=2)
    assert loading.describe_subset(sub) == ("10 of 30 images (class-balanced random subset, seed 0: 2 per class, "
                                            "5 classes)")
    again = load_image_data(str(folder), max_train_samples=10)
    other = load_image_data(str(folder), max_train_samples=10, subset_seed=1)
    pix = lambda d: torch.stack([d.train[i]["pixel_values"] for i in range(10)])  # noqa: E731
    assert torch.equal(pix(data), pix(again)) and not torch.equal(pix(data), pix(other))


def test_balanced_subset_uneven_classes():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 20)
    idx = loading.balanced_subset(labels, 30, seed=3)
    counts = np.bincount(labels[idx], minlength=3)
    assert len(set(idx)) == 30 and counts[1] == 3 and sorted(counts[[0, 2]]) == [13, 14]  # short class gives all
    assert list(idx) == sorted(idx) and np.array_equal(idx, loading.balanced_subset(labels, 30, seed=3))
    assert len(loading.balanced_subset(labels, 100)) == 73
