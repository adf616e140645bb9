"""A user's own data: read, not guessed (sizes, modes, paths, label names, splits, files), and an export that
``pipeline`` evaluates exactly as hf_kd did. Every dataset here is a handful of tiny images made in the test."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_kd.data import load_image_data
from hf_kd.data import loading

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
