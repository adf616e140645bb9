"""A user's own teacher: every teacher kind sees the student's augmented view through its own preprocessing, and
teacher and student classes are matched by name (re-ordered, restricted to a subset, or refused with the fix)."""

import json

import pytest
import timm
import torch
from timm.data import ImageNetInfo, resolve_data_config
from timm.models._hub import save_for_hf
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from transformers import AutoImageProcessor

from hf_kd import KDArguments, KDTrainer, ProjectorKDArguments, ProjectorKDTrainer, create_student, load_teacher
from hf_kd.methods import methods

pytestmark = pytest.mark.usefixtures("one_thread")
# every registered method that takes a pre-trained teacher (hf_kd.methods): a new one is tested too
TEACHER_METHODS = [cls for cls in methods().values() if cls.uses_teacher != "refused"]
TINY = {"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]}


def tiny(labels, seed=0, **kw):
    torch.manual_seed(seed)
    return create_student("cifar_resnet20", len(labels), labels, model_args=TINY, **kw)


def kd_args(tmp_path, cls=KDArguments, **kw):
    base = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=1, report_to=[],
                use_cpu=True, save_strategy="no", eval_strategy="no", disable_tqdm=True, seed=0)
    return cls(**{**base, **kw})


def own_pipeline(view_u8, size, interpolation, mean, std):
    """The teacher's own preprocessing of an augmented view, written with torchvision: [0, 1] pixels, resized to
    the teacher's input size with its resampling (clipped as an 8-bit image), normalised with its statistics."""
    x = TF.resize(view_u8.float() / 255, list(size), interpolation=InterpolationMode(interpolation), antialias=True)
    return TF.normalize(x.clamp(0, 1), list(mean), list(std))


def one_step(trainer):
    """Train one step; return the augmented uint8 views the student's batch was made from and the teacher logits
    the trainer used for them."""
    views, logits = [], []
    aug = trainer.augmentation
    normalize = aug.normalize
    aug.normalize = lambda x: views.append(x.clone()) or normalize(x)
    forward = trainer.teacher_forward

    def recording(x, **kw):
        out = forward(x, **kw)
        logits.append(out.logits.clone())
        return out

    trainer.teacher_forward = recording
    trainer.train()
    del aug.normalize
    return views[0], logits[0]


def export_teacher(folder, labels):
    """An hf_kd export trained elsewhere: 48 px, bicubic, statistics unlike the student's."""
    t = tiny(labels, seed=3, mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7), input_size=(3, 48, 48))
    t.config.pretrained_cfg["interpolation"] = "bicubic"
    t.save_pretrained(folder)
    return load_teacher(str(folder)), json.load(open(folder / "config.json"))["pretrained_cfg"]


def timm_hub_teacher(folder, labels):
    """A folder as timm publishes a fine-tuned model on the Hub (`timm/...` layout: timm's config.json, no
    model_type, label_names, model_args with num_classes): 160 px, mean/std 0.5."""
    torch.manual_seed(4)
    model = timm.create_model("test_resnet.r160_in1k", num_classes=len(labels))
    save_for_hf(model, str(folder), model_config={"label_names": list(labels)})
    return load_teacher(str(folder)), json.load(open(folder / "config.json"))["pretrained_cfg"]


def timm_name_teacher(tmp_path, monkeypatch):
    """`timm:test_resnet.r160_in1k`: timm's pretrained ImageNet-1k model (1000 classes), its weights from a local
    file instead of the Hub."""
    torch.manual_seed(5)
    weights = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet.r160_in1k").state_dict(), weights)
    create = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            kw["pretrained_cfg_overlay"] = dict(file=str(weights))
        return create(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    teacher = load_teacher("timm:test_resnet.r160_in1k")
    return teacher, dict(teacher.timm_model.pretrained_cfg)


def transformers_teacher(folder, labels):
    """A transformers ViT at 40 px with a bicubic processor (mean/std 0.5)."""
    from test_transformers_teacher import save_vit

    return load_teacher(save_vit(folder, labels, seed=6, size=40, resample=3, layers=1))


# ImageNet classes for the `timm:` teacher (an ImageNet-1k model distilled into a 10-class ImageNet subset)
SUBSET = [0, 1, 7, 42, 100, 207, 404, 531, 817, 999]


@pytest.mark.parametrize("kind", ["hf_kd_export", "timm_hub", "timm_name", "transformers"])
def test_teacher_logits_equal_its_own_preprocessing_and_forward(data, tmp_path, monkeypatch, kind):
    """Student: 32 px with the digits statistics, random crop + flip. Each teacher kind differs from it in size,
    statistics (and resampling): the logits the trainer distils from equal the teacher's own preprocessing of the
    same augmented views + its forward (fp32, 1e-5). Before, timm and hf_kd teachers got the student's tensor."""
    labels = list(data.label_names)
    if kind == "timm_name":
        labels = [ImageNetInfo("imagenet-1k").label_descriptions()[i] for i in SUBSET]
    student = tiny(labels, mean=data.mean, std=data.std)
    if kind == "hf_kd_export":
        teacher, cfg = export_teacher(tmp_path / "teacher", labels)
    elif kind == "timm_hub":
        teacher, cfg = timm_hub_teacher(tmp_path / "teacher", labels)
    elif kind == "timm_name":
        teacher, cfg = timm_name_teacher(tmp_path, monkeypatch)
    else:
        teacher = transformers_teacher(tmp_path / "teacher", labels)
    if kind == "transformers":
        proc = AutoImageProcessor.from_pretrained(str(tmp_path / "teacher"))
        own = dict(size=(proc.size["height"], proc.size["width"]), interpolation="bicubic", mean=proc.image_mean,
                   std=proc.image_std)
    else:
        dc = resolve_data_config(pretrained_cfg=cfg)
        own = dict(size=dc["input_size"][1:], interpolation=dc["interpolation"], mean=dc["mean"], std=dc["std"])
    trainer = KDTrainer(model=student, teacher=teacher, args=kd_args(tmp_path), train_dataset=data.train,
                        augmentation=data.batch_augment("cifar"))
    views, inside = one_step(trainer)
    assert views.dtype == torch.uint8 and views.shape[-2:] == (32, 32)
    net = (teacher.model if kind == "transformers" else teacher.timm_model).eval()
    with torch.no_grad():
        x = own_pipeline(views, **own)
        ref = net(pixel_values=x).logits if kind == "transformers" else net(x)
    if kind == "timm_name":  # the ImageNet-1k teacher's logits for the student's 10 classes, by name
        ref = ref[:, SUBSET]
    torch.testing.assert_close(inside, ref, rtol=0, atol=1e-5)
    h, w = own["size"]
    note = trainer.teacher_notes[0]
    assert note.startswith(f"teacher sees {h}x{w} px ({own['interpolation']})") and "student 32x32 px" in note
    if kind == "timm_name":  # recorded in the card, as the log says it
        trainer.save_model()
        card = (tmp_path / "run" / "README.md").read_text()
        assert f"Teacher sees {h}x{w} px" in card and "restricted by label name" in card


def test_shared_preprocessing_passes_the_batch_unchanged(data, tmp_path):
    """The CIFAR presets' case: teacher and student share size and statistics; the teacher gets the student's
    tensor itself (no round trip through [0, 1]), so their numbers cannot move."""
    labels = list(data.label_names)
    teacher = tiny(labels, seed=1, mean=data.mean, std=data.std)
    trainer = KDTrainer(model=tiny(labels, mean=data.mean, std=data.std), teacher=teacher, args=kd_args(tmp_path),
                        train_dataset=data.train)
    x = torch.randn(2, 3, 32, 32)
    assert trainer.teacher_input(x) is x and trainer.teacher_notes == []


# --- labels matched by name -----------------------------------------------------------------------------------------
def build(student_labels, teacher_labels, tmp_path, data, cls=KDTrainer, **kw):
    args = kd_args(tmp_path, cls.args_class, **kw)
    return cls(model=tiny(student_labels), teacher=tiny(teacher_labels, seed=1), args=args, train_dataset=data.train)


def test_integer_ids_against_string_sorted_folders_are_refused(data, tmp_path):
    """An imagefolder with class folders 0..10 is sorted as strings (0, 1, 10, 2, ...); a teacher trained on integer
    labels has 0..10 in numeric order: 9 of 11 ids point to other classes. It was accepted."""
    folders = sorted(str(i) for i in range(11))
    with pytest.raises(ValueError, match="only number the classes.*teacher_label_map"):
        build(folders, [str(i) for i in range(11)], tmp_path, data)


def test_a_numbered_teacher_is_refused_for_a_named_student(data, tmp_path):
    """The digits teacher (classes '0'..'9') was accepted for any 10-class student, CIFAR-10 included."""
    cifar10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with pytest.raises(ValueError, match="only number the classes"):
        build(cifar10, [str(i) for i in range(10)], tmp_path, data)
    with pytest.raises(ValueError, match="only number the classes"):
        build(cifar10, [f"LABEL_{i}" for i in range(10)], tmp_path, data, ProjectorKDTrainer)


def test_other_names_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match="different classes.*'eel'"):
        build(["cat", "dog", "eel"], ["cat", "dog", "fox"], tmp_path, data)


@pytest.mark.parametrize("cls", TEACHER_METHODS, ids=lambda c: c.method_name)
def test_same_names_in_another_order_are_reordered(data, tmp_path, cls):
    trainer = build(["cat", "dog", "eel"], ["eel", "cat", "dog"], tmp_path, data, cls)
    assert trainer.teacher_labels.index == (1, 2, 0) and "re-ordered" in trainer.teacher_notes[0]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        raw = trainer.teacher.forward_kd(x, stages=False).logits
    torch.testing.assert_close(trainer.teacher_forward(x).logits, raw[:, [1, 2, 0]], rtol=0, atol=0)


def test_a_teacher_superset_is_restricted_to_the_students_classes(data, tmp_path):
    trainer = build(["dog", "ant"], ["ant", "bee", "cat", "dog"], tmp_path, data)
    assert trainer.teacher_labels.index == (3, 0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        raw = trainer.teacher.forward_kd(x, stages=False).logits
    torch.testing.assert_close(trainer.teacher_forward(x).logits, raw[:, [3, 0]], rtol=0, atol=0)
    assert "restricted by label name to the student's 2" in trainer.teacher_notes[0]
    with pytest.raises(ValueError, match="different classes"):  # a subset teacher cannot teach the missing ones
        build(["ant", "bee", "cat", "dog"], ["dog", "ant"], tmp_path, data)


def test_imagenet_synsets_and_descriptions_match_either_way(data, tmp_path):
    """timm's ImageNet configs name classes by synset or by description; a student in either form matches."""
    info = ImageNetInfo("imagenet-1k")
    synsets, descriptions = list(info.label_names()), list(info.label_descriptions())
    picks = [3, 999, 0]
    trainer = build([synsets[i] for i in picks], descriptions, tmp_path, data)  # ILSVRC folders vs timm's names
    assert trainer.teacher_labels.index == tuple(picks) and "descriptions" not in trainer.teacher_notes[0]
    trainer = build([descriptions[i] for i in picks], synsets, tmp_path, data)  # Hub names vs a synset config
    assert trainer.teacher_labels.index == tuple(picks) and "(the teacher's descriptions)" in trainer.teacher_notes[0]


def test_an_explicit_mapping_is_followed(data, tmp_path):
    student, teacher = ["cat", "dog", "eel"], [f"LABEL_{i}" for i in range(4)]
    with pytest.raises(ValueError, match="only number the classes"):
        build(student, teacher, tmp_path, data)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"cat": 2, "dog": "LABEL_0", "eel": "3"}))
    for given in (str(mapping), mapping.read_text()):
        trainer = build(student, teacher, tmp_path, data, teacher_label_map=given)
        assert trainer.teacher_labels.index == (2, 0, 3) and "teacher_label_map" in trainer.teacher_notes[0]
    with pytest.raises(ValueError, match="no teacher class for the student's classes 'eel'"):
        build(student, teacher, tmp_path, data, teacher_label_map='{"cat": 2, "dog": 0}')
    with pytest.raises(ValueError, match="same teacher class"):
        build(student, teacher, tmp_path, data, teacher_label_map='{"cat": 2, "dog": 2, "eel": 1}')
