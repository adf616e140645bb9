"""A user's own data: read, not guessed (sizes, modes, paths, label names, splits, files), and an export that
``pipeline`` evaluates exactly as hf_kd did. Every dataset here is a handful of tiny images made in the test."""

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from hf_kd.checks import check_dataset
from hf_kd.data import load_image_data
from hf_kd.data import loading

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(w, h, seed=0):
    """A smooth colour pattern with noise: resizing it the wrong way shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(9 * x + c + seed) * np.cos(7 * y - c) for c in range(3)], -1) * 100 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def image_folder(root, sizes, classes=("ant", "bee"), splits=("train", "test"), exts=("jpg", "png")):
    for split in splits:
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                photo(w, h, seed=10 * c + i).save(root / split / name / f"{i}.{exts[i % len(exts)]}")
    return root


def eval_logits(trainer):
    """Logits of the eval split the way the trainer evaluates: its dataloader (the dataset's transform), its
    ``_prepare_inputs`` (BatchAugment's normalisation, eval mode) and the model."""
    trainer.model.eval()
    out = []
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            out.append(trainer.model(pixel_values=trainer._prepare_inputs(batch)["pixel_values"]).logits)
    return torch.cat(out)


# --- the export is evaluated as trained -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, image_size, sizes", [
    ("cifar_resnet20", 32, [(20, 18), (18, 22)]),  # CIFAR-size student on images that need resizing
    ("resnet18", 224, [(400, 300), (300, 400)]),  # timm's resnet18 (its pretrained_cfg: crop_pct 0.95, bicubic)
])
def test_pipeline_on_the_export_gives_the_evaluation_probabilities(tmp_path, arch, image_size, sizes):
    """``pipeline("image-classification")`` on the exported folder runs timm's eval transform from the student's
    pretrained_cfg; it must see the pixels hf_kd evaluated (before: timm's crop_pct 0.95 / bicubic for resnet18
    against hf_kd's 0.875 / bilinear, and a tensor resize instead of PIL's)."""
    from transformers import pipeline

    from hf_kd.recipes import ModelArguments, build_student
    from hf_kd.trainers import DistillationArguments, SupervisedTrainer

    data = load_image_data(str(image_folder(tmp_path / "photos", sizes)), image_size=image_size)
    student = build_student(ModelArguments(student=arch), data)  # the recipe's path
    trainer = SupervisedTrainer(model=student, args=DistillationArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], per_device_eval_batch_size=4,
        save_strategy="no"), train_dataset=data.train, eval_dataset=data.eval, augmentation=data.batch_augment())
    logits = eval_logits(trainer)
    with torch.no_grad():  # logits spread over about 2 (a fresh network's are near 0): preprocessing differences show
        for p in student.timm_model.get_classifier().parameters():
            p.mul_(2 / (logits.max() - logits.min()))
    expected = torch.softmax(eval_logits(trainer), -1).numpy()
    trainer.save_model()
    classify = pipeline("image-classification", model=str(tmp_path / "out"), top_k=data.num_labels)
    images = data.eval.with_format(None)["image"]
    got = np.array([[{r["label"]: r["score"] for r in classify(img)}[n] for n in data.label_names] for img in images])
    assert 0.6 < expected.max() < 0.999  # neither a uniform guess nor saturated
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_cifar_size_eval_transform_is_identity_on_32px_images():
    img = photo(32, 32)
    for train in (False, True):
        out = loading.image_transform(32, train, "cifar", 1.0)(img)
        assert out.dtype == torch.uint8 and torch.equal(out.permute(1, 2, 0), torch.from_numpy(np.array(img)))


# --- a preset's copy only when it can be nothing else ----------------------------------------------------------------
def labelled_parquet(folder, size, names, columns=("img", "label"), splits=("train", "test"), rows=4):
    folder.mkdir(parents=True)
    feats = Features({columns[0]: ImageFeature(), columns[1]: ClassLabel(names=list(names))})
    for split in splits:
        Dataset.from_dict({columns[0]: [photo(size, size, seed=i) for i in range(rows)],
                           columns[1]: [i % len(names) for i in range(rows)]},
                          features=feats).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return str(folder)


def test_local_set_is_a_preset_copy_only_with_its_label_names_and_image_size(tmp_path):
    """Columns img/label, train/test and 10 classes are not enough to be CIFAR-10 (before: 96-px images were shrunk
    to 32 px and normalised with CIFAR-10's statistics, silently)."""
    big = load_image_data(labelled_parquet(tmp_path / "big", 96, CIFAR10_LABELS))
    assert "copy_of" not in big.source and big.input_size == (3, 96, 96) and big.mean == loading.IMAGENET_MEAN
    other = load_image_data(labelled_parquet(tmp_path / "other", 32, [f"c{i}" for i in range(10)]))
    assert "copy_of" not in other.source and other.mean == loading.IMAGENET_MEAN
    copy = load_image_data(labelled_parquet(tmp_path / "copy", 32, CIFAR10_LABELS))
    assert copy.source["copy_of"] == "uoft-cs/cifar10" and copy.mean == loading.CIFAR10_MEAN
    assert loading.preset_label_names("cifar10") == [CIFAR10_LABELS]


def test_imagenet_copy_needs_timm_synsets_or_descriptions(tmp_path):
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    kw = dict(columns=("image", "label"), splits=("train", "validation"), rows=2)
    descriptions = info.label_descriptions()
    descriptions[517] = "crane, lifting machine"  # 134 is the bird; a ClassLabel cannot hold "crane" twice
    for names in (info.label_names(), descriptions):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        data = load_image_data(labelled_parquet(folder, 40, names, **kw))
        assert data.source["copy_of"] == "ILSVRC/imagenet-1k" and data.input_size == (3, 224, 224)
    data = load_image_data(labelled_parquet(tmp_path / "other", 40, [f"k{i}" for i in range(1000)], **kw))
    assert "copy_of" not in data.source and data.input_size == (3, 40, 40)


# --- what was read is said, and recorded for the card ----------------------------------------------------------------
def test_what_was_read_is_printed_once_and_shown_in_the_card(tmp_path, capsys, monkeypatch):
    from hf_kd.cards import write_model_card
    from hf_kd.models import create_student
    from hf_kd.recipes import describe_data
    from hf_kd.trainers import DistillationArguments, SupervisedTrainer

    folder = str(image_folder(tmp_path / "own", [(48, 40)] * 5, classes=("a", "b"), splits=("train",)))
    data = load_image_data(folder, eval_fraction=0.2)
    printed = capsys.readouterr().out
    assert printed.count("[hf_kd] data") == 1
    for line in ("input size: 40 px: median shorter side of 10 of 10 train images",
                 "mean/std: [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225]: ImageNet's",
                 "augmentation: cifar", "evaluation preprocessing: shorter side resized to 40 px (bilinear)",
                 "eval: 20 % of train held out (2 of 10 images), stratified by label, subset_seed 0",
                 "columns: images 'image', labels 'label' (2 classes)"):
        assert line in printed and line in loading.describe_inferred(data.source["inferred"]), line
    monkeypatch.setenv("RANK", "1")  # another process of the launch: silent
    load_image_data(folder, eval_fraction=0.2)
    assert "[hf_kd] data" not in capsys.readouterr().out

    student = create_student("cifar_resnet20", data.num_labels, data.label_names, **data.preprocessing)
    trainer = SupervisedTrainer(model=student, args=DistillationArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[]), train_dataset=data.train,
        eval_dataset=data.eval, augmentation=data.batch_augment())
    describe_data(trainer, data)
    text = write_model_card(trainer, str(tmp_path)).text
    assert "- input size: 40 px: median shorter side" in text
    assert "20 % of train held out (2 of 10 images), stratified by label, subset_seed 0" in text


def test_input_size_is_the_median_over_many_images_not_the_first(tmp_path):
    """One 24x24 thumbnail ahead of 96x128 photos set the whole run to 24 px before."""
    images = [photo(24, 24)] + [photo(128, 96, seed=i) for i in range(6)]
    rows = Dataset.from_dict({"image": images, "label": [0, 1] * 3 + [0]}, features=Features(
        {"image": ImageFeature(), "label": ClassLabel(names=["x", "y"])}))
    DatasetDict(train=rows, test=rows).save_to_disk(tmp_path / "d")
    data = load_image_data(str(tmp_path / "d"))
    assert data.input_size == (3, 96, 96) and data.eval[0]["pixel_values"].shape == (3, 96, 96)
    assert "median shorter side of 7 of 7 train images" in data.source["inferred"]["input size"]
    assert loading.probe_size(rows, "image", limit=3)[0] == 96  # rows 0, 3, 6 of 7: evenly spaced
    given = load_image_data(str(tmp_path / "d"), image_size=64)
    assert given.input_size == (3, 64, 64) and "--image_size" in given.source["inferred"]["input size"]


# --- images of any mode, as file paths -------------------------------------------------------------------------------
def test_to_rgb_keeps_16_bit_float_and_transparent_palette_images(tmp_path):
    from hf_kd.data import to_rgb

    ramp = np.linspace(0, 65535, 64 * 4).astype(np.uint16).reshape(4, 64)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a real 16-bit PNG
    deep = Image.open(tmp_path / "deep.png")
    assert deep.mode in ("I;16", "I")
    expected = np.round(ramp / 257).astype(np.uint8)
    rgb = np.asarray(to_rgb(deep))
    assert rgb.shape == (4, 64, 3) and len(np.unique(rgb)) > 200  # convert("RGB"): 2 levels
    np.testing.assert_array_equal(rgb[..., 0], expected)
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(ramp.astype(np.int32))))[..., 1], expected)
    unit = Image.fromarray((ramp / 65535).astype(np.float32))  # mode F in [0, 1]
    assert np.abs(np.asarray(to_rgb(unit))[..., 2].astype(int) - expected).max() <= 1

    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0: red, transparent; index 1: blue
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png")
    out = np.asarray(to_rgb(Image.open(tmp_path / "pal.png")))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [0, 0, 255]  # not the hidden red


def test_a_folder_of_16_bit_pngs_is_read_with_all_its_grey_levels(tmp_path):
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(ramp).save(tmp_path / cls / f"{i}.png")
    x = load_image_data(str(tmp_path), eval_fraction=0.5).train[0]["pixel_values"]
    assert len(torch.unique(x)) > 200  # before: 2 (PIL's convert("RGB") clips at 255)


def test_image_column_of_file_paths_loads_relative_to_the_dataset(tmp_path):
    (tmp_path / "d" / "imgs").mkdir(parents=True)
    paths = []
    for i in range(4):
        photo(20, 16, seed=i).save(tmp_path / "d" / "imgs" / f"{i}.png")
        paths.append(f"imgs/{i}.png" if i % 2 else str(tmp_path / "d" / "imgs" / f"{i}.png"))  # relative, absolute
    feats = Features({"image": Value("string"), "label": ClassLabel(names=["p", "q"])})
    rows = Dataset.from_dict({"image": paths, "label": [0, 1, 0, 1]}, features=feats)
    DatasetDict(train=rows, test=rows).save_to_disk(tmp_path / "d")  # before: 'str' object has no attribute 'size'
    data = load_image_data(str(tmp_path / "d"))
    x = data.eval[1]["pixel_values"]
    assert x.shape == (3, 16, 16) and data.input_size == (3, 16, 16)
    assert torch.equal(x, loading.image_transform(16, False, "cifar", 1.0)(Image.open(tmp_path / "d/imgs/1.png")))


# --- labels ----------------------------------------------------------------------------------------------------------
def test_label_names_are_encoded_and_a_non_label_column_is_named(tmp_path):
    feats = Features({"image": ImageFeature(), "label": Value("string")})

    def part(labels):
        return Dataset.from_dict({"image": [photo(8, 8, seed=i) for i in range(len(labels))], "label": labels},
                                 features=feats)

    DatasetDict(train=part(["dog", "cat", "emu", "cat"]), test=part(["emu", "dog"])).save_to_disk(tmp_path / "d")
    data = load_image_data(str(tmp_path / "d"))
    assert data.label_names == ["cat", "dog", "emu"]  # sorted, as class_encode_column orders them
    assert [data.train[i]["labels"] for i in range(4)] == [1, 0, 2, 0]
    assert [data.eval[i]["labels"] for i in range(2)] == [2, 1]  # the train split's ids
    with pytest.raises(ValueError, match=r"Label column 'image' holds images, not class labels.*--label_column"):
        load_image_data(str(tmp_path / "d"), label_column="image")
    DatasetDict(train=part(["dog", "cat"]), test=part(["cow", "dog"])).save_to_disk(tmp_path / "e")
    with pytest.raises(ValueError, match=r"test split has class names .* train split lacks: 'cow' \(1 rows\)"):
        load_image_data(str(tmp_path / "e"))


def int_labelled(splits: dict, folder):
    feats = Features({"image": ImageFeature(), "label": Value("int64")})
    DatasetDict({name: Dataset.from_dict({"image": [photo(8, 8, seed=i) for i in range(len(labels))],
                                          "label": labels}, features=feats)
                 for name, labels in splits.items()}).save_to_disk(folder)
    return str(folder)


def test_labelled_eval_split_is_preferred_and_every_label_is_checked(tmp_path):
    folder = int_labelled({"train": [0, 1, 0, 1], "validation": [1, 0], "test": [-1, -1, -1]}, tmp_path / "a")
    data = load_image_data(folder)  # before: the unlabelled test split, then IndexError after training
    assert data.source["eval_split"] == "validation" and len(data.eval) == 2
    assert "passed over for evaluation, no labels: test" in data.source["inferred"]["splits"]
    with pytest.raises(ValueError, match=r"Eval split 'test' has no labels .*--eval_split"):
        load_image_data(folder, eval_split="test")
    bad = int_labelled({"train": [0, 1, 0, 1], "test": [0, -1, 5, 5]}, tmp_path / "b")
    with pytest.raises(ValueError, match=r"test split has labels outside the label set 0\.\.1 in column 'label': "
                                         r"-1 \(1 rows\), 5 \(2 rows\)"):
        load_image_data(bad)
    one = int_labelled({"train": [0, 0, 0], "test": [0]}, tmp_path / "c")
    with pytest.raises(ValueError, match=r"1 class\(es\) in label column 'label' \(\['0'\]\); .*at least 2"):
        load_image_data(one)


def test_held_out_split_uses_subset_seed_and_is_stratified(tmp_path):
    feats = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"]), "id": Value("int64")})
    labels = [0] * 10 + [1] * 10 + [2] * 10
    DatasetDict(train=Dataset.from_dict({"image": [photo(8, 8)] * 30, "label": labels, "id": list(range(30))},
                                        features=feats)).save_to_disk(tmp_path / "d")

    def held_out(**kw):
        data = load_image_data(str(tmp_path / "d"), eval_fraction=0.2, **kw)
        rows = data.eval.with_format(None)
        return data, sorted(rows["id"]), sorted(rows["label"])

    data, ids, eval_labels = held_out()
    assert held_out()[1] == ids and held_out(subset_seed=1)[1] != ids  # drawn with subset_seed (was: seed)
    assert eval_labels == [0, 0, 1, 1, 2, 2]  # stratified: 2 of each class's 10
    assert data.source["eval_held_out"] == dict(fraction=0.2, size=6, of=30, subset_seed=0, stratified=True)
    assert "20 % of train held out (6 of 30 images), stratified by label, subset_seed 0" in \
        data.source["inferred"]["splits"]


# --- a data file as the dataset --------------------------------------------------------------------------------------
def test_parquet_and_csv_files_load_and_pass_the_dataset_check(tmp_path):
    parquet = labelled_parquet(tmp_path / "p", 12, ["x", "y"], splits=("all",), rows=6) + "/all-00000-of-00001.parquet"
    check_dataset(parquet)  # before: "no such folder"
    data = load_image_data(parquet, eval_fraction=0.5)
    assert data.label_names == ["x", "y"] and len(data.train) + len(data.eval) == 6

    (tmp_path / "c" / "pics").mkdir(parents=True)
    lines = ["file,species"]
    for i in range(6):
        photo(10, 10, seed=i).save(tmp_path / "c" / "pics" / f"{i}.png")
        lines.append(f"pics/{i}.png,{'owl' if i % 2 else 'cat'}")
    (tmp_path / "c" / "labels.csv").write_text("\n".join(lines) + "\n")
    csv = str(tmp_path / "c" / "labels.csv")
    check_dataset(csv)
    data = load_image_data(csv, image_column="file", label_column="species", eval_fraction=0.5)
    assert data.label_names == ["cat", "owl"] and data.train[0]["pixel_values"].shape == (3, 10, 10)

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt is a file, but not one hf_kd reads as a dataset"):
        check_dataset(str(tmp_path / "notes.txt"))


def test_two_label_columns_are_not_picked_silently(tmp_path):
    """A set with both 'label' and 'labels' trained on 'label' without a word; now it asks, and follows the answer."""
    images = [photo(8, 8, seed=i) for i in range(6)]
    ds = Dataset.from_dict({"image": images, "label": [0, 1, 0, 1, 0, 1], "labels": [1, 0, 1, 0, 1, 0]},
                           features=Features({"image": ImageFeature(), "label": Value("int64"),
                                              "labels": Value("int64")}))
    DatasetDict(train=ds, test=ds).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(ValueError, match="Several columns could hold the labels: label, labels.*--label_column"):
        load_image_data(str(tmp_path / "two"))
    data = load_image_data(str(tmp_path / "two"), label_column="labels")
    assert data.source["label_column"] == "labels" and data.train[0]["labels"] == 1
