"""Golden parity: every hf_kd trainer against what the OFFICIAL code of its method computes (float64, real images).

Each fixture in ``tests/golden/`` was computed by ``tests/golden/generate_fixtures.py`` from a checkout of the
official repository (commit recorded in the fixture), with the documented minimal patches for hf_kd's decisions
(docs/methods/, "Decisions"). The test rebuilds the hf_kd trainer the fixture names (preset, seed of hf_kd's own initialisation), trains
the same 3 steps on the same 16 CIFAR-100 images (the ImageNet fixtures: 1-2 steps on 2 ImageNet photographs at
224 px) with ``Trainer.train`` in float64, and compares every loss term and
the update of every trained tensor (parameters and BatchNorm buffers) at 1e-8 relative (``golden_parity.RTOL``;
stricter than 1e-6 so that a float32 detour is caught too). Measured agreement when the fixtures were made: 1e-16 to
5e-13 on loss terms, 1e-14 to 5e-11 on updates (``tests/golden/README.md``).
"""

import copy
import re

import pytest

import golden_parity as gp

pytestmark = pytest.mark.usefixtures("one_thread")

# fixture -> what it pins
FIXTURES = {
    "kd": "classic KD, RepDistiller distiller_zoo/KD.py + helper/loops.py (teacher resnet32x4, student resnet8x4)",
    "projector_kd": "PEFD, chenyd7/PEFD helper/loops.py --distill ours (resnet32x4 -> resnet8x4, 3 projectors)",
    "self_kd": "LightSKD, xucong-parsifal/LightSKD train.py (DRG + DSR, layer-2 adapter)",
    "mixskd": "MixSKD, winycg/Self-KD-Lib main_mixskd_cifar.py (ImageNet-script objective)",
    "ffsd_warmup": "FFSD, SJLeo/FFSD CIFARTrainer.py at epoch 1 (lambdas at 0.041 of their value)",
    "ffsd_after_warmup": "FFSD, SJLeo/FFSD CIFARTrainer.py after the warm-up (full lambdas)",
    # the official ImageNet networks at 224 px (2 real ImageNet photographs, 1-2 steps)
    "ffsd_imagenet_resnet18": "FFSD, SJLeo/FFSD ImageNetTrainer.py, ResNet-18 (leader, 2 students, 4-stage decoders)",
    "projector_kd_imagenet_resnet34_resnet18": "PEFD, chenyd7/PEFD --dataset imagenet, RESNET34 -> RESNET18",
    "mixskd_imagenet_resnet50": "MixSKD, winycg/Self-KD-Lib main_mixskd_imagenet.py, MixSKD_ImageNet_ResNet50",
}
IMAGENET = {name for name in FIXTURES if "imagenet" in name}
# registered methods with no official code to compare with
NO_OFFICIAL_CODE = {"supervised": "plain cross-entropy training, the baseline: no paper, no official code"}


def test_every_method_and_every_fixture_file_is_compared():
    """A new registered method (or a new fixture file) is not skipped silently: each method has a fixture in FIXTURES
    or a reason in NO_OFFICIAL_CODE, and FIXTURES names every fixture file in tests/golden/."""
    from hf_kd.methods import methods

    trainers = {gp.load_fixture(name)["hf_kd"]["trainer"] for name in FIXTURES}
    missing = {m for m, cls in methods().items() if f"{cls.__module__}.{cls.__name__}" not in trainers}
    missing -= set(NO_OFFICIAL_CODE)
    assert not missing, (f"no golden fixture for {sorted(missing)}: generate one (tests/golden/README.md) and add it "
                         "to FIXTURES, or say in NO_OFFICIAL_CODE why there is none")
    files = {p.stem for p in gp.FIXTURE_DIR.glob("*.json")} - {"imagenet_networks"}  # test_imagenet_networks.py
    assert files == set(FIXTURES), f"fixture files not in FIXTURES: {sorted(files - set(FIXTURES))}"


# the ImageNet fixtures (224 px, real-size networks) are slow; the CIFAR ones run day to day
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in IMAGENET else n for n in FIXTURES])
def test_golden_trainer_matches_official_code(name, tmp_path):
    fixture = gp.load_fixture(name)
    result = gp.run_hf_kd(fixture, str(tmp_path))
    problems, worst = gp.compare(fixture, result)
    prov = fixture["provenance"]
    assert not problems, (
        f"{FIXTURES[name]}: hf_kd differs from the official code ({prov['repository']} @ {prov['commit'][:12]}) "
        f"in {len(problems)} places (largest relative error: terms {worst['terms']:.3g}, updates "
        f"{worst['delta']:.3g}):\n  " + "\n  ".join(problems[:25]))


@pytest.mark.parametrize("name", list(FIXTURES))
def test_golden_fixture_provenance(name):
    """Every fixture says where it comes from: the official repository, its commit, and each patch with its reason."""
    fixture = gp.load_fixture(name)
    prov = fixture["provenance"]
    assert prov["repository"].startswith("https://github.com/")
    assert re.fullmatch(r"[0-9a-f]{40}", prov["commit"])
    assert prov["generator"] == "tests/golden/generate_fixtures.py" and prov["sizes"]
    assert all(p["why"] and p["file"] and p["find"] for p in prov["patches"])
    if name in IMAGENET:  # 224-px crops of real ImageNet photographs, a small batch, 1-2 steps
        assert fixture["data"]["images_shape"][1:] == [3, 224, 224] and fixture["hf_kd"]["num_labels"] == 1000
        assert 1 <= len(fixture["terms"]) == len(fixture["data"]["augmentation"]) <= 2
        assert 2 <= len(fixture["data"]["labels"]) <= 4
        assert gp.fixture_path(name).stat().st_size < 2 * 1024 ** 2
    else:
        assert len(fixture["terms"]) == len(fixture["data"]["augmentation"]) == 3
        assert 16 <= len(fixture["data"]["labels"]) <= 32
    # hf_kd's decisions (docs/methods/) are applied to the official side, so the comparison is like for like
    patches = " ".join(p["replace"] + " " + p["why"] for p in prov["patches"])
    decision = {"projector_kd": "clamp_min(1e-12)", "self_kd": "Istr_2(BasicBlock)", "mixskd": "loss_mixcls",
                "projector_kd_imagenet_resnet34_resnet18": "clamp_min(1e-12)"}
    if name in decision:
        assert decision[name] in patches


def test_golden_comparison_catches_small_differences():
    """The comparison itself: an exact copy passes; a 1e-7 relative change of one term or one update, a missing update
    and an incomplete fixture do not."""
    fixture = gp.load_fixture("kd")
    same = {"terms": copy.deepcopy(fixture["terms"]), "mixup": [], "init": fixture["init"],
            "teacher_init": fixture["teacher_init"], "delta": copy.deepcopy(fixture["delta"])}
    assert gp.compare(fixture, same)[0] == []

    term = copy.deepcopy(same)
    term["terms"][2]["kd"] *= 1 + 1e-7
    assert any("term kd" in p for p in gp.compare(fixture, term)[0])

    key = "student.timm_model.fc.weight"
    update = copy.deepcopy(same)
    update["delta"][key]["sumsq"] *= 1 + 1e-7
    assert any(key in p for p in gp.compare(fixture, update)[0])

    # an incomplete fixture (or a result) can't pass by comparing nothing
    empty_delta = copy.deepcopy(fixture)
    empty_delta["delta"] = {}
    assert gp.compare(empty_delta, same)[0]
    empty_terms = copy.deepcopy(fixture)
    empty_terms["terms"] = [{} for _ in fixture["terms"]]
    assert gp.compare(empty_terms, {**same, "terms": [{} for _ in fixture["terms"]]})[0]
    missing = copy.deepcopy(same)
    del missing["delta"][key]
    assert any(key in p for p in gp.compare(fixture, missing)[0])

    stale = copy.deepcopy(same)
    stale["init"] = copy.deepcopy(fixture["init"])
    stale["init"][key]["sum"] += 1e-6
    assert "regenerate" in gp.compare(fixture, stale)[0][0]
