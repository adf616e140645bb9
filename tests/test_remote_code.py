"""Exports of cifar_* students load with transformers + timm alone (trust_remote_code=True), logits identical to
hf_kd's, in a process where `import hf_kd` fails; timm-shipped architectures stay plain exports."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from processes import run_process

from hf_kd import create_student
from hf_kd.models import cifar
from hf_kd.models.remote_code import MODELING_FILE, modeling_source

# runs in a fresh interpreter: hf_kd made unimportable before anything else is imported
NO_HF_KD = r"""
import sys
sys.modules["hf_kd"] = None  # `import hf_kd` raises ImportError from here on
import json, numpy as np, timm, torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

folder, out = sys.argv[1], sys.argv[2]
try:
    import hf_kd  # noqa: F401
    raise SystemExit("hf_kd is importable")
except ImportError:
    pass
assert not timm.is_model("cifar_resnet8x4")
try:  # the stock path must fail: this is what the remote code fixes
    AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=False)
    stock = "loaded"
except Exception as e:
    stock = type(e).__name__
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
x = torch.from_numpy(np.load(folder + "/x.npy"))
with torch.no_grad():
    logits = model(pixel_values=x).logits
np.save(out + "/logits.npy", logits.numpy())
clf = pipeline("image-classification", model=folder, trust_remote_code=True, top_k=3)
preds = clf(Image.fromarray(np.load(folder + "/img.npy")))
json.dump({"stock": stock, "class": type(model).__name__, "module": type(model).__module__,
           "pipeline": preds}, open(out + "/info.json", "w"))

# a student on an architecture timm ships: a plain export that transformers and timm load alone
plain = sys.argv[3]
x = torch.from_numpy(np.load(plain + "/x.npy"))
with torch.no_grad():
    by_transformers = AutoModelForImageClassification.from_pretrained(plain).eval()(x).logits
    by_timm = timm.create_model("local-dir:" + plain, pretrained=True).eval()(x)
np.save(out + "/plain_logits.npy", np.stack([by_transformers.numpy(), by_timm.numpy()]))
assert "hf_kd" not in sys.modules or sys.modules["hf_kd"] is None
"""


@pytest.mark.slow
def test_cifar_export_loads_without_hf_kd_with_identical_logits(data, tmp_path, one_thread):  # as the process below
    """One fresh process without hf_kd loads two exports: a cifar_* student (remote code) and a student on an
    architecture timm ships (plain: transformers and timm alone)."""
    torch.manual_seed(0)
    student = create_student("cifar_resnet8x4", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                             model_args={"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]}).eval()
    folder = tmp_path / "export"
    student.save_pretrained(folder)
    cfg = json.load(open(folder / "config.json"))
    assert cfg["auto_map"] == {"AutoModelForImageClassification": "modeling_hf_kd.TimmWrapperForImageClassification"}
    assert not hasattr(student.config, "auto_map") or student.config.auto_map is None  # in memory: untouched
    source = (folder / MODELING_FILE).read_text()
    assert source == modeling_source() and cifar.CifarResNet.__doc__ in source  # generated from hf_kd's code
    x = torch.randn(4, 3, 32, 32)
    np.save(folder / "x.npy", x.numpy())
    np.save(folder / "img.npy", np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        expected = student(pixel_values=x).logits
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    torch.manual_seed(0)
    plain = create_student("resnet10t", 3, ["cat", "dog", "fox"], input_size=(3, 64, 64)).eval()
    plain.save_pretrained(tmp_path / "plain")
    x_plain = torch.randn(2, 3, 64, 64)
    np.save(tmp_path / "plain" / "x.npy", x_plain.numpy())
    with torch.no_grad():
        expected_plain = plain(x_plain).logits
    run = run_process([sys.executable, "-c", NO_HF_KD, str(folder), str(tmp_path), str(tmp_path / "plain")],
                      timeout=600, env=env, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-4000:]
    info = json.load(open(tmp_path / "info.json"))
    assert info["stock"] != "loaded"  # without the remote code transformers cannot build it
    assert info["class"] == "TimmWrapperForImageClassification" and "modeling_hf_kd" in info["module"]
    # pipeline lists the class as supported: no "not supported for image-classification" error in the log
    assert "not supported for image-classification" not in run.stderr + run.stdout
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "logits.npy")), expected)
    by_transformers, by_timm = torch.from_numpy(np.load(tmp_path / "plain_logits.npy"))
    assert torch.equal(by_transformers, expected_plain) and torch.equal(by_timm, expected_plain)
    assert len(info["pipeline"]) == 3 and {p["label"] for p in info["pipeline"]} <= set(data.label_names)
    # the pipeline without hf_kd gives what it gives with hf_kd (stock class, its image processor): same scores
    from PIL import Image
    from transformers import pipeline

    ours = pipeline("image-classification", model=str(folder), top_k=3)(Image.fromarray(np.load(folder / "img.npy")))
    assert info["pipeline"] == ours, (info["pipeline"], ours)


def test_timm_shipped_architecture_stays_plain(data, tmp_path):
    student = create_student("resnet10t", data.num_labels, data.label_names)
    student.save_pretrained(tmp_path)
    assert "auto_map" not in json.load(open(tmp_path / "config.json"))
    assert not (tmp_path / MODELING_FILE).exists()


def test_hf_kd_process_still_loads_cifar_export_without_remote_code(data, tmp_path):
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    student = create_student("cifar_resnet8x4", data.num_labels, data.label_names,
                             model_args={"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]}).eval()
    student.save_pretrained(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(tmp_path).eval()  # hf_kd imported: stock class
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, student(pixel_values=x).logits)


@pytest.mark.parametrize("arch", ["cifar_resnet8x4", "resnet10t"])
def test_card_snippet_matches_the_export(data, tmp_path, arch):
    """cifar_* cards load with trust_remote_code=True (transformers) and name `import hf_kd` for timm; cards of
    timm-shipped architectures show the plain snippet, no remote code."""
    from hf_kd import SupervisedTrainer

    student = create_student(arch, data.num_labels, data.label_names, mean=data.mean, std=data.std,
                             model_args={"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]} if arch.startswith("cifar")
                             else None)
    args = SupervisedTrainer.args_class(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    trainer = SupervisedTrainer(model=student, args=args, train_dataset=data.train)
    trainer.hub_model_id = "someone/student"
    trainer.write_model_card(str(tmp_path))
    use = (tmp_path / "README.md").read_text().split("## Use")[1]
    if arch.startswith("cifar"):
        assert 'pipeline("image-classification", model="someone/student", trust_remote_code=True)' in use
        assert 'from_pretrained("someone/student", trust_remote_code=True)' in use and "import hf_kd" in use
    else:
        assert 'pipeline("image-classification", model="someone/student")' in use
        assert "trust_remote_code" not in use and "import hf_kd" not in use and "ships with timm" in use
