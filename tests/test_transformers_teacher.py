"""Any transformers AutoModelForImageClassification as teacher: preprocessing rebuilt on the batch, the pooled head
input as PEFD's feature, KD / PEFD loss values, frozen teacher, bf16 autocast on the CPU, 2 gloo processes, card."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (AutoImageProcessor, ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor,
                          ViTConfig, ViTForImageClassification, ViTImageProcessor)

from hf_kd import KDArguments, KDTrainer, ProjectorKDArguments, ProjectorKDTrainer, create_student, load_teacher
from hf_kd.losses import kd_kl_div
from hf_kd.losses.projector_kd import projector_cosine_loss
from hf_kd.models import TransformersTeacher

pytestmark = pytest.mark.usefixtures("one_thread")


def save_vit(folder, labels, seed=1):
    """Tiny random ViT (2 layers, width 32) fine-tuned-style folder: weights + its image processor (24x24)."""
    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=24, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={n: i for i, n in enumerate(labels)})
    ViTForImageClassification(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 24, "width": 24}, resample=2, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(folder)
    return str(folder)


def save_convnext(folder, labels, seed=2):
    """Tiny random ConvNeXt (2 stages, widths 8/16), processor: short side 40/0.875 = 45, centre crop 40, bicubic."""
    torch.manual_seed(seed)
    cfg = ConvNextConfig(patch_size=2, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=len(labels),
                         id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    ConvNextForImageClassification(cfg).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 40}, crop_pct=0.875, resample=3).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def vit_dir(data, tmp_path_factory):
    return save_vit(tmp_path_factory.mktemp("vit"), data.label_names)


def student(data, seed=0):
    torch.manual_seed(seed)
    return create_student("cifar_resnet8x4", data.num_labels, data.label_names, mean=data.mean, std=data.std)


def batch(data, n=8):
    rows = [data.train[i] for i in range(n)]
    return data.batch_augment("none"), torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows]), \
        torch.tensor([r["labels"] for r in rows])


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_teacher_inputs_match_its_image_processor(data, tmp_path, family):
    folder = (save_vit if family == "vit" else save_convnext)(tmp_path / family, data.label_names)
    teacher = load_teacher(folder)
    assert isinstance(teacher, TransformersTeacher) and teacher.model_type == family
    u = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]  # a student normalisation unlike the teacher's
    x = (u.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    teacher.set_student_normalization(mean, std)
    ours = teacher.teacher_inputs(x)
    ref = AutoImageProcessor.from_pretrained(folder)(
        [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in u], return_tensors="pt").pixel_values
    assert ours.shape == ref.shape == ((4, 3, 24, 24) if family == "vit" else (4, 3, 40, 40))
    # the processor resizes 8-bit images (rounding: 2/255 after its (x - 0.5) / 0.5); on random-noise pixels its
    # bicubic differs from torch's at a few pixels (measured max 0.16, mean 0.003)
    diff = (ours - ref).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.25, (diff.mean(), diff.max())
    # without undoing the student's normalisation the teacher would see something else entirely
    teacher.set_student_normalization([0.5] * 3, [0.5] * 3)
    assert (teacher.teacher_inputs(x) - ref).abs().mean() > 0.1


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_pre_logits_is_what_the_head_reads(data, tmp_path, family):
    folder = (save_vit if family == "vit" else save_convnext)(tmp_path / family, data.label_names)
    teacher = load_teacher(folder).eval()
    x = torch.randn(4, 3, 32, 32)
    out = teacher.forward_kd(x)
    m, pv = teacher.model, teacher.teacher_inputs(x)
    if family == "vit":  # CLS token of the final layer-normed hidden state, width hidden_size
        expected = m.vit(pixel_values=pv).last_hidden_state[:, 0]
    else:  # pooler_output: LayerNorm of the globally averaged last stage, width hidden_sizes[-1]
        expected = m.convnext(pixel_values=pv).pooler_output
    torch.testing.assert_close(out.pre_logits, expected)
    torch.testing.assert_close(out.logits, m.classifier(out.pre_logits))
    torch.testing.assert_close(out.logits, m(pixel_values=pv).logits)
    from hf_kd.modules.projector_kd import pre_logits_dim

    assert pre_logits_dim(teacher, (3, 32, 32)) == (32 if family == "vit" else 16)


def kd_args(tmp, cls=KDArguments, **kw):
    base = dict(output_dir=str(tmp), per_device_train_batch_size=8, per_device_eval_batch_size=16, report_to=[],
                use_cpu=True, dataloader_drop_last=True, seed=0, optim="sgd", optim_args="momentum=0.9",
                learning_rate=0.05, logging_steps=1, save_strategy="no", max_steps=2, disable_tqdm=True)
    base.update(kw)
    return cls(**base)


def test_kd_loss_value_and_frozen_teacher(data, vit_dir, tmp_path):
    teacher = load_teacher(vit_dir)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = KDTrainer(model=student(data), teacher=teacher, args=kd_args(tmp_path), train_dataset=data.train,
                        eval_dataset=data.eval, augmentation=data.batch_augment("none"))
    aug, u, y = batch(data)
    x = aug(u, train=False)
    loss = trainer.compute_loss(trainer.model, {"pixel_values": x, "labels": y})
    # by hand: the teacher fed through ITS processor (its mean/std, 24x24), the student's logits on x
    t_in = F.interpolate(x * aug.std + aug.mean, size=(24, 24), mode="bilinear", antialias=True)
    with torch.no_grad():
        z_t = teacher.model(pixel_values=(t_in - 0.5) / 0.5).logits
    z_s = trainer.student(pixel_values=x).logits
    expected = 0.1 * F.cross_entropy(z_s, y) + 0.9 * kd_kl_div(z_s, z_t, 4.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    trainer.train()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert trainer.teacher.training is False
    trainer.save_model()
    card = open(os.path.join(tmp_path, "README.md")).read()
    assert vit_dir in card and "ViTForImageClassification" in card and "model type `vit`" in card
    assert "resize to [24, 24] (bilinear)" in card


def test_projector_kd_measures_teacher_width_and_loss(data, vit_dir, tmp_path):
    teacher = load_teacher(vit_dir)
    trainer = ProjectorKDTrainer(model=student(data), teacher=teacher, args=kd_args(tmp_path, ProjectorKDArguments),
                                 train_dataset=data.train, eval_dataset=data.eval,
                                 augmentation=data.batch_augment("none"))
    proj = trainer.projectors
    assert (proj.in_features, proj.out_features) == (256, 32)  # resnet8x4 pooled width -> ViT hidden size
    aug, u, y = batch(data)
    x = aug(u, train=False)
    loss = trainer.compute_loss(trainer.model, {"pixel_values": x, "labels": y})
    s = trainer.student.forward_kd(x, stages=False)
    f_t = teacher.forward_kd(x).pre_logits
    expected = F.cross_entropy(s.logits, y) + 25.0 * projector_cosine_loss(proj(s.pre_logits), f_t)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    trainer.train()
    assert all(p.grad is None for p in teacher.parameters())
    assert trainer.state.global_step == 2


@pytest.mark.parametrize("cls", [KDTrainer, ProjectorKDTrainer])
def test_bf16_autocast_on_cpu(data, vit_dir, tmp_path, cls):
    teacher = load_teacher(vit_dir)
    trainer = cls(model=student(data), teacher=teacher, args=kd_args(tmp_path, cls.args_class, bf16=True),
                  train_dataset=data.train, eval_dataset=data.eval, augmentation=data.batch_augment("none"))
    assert next(trainer.teacher.parameters()).dtype == torch.bfloat16  # held in the mixed-precision dtype
    aug, u, _ = batch(data)
    out = trainer.teacher_forward(aug(u, train=False))
    assert out.logits.dtype == torch.float32 and out.pre_logits.dtype == torch.float32
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_load_teacher_errors_and_timm_wrapper_passthrough(data, tmp_path):
    folder = tmp_path / "nopro"
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(image_size=24, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=32, num_labels=3)).save_pretrained(folder)
    with pytest.raises(ValueError, match="image processor"):
        load_teacher(str(folder))
    s = student(data)
    s.save_pretrained(tmp_path / "timm")
    assert type(load_teacher(str(tmp_path / "timm"))).__name__ == "TimmStudent"
    from hf_kd import load_student

    with pytest.raises(ValueError, match="load_teacher"):  # was a TypeError from TimmWrapperConfig
        load_student(str(folder))
    teacher = load_teacher(save_vit(tmp_path / "vit3", ["a", "b", "c"]))
    with pytest.raises(ValueError, match="classes"):
        KDTrainer(model=student(data), teacher=teacher, args=kd_args(tmp_path), train_dataset=data.train)


@pytest.mark.slow
def test_two_processes_match_one_with_a_vit_teacher(data, vit_dir, tmp_path):
    """2 gloo processes vs 1 process with gradient_accumulation_steps=2 (tests/test_distributed.py's protocol)."""
    from test_distributed import launch

    names = ["kd_vit", "projector_kd_vit"]
    os.environ["HF_KD_TEST_VIT_TEACHER"] = vit_dir
    try:
        launch(tmp_path / "ddp", 2, 1, names)
        launch(tmp_path / "single", 1, 2, names)
    finally:
        del os.environ["HF_KD_TEST_VIT_TEACHER"]
    for name in names:
        assert json.load(open(tmp_path / "ddp" / f"{name}_info.json")) == {"world_size": 2, "steps": 3}
        a = torch.load(tmp_path / "ddp" / f"{name}_student.pt")
        b = torch.load(tmp_path / "single" / f"{name}_student.pt")
        for k in a:
            if "running_" not in k and "num_batches" not in k:
                assert (a[k] - b[k]).abs().max().item() < 5e-5, (name, k)
