"""Real ImageNet layouts load with the right labels: the classic ILSVRC folders (``train/<synset>/*.JPEG``,
``val/<synset>/*.JPEG``) and the Hub's ``ILSVRC/imagenet-1k`` download (parquet shards whose ClassLabel names are
the readable descriptions in synset order). Class index = sorted synsets, the order of timm's and torchvision's
ImageNet models, so a 1000-class ImageNet teacher's labels match the student's by name. Tiny JPEGs made here."""

import io

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image
from timm.data import ImageNetInfo

import hf_kd
from hf_kd.data import load_image_data
from hf_kd.trainers import KDTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

INFO = ImageNetInfo("imagenet-1k")
SYNSETS, DESCRIPTIONS = list(INFO.label_names()), [str(d) for d in INFO.label_descriptions()]
PICK = [0, 1, 7, 42, 100, 207, 404, 531, 817, 999]  # a 10-class ImageNet subset, in class-index order


def grey(value, w=40, h=30):
    """A flat JPEG of one grey level: its class can be read back from the pixels after any crop."""
    return Image.fromarray(np.full((h, w, 3), value, np.uint8))


def level(k):
    return 20 + 20 * k  # the grey level of the k-th picked class


def ilsvrc_folders(root):
    """train/<synset>/ and val/<synset>/, the synsets created in reverse order (the listing order must not count)."""
    for split in ("train", "val"):
        for k in reversed(range(len(PICK))):
            folder = root / split / SYNSETS[PICK[k]]
            folder.mkdir(parents=True)
            for i in range(2):
                grey(level(k), 40 + 8 * i, 30).save(folder / f"{SYNSETS[PICK[k]]}_{i}.JPEG")
    return str(root)


def teacher(names, data):
    """A 1000-class timm ImageNet model stand-in, named as timm names its ImageNet models (descriptions) or by
    synset; it preprocesses as the student (224 px, ImageNet statistics), so it sees the student's batch."""
    return hf_kd.create_student("test_resnet", 1000, names, **data.preprocessing)


def kd(student, teach, data, tmp_path):
    args = KDTrainer.args_class(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], save_strategy="no")
    return KDTrainer(model=student, teacher=teach, args=args, train_dataset=data.train,
                     augmentation=data.batch_augment())


def test_ilsvrc_folders_of_an_imagenet_subset(tmp_path):
    data = load_image_data(ilsvrc_folders(tmp_path / "ilsvrc"))
    assert data.label_names == [SYNSETS[i] for i in PICK]  # sorted synsets = ImageNet's class order
    assert data.source["eval_split"] == "validation" and len(data.train) == len(data.eval) == 20
    # ImageNet-1k's settings, not the size of these thumbnails: what an ImageNet teacher was trained at
    assert data.input_size == (3, 224, 224) and data.augmentation == "imagenet" and data.crop_pct == 0.875
    assert "ImageNet synsets" in data.source["inferred"]["input size"]
    for split in (data.train, data.eval):
        for row in split:
            assert abs(row["pixel_values"].float().mean().item() - level(row["labels"])) < 4  # each image's own class
    student = hf_kd.create_student("test_resnet", data.num_labels, data.label_names, **data.preprocessing)
    for names in (DESCRIPTIONS, SYNSETS):
        trainer = kd(student, teacher(names, data), data, tmp_path)
        assert trainer.teacher_labels.index == tuple(PICK)
        assert "restricted by label name" in trainer.teacher_notes[-1]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        raw = trainer.teacher.forward_kd(x, stages=False).logits
    torch.testing.assert_close(trainer.teacher_forward(x).logits, raw[:, PICK], rtol=0, atol=0)


def jpeg_record(value):
    out = io.BytesIO()
    grey(value).save(out, "JPEG")
    return {"bytes": out.getvalue(), "path": None}


def hub_imagenet(folder):
    """The layout of `hf download ILSVRC/imagenet-1k --repo-type dataset`: data/{train,validation,test}-*.parquet,
    ClassLabel names the descriptions in synset order, one of the two "crane"s renamed (a ClassLabel cannot hold a
    name twice), the test split unlabelled (-1)."""
    names = list(DESCRIPTIONS)
    names[517] = "crane, lifting machine"
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    (folder / "data").mkdir(parents=True)
    rows = {"train": [0, 134, 517, 999, 0, 517], "validation": [134, 517, 999, 0], "test": [-1, -1]}
    for split, labels in rows.items():
        for shard in range(2):
            part = labels[shard::2]
            Dataset.from_dict({"image": [jpeg_record(level(PICK.index(i)) if i in PICK else 128) for i in part],
                               "label": part}, features=features).to_parquet(
                str(folder / "data" / f"{split}-0000{shard}-of-00002.parquet"))
    return str(folder), names


@pytest.mark.slow
def test_hub_imagenet_download(tmp_path):
    """Its renamed "crane" against a timm teacher's two "crane"s was refused as ambiguous: the two sides are the same
    1000 classes in the same order."""
    folder, names = hub_imagenet(tmp_path / "hub")
    data = load_image_data(folder)
    assert data.label_names == names and data.source["copy_of"] == "ILSVRC/imagenet-1k"
    assert data.source["eval_split"] == "validation" and len(data.train) == 6 and len(data.eval) == 4
    assert data.input_size == (3, 224, 224)
    assert sorted(data.train.with_format(None)["label"]) == [0, 0, 134, 517, 517, 999]
    student = hf_kd.create_student("test_resnet", data.num_labels, data.label_names, **data.preprocessing)
    for teacher_names in (DESCRIPTIONS, SYNSETS):
        trainer = kd(student, teacher(teacher_names, data), data, tmp_path)
        assert trainer.teacher_labels.index is None  # the teacher's logits as they are
    # a 10-class student named by synsets (ILSVRC folders) against a teacher exported from the Hub's names
    subset = hf_kd.create_student("test_resnet", len(PICK), [SYNSETS[i] for i in PICK + [517]][1:])
    trainer = kd(subset, teacher(names, data), data, tmp_path)
    assert trainer.teacher_labels.index == tuple(PICK[1:] + [517])
    assert "as ImageNet-1k classes" in trainer.teacher_notes[-1]


def test_own_classes_that_are_not_synsets_keep_their_own_settings(tmp_path):
    root = tmp_path / "own"
    for split in ("train", "val"):
        for k, name in enumerate(("n0000000x", "hen")):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                grey(level(k), 40, 30).save(root / split / name / f"{i}.jpg")
    data = load_image_data(str(root))
    assert data.input_size == (3, 30, 30) and "median shorter side" in data.source["inferred"]["input size"]
