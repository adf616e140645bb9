"""Any transformers AutoModelForImageClassification as teacher: preprocessing rebuilt on the batch, the pooled head
input as PEFD's feature, KD / PEFD loss values, frozen teacher, bf16 autocast on the CPU, card (2 gloo processes:
tests/test_distributed.py)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from PIL import Image
from transformers import (AutoImageProcessor, ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor,
                          ViTConfig, ViTForImageClassification, ViTImageProcessor)

from hf_kd import KDArguments, KDTrainer, ProjectorKDArguments, ProjectorKDTrainer, create_student, load_teacher
from hf_kd.losses import kd_kl_div
from hf_kd.losses.projector_kd import projector_cosine_loss
from hf_kd.models import TeacherInput, TransformersTeacher, input_spec
from hf_kd.methods import methods

pytestmark = pytest.mark.usefixtures("one_thread")
# every registered method that takes a pre-trained teacher (hf_kd.methods): a new one is tested too
TEACHER_METHODS = [cls for cls in methods().values() if cls.uses_teacher != "refused"]


def save_vit(folder, labels, seed=1, size=24, resample=2, layers=2):
    """Tiny random ViT (width 32) fine-tuned-style folder: weights + its image processor (size x size, PIL
    ``resample`` 2 bilinear / 3 bicubic, mean/std 0.5)."""
    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                    intermediate_size=64, num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={n: i for i, n in enumerate(labels)})
    ViTForImageClassification(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}, resample=resample, image_mean=[0.5] * 3,
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


@pytest.fixture(scope="module")
def convnext_dir(data, tmp_path_factory):
    return save_convnext(tmp_path_factory.mktemp("convnext"), data.label_names)


@pytest.fixture(params=["vit", "convnext"])
def teacher_dir(request):
    """(family, folder) of a tiny random transformers teacher of each family."""
    return request.param, request.getfixturevalue(f"{request.param}_dir")


def by_hand_teacher_input(family, x, aug, folder):
    """The teacher's pixel_values written out for each tiny family: the student's normalisation undone, the view
    resized to the teacher's network input with its processor's resampling (ViT: bilinear to 24x24; ConvNeXt:
    bicubic to its 40x40 crop size, clipped; the view is not cropped again), then its mean/std."""
    proc = AutoImageProcessor.from_pretrained(folder)
    x01 = x * aug.std + aug.mean
    if family == "vit":
        t_in = F.interpolate(x01, size=(24, 24), mode="bilinear", antialias=True)
    else:
        t_in = F.interpolate(x01, size=(40, 40), mode="bicubic", antialias=True).clamp(0, 1)
    mean, std = torch.tensor(proc.image_mean).view(1, 3, 1, 1), torch.tensor(proc.image_std).view(1, 3, 1, 1)
    return (t_in - mean) / std


def student(data, seed=0):
    torch.manual_seed(seed)
    return create_student("cifar_resnet8x4", data.num_labels, data.label_names, mean=data.mean, std=data.std)


def batch(data, n=8):
    rows = [data.train[i] for i in range(n)]
    return data.batch_augment("none"), torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows]), \
        torch.tensor([r["labels"] for r in rows])


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_teacher_inputs_match_its_image_processor(data, tmp_path, family):
    """The teacher input rebuilt on the device equals its own image processor's output on the same view, the
    processor's centre crop left out (ConvNeXt's crop_pct set to 1: the view is already a crop)."""
    folder = (save_vit if family == "vit" else save_convnext)(tmp_path / family, data.label_names)
    teacher = load_teacher(folder)
    assert isinstance(teacher, TransformersTeacher) and teacher.model_type == family
    u = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]  # a student normalisation unlike the teacher's
    x = (u.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    ours = TeacherInput(mean, std, input_spec(teacher))(x)
    processor = AutoImageProcessor.from_pretrained(folder, **({"crop_pct": 1.0} if family == "convnext" else {}))
    ref = processor([Image.fromarray(a.permute(1, 2, 0).numpy()) for a in u], return_tensors="pt").pixel_values
    assert ours.shape == ref.shape == ((4, 3, 24, 24) if family == "vit" else (4, 3, 40, 40))
    # the processor resizes 8-bit images (rounding: 2/255 after its (x - 0.5) / 0.5); on random-noise pixels its
    # bicubic differs from torch's at a few pixels (measured max 0.16, mean 0.003)
    diff = (ours - ref).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.25, (diff.mean(), diff.max())
    # without undoing the student's normalisation the teacher would see something else entirely
    assert (TeacherInput([0.5] * 3, [0.5] * 3, input_spec(teacher))(x) - ref).abs().mean() > 0.1


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_pre_logits_is_what_the_head_reads(data, tmp_path, family):
    folder = (save_vit if family == "vit" else save_convnext)(tmp_path / family, data.label_names)
    teacher = load_teacher(folder).eval()
    pv = torch.randn(4, *input_spec(teacher).example_size())
    out = teacher.forward_kd(pv)
    m = teacher.model
    if family == "vit":  # CLS token of the final layer-normed hidden state, width hidden_size
        expected = m.vit(pixel_values=pv).last_hidden_state[:, 0]
    else:  # pooler_output: LayerNorm of the globally averaged last stage, width hidden_sizes[-1]
        expected = m.convnext(pixel_values=pv).pooler_output
    torch.testing.assert_close(out.pre_logits, expected)
    torch.testing.assert_close(out.logits, m.classifier(out.pre_logits))
    torch.testing.assert_close(out.logits, m(pixel_values=pv).logits)
    from hf_kd.modules.projector_kd import pre_logits_dim

    assert pre_logits_dim(teacher, input_spec(teacher).example_size()) == (32 if family == "vit" else 16)


def _families():
    """family -> (tiny config, the representation the docs say the head reads, the width that implies).

    The representation is recomputed from the base model's outputs, not from the head's input."""
    import transformers as tf

    vit = dict(image_size=24, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32)
    cls_token = lambda o: o.last_hidden_state[:, 0]  # noqa: E731
    pooled = lambda o: o.pooler_output.flatten(1)  # noqa: E731
    return {
        "deit": (tf.DeiTConfig(**vit), "deit", cls_token, 32),
        "beit": (tf.BeitConfig(**vit, use_mean_pooling=True), "beit", pooled, 32),
        "beit_cls": (tf.BeitConfig(**vit, use_mean_pooling=False), "beit", cls_token, 32),
        "data2vec_vision": (tf.Data2VecVisionConfig(**vit, use_mean_pooling=True), "data2vec_vision", pooled, 32),
        "dinov2": (tf.Dinov2Config(**vit), "dinov2", lambda o: torch.cat(
            [o.last_hidden_state[:, 0], o.last_hidden_state[:, 1:].mean(1)], 1), 64),
        "swin": (tf.SwinConfig(image_size=24, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                               window_size=3), "swin", pooled, 16),
        "resnet": (tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]), "resnet", pooled, 16),
        "regnet": (tf.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8), "regnet",
                   pooled, 16),
        "mobilenet_v2": (tf.MobileNetV2Config(image_size=32, depth_multiplier=0.25), "mobilenet_v2", pooled, 1280),
        "mobilenet_v1": (tf.MobileNetV1Config(image_size=32, depth_multiplier=0.25), "mobilenet_v1", pooled, 256),
        "efficientnet": (tf.EfficientNetConfig(image_size=32, width_coefficient=0.1, depth_coefficient=0.1,
                                               hidden_dim=128), "efficientnet", pooled, 128),
    }


@pytest.mark.parametrize("family", ["deit", "beit", "beit_cls", "data2vec_vision", "dinov2", "swin", "resnet", "regnet",
                                    "mobilenet_v2", "mobilenet_v1", "efficientnet"])
def test_pre_logits_per_family_as_documented(family):
    """The per-family table of hf_kd/models/teacher.py (and the README): what the head reads, and its measured
    width. Each tiny model is fed its own input size (no resize), identity normalisation."""
    from transformers import AutoModelForImageClassification

    from hf_kd.models.teacher import TeacherPreprocess
    from hf_kd.modules.projector_kd import pre_logits_dim

    cfg, base_name, expected_fn, width = _families()[family]
    cfg.num_labels = 5
    torch.manual_seed(0)
    if family == "deit":  # from_config fails on a DeiTConfig without `architectures` (from_pretrained is fine)
        cfg.architectures = ["DeiTForImageClassification"]
    model = AutoModelForImageClassification.from_config(cfg).eval()
    size = getattr(cfg, "image_size", 32)
    teacher = TransformersTeacher(model, TeacherPreprocess(resize=None, crop=None, interpolation="bilinear",
                                                           resample_name="bilinear"))
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out = teacher.forward_kd(x)
        expected = expected_fn(getattr(model, base_name)(pixel_values=x))
    torch.testing.assert_close(out.pre_logits, expected)
    assert pre_logits_dim(teacher, (3, size, size)) == width == expected.shape[1]


def kd_args(tmp, cls=KDArguments, **kw):
    base = dict(output_dir=str(tmp), per_device_train_batch_size=8, per_device_eval_batch_size=16, report_to=[],
                use_cpu=True, dataloader_drop_last=True, seed=0, optim="sgd", optim_args="momentum=0.9",
                learning_rate=0.05, logging_steps=1, save_strategy="no", max_steps=2, disable_tqdm=True)
    base.update(kw)
    return cls(**base)


def test_kd_loss_value_and_frozen_teacher(data, teacher_dir, tmp_path):
    family, folder = teacher_dir
    teacher = load_teacher(folder)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = KDTrainer(model=student(data), teacher=teacher, args=kd_args(tmp_path), train_dataset=data.train,
                        eval_dataset=data.eval, augmentation=data.batch_augment("none"))
    trainer.teacher_name = folder
    aug, u, y = batch(data)
    x = aug(u, train=False)
    loss = trainer.compute_loss(trainer.model, {"pixel_values": x, "labels": y})
    # by hand: the teacher fed through ITS preprocessing (its size, interpolation, mean/std)
    with torch.no_grad():
        z_t = teacher.model(pixel_values=by_hand_teacher_input(family, x, aug, folder)).logits
    torch.testing.assert_close(trainer.teacher_forward(x).logits, z_t)  # the KL term alone is small at T=4
    z_s = trainer.student(pixel_values=x).logits
    expected = 0.1 * F.cross_entropy(z_s, y) + 0.9 * kd_kl_div(z_s, z_t, 4.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    trainer.train()
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert trainer.teacher.training is False
    # the teacher's own card (as transformers' Trainer writes it: model-index, metric type accuracy)
    ModelCard.from_template(ModelCardData(model_name="t", eval_results=[EvalResult(
        task_type="image-classification", dataset_type="digits", dataset_name="digits", metric_type="accuracy",
        metric_value=0.8125)]), template_str="---\n{{ card_data }}\n---\n").save(os.path.join(folder, "README.md"))
    try:
        trainer.save_model()
    finally:
        os.remove(os.path.join(folder, "README.md"))
    card = open(os.path.join(tmp_path, "README.md")).read()
    teacher_part = card[card.index("## Teacher"):card.index("## Training data")]
    cls_name = "ViTForImageClassification" if family == "vit" else "ConvNextForImageClassification"
    assert folder in teacher_part and cls_name in teacher_part and f"model type `{family}`" in teacher_part
    assert "Top-1 accuracy: 0.8125" in teacher_part
    assert ("Teacher sees 24x24 px (bilinear), mean [0.5, 0.5, 0.5]" if family == "vit" else
            "Teacher sees 40x40 px (bicubic), mean [0.5, 0.5, 0.5]") in teacher_part
    assert "student 32x32 px" in teacher_part


@pytest.mark.slow
@pytest.mark.parametrize("cls", TEACHER_METHODS, ids=lambda c: c.method_name)
def test_recipe_teacher_flag_takes_a_transformers_folder(data, vit_dir, tmp_path, cls):
    """`recipes/kd.py --teacher <folder>` / `recipes/projector_kd.py --teacher <folder>` with a ViT folder."""
    from hf_kd.recipes import run

    out = tmp_path / cls.method_name
    run(cls, defaults=dict(student="cifar_resnet8x4", output_dir=str(out)), argv=[
        "--teacher", vit_dir, "--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2",
        "--per_device_train_batch_size", "16", "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true"])
    card = (out / "README.md").read_text()
    assert vit_dir in card and "model type `vit`" in card and "ViTForImageClassification" in card


def test_projector_kd_measures_teacher_width_and_loss(data, teacher_dir, tmp_path):
    family, folder = teacher_dir
    teacher = load_teacher(folder)
    trainer = ProjectorKDTrainer(model=student(data), teacher=teacher, args=kd_args(tmp_path, ProjectorKDArguments),
                                 train_dataset=data.train, eval_dataset=data.eval,
                                 augmentation=data.batch_augment("none"))
    proj = trainer.projectors
    # resnet8x4 pooled width -> ViT hidden size 32 / ConvNeXt last stage 16
    assert (proj.in_features, proj.out_features) == (256, 32 if family == "vit" else 16)
    aug, u, y = batch(data)
    x = aug(u, train=False)
    loss = trainer.compute_loss(trainer.model, {"pixel_values": x, "labels": y})
    s = trainer.student.forward_kd(x, stages=False)
    with torch.no_grad():  # the head's input, from the teacher's input built by hand
        t_in = by_hand_teacher_input(family, x, aug, folder)
        base = teacher.model.vit if family == "vit" else teacher.model.convnext
        out = base(pixel_values=t_in)
        f_t = out.last_hidden_state[:, 0] if family == "vit" else out.pooler_output
    expected = F.cross_entropy(s.logits, y) + 25.0 * projector_cosine_loss(proj(s.pre_logits), f_t)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    trainer.train()
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    assert trainer.state.global_step == 2


@pytest.mark.parametrize("cls", TEACHER_METHODS, ids=lambda c: c.method_name)
def test_bf16_autocast_on_cpu(data, teacher_dir, tmp_path, cls):
    teacher = load_teacher(teacher_dir[1])
    trainer = cls(model=student(data), teacher=teacher, args=kd_args(tmp_path, cls.args_class, bf16=True),
                  train_dataset=data.train, eval_dataset=data.eval, augmentation=data.batch_augment("none"))
    assert next(trainer.teacher.parameters()).dtype == torch.bfloat16  # held in the mixed-precision dtype
    aug, u, _ = batch(data)
    seen = []
    teacher_input = trainer.teacher_input
    trainer.teacher_input = lambda x: seen.append(x.dtype) or teacher_input(x)
    out = trainer.teacher_forward(aug(u, train=False))
    trainer.teacher_input = teacher_input
    assert out.logits.dtype == torch.float32 and out.pre_logits.dtype == torch.float32
    assert seen == [torch.float32]  # preprocessed from the student's batch as it is, not rounded to bf16 first
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())


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
    # same names, other order: the transformers config's id2label is read as a timm teacher's is, and the
    # teacher's outputs are re-ordered by name
    named = create_student("cifar_resnet8x4", 3, ["cat", "dog", "eel"])
    teacher = load_teacher(save_vit(tmp_path / "vit_swapped", ["dog", "cat", "eel"]))
    trainer = KDTrainer(model=named, teacher=teacher, args=kd_args(tmp_path), train_dataset=data.train)
    assert trainer.teacher_labels.index == (1, 0, 2)
    teacher = load_teacher(save_vit(tmp_path / "vit_same", ["cat", "dog", "eel"]))
    KDTrainer(model=named, teacher=teacher, args=kd_args(tmp_path), train_dataset=data.train)  # accepted


@pytest.mark.parametrize("name, rebuilt", [
    ("ViTImageProcessor", True), ("ConvNextImageProcessor", True), ("DeiTImageProcessor", True),
    ("BeitImageProcessor", True), ("BitImageProcessor", True), ("MobileNetV2ImageProcessor", True),
    ("EfficientNetImageProcessor", False),  # include_top: divides by std a second time
    ("LevitImageProcessor", False),  # short side to 256/224 of the target, then crop
    ("PoolFormerImageProcessor", False),  # crop_pct with crop_size
    ("MobileViTImageProcessor", False),  # crop larger than the resize; BGR flip
])
def test_a_processor_hf_kd_cannot_rebuild_is_refused(name, rebuilt, tmp_path):
    """load_teacher compares the rebuilt preprocessing with the processor's own output on a probe image: the
    families it rebuilds pass; the others were silently fed other inputs than their processor's (gap 0.7 to 4.7)."""
    import transformers

    from hf_kd.models.teacher import TeacherPreprocess, check_preprocess

    processor = getattr(transformers, name)()
    try:
        check_preprocess(TeacherPreprocess.from_image_processor(processor), processor, "t")
    except ValueError as e:
        assert not rebuilt and f"its {name} preprocesses images in a way hf_kd does not rebuild" in str(e)
    else:
        assert rebuilt
    if name == "LevitImageProcessor":  # end to end: load_teacher refuses the folder before any training
        folder = save_vit(tmp_path / "vit", ["a", "b"])
        processor.save_pretrained(folder)
        with pytest.raises(ValueError, match="LevitImageProcessor preprocesses images in a way"):
            load_teacher(folder)


# 2 processes vs 1 with KD and PEFD from these teachers: tests/test_distributed.py (PARITY), in its launches.


def test_rebound_student_normalization_reaches_the_teacher_input(data, vit_dir, tmp_path):
    """The teacher input keeps its statistics on the device between steps; a new binding (a new trainer, a search
    trial with another norm_mean) must replace them, not keep the first."""
    x = torch.randn(2, 3, 32, 32)
    teacher = load_teacher(vit_dir)
    trainer = KDTrainer(model=student(data), teacher=teacher, args=kd_args(tmp_path), train_dataset=data.train)
    cfg = dict(trainer.student.config.pretrained_cfg, mean=[0.5] * 3, std=[0.25] * 3)
    trainer.bind_teacher_input(teacher, cfg)
    first = trainer.teacher_input(x)
    trainer.bind_teacher_input(teacher, dict(cfg, mean=[0.3, 0.4, 0.5], std=[0.2, 0.25, 0.3]))
    fresh = TeacherInput([0.3, 0.4, 0.5], [0.2, 0.25, 0.3], input_spec(teacher))
    torch.testing.assert_close(trainer.teacher_input(x), fresh(x), rtol=0, atol=0)
    assert not torch.allclose(first, fresh(x))
