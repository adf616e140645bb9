"""hf_kd's ImageNet networks are the official ones: tensor names, shapes and parameter counts of what hf_kd builds
(``create_student`` and each trainer's ``build_model``, through the real trainer) against what the official code of
FFSD, PEFD and MixSKD builds, recorded in ``tests/golden/imagenet_networks.json`` by
``tests/golden/generate_imagenet_networks.py`` (the official code is not needed here).

Names map one to one: timm's ResNets use torchvision's tensor names, which are the official ones; the auxiliary
modules are renamed by the tables below (the same renames the golden fixtures use). The initialisation differs in one
documented point: timm zero-inits the last BatchNorm of each block unless ``zero_init_last=False``.
"""

import json
import re

import pytest
import torch

from golden_parity import FIXTURE_DIR

pytestmark = pytest.mark.usefixtures("one_thread")

RECORD = json.loads((FIXTURE_DIR / "imagenet_networks.json").read_text())["networks"]
NUM_CLASSES = 1000


def _fusion_key(k):  # hf_kd FusionModule / TransFusionModule -> official (conv1_1 / bn1_1 / fc2)
    return k.replace("conv2.", "conv1_1.").replace("bn2.", "bn1_1.").replace("fc.", "fc2.")


def _decoder_key(k):  # hf_kd SelfDistillationDecoder blocks.l.{0,1} -> official layer{l}.{convtranpose,norm}
    k = re.sub(r"^blocks\.(\d+)\.0\.", r"layer\1.convtranpose.", k)
    return re.sub(r"^blocks\.(\d+)\.1\.", r"layer\1.norm.", k)


def _part(module: torch.nn.Module, prefix: str = "", rename=lambda k: k) -> dict:
    """The tensors of ``module`` under ``prefix`` (stripped), renamed to the official names: {name: shape}."""
    return {rename(k[len(prefix):]): list(v.shape) for k, v in module.state_dict().items() if k.startswith(prefix)}


def _params(module: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for k, p in module.named_parameters() if k.startswith(prefix))


def check(ours: dict, ours_params: int, official: dict, what: str):
    ref = {k: v for k, v in official["state"].items()}
    only_ours, only_official = sorted(set(ours) - set(ref)), sorted(set(ref) - set(ours))
    assert not only_ours and not only_official, (
        f"{what}: tensor names differ from {official['source']}: only in hf_kd {only_ours[:6]}, only official "
        f"{only_official[:6]}")
    shapes = [f"{k}: hf_kd {ours[k]} vs official {ref[k]}" for k in ref if ours[k] != ref[k]]
    assert not shapes, f"{what}: shapes differ from {official['source']}:\n  " + "\n  ".join(shapes[:10])
    assert ours_params == official["num_params"], f"{what}: {ours_params} parameters, official {official['num_params']}"


def build(trainer_cls, student, tmp_path, teacher=None, **args):
    """The DistillationModel the trainer builds from ``student`` (its ``build_model``, via the constructor)."""
    kwargs = dict(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no")
    trainer = trainer_cls(model=student, teacher=teacher, args=trainer_cls.args_class(**kwargs, **args),
                          train_dataset=[{"pixel_values": torch.zeros(3, 224, 224), "labels": 0}])
    return trainer.accelerator.unwrap_model(trainer.model)


def student(arch):
    from hf_kd.models import create_student

    return create_student(arch, NUM_CLASSES)


@pytest.mark.parametrize("arch,record", [("resnet18", "pefd_resnet18"), ("resnet34", "pefd_resnet34"),
                                         ("resnet50", "pefd_resnet50"), ("resnet18", "ffsd_resnet18"),
                                         ("resnet34", "ffsd_resnet34"), ("resnet50", "mixskd_resnet50")])
def test_timm_resnet_is_the_official_torchvision_style_resnet(arch, record):
    """timm's resnet18/34/50 (as create_student builds them) = the official ImageNet ResNets (PEFD's
    models/official_resnet.py, FFSD's models/resnet_imagenet.py common student, MixSKD's backbone)."""
    official = RECORD[record]
    official = official.get("student") or official.get("backbone") or official
    m = student(arch).timm_model
    check(_part(m), _params(m), official, f"{arch} vs {record}")


def test_ffsd_resnet18_imagenet_modules(tmp_path):
    """FFSDTrainer with a 224-px resnet18 builds the official ImageNetTrainer's networks: 2 common students, the
    leader with its trans-fusion branch (512 -> 1024 channels), the fusion module (1024 -> 512, 7x7) and the
    self-distillation decoders over layer1..layer4 (512 -> 256 -> 128 -> 64)."""
    from hf_kd.trainers import FFSDTrainer

    rec = RECORD["ffsd_resnet18"]
    m = build(FFSDTrainer, student("resnet18"), tmp_path)
    assert rec["model_num"] == m.num_students == 2
    leader = {**_part(m, "student.timm_model."), **_part(m, "aux.trans_fusion.",
                                                        lambda k: "trans_fusion_module." + _fusion_key(k))}
    check(leader, _params(m, "student.") + _params(m, "aux.trans_fusion."), rec["leader"], "leader")
    for i in range(m.num_students):
        check(_part(m, f"aux.students.{i}.timm_model."), _params(m, f"aux.students.{i}."), rec["student"],
              f"student {i}")
    check(_part(m, "aux.fusion.", _fusion_key), _params(m, "aux.fusion."), rec["fusion"], "fusion module")
    check(_part(m, "aux.decoders.0.", _decoder_key), _params(m, "aux.decoders.0."), rec["decoder"], "decoder")
    check(_part(m, "aux.leader_decoder.", _decoder_key), _params(m, "aux.leader_decoder."), rec["leader_decoder"],
          "leader decoder")
    assert rec["fusion_spatial"] == 7 and rec["fusion_channel"] == 512  # AvgPool2d(7) at 224 px = hf_kd's global pool
    assert _params(m) == sum(rec[k]["num_params"] for k in ("leader", "fusion", "decoder", "leader_decoder")) + \
        2 * rec["student"]["num_params"]


def test_pefd_resnet34_to_resnet18_imagenet_projectors(tmp_path):
    """ProjectorKDTrainer, resnet34 -> resnet18 at 224 px: 3 trained Linear(512, 512) projectors, as PEFD's
    train_student.py sizes them for --dataset imagenet (it also builds a 4th it never trains, not built here)."""
    from hf_kd.trainers import ProjectorKDTrainer

    teacher = student("resnet34")
    check(_part(teacher.timm_model), _params(teacher), RECORD["pefd_resnet34"], "teacher resnet34")
    m = build(ProjectorKDTrainer, student("resnet18"), tmp_path, teacher=teacher, num_projectors=3)
    check(_part(m, "student.timm_model."), _params(m, "student."), RECORD["pefd_resnet18"], "student")
    for i in range(3):
        prefix = f"aux.projectors.linears.{i}."
        check(_part(m, prefix, lambda k: "linear." + k), _params(m, prefix), RECORD["pefd_projector_resnet34_resnet18"],
              f"projector {i}")
    assert _params(m) == RECORD["pefd_resnet18"]["num_params"] + 3 * RECORD["pefd_projector_resnet34_resnet18"][
        "num_params"]


def test_mixskd_resnet50_imagenet_auxiliary_network(tmp_path):
    """MixSKDTrainer with a 224-px resnet50 builds MixSKD_ImageNet_ResNet50: the backbone, 3 auxiliary branches
    (fresh layer2-4, layer3-4, layer4 with [4, 6, 3] Bottlenecks and their classifiers), the self-teacher
    (1x1 conv 8192 -> 2048, classifier) and 4 discriminators over the 2048-channel features."""
    from hf_kd.trainers import MixSKDTrainer

    rec = RECORD["mixskd_resnet50"]
    m = build(MixSKDTrainer, student("resnet50"), tmp_path)
    check(_part(m, "student.timm_model."), _params(m, "student."), rec["backbone"], "backbone")
    for k, branch in enumerate(rec["branches"]):
        check(_part(m, f"aux.branches.{k}.body."), _params(m, f"aux.branches.{k}.body."), branch["body"],
              f"branch {k + 1}")
        check(_part(m, f"aux.branches.{k}.fc."), _params(m, f"aux.branches.{k}.fc."), branch["fc"],
              f"branch {k + 1} classifier")
    check(_part(m, "aux.self_teacher."), _params(m, "aux.self_teacher."), rec["self_teacher"], "self-teacher")
    assert len(rec["discriminators"]) == len(m.aux["discriminators"]) == 4
    for k, d in enumerate(rec["discriminators"]):
        ours = _part(m, f"aux.discriminators.{k}.", lambda key: key.replace("fc1.", "0.").replace("fc2.", "2."))
        n = sum(p.numel() for p in m.aux["discriminators"][k].parameters())
        check({"classifier." + key: v for key, v in ours.items()}, n, d, f"discriminator {k}")
    assert _params(m) - sum(p.numel() for p in m.aux["discriminators"].parameters()) == rec["num_params"]


def _zero_gammas(module: torch.nn.Module) -> list:
    return [n for n, m in module.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any()]


@pytest.mark.parametrize("arch,record", [("resnet18", "pefd_resnet18"), ("resnet34", "pefd_resnet34"),
                                         ("resnet50", "pefd_resnet50")])
def test_official_init_is_timm_without_zero_init_last(arch, record):
    """The official ResNets start every BatchNorm scale at 1 (torchvision's zero_init_residual=False); timm's default
    starts the last BN of each block at 0 (zero_init_last=True). model_args {"zero_init_last": False} gives the
    official init, so that is what an ImageNet preset for these methods sets."""
    assert RECORD[record]["zero_init_batchnorm"] == []
    from hf_kd.models import create_student

    assert _zero_gammas(create_student(arch, NUM_CLASSES, model_args={"zero_init_last": False}).timm_model) == []
    assert _zero_gammas(create_student(arch, NUM_CLASSES).timm_model)  # the timm default is not the official init


def test_ffsd_modules_inherit_the_official_init(tmp_path):
    """FFSD's common students are built from the leader's config, so they keep zero_init_last=False too: no BatchNorm
    of the whole FFSD network starts at 0, as in the official ImageNetTrainer."""
    from hf_kd.models import create_student
    from hf_kd.trainers import FFSDTrainer

    rec = RECORD["ffsd_resnet18"]
    assert all(rec[k]["zero_init_batchnorm"] == [] for k in ("leader", "student", "fusion", "decoder"))
    m = build(FFSDTrainer, create_student("resnet18", NUM_CLASSES, model_args={"zero_init_last": False}), tmp_path)
    assert _zero_gammas(m) == []
