"""Models: CIFAR backbones in timm's registry, TimmStudent on transformers' TimmWrapper, export round trips."""

import json
import os
import sys
import textwrap

import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

import hf_kd  # noqa: F401
from hf_kd.models import CIFAR_ARCHITECTURES, MissingStagesError, TimmStudent, create_student, load_student

from processes import run_process

# Parameter counts (millions) reported by the papers: He et al. 2016 Table 6 (CIFAR ResNets, CIFAR-10 heads, so
# counted here with 10 classes), CRD (Tian et al. 2020) Table 1 (resnet8x4/32x4, WRNs, CIFAR-100 heads),
# kuangliu ResNet-18 on CIFAR-100 (11.22M). Tolerance 3% (our shortcuts are 1x1 conv + BN as in FFSD/CRD).
PAPER_PARAMS_M = {
    "cifar_resnet20": 0.27, "cifar_resnet32": 0.46, "cifar_resnet56": 0.85, "cifar_resnet110": 1.7,
    "cifar_resnet8x4": 1.23, "cifar_resnet32x4": 7.43, "cifar_wrn_16_2": 0.70, "cifar_wrn_40_2": 2.25,
    "cifar_wrn_40_1": 0.57, "cifar_wrn_16_1": 0.18, "cifar_resnet18": 11.22,
}
LAST_STAGE = {"cifar_resnet8x4": (256, 8, 8), "cifar_resnet32x4": (256, 8, 8), "cifar_resnet18": (512, 4, 4),
              "cifar_wrn_16_2": (128, 8, 8), "cifar_wrn_40_2": (128, 8, 8)}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "cifar_resnet110" else n
                                  for n in CIFAR_ARCHITECTURES])  # the deepest one: slow
def test_cifar_backbone_registered_shapes_and_params(name):
    assert name in timm.list_models("cifar_*")
    classes = 10 if name in ("cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "cifar_resnet110") else 100
    model = timm.create_model(name, num_classes=classes).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.03, params
    x = torch.randn(2, 3, 32, 32)
    final, stages = model.forward_intermediates(x)
    assert stages[0].shape[-1] == 32 and stages[-1].shape[-1] in (8, 4)
    assert tuple(stages[-1].shape[1:]) == LAST_STAGE.get(name, (64, 8, 8))
    torch.testing.assert_close(model.forward_head(final), model(x))
    assert model.forward_head(final, pre_logits=True).shape == (2, model.num_features)


def test_cifar_features_only_and_indices():
    feats = timm.create_model("cifar_resnet32", features_only=True, out_indices=(1, 2, 3))
    shapes = [tuple(f.shape[1:]) for f in feats(torch.randn(1, 3, 32, 32))]
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    model = timm.create_model("cifar_resnet20")
    assert len(model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=2, intermediates_only=True)) == 2


def test_cifar_resnet18_without_stem_act():
    a = timm.create_model("cifar_resnet18", stem_act=False)
    assert not any(isinstance(m, torch.nn.ReLU) for m in a.stem)


def test_cifar_init_options():
    """kaiming_normal: N(0, sqrt(2/(9*out))) convs (std 0.059 for 64->64); torch_default: PyTorch's
    kaiming_uniform(a=sqrt(5)), bounded by 1/sqrt(fan_in) (0.042 for 64->64), as kuangliu's ResNet-18."""
    torch.manual_seed(0)
    w = timm.create_model("cifar_resnet18").stages[0][0].conv1.weight
    assert w.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.05)
    w = timm.create_model("cifar_resnet18", init="torch_default").stages[0][0].conv1.weight
    bound = 1 / (9 * 64) ** 0.5
    assert w.abs().max().item() <= bound and w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)
    with pytest.raises(ValueError, match="unknown init"):
        timm.create_model("cifar_resnet18", init="xavier")


def test_student_keeps_timm_init():
    """The stock TimmWrapper re-initialises convs with N(0, 0.02); TimmStudent must keep timm's init."""
    torch.manual_seed(0)
    ref = timm.create_model("cifar_resnet20", num_classes=10)
    torch.manual_seed(0)
    student = create_student("cifar_resnet20", 10)
    for (n, a), b in zip(ref.state_dict().items(), student.timm_model.state_dict().values()):
        assert torch.equal(a, b), n


def test_unknown_backbone_error():
    with pytest.raises(ValueError, match="Unknown backbone 'cifar_resnet33'"):
        create_student("cifar_resnet33", 10)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("export"))
    torch.manual_seed(0)
    student = create_student("cifar_resnet20", 3, ["cat", "dog", "fox"], mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    student.save_pretrained(d)
    return student.eval(), d


def test_export_format_is_timm_native(exported):
    student, d = exported
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert cfg["model_type"] == "timm_wrapper" and cfg["architecture"] == "cifar_resnet20"
    assert cfg["label_names"] == ["cat", "dog", "fox"] and cfg["model_args"] == {}
    assert cfg["pretrained_cfg"]["mean"] == [0.1, 0.2, 0.3] and cfg["pretrained_cfg"]["input_size"] == [3, 32, 32]
    keys = load_file(os.path.join(d, "model.safetensors")).keys()
    assert not any(k.startswith("timm_model.") for k in keys) and "fc.weight" in keys


def test_round_trip_loaders(exported):
    student, d = exported
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = student(x).logits
        auto = AutoModelForImageClassification.from_pretrained(d).eval()
        assert torch.equal(auto(x).logits, ref)
        assert auto.config.id2label == {0: "cat", 1: "dog", 2: "fox"}
        base = AutoModel.from_pretrained(d).eval()  # head-less: the exported body, pooled as the head reads it
        features = student.timm_model.forward_features(x)
        out = base(x)
        assert torch.equal(out.last_hidden_state, features)
        assert torch.equal(out.pooler_output, student.timm_model.forward_head(features, pre_logits=True))
        tm = timm.create_model(f"local-dir:{d}", pretrained=True).eval()
        assert torch.equal(tm(x), ref)
        kd = load_student(d).eval()
        assert isinstance(kd, TimmStudent) and torch.equal(kd(x).logits, ref)
    proc = AutoImageProcessor.from_pretrained(d)
    assert list(proc.data_config["mean"]) == [0.1, 0.2, 0.3]


def test_load_student_for_another_label_set_gets_a_fresh_classifier(exported):
    """num_labels=N on a 3-class export: the body loads, the new head is timm's fresh init (transformers left it
    uninitialised: NaN/garbage seen); the same label count keeps the exported head."""
    student, d = exported
    new = load_student(d, num_labels=10)
    head, body = new.timm_model.get_classifier(), dict(new.timm_model.named_parameters())
    assert head.weight.shape == (10, 64) and new.config.num_labels == 10
    assert torch.isfinite(head.weight).all() and torch.isfinite(head.bias).all()
    bound = 1 / 64 ** 0.5  # nn.Linear's own init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert head.weight.abs().max() <= bound and head.weight.std() > bound / 4 and head.bias.abs().max() <= bound
    for name, p in student.timm_model.named_parameters():
        if not name.startswith("fc."):
            assert torch.equal(body[name], p), name
    same = load_student(d, num_labels=3)
    assert torch.equal(same.timm_model.get_classifier().weight, student.timm_model.get_classifier().weight)


@pytest.mark.slow
def test_round_trip_fresh_process(exported, tmp_path):
    """save_pretrained -> AutoModelForImageClassification.from_pretrained in a new interpreter: identical logits."""
    student, d = exported
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(student(x).logits, tmp_path / "ref.pt")
    code = textwrap.dedent(f"""
        import torch, hf_kd
        from transformers import AutoModelForImageClassification, pipeline
        from PIL import Image
        m = AutoModelForImageClassification.from_pretrained({d!r}).eval()
        with torch.no_grad():
            out = m(torch.load({str(tmp_path / 'x.pt')!r})).logits
        assert torch.equal(out, torch.load({str(tmp_path / 'ref.pt')!r})), (out, )
        res = pipeline("image-classification", model={d!r})(Image.new("RGB", (32, 32)))
        assert {{r["label"] for r in res}} == {{"cat", "dog", "fox"}}
        print("OK")
    """)
    out = run_process([sys.executable, "-c", code], timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# A timm-architecture export loads in a fresh process without hf_kd: tests/test_remote_code.py (same process as
# the cifar_* export's check).


@pytest.mark.parametrize("arch, kwargs, n_min", [
    ("resnet18", {}, 5),
    pytest.param("wide_resnet50_2", {}, 5, marks=pytest.mark.slow),  # the largest networks: slow
    ("mobilenetv3_small_100", {}, 5),
    pytest.param("efficientnet_b0", {}, 5, marks=pytest.mark.slow),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}, 12),
    ("cifar_wrn_16_2", {}, 4),
])
def test_forward_kd_stages(arch, kwargs, n_min):
    student = create_student(arch, 10, model_args=kwargs, input_size=(3, 32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    out = student.forward_kd(x)
    assert len(out.stages) >= n_min and all(s.shape[0] == 2 for s in out.stages)
    assert out.pre_logits.shape == (2, student.timm_model.num_features if arch != "mobilenetv3_small_100" else 1024)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, student(x).logits, rtol=1e-4, atol=1e-4)
    assert len(student.stage_shapes()) == len(out.stages)


def test_missing_stages_error_names_architecture():
    student = create_student("vit_tiny_patch16_224", 10, model_args={"img_size": 32, "patch_size": 4},
                             input_size=(3, 32, 32))
    with pytest.raises(MissingStagesError, match="vit_tiny_patch16_224"):
        student.require_stages(20, "FFSD")
    assert create_student("cifar_resnet20", 10).require_stages(3, "FFSD") == [(16, 32, 32), (32, 16, 16),
                                                                              (64, 8, 8)]


def test_forward_with_labels_is_cross_entropy():
    student = create_student("cifar_resnet20", 10).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        out = student(x, labels=y)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, y))
