#!/usr/bin/env python
"""Build the golden parity fixtures in this folder by running the OFFICIAL code of each method (float64, 3 steps).

    HF_KD_OFFICIAL=/path/to/checkouts PYTHONPATH=. python tests/golden/generate_fixtures.py [fixture ...]

``HF_KD_OFFICIAL`` is a folder holding one git checkout per official repository, named like the repository:

    FFSD          https://github.com/SJLeo/FFSD                 (FFSD)
    PEFD          https://github.com/chenyd7/PEFD               (PEFD)
    LightSKD      https://github.com/xucong-parsifal/LightSKD   (LightSKD)
    Self-KD-Lib   https://github.com/winycg/Self-KD-Lib         (MixSKD)
    RepDistiller  https://github.com/HobbitLong/RepDistiller    (classic KD, distiller_zoo/KD.py + helper/loops.py)

(``HF_KD_OFFICIAL_<NAME>``, e.g. ``HF_KD_OFFICIAL_SELF_KD_LIB``, overrides one path). Keep them outside this
repository: their code is never copied here. Each fixture records the commit it was computed at; the checkouts must
be clean (the patches below are applied in memory, to the source text, and each must match exactly once).

Per fixture, in its own process (the repositories reuse top-level names such as ``models`` and ``utils``):

1. the 16 CIFAR-100 images (``$HF_KD_CIFAR100``, train shard 0, rows 0-15) and per step a random pad-crop +
   flip (parameters stored), normalised in float64 as each official data pipeline normalises;
2. hf_kd's trainer is built as the test builds it (``golden_parity.build_trainer``: preset + overrides, hf_kd's
   own initialisation at the fixture's seed), and its initial tensors are copied into the official modules, every
   tensor of both sides accounted for (strict loads; a shape or name mismatch stops the generator);
3. the official training loop runs 3 optimizer steps in float64 (``torch.set_default_dtype(torch.float64)`` after the
   hf_kd build) with the official optimizers, built by the official set-up code where it can run without data files;
   the loss terms are read from the loop's own local variables at each ``optimizer.step()`` (a recording proxy),
   converted to hf_kd's names and convention (unweighted);
4. the official final tensors are mapped back to hf_kd's names and stored as update statistics
   (``golden_parity.delta_stats``), with the provenance: repository, commit, patches and why.

With ``--check`` it also runs the hf_kd side and prints the largest relative differences (what the tests assert).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: golden_parity
import golden_parity as gp  # noqa: E402

# The local data the fixtures were computed from (not in the repository): a CIFAR-100 copy in the Hub's parquet layout
# (60k pool, stratified 50k/10k re-split) and a 500-image ImageNet sample (one ILSVRC-2012 train photograph per class).
CIFAR_FOLDER = Path(os.environ.get("HF_KD_CIFAR100", "data/cifar100"))
CIFAR_SHARD = CIFAR_FOLDER / "train-00000-of-00003.parquet"
IMAGENET_SAMPLE = Path(os.environ.get("HF_KD_IMAGENET_SAMPLE", "data/imagenet-sample")) / "images"
IMAGENET_FILES = ("n01440764_tench.JPEG", "n01530575_brambling.JPEG")  # 2 real photographs, synset = label
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # all three official ImageNet loaders
NUM_IMAGES = 16
STEPS = 3
NUM_CLASSES = 100

REPOS = {
    "FFSD": "https://github.com/SJLeo/FFSD",
    "PEFD": "https://github.com/chenyd7/PEFD",
    "LightSKD": "https://github.com/xucong-parsifal/LightSKD",
    "Self-KD-Lib": "https://github.com/winycg/Self-KD-Lib",
    "RepDistiller": "https://github.com/HobbitLong/RepDistiller",
    "torchdistill": "https://github.com/yoshitomo-matsubara/torchdistill",  # schedule fixtures only
}
CRD_MEAN, CRD_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)  # RepDistiller / PEFD / Self-KD-Lib CIFAR-100
FFSD_MEAN, FFSD_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # FFSD data/cifar100.py
LIGHTSKD_MEAN, LIGHTSKD_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)  # LightSKD datasets.py (CIFAR-10)

SHRUNK_RESNET18 = ("CIFAR ResNet-18 shrunk to one BasicBlock per stage (official ResNet(BasicBlock, [1, 1, 1, 1]); "
                   "hf_kd cifar_resnet18 with model_args blocks [1, 1, 1, 1]); widths unchanged (64-512). The full "
                   "[2, 2, 2, 2] net makes a float64 CPU step several times slower; the method code does not depend "
                   "on the depth.")

SHRUNK_MIXSKD = ("MixSKD's CIFAR ResNet-18 shrunk to one BasicBlock per stage and a quarter of the widths (16-128 "
                 "instead of 64-512) in the backbone, the auxiliary branches and the self-teacher (official "
                 "ResNet_Auxiliary(BasicBlock, [1, 1, 1, 1]) with the width literals of its three classes divided by "
                 "4; hf_kd cifar_resnet18 with model_args blocks [1, 1, 1, 1], channels [16, 16, 32, 64, 128]). With "
                 "its 3 branches and a 2B-image forward the full net takes half a minute per float64 CPU test; the "
                 "method code does not depend on depth or width.")

SPECS = {
    "kd": dict(
        repo="RepDistiller", method="classic KD (Hinton et al. 2015) as CRD/RepDistiller trains it",
        trainer="hf_kd.trainers.kd.KDTrainer", preset="recipes/configs/kd_cifar100_resnet32x4_resnet8x4.yaml",
        student=dict(architecture="cifar_resnet8x4", seed=0), teacher=dict(architecture="cifar_resnet32x4", seed=1),
        pad_mode="constant", mean=CRD_MEAN, std=CRD_STD, aug_seed=11,
        sizes="teacher resnet32x4 and student resnet8x4: the official pair, real sizes (the teacher is a random "
              "initialisation, not a trained one: its outputs only need to be the same on both sides)"),
    "projector_kd": dict(
        repo="PEFD", method="PEFD (projector ensemble feature distillation)",
        trainer="hf_kd.trainers.projector_kd.ProjectorKDTrainer",
        preset="recipes/configs/projector_kd_cifar100_resnet32x4_resnet8x4.yaml",
        student=dict(architecture="cifar_resnet8x4", seed=0), teacher=dict(architecture="cifar_resnet32x4", seed=1),
        pad_mode="constant", mean=CRD_MEAN, std=CRD_STD, aug_seed=12,
        sizes="teacher resnet32x4 and student resnet8x4 (scripts/run_cifar.sh), real sizes (random teacher)"),
    "self_kd": dict(
        repo="LightSKD", method="LightSKD (DRG + DSR)", trainer="hf_kd.trainers.self_kd.SelfKDTrainer",
        preset="recipes/configs/self_kd_cifar100_resnet18.yaml",
        student=dict(architecture="cifar_resnet18", seed=0, model_args={"blocks": [1, 1, 1, 1]}),
        pad_mode="constant", mean=LIGHTSKD_MEAN, std=LIGHTSKD_STD, aug_seed=13, sizes=SHRUNK_RESNET18),
    "mixskd": dict(
        repo="Self-KD-Lib", method="MixSKD", trainer="hf_kd.trainers.mixskd.MixSKDTrainer",
        preset="recipes/configs/mixskd_cifar100_resnet18.yaml",
        student=dict(architecture="cifar_resnet18", seed=0,
                     model_args={"blocks": [1, 1, 1, 1], "channels": [16, 16, 32, 64, 128]}),
        pad_mode="constant", mean=CRD_MEAN, std=CRD_STD, aug_seed=14, sizes=SHRUNK_MIXSKD),
    "ffsd_warmup": dict(
        repo="FFSD", method="FFSD, inside the lambda warm-up (epoch 1: factor exp(-5 (1 - 1/5)^2) = 0.041)",
        trainer="hf_kd.trainers.ffsd.FFSDTrainer", preset="recipes/configs/ffsd_cifar100_resnet20.yaml",
        student=dict(architecture="cifar_resnet20", seed=0), pad_mode="reflect", mean=FFSD_MEAN, std=FFSD_STD,
        aug_seed=15, official_epoch=1,
        sizes="ResNet-20 leader and 2 common students: the smallest official FFSD network, real size"),
    "ffsd_after_warmup": dict(
        repo="FFSD", method="FFSD after the lambda warm-up (official epoch 6: full lambdas)",
        trainer="hf_kd.trainers.ffsd.FFSDTrainer", preset="recipes/configs/ffsd_cifar100_resnet20.yaml",
        student=dict(architecture="cifar_resnet20", seed=0), args={"lambda_warmup_epochs": 0},
        pad_mode="reflect", mean=FFSD_MEAN, std=FFSD_STD, aug_seed=16, official_epoch=6,
        sizes="ResNet-20 leader and 2 common students: the smallest official FFSD network, real size",
        note="The official run starts fresh networks at epoch 6 (start_epoch 6: the lambdas at full value); hf_kd "
             "runs its first epoch with lambda_warmup_epochs=0, which gives the same full lambdas from step 1."),
}

# 224-px fixtures: the official ImageNet networks, 2 real ImageNet photographs, hyperparameters named in ``args`` (no
# preset file: hf_kd's ImageNet presets are not pinned here); the official epoch is one after any warm-up, so that
# both sides train at the full learning rate (the schedules are pinned by the schedule fixtures, not here).
IMAGENET = dict(images="imagenet", num_images=len(IMAGENET_FILES), num_classes=1000, pad_mode="constant",
                mean=IMAGENET_MEAN, std=IMAGENET_STD)
SPECS.update({
    "ffsd_imagenet_resnet18": dict(
        IMAGENET, repo="FFSD", method="FFSD on ImageNet (ImageNetTrainer.py), after the lambda warm-up (official "
                                     "epoch 6: full lambdas, lr 0.1)",
        trainer="hf_kd.trainers.ffsd.FFSDTrainer", preset=None, student=dict(architecture="resnet18", seed=0),
        args=dict(num_students=2, temperature=2.0, lambda_diversity=1e-5, lambda_fusion=10.0,
                  lambda_self_distillation=1000.0, lambda_warmup_epochs=0, fusion_weight_decay=1e-5,
                  decoder_learning_rate=1e-3, learning_rate=0.1, optim="sgd", optim_args="momentum=0.9,nesterov=True",
                  weight_decay=1e-4, max_grad_norm=0.0, lr_scheduler_type="constant"),
        aug_seed=21, steps=2, official_epoch=6,
        sizes="ResNet-18 leader and 2 common students (ImageNet, 1000 classes), real size, 224 px, batch 2",
        note="The official run starts at epoch 6 (past the 5-epoch lambda and learning-rate warm-ups: lambdas at "
             "full value, lr 0.1); hf_kd runs with lambda_warmup_epochs=0 and a constant learning rate."),
    "projector_kd_imagenet_resnet34_resnet18": dict(
        IMAGENET, repo="PEFD", method="PEFD on ImageNet (train_student.py --dataset imagenet, helper/loops.py)",
        trainer="hf_kd.trainers.projector_kd.ProjectorKDTrainer", preset=None,
        student=dict(architecture="resnet18", seed=0), teacher=dict(architecture="resnet34", seed=1),
        args=dict(num_projectors=3, ce_weight=1.0, kd_weight=0.0, feature_weight=25.0, temperature=4.0,
                  learning_rate=0.1, optim="sgd", optim_args="momentum=0.9", weight_decay=1e-4,
                  lr_milestones=[30, 60, 90], lr_gamma=0.1),
        official_args=["--learning_rate", "0.1", "--weight_decay", "1e-4", "--lr_decay_epochs", "30,60,90",
                       "--epochs", "100"],
        aug_seed=22, steps=2,
        sizes="teacher RESNET34 and student RESNET18 (models/official_resnet.py; hf_kd: timm resnet34 / resnet18), "
              "real size, 224 px, batch 2 (random teacher)",
        note="scripts/run_imagenet.sh with the ImageNet settings of the paper on its command line (lr 0.1, weight "
             "decay 1e-4, decay at 30/60/90, 100 epochs; the released script leaves the CIFAR defaults)"),
    "mixskd_imagenet_resnet50": dict(
        IMAGENET, repo="Self-KD-Lib", method="MixSKD on ImageNet (main_mixskd_imagenet.py, MixSKD_ImageNet_ResNet50)",
        trainer="hf_kd.trainers.mixskd.MixSKDTrainer", preset=None, student=dict(architecture="resnet50", seed=0),
        args=dict(mixup_alpha=0.2, temperature=3.0, discriminator="fixed", mixup_ce=True, learning_rate=0.1,
                  optim="sgd", optim_args="momentum=0.9", weight_decay=1e-4, lr_scheduler_type="constant"),
        aug_seed=23, steps=1, official_epoch=5,
        sizes="MixSKD_ImageNet_ResNet50 (backbone, 3 auxiliary branches, self-teacher; hf_kd: timm resnet50), real "
              "size, 224 px, batch 2 (4 rows with the mixup half), 1 step (about 30 s per float64 step on one core)",
        note="scripts/main_mixskd_imagenet.sh (--init-lr 0.1 --warmup-epoch 5 --lr-type cosine --epochs 305 "
             "--mixup-alpha 0.2); the official run is at epoch 5, the first after the warm-up (cosine at its start: "
             "lr 0.1); hf_kd runs at a constant 0.1."),
})


# --- data ------------------------------------------------------------------------------------------------------------
def load_images() -> tuple[np.ndarray, list[int]]:
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(CIFAR_SHARD).slice(0, NUM_IMAGES).to_pylist()
    images = np.stack([np.asarray(Image.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")).transpose(2, 0, 1)
                       for r in table])
    return images, [int(r["fine_label"]) for r in table]


def load_imagenet_images() -> tuple[np.ndarray, list[int]]:
    """The 224-px centre crops (shorter side resized to 256, bilinear) of ``IMAGENET_FILES``, and their labels."""
    from PIL import Image
    from timm.data import ImageNetInfo

    synsets = ImageNetInfo().label_names()
    images = []
    for name in IMAGENET_FILES:
        im = Image.open(IMAGENET_SAMPLE / name).convert("RGB")
        scale = 256 / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        images.append(np.asarray(im.crop((left, top, left + 224, top + 224))).transpose(2, 0, 1))
    return np.stack(images), [synsets.index(n.split("_")[0]) for n in IMAGENET_FILES]


def imagenet_data_section(spec: dict) -> dict:
    images, labels = load_imagenet_images()
    rng = np.random.default_rng(spec["aug_seed"])
    n = len(labels)
    steps = [{"crops": [[0, 0]] * n, "flips": (rng.random(n) < 0.5).tolist()} for _ in range(spec["steps"])]
    return {"source": f"images/{{{','.join(IMAGENET_FILES)}}} of a 500-image ImageNet sample (one image per "
                      "class; ILSVRC-2012 train photographs), shorter side resized to 256 "
                      "(bilinear), centre 224 x 224 crop",
            "images_shape": list(images.shape), "images": gp.encode_images(images), "labels": labels,
            "padding": 0, "pad_mode": "constant", "mean": list(spec["mean"]), "std": list(spec["std"]),
            "augmentation_note": "per step and image: a horizontal flip, drawn once with numpy default_rng(aug_seed) "
                                 "(no crop: the stored images are the 224-px crops); then x/255, minus mean, over "
                                 "std in float64",
            "aug_seed": spec["aug_seed"], "augmentation": steps}


def data_section(spec: dict) -> dict:
    if spec.get("images") == "imagenet":
        return imagenet_data_section(spec)
    images, labels = load_images()
    rng = np.random.default_rng(spec["aug_seed"])
    steps = [{"crops": rng.integers(0, 9, size=(NUM_IMAGES, 2)).tolist(),
              "flips": (rng.random(NUM_IMAGES) < 0.5).tolist()} for _ in range(STEPS)]
    return {"source": f"{CIFAR_SHARD.name} of a local CIFAR-100 copy, rows 0-{NUM_IMAGES - 1} (CIFAR-100 (60k pool, "
                      "stratified 50k/10k re-split), train split)",
            "images_shape": list(images.shape), "images": gp.encode_images(images), "labels": labels,
            "padding": 4, "pad_mode": spec["pad_mode"], "mean": list(spec["mean"]), "std": list(spec["std"]),
            "augmentation_note": "per step and image: crop offset (top, left) into the 4-pixel padded image and a "
                                 "horizontal flip, drawn once with numpy default_rng(aug_seed); then x/255, minus "
                                 "mean, over std in float64",
            "aug_seed": spec["aug_seed"], "augmentation": steps}


# --- official repositories -------------------------------------------------------------------------------------------
def repo_path(name: str) -> Path:
    env = os.environ.get("HF_KD_OFFICIAL_" + re.sub(r"\W", "_", name).upper())
    root = os.environ.get("HF_KD_OFFICIAL")
    if not env and not root:
        raise SystemExit("Set HF_KD_OFFICIAL to a folder with checkouts of the official repositories (see the "
                         "docstring of tests/golden/generate_fixtures.py).")
    path = Path(env or Path(root) / name).resolve()
    if not (path / ".git").exists():
        raise SystemExit(f"{path} is not a git checkout of {REPOS[name]}")
    if gp.ROOT in path.parents or path == gp.ROOT:
        raise SystemExit(f"{path} is inside the hf_kd repository; keep official checkouts outside it")
    return path


def provenance(name: str) -> dict:
    path = repo_path(name)

    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True).stdout

    if git("status", "--porcelain").strip():
        raise SystemExit(f"{path} has local changes; the fixtures must come from a clean checkout")
    return {"repository": REPOS[name], "commit": git("rev-parse", "HEAD").strip(),
            "commit_date": git("log", "-1", "--format=%cI").strip()}


class Patches:
    """Exact source replacements applied in memory, recorded for the fixture."""

    def __init__(self, repo: Path):
        self.repo, self.applied = repo, []

    def apply(self, rel: str, src: str, patches) -> str:
        """Each patch is (find, replace, why[, function]): ``find`` must occur exactly once in the file, or in the
        named top-level function when one is given."""
        for old, new, why, *scope in patches:
            start, end = 0, len(src)
            if scope:
                fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == scope[0])
                lines = src.splitlines(keepends=True)
                start, end = sum(map(len, lines[:fn.lineno - 1])), sum(map(len, lines[:fn.end_lineno]))
            count = src[start:end].count(old)
            if count != 1:
                raise SystemExit(f"patch for {rel} expects exactly one '{old}'{' in ' + scope[0] if scope else ''}, "
                                 f"found {count}: the official file changed; review the patch")
            src = src[:start] + src[start:end].replace(old, new) + src[end:]
            self.applied.append({"file": rel + (f" ({scope[0]})" if scope else ""), "find": old, "replace": new,
                                 "why": why})
        return src

    def scale_widths(self, rel: str, src: str, classes, divisor: int, why: str) -> str:
        """Divide every channel width literal (64, 128, 256, 512) inside the named classes by ``divisor``."""
        for cls in classes:
            node = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == cls)
            lines = src.splitlines(keepends=True)
            start, end = sum(map(len, lines[:node.lineno - 1])), sum(map(len, lines[:node.end_lineno]))
            body, count = re.subn(r"\b(64|128|256|512)\b", lambda m: str(int(m.group(1)) // divisor), src[start:end])
            src = src[:start] + body + src[end:]
            self.applied.append({"file": f"{rel} ({cls})", "find": "channel widths 64 / 128 / 256 / 512",
                                 "replace": f"divided by {divisor} ({count} literals)", "why": why})
        return src

    def load_module(self, rel: str, name: str, patches=(), package: str | None = None, transform=None):
        """Import ``rel`` as module ``name`` with ``patches`` (and ``transform(src)``) applied; tracebacks still
        point at the file."""
        path = self.repo / rel
        src = self.apply(rel, path.read_text(), patches)
        src = transform(src) if transform else src
        module = types.ModuleType(name)
        module.__file__, module.__package__ = str(path), package
        sys.modules[name] = module
        exec(compile(src, str(path), "exec"), module.__dict__)
        return module

    def run_statements(self, rel: str, namespace: dict, select, patches=()) -> dict:
        """Execute the statements of script ``rel`` that ``select(node, source)`` keeps, in ``namespace``.

        For training scripts that parse arguments and load data at import time: their argument parser, set-up lines
        and training function run as written; the data loading does not."""
        path = self.repo / rel
        src = self.apply(rel, path.read_text(), patches)
        tree = ast.parse(src)
        body = [n for n in _flatten(tree.body) if select(n, ast.get_source_segment(src, n))]
        exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)
        return namespace


def _flatten(nodes):
    """Top-level statements, with the body of ``if __name__ == '__main__':`` and of ``if args.evaluate: ... else:``
    inlined (the else branch: the training set-up)."""
    for n in nodes:
        if isinstance(n, ast.If) and "__main__" in ast.dump(n.test):
            yield from _flatten(n.body)
        elif isinstance(n, ast.If) and "evaluate" in ast.dump(n.test):
            yield from _flatten(n.orelse)
        else:
            yield n


class StepRecorder:
    """An optimizer proxy: at each ``step()`` it records the named local variables of the official loop that calls it
    (the loss terms as the official code computed them), then steps the real optimizer."""

    def __init__(self, optimizer, tag: str, names, log: list):
        self.optimizer, self.tag, self.names, self.log = optimizer, tag, list(names), log

    def step(self, closure=None):
        local = sys._getframe(1).f_locals
        self.log.append((self.tag, {n: _number(local[n]) for n in self.names if n in local}))
        return self.optimizer.step(closure)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


class CallRecorder:
    """A loss-module proxy recording every value it returns (for terms the official code never stores by name)."""

    def __init__(self, fn, log: list):
        self.fn, self.log = fn, log

    def __call__(self, *a, **kw):
        out = self.fn(*a, **kw)
        self.log.append(_number(out))
        return out


def _number(v):
    import torch

    if isinstance(v, torch.Tensor):
        if v.dtype != torch.float64:
            raise SystemExit(f"an official loss value is {v.dtype}, not float64: a cast in the official code needs a "
                             "float64 patch")
        return float(v.detach())
    return float(v)


def per_step(log: list, tag: str) -> list[dict]:
    return [values for t, values in log if t == tag]


# --- mapping hf_kd state <-> official modules ------------------------------------------------------------------------
def resnet_key(key: str, renames=()) -> str:
    """hf_kd cifar_* ResNet keys (stem.0 / stem.1 / stages.i.j...) -> the official CIFAR ResNets' (conv1 / bn1 /
    layer{i+1}.j...); ``renames`` are further (old, new) substring renames."""
    key = key.replace("stem.0.", "conv1.", 1).replace("stem.1.", "bn1.", 1)
    key = re.sub(r"^stages\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)
    for old, new in renames:
        key = key.replace(old, new)
    return key


class Mapping:
    """Rows (hf_kd prefix, official module, key function): loads hf_kd tensors into the official modules (strict, and
    every hf_kd tensor must be used) and reads the official tensors back under hf_kd's names."""

    def __init__(self, rows):
        self.rows = rows

    def _pairs(self, keys):
        for key in keys:
            rows = [r for r in self.rows if key.startswith(r[0])]
            if len(rows) != 1:
                raise SystemExit(f"hf_kd tensor {key} matches {len(rows)} mapping rows")
            prefix, module, fn = rows[0]
            yield key, module, fn(key[len(prefix):])

    def load(self, state: dict):
        import torch

        per_module = {}
        for key, module, official in self._pairs(state):
            per_module.setdefault(id(module), (module, {}))[1][official] = state[key].detach().clone()
        modules = {id(r[1]): r[1] for r in self.rows}
        if set(per_module) != set(modules):
            raise SystemExit("some official modules receive no hf_kd tensor")
        for module, sd in per_module.values():
            own = module.state_dict()
            for k, v in sd.items():
                if k in own and own[k].shape != v.shape:
                    raise SystemExit(f"{type(module).__name__}.{k}: official shape {tuple(own[k].shape)}, hf_kd "
                                     f"{tuple(v.shape)}")
            module.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in sd.items()}, strict=True)
            for p in module.state_dict().values():
                if p.is_floating_point() and p.dtype != torch.float64:
                    raise SystemExit(f"{type(module).__name__} holds {p.dtype} tensors")

    def read(self, keys) -> dict:
        out = {}
        for key, module, official in self._pairs(keys):
            out[key] = module.state_dict()[official].detach().clone()
        return out


@contextlib.contextmanager
def official_imports(repo: Path):
    """``repo`` first on sys.path, run from a scratch folder (the scripts write logs and checkpoints to ./)."""
    sys.path.insert(0, str(repo))
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield Patches(repo), Path(tmp)
        finally:
            os.chdir(cwd)
            sys.path.remove(str(repo))


def cpu_only_cuda():
    """Self-KD-Lib calls ``.cuda()`` unconditionally: make it a no-op (this machine has no GPU; CPU float64)."""
    import torch

    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self


INPUT_FLOAT = ("input = input.float()", "input = input.to(torch.get_default_dtype())",
               "float64 run: the loop casts its input batch to float32; cast it to the default dtype (float64 here)",
               "train_distill")


# --- the official runs -----------------------------------------------------------------------------------------------
def run_crd_family(spec, init, teacher_init, steps, repo, distill):
    """RepDistiller (classic KD) / PEFD: ``helper/loops.py::train_distill`` over the 3 batches, set up as
    ``train_student.py::main`` does (parse_option with the scripts' command line; student + projectors in one SGD)."""
    import torch
    import torch.nn as nn
    import torch.optim as optim

    with official_imports(repo) as (patch, tmp):
        from distiller_zoo import DistillKL
        from helper.util import adjust_learning_rate
        from models import model_dict

        loop_patches = [INPUT_FLOAT]
        if distill == "ours":
            loop_patches += [
                ("outft = f_t.div(normft)", "outft = f_t.div(normft.clamp_min(1e-12))",
                 "decision of docs/methods/projector_kd.md: the cosine divides by max(norm, 1e-12) (F.normalize) "
                 "so that an "
                 "all-zero ReLU output cannot give NaN; identical for any non-degenerate feature"),
                ("outfs = f_s.div(normfs)", "outfs = f_s.div(normfs.clamp_min(1e-12))", "same, student side")]
        import helper  # noqa: F401  (the package the loop module's relative imports resolve in)

        loops = patch.load_module("helper/loops.py", "helper.loops", loop_patches, package="helper")
        ns = patch.run_statements("train_student.py", {"__name__": "train_student"},
                                  lambda n, s: isinstance(n, (ast.Import, ast.ImportFrom)) and "socket" in s
                                  or isinstance(n, ast.Import) and s.strip() in ("import os", "import argparse")
                                  or isinstance(n, ast.FunctionDef) and n.name in ("parse_option",
                                                                                   "get_teacher_name"))
        batch = len(steps[0][1])
        if spec.get("images") == "imagenet":  # scripts/run_imagenet.sh (+ the spec's official_args)
            argv = ["train_student.py", "--path_t", "./save/models/RESNET34_vanilla/ckpt_epoch_90.pth", "--distill",
                    distill, "--dataset", "imagenet", "--model_s", "RESNET18", "--trial", "1", "--batch_size",
                    str(batch)] + spec.get("official_args", [])
        else:
            argv = ["train_student.py", "--path_t", "./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth",
                    "--distill", distill, "--model_s", "resnet8x4", "--trial", "1", "--batch_size", str(batch)]
        argv += ["-r", "0.1", "-a", "0.9", "-b", "0"] if distill == "kd" else ["-a", "0", "-b", "25"]
        saved_argv, sys.argv = sys.argv, argv  # RepDistiller scripts/run_cifar_distill.sh / PEFD scripts/run_cifar.sh
        try:
            opt = ns["parse_option"]()
        finally:
            sys.argv = saved_argv
        num_classes, size = spec.get("num_classes", NUM_CLASSES), 224 if opt.dataset == "imagenet" else 32
        model_s = model_dict[opt.model_s](num_classes=num_classes)
        model_t = model_dict[opt.model_t](num_classes=num_classes)
        # train_student.py::main
        module_list, trainable_list = nn.ModuleList([model_s]), nn.ModuleList([model_s])
        rows = [("student.timm_model.", model_s, resnet_key)]
        if distill == "ours":
            from models.util import Reg

            with torch.no_grad():  # train_student.py: a dry run at the data set's size
                feat_s, _ = model_s.eval()(torch.randn(2, 3, size, size), is_feat=True)
                feat_t, _ = model_t.eval()(torch.randn(2, 3, size, size), is_feat=True)
            regs = [Reg(feat_s[-1].shape[1], feat_t[-1].shape[1]) for _ in range(4)]
            module_list.extend(regs)
            trainable_list.extend(regs[:3])  # regress_s4 is built but never trained or used (dead code)
            rows += [(f"aux.projectors.linears.{i}.", regs[i], lambda k: "linear." + k) for i in range(3)]
            criterion_kd = nn.CrossEntropyLoss()
        else:
            criterion_kd = DistillKL(opt.kd_T)
        criterion_list = nn.ModuleList([nn.CrossEntropyLoss(), DistillKL(opt.kd_T), criterion_kd])
        log = []
        optimizer = StepRecorder(optim.SGD(trainable_list.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                           weight_decay=opt.weight_decay), "student",
                                 ["loss_cls", "loss_div", "loss_kd"], log)
        module_list.append(model_t)
        mapping = Mapping(rows)
        mapping.load(init)
        Mapping([("teacher.", model_t, resnet_key)]).load({"teacher." + k: v for k, v in teacher_init.items()})
        epoch = 1
        adjust_learning_rate(epoch, opt, optimizer)
        loader = [(x, y, torch.arange(len(y))) for x, y in steps]
        with contextlib.redirect_stdout(io.StringIO()):
            loops.train_distill(epoch, loader, module_list, criterion_list, optimizer, opt)
        if distill == "ours":
            terms = [{"ce": r["loss_cls"], "feature": r["loss_kd"]} for r in per_step(log, "student")]
        else:
            terms = [{"ce": r["loss_cls"], "kd": r["loss_div"]} for r in per_step(log, "student")]
        settings = {"command": " ".join(argv[1:]), "gamma": opt.gamma, "alpha": opt.alpha, "beta": opt.beta,
                    "kd_T": opt.kd_T, "epoch": epoch, "optimizer": _optimizer_settings(optimizer.optimizer)}
        return mapping.read(init), terms, settings, patch.applied


def run_lightskd(spec, init, steps, repo):
    """LightSKD ``train.py``: its argument parser, criterion, optimizer and ``train()`` as written; the networks per
    docs/methods/self_kd.md (adapter Istr_2 built with the BasicBlock that fits ResNet-18) and the shrunk depth."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim

    with official_imports(repo) as (patch, tmp):
        from backbone.adapter import BasicBlock as AdapterBasicBlock, Istr_2
        from backbone.resnet import BasicBlock, ResNet
        with contextlib.redirect_stdout(io.StringIO()):  # utils.py prints a banner on import
            from utils import output_process

        net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=NUM_CLASSES)
        ada_net = Istr_2(AdapterBasicBlock, num_classes=NUM_CLASSES)
        log, ce_log = [], []
        ns = {"__name__": "lightskd_train", "torch": torch, "nn": nn, "F": F, "optim": optim, "np": np, "net": net,
              "ada_net": ada_net, "device": torch.device("cpu"), "output_process": output_process,
              "trainloader": steps, "testloader": None, "init": None}
        keep = lambda n, s: (isinstance(n, ast.Import) and "argparse" in s or s.startswith("parser")
                             or s.startswith("args = ") or s.startswith("criterion = ")
                             or s.startswith("optimizer = ") or isinstance(n, ast.FunctionDef) and n.name == "train")
        patch.run_statements("train.py", ns, keep, [
            ('dest="RG-Loss"', 'dest="alpha"', "docs/methods/self_kd.md: argparse renames --alpha to 'RG-Loss', so "
                                                "train() fails on args.alpha"),
            ('dest="SW-Loss"', 'dest="beta"', "same for --beta ('SW-Loss')"),
            ("args = parser.parse_args()", f"args = parser.parse_args(['--batch_size', '{NUM_IMAGES}'])",
             "the command line: the fixture's batch size")])
        ns["bs"] = int(ns["args"].batch_size)  # docs/methods/self_kd.md: train() reads an undefined global `bs`
        ns["args"].model_path = str(tmp) + "/"
        ns["criterion"] = CallRecorder(ns["criterion"], ce_log)
        ns["optimizer"] = StepRecorder(ns["optimizer"], "network", ["ist", "adv_loss"], log)
        mapping = Mapping([
            ("student.timm_model.", net, lambda k: resnet_key(k, [("downsample.", "shortcut."), ("fc.", "linear.")])),
            ("aux.adapter.", ada_net, lambda k: k.replace("attention.", "attention2.", 1)
             .replace("features.", "scala2.", 1).replace("fc.", "fc2.", 1))])
        mapping.load(init)
        args = ns["args"]
        with contextlib.redirect_stdout(io.StringIO()):
            ns["train"](0)
        terms = []
        for k, rec in enumerate(per_step(log, "network")):
            t = {"ce": ce_log[2 * k], "ce_adapter": ce_log[2 * k + 1], "drg": rec["ist"] / args.alpha}
            if "adv_loss" in rec and k > 0:
                t["dsr"] = rec["adv_loss"] / args.beta
            terms.append(t)
        settings = {"alpha": args.alpha, "beta": args.beta, "temperature": "T=4 (hard-coded in train())",
                    "DRG": args.DRG, "DSR": args.DSR, "epoch": 0, "optimizer": _optimizer_settings(ns["optimizer"])}
        return mapping.read(init), terms, settings, patch.applied + [
            {"file": "train.py", "find": "net = get_model(args); ada_net = adapter_2(num_classes=args.num_classes)",
             "replace": "ResNet(BasicBlock, [1, 1, 1, 1]); Istr_2(BasicBlock) from backbone/adapter.py",
             "why": "decision of docs/methods/self_kd.md: the released adapter_2 hard-codes Istr_2(Bottleneck) "
                    "(512 channels), "
                    "which fails on ResNet-18's 128-channel layer2; the BasicBlock variant fits it. Depth shrunk: "
                    + SHRUNK_RESNET18},
            {"file": "train.py", "find": "bs (undefined global)", "replace": f"bs = {NUM_IMAGES}",
             "why": "docs/methods/self_kd.md: train() reads `bs`, which the script never defines"}]


def run_mixskd(spec, init, steps, draws, repo):
    """Self-KD-Lib ``main_mixskd_cifar.py``: argument parser, mixup functions, the set-up lines of ``__main__``
    (criteria, discriminators, SGD) and ``train()`` as written, on ``ResNet_Auxiliary(BasicBlock, [1, 1, 1, 1])``."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim

    cpu_only_cuda()
    with official_imports(repo) as (patch, tmp):
        import methods
        import models  # noqa: F401  (the package; its resnet_mixskd is replaced by the narrowed copy below)
        import utils

        rel = "models/resnet_mixskd.py"
        mixskd_nets = patch.load_module(rel, "models.resnet_mixskd", package="models", transform=lambda src: (
            patch.scale_widths(rel, src, ("CIFAR_ResNet", "Auxiliary_Classifier", "ResNet_Final_Auxiliary_Classifer"),
                               4, "test size (provenance.sizes)")))
        net = mixskd_nets.ResNet_Auxiliary(mixskd_nets.BasicBlock, [1, 1, 1, 1], num_classes=NUM_CLASSES)
        queue = list(draws)

        def next_mixup():
            d = queue.pop(0)
            return d["lam"], torch.tensor(d["perm"])

        ns = {"__name__": "mixskd_train", "torch": torch, "nn": nn, "F": F, "optim": optim, "np": np,
              "methods": methods, "net": net, "trainloader": steps, "log_txt": str(tmp / "log.txt"),
              "_next_mixup": next_mixup, "time": __import__("time"), "math": __import__("math")}
        for name in ("adjust_lr", "DistillKL", "AverageMeter", "correct_num"):
            ns[name] = getattr(utils, name)
        stop = {"first": None}

        def keep(n, s):
            if s.startswith("if args.resume") or s.startswith("for epoch in"):
                stop["first"] = stop["first"] or s
            if stop["first"]:
                return False
            return (isinstance(n, ast.Import) and "argparse" in s or s.startswith("parser")
                    or s.startswith("args = parser") or isinstance(n, ast.FunctionDef)
                    and n.name in ("mixup_data", "mixup_criterion", "train")
                    or s.split("=")[0].strip() in ("criterion_cls", "criterion_div", "x", "logits, features",
                                                   "dim_ins", "num_stage", "criterion_gan", "trainable_list",
                                                   "optimizer", "criterion_list")
                    or re.match(r"(trainable_list|criterion_list)\.append", s) is not None
                    or s.strip() == "net.eval()")

        gan_src = patch.apply("methods/adversarial.py", (repo / "methods/adversarial.py").read_text(), [
            ("torch.FloatTensor(", "torch.Tensor(",
             "float64 run: the discriminator targets are built as float32, which makes BCEWithLogitsLoss compute "
             "in float32; build them in the default dtype (float64 here)")])
        exec(compile(gan_src, str(repo / "methods/adversarial.py"), "exec"), methods.adversarial.__dict__)
        methods.discriminatorLoss = methods.adversarial.discriminatorLoss
        patch.run_statements("main_mixskd_cifar.py", ns, keep, [
            ("args = parser.parse_args()", f"args = parser.parse_args(['--batch-size', '{NUM_IMAGES}'])",
             "the command line: the fixture's batch size"),
            ("        lam = np.random.beta(alpha, alpha)", "        lam, _index = _next_mixup()",
             "the mixup draw: lambda and the permutation are hf_kd's draw_mixup(seed, step, 0, B, alpha) (stored in "
             "the fixture) instead of np.random.beta / torch.randperm on the global RNGs; same distribution"),
            ("    index = torch.randperm(batch_size).cuda()", "    index = _index", "same, the permutation"),
            ("        inputs = input.float().cuda()", "        inputs = input.cuda()",
             "float64 run: the loop casts its input batch to float32"),
            ("        loss = loss_cls + loss_div + loss_fea + loss_gan",
             "        loss = loss_cls + loss_mixcls + loss_div + loss_fea + loss_gan",
             "decision of docs/methods/mixskd.md: the objective of the official ImageNet script (mixup CE terms in "
             "the total, so "
             "the self-teacher trains); the released CIFAR script logs loss_mixcls but leaves it out")])
        log = []
        ns["optimizer"] = StepRecorder(ns["optimizer"], "network",
                                       ["loss_cls", "loss_mixcls", "loss_div", "loss_fea", "loss_gan", "lam", "lr"],
                                       log)
        gan = ns["criterion_gan"]
        rows = [("student.timm_model.", net.backbone, resnet_key),
                ("aux.self_teacher.", net.final_aux_classifier, lambda k: k)]
        rows += [(f"aux.branches.{k}.body.", getattr(net.auxiliary_classifier, f"block_extractor{k + 1}"),
                  lambda key: key) for k in range(3)]
        rows += [(f"aux.branches.{k}.fc.", getattr(net.auxiliary_classifier, f"fc{k + 1}"), lambda key: key)
                 for k in range(3)]
        rows += [(f"aux.discriminators.{k}.", gan.classifier[k],
                  lambda key: key.replace("fc1.", "classifier.0.").replace("fc2.", "classifier.2."))
                 for k in range(len(gan.classifier))]
        mapping = Mapping(rows)
        mapping.load(init)
        with contextlib.redirect_stdout(io.StringIO()):
            ns["train"](0, ns["criterion_list"], ns["optimizer"])
        records = per_step(log, "network")
        if [r["lam"] for r in records] != [d["lam"] for d in draws]:
            raise SystemExit("the official loop did not use the fixture's mixup draws")
        terms = [{"cls": r["loss_cls"], "mixcls": r["loss_mixcls"], "kl": r["loss_div"], "fea": r["loss_fea"],
                  "gan": r["loss_gan"]} for r in records]
        args = ns["args"]
        settings = {"mixup_alpha": args.mixup_alpha, "kd_T": args.kd_T, "warmup_epoch": args.warmup_epoch,
                    "init_lr": args.init_lr, "milestones": args.milestones, "epoch": 0,
                    "lr_per_step": [r["lr"] for r in records],
                    "optimizer": _optimizer_settings(ns["optimizer"]),
                    "discriminators": "plain Python list in discriminatorLoss: never registered, never trained"}
        return mapping.read(init), terms, settings, patch.applied + [
            {"file": "models/resnet_mixskd.py", "find": "MixSKD_CIFAR_ResNet18: ResNet_Auxiliary(BasicBlock, "
                                                        "[2,2,2,2])",
             "replace": "ResNet_Auxiliary(BasicBlock, [1, 1, 1, 1])", "why": "test size (provenance.sizes)"},
            {"file": "(all)", "find": ".cuda()", "replace": "no-op",
             "why": "CPU run (torch.Tensor.cuda and nn.Module.cuda return self)"}]


def run_mixskd_imagenet(spec, init, steps, draws, repo):
    """Self-KD-Lib ``main_mixskd_imagenet.py``: its argument parser on the command line of
    ``scripts/main_mixskd_imagenet.sh``, and from ``main_worker`` the set-up lines (dim_ins, criteria, discriminators,
    SGD), ``mixup_data``, ``mixup_criterion`` and ``train()`` as written, on ``MixSKD_ImageNet_ResNet50``."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torch.optim as optim

    cpu_only_cuda()
    with official_imports(repo) as (patch, tmp):
        import methods
        import models
        import utils

        net = models.MixSKD_ImageNet_ResNet50(num_classes=spec["num_classes"])
        queue = list(draws)

        def next_mixup():
            d = queue.pop(0)
            return d["lam"], torch.tensor(d["perm"])

        rel = "main_mixskd_imagenet.py"
        src = patch.apply(rel, (repo / rel).read_text(), [
            ("            lam = np.random.beta(alpha, alpha)", "            lam, _index = _next_mixup()",
             "the mixup draw: lambda and the permutation are hf_kd's draw_mixup(seed, step, 0, B, alpha) (stored in "
             "the fixture) instead of np.random.beta / torch.randperm on the global RNGs; same distribution"),
            ("        index = torch.randperm(batch_size).cuda()", "        index = _index", "same, the permutation"),
            ("            inputs = input.float().cuda()", "            inputs = input.cuda()",
             "float64 run: the loop casts its input batch to float32")])
        tree = ast.parse(src)
        worker = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main_worker")
        setup = ("x", "logits, features", "dim_ins", "num_stage", "criterion_cls", "criterion_div", "criterion_gan",
                 "criterion_list", "trainable_list", "optimizer")
        top = [n for n in tree.body if ast.get_source_segment(src, n).startswith("parser")]
        body = [n for n in worker.body
                if isinstance(n, ast.FunctionDef) and n.name in ("mixup_data", "mixup_criterion", "train")
                or ast.get_source_segment(src, n).split("=")[0].strip() in setup
                or re.match(r"(trainable_list|criterion_list)\.(append|cuda)", ast.get_source_segment(src, n))
                or ast.get_source_segment(src, n).strip() == "net.eval()"]
        ns = {"__name__": "mixskd_imagenet_train", "torch": torch, "nn": nn, "F": F, "optim": optim, "np": np,
              "argparse": __import__("argparse"), "methods": methods, "net": net, "trainloader": steps,
              "_next_mixup": next_mixup, "time": __import__("time"), "math": __import__("math")}
        for name in ("adjust_lr", "DistillKL", "AverageMeter", "correct_num"):
            ns[name] = getattr(utils, name)
        exec(compile(ast.Module(body=top, type_ignores=[]), str(repo / rel), "exec"), ns)
        argv = ["--data", "unused", "--arch", "MixSKD_ImageNet_ResNet50", "--batch-size", str(len(steps[0][1])),
                "--init-lr", "0.1", "--warmup-epoch", "5", "--lr-type", "cosine", "--epochs", "305",
                "--mixup-alpha", "0.2", "--manual_seed", "0"]  # scripts/main_mixskd_imagenet.sh, one process
        ns["args"] = args = ns["parser"].parse_args(argv)
        args.gpu, args.rank = None, -1  # main(): no distributed launch; rank -1 skips the log writes
        gan_src = patch.apply("methods/adversarial.py", (repo / "methods/adversarial.py").read_text(), [
            ("torch.FloatTensor(", "torch.Tensor(",
             "float64 run: the discriminator targets are built as float32, which makes BCEWithLogitsLoss compute "
             "in float32; build them in the default dtype (float64 here)")])
        exec(compile(gan_src, str(repo / "methods/adversarial.py"), "exec"), methods.adversarial.__dict__)
        methods.discriminatorLoss = methods.adversarial.discriminatorLoss
        with torch.no_grad():
            exec(compile(ast.Module(body=[n for n in body if not isinstance(n, ast.FunctionDef)], type_ignores=[]),
                         str(repo / rel), "exec"), ns)
        exec(compile(ast.Module(body=[n for n in body if isinstance(n, ast.FunctionDef)], type_ignores=[]),
                     str(repo / rel), "exec"), ns)
        log, ce_log = [], []
        optimizer = StepRecorder(ns["optimizer"], "network", ["loss_cls", "loss_div", "loss_fea", "loss_gan", "lam",
                                                              "lr"], log)
        gan = ns["criterion_gan"]
        rows = [("student.timm_model.", net.backbone, lambda k: k),
                ("aux.self_teacher.", net.final_aux_classifier, lambda k: k)]
        rows += [(f"aux.branches.{k}.body.", getattr(net.auxiliary_classifier, f"block_extractor{k + 1}"),
                  lambda key: key) for k in range(3)]
        rows += [(f"aux.branches.{k}.fc.", getattr(net.auxiliary_classifier, f"fc{k + 1}"), lambda key: key)
                 for k in range(3)]
        rows += [(f"aux.discriminators.{k}.", gan.classifier[k],
                  lambda key: key.replace("fc1.", "classifier.0.").replace("fc2.", "classifier.2."))
                 for k in range(len(gan.classifier))]
        mapping = Mapping(rows)
        mapping.load(init)
        criteria = [CallRecorder(ns["criterion_list"][0], ce_log), ns["criterion_list"][1], ns["criterion_list"][2]]
        epoch = spec["official_epoch"]
        with contextlib.redirect_stdout(io.StringIO()):
            ns["train"](epoch, criteria, optimizer)
        records = per_step(log, "network")
        if [r["lam"] for r in records] != [d["lam"] for d in draws]:
            raise SystemExit("the official loop did not use the fixture's mixup draws")
        heads = len(ns["dim_ins"])
        per = heads + 2 * (heads + 2)  # CE per head on the originals, then mixup CE (y_a, y_b) per head + 2 for Psi
        if len(ce_log) != per * len(records):
            raise SystemExit(f"{len(ce_log)} cross-entropy calls, expected {per} per step")
        terms = []
        for k, r in enumerate(records):
            calls, lam = ce_log[k * per:(k + 1) * per], r["lam"]
            cls = sum(calls[:heads])
            mixcls = sum(lam * a + (1 - lam) * b for a, b in zip(calls[heads::2], calls[heads + 1::2]))
            if abs(cls + mixcls - r["loss_cls"]) > 1e-12 * abs(r["loss_cls"]):
                raise SystemExit("the split of the official loss_cls into its CE and mixup-CE parts does not add up")
            terms.append({"cls": cls, "mixcls": mixcls, "kl": r["loss_div"], "fea": r["loss_fea"],
                          "gan": r["loss_gan"]})
        settings = {"command": " ".join(argv), "mixup_alpha": args.mixup_alpha, "kd_T": args.kd_T,
                    "warmup_epoch": args.warmup_epoch, "init_lr": args.init_lr, "lr_type": args.lr_type,
                    "epochs": args.epochs, "epoch": epoch, "lr_per_step": [r["lr"] for r in records],
                    "optimizer": _optimizer_settings(optimizer), "dim_ins": ns["dim_ins"],
                    "discriminators": "plain Python list in discriminatorLoss: never registered, never trained",
                    "terms_note": "the ImageNet loop folds the mixup CE terms into loss_cls; cls and mixcls are read "
                                  "from its criterion_cls calls (per head on the originals, then lam * CE(y_a) + "
                                  "(1 - lam) * CE(y_b) per mixup head and for both self-teacher outputs) and add up "
                                  "to loss_cls"}
        return mapping.read(init), terms, settings, patch.applied + [
            {"file": rel, "find": "main(): parser.parse_args(); DistributedDataParallel(net); data loaders",
             "replace": "the parser on the command line of scripts/main_mixskd_imagenet.sh; net unwrapped (one "
                        "process); the fixture's batches",
             "why": "harness: no distributed launch, no data files; the set-up lines and train() are unchanged"},
            {"file": "(all)", "find": ".cuda()", "replace": "no-op",
             "why": "CPU run (torch.Tensor.cuda and nn.Module.cuda return self)"}]


def run_ffsd(spec, init, steps, repo):
    """FFSD ``CIFARTrainer.Trainer``: built by its own ``__init__`` (networks, fusion module, decoders and their
    optimizers) from the options parser of ``options/options.py``, then ``lambda_warmup(epoch)`` and
    ``train_with_test(epoch)`` as ``train()`` calls them, on the 3 batches."""
    import torch

    for stub in ("dominate", "dominate.tags"):  # utils/html.py (HTML logs, unused here) imports dominate
        module = sys.modules.setdefault(stub, types.ModuleType(stub))
        module.__getattr__ = lambda name: None
    imagenet = spec.get("images") == "imagenet"
    with official_imports(repo) as (patch, tmp):
        import importlib

        from options.options import parser

        trainer_module = importlib.import_module("ImageNetTrainer" if imagenet else "CIFARTrainer")

        class Loader(list):  # train_with_test computes print_freq (and on ImageNet the lr) from the data set size
            dataset = range(1281167 if imagenet else 50000)  # ImageNet-1k / CIFAR-100 train

        trainer_module.create_dataLoader = lambda opt: SimpleNamespace(trainLoader=Loader(steps), testLoader=None)
        trainer_module.Visualizer = lambda opt: SimpleNamespace(reset=lambda: None)
        argv = ["--dataroot", "unused", "--dataset", "imagenet" if imagenet else "cifar100", "--model",
                spec["student"]["architecture"] if imagenet else "resnet20", "--train_batch_size",
                str(len(steps[0][1])), "--lambda_diversity", "1e-5", "--lambda_self_distillation", "1000",
                "--lambda_fusion", "10", "--checkpoints_dir", str(tmp)]
        opt = parser.parse_args(argv)
        t = trainer_module.Trainer(opt, logging.getLogger("ffsd"))
        leader_rows = [("student.timm_model.", t.leader_model, resnet_key),
                       ("aux.trans_fusion.", t.leader_model,
                        lambda k: "trans_fusion_module." + k.replace("conv2.", "conv1_1.").replace("bn2.", "bn1_1."))]
        rows = leader_rows + [(f"aux.students.{m}.timm_model.", t.models[m], resnet_key) for m in range(t.model_num)]
        rows += [("aux.fusion.", t.fusion_module, lambda k: k.replace("conv2.", "conv1_1.").replace("bn2.", "bn1_1.")
                  .replace("fc.", "fc2.")),
                 ("aux.leader_decoder.", t.sd_leader_model, _decoder_key)]
        rows += [(f"aux.decoders.{m - 1}.", t.sd_models[m - 1], _decoder_key) for m in range(1, t.model_num)]
        mapping = Mapping(rows)
        mapping.load(init)
        log = []
        student = ["loss_ce", "loss_dml", "loss_diversity", "loss_self_distllation"]
        t.optimizers = [StepRecorder(o, f"student{m}", student, log) for m, o in enumerate(t.optimizers)]
        t.fusion_optimizer = StepRecorder(t.fusion_optimizer, "fusion", ["loss_fusion_ce", "loss_fusion_ensemble"],
                                          log)
        t.leader_optimizer = StepRecorder(t.leader_optimizer, "leader", [
            "loss_leader_ce", "loss_leader_ensemble", "loss_leader_fusion", "loss_leader_trans_fusion",
            "loss_leader_self_distillation"], log)
        decoder = ["sd_feature_loss", "sd_attention_loss"]
        t.sd_optimizers = [StepRecorder(o, f"decoder{m + 1}", decoder, log) for m, o in enumerate(t.sd_optimizers)]
        t.sd_leader_optimizer = StepRecorder(t.sd_leader_optimizer, "leader_decoder", decoder, log)
        epoch = spec["official_epoch"]
        with contextlib.redirect_stdout(io.StringIO()):
            t.lambda_warmup(epoch)
            t.train_with_test(epoch)
        lam_div, lam_f, lam_sd = t.lambda_diversity, t.lambda_fusion, t.lambda_self_distillation
        terms = [{} for _ in steps]
        for m in range(t.model_num):
            for k, r in enumerate(per_step(log, f"student{m}")):
                terms[k][f"student{m}_ce"], terms[k][f"student{m}_dml"] = r["loss_ce"], r["loss_dml"]
                if m > 0:
                    terms[k][f"student{m}_diversity"] = r["loss_diversity"] / lam_div
                    terms[k][f"student{m}_sd"] = r["loss_self_distllation"] / lam_div
        for k, r in enumerate(per_step(log, "fusion")):
            terms[k].update(fusion_ce=r["loss_fusion_ce"], fusion_kd=r["loss_fusion_ensemble"])
        for k, r in enumerate(per_step(log, "leader")):
            terms[k].update(leader_ce=r["loss_leader_ce"], leader_kd=r["loss_leader_ensemble"],
                            leader_fusion=r["loss_leader_fusion"] / lam_f,
                            leader_trans_fusion=r["loss_leader_trans_fusion"] / lam_f,
                            leader_sd=r["loss_leader_self_distillation"] / lam_f)
        for name in [f"decoder{m}" for m in range(1, t.model_num)] + ["leader_decoder"]:
            for k, r in enumerate(per_step(log, name)):
                terms[k][f"{name}_feature"] = r["sd_feature_loss"] / lam_sd
                terms[k][f"{name}_attention"] = r["sd_attention_loss"] / lam_sd
        settings = {"command": " ".join(argv[:-2]), "epoch": epoch, "temperature": opt.temperature,
                    "model_num": t.model_num, "lambda_diversity": lam_div, "lambda_fusion": lam_f,
                    "lambda_self_distillation": lam_sd,
                    "optimizers": {"students": _optimizer_settings(t.optimizers[0]),
                                   "leader": _optimizer_settings(t.leader_optimizer),
                                   "fusion": _optimizer_settings(t.fusion_optimizer),
                                   "decoders": _optimizer_settings(t.sd_leader_optimizer)}}
        if imagenet:
            settings["lr_per_optimizer"] = [o.param_groups[0]["lr"] for o in t.optimizers + [t.leader_optimizer,
                                                                                             t.fusion_optimizer]]
        return mapping.read(init), terms, settings, patch.applied + [
            {"file": f"{trainer_module.__name__}.py", "find": "create_dataLoader(opt); Visualizer(opt)",
             "replace": "the fixture's 3 batches; a no-op visualizer",
             "why": "harness: no data files, no visdom; the code of Trainer is unchanged"}]


def _decoder_key(key: str) -> str:
    """hf_kd SelfDistillationDecoder blocks.l.{0,1} -> official SelfDistillationModel layer{l}.{convtranpose,norm}."""
    key = re.sub(r"^blocks\.(\d+)\.0\.", r"layer\1.convtranpose.", key)
    return re.sub(r"^blocks\.(\d+)\.1\.", r"layer\1.norm.", key)


def _optimizer_settings(opt) -> dict:
    opt = getattr(opt, "optimizer", opt)
    keep = ("lr", "momentum", "weight_decay", "nesterov", "betas", "eps", "dampening", "amsgrad")
    return {"class": type(opt).__name__,
            "groups": [{k: g[k] for k in keep if k in g} for g in opt.param_groups]}


# --- one fixture -----------------------------------------------------------------------------------------------------
def generate(name: str) -> dict:
    import torch

    import hf_kd  # noqa: F401  (imported before any official path goes on sys.path: LightSKD has a datasets.py)

    spec = SPECS[name]
    fixture = {
        "name": name,
        "method": spec["method"],
        "description": f"What the official code computes on this problem (float64, {spec.get('steps', STEPS)} "
                       "optimizer steps); see "
                       "tests/golden/README.md and tests/golden_parity.py for the format",
        "provenance": {**provenance(spec["repo"]), "generator": "tests/golden/generate_fixtures.py",
                       "generated": datetime.date.today().isoformat(), "torch": torch.__version__,
                       "sizes": spec["sizes"], **({"note": spec["note"]} if "note" in spec else {})},
        "data": data_section(spec),
        "hf_kd": {"trainer": spec["trainer"], "preset": spec["preset"], "student": spec["student"],
                  "teacher": spec.get("teacher"), "args": spec.get("args", {}),
                  "num_labels": spec.get("num_classes", NUM_CLASSES),
                  "trainer_seed": 42},
    }
    torch.set_num_threads(1)
    steps = gp.batches(fixture)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = gp.build_trainer(fixture, tmp)
        init = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        teacher_init = None
        if trainer.teacher is not None:
            teacher_init = {k.replace("timm_model.", "", 1): v.detach().clone()
                            for k, v in trainer.teacher.state_dict().items()}
        draws = []
        if hasattr(trainer, "next_mixup"):
            from hf_kd.losses.mixskd import draw_mixup

            for step in range(len(steps)):
                key = trainer.mixup_key(0)[0], step, 0  # (seed, step, micro-batch 0): what the trainer draws
                lam, perm = draw_mixup(*key, len(steps[0][1]), trainer.args.mixup_alpha)
                draws.append({"lam": lam, "perm": perm.tolist(), "key": list(key)})
    torch.set_default_dtype(torch.float64)
    repo = repo_path(spec["repo"])
    official_steps = [(x.clone(), y.clone()) for x, y in steps]
    if name in ("kd", "projector_kd") or spec["repo"] == "PEFD":
        final, terms, settings, patches = run_crd_family(spec, init, teacher_init, official_steps, repo,
                                                         "kd" if name == "kd" else "ours")
    elif name == "mixskd_imagenet_resnet50":
        final, terms, settings, patches = run_mixskd_imagenet(spec, init, official_steps, draws, repo)
    elif name == "self_kd":
        final, terms, settings, patches = run_lightskd(spec, init, official_steps, repo)
    elif name == "mixskd":
        final, terms, settings, patches = run_mixskd(spec, init, official_steps, draws, repo)
    else:
        final, terms, settings, patches = run_ffsd(spec, init, official_steps, repo)
    fixture["provenance"]["patches"] = patches
    fixture["official_settings"] = settings
    if draws:
        fixture["mixup"] = draws
    fixture["terms"] = terms
    fixture["init"] = gp.init_stats(init)
    if teacher_init is not None:
        fixture["teacher_init"] = gp.init_stats(teacher_init)
    fixture["delta"] = gp.delta_stats(init, final)
    return fixture


def check(name: str):
    import torch

    torch.set_num_threads(1)
    fixture = gp.load_fixture(name)
    with tempfile.TemporaryDirectory() as tmp:
        result = gp.run_hf_kd(fixture, tmp)
    problems, worst = gp.compare(fixture, result)
    print(f"{name}: largest relative difference hf_kd vs official: loss terms {worst['terms']:.2e}, tensor updates "
          f"{worst['delta']:.2e}, initial state {worst['init']:.2e}; {len(problems)} beyond tolerance")
    for p in problems[:20]:
        print("   ", p)
    return not problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(SPECS), help=f"fixtures (default: all of {list(SPECS)})")
    parser.add_argument("--check", action="store_true", help="also run the hf_kd side and print the differences")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: this process, one fixture
    a = parser.parse_args()
    unknown = set(a.names) - set(SPECS)
    if unknown:
        raise SystemExit(f"unknown fixtures {sorted(unknown)}; known: {list(SPECS)}")
    if a.one:
        for name in a.names:
            path = gp.save_fixture(name, generate(name))
            print(f"wrote {path.relative_to(gp.ROOT)} ({path.stat().st_size / 1024:.0f} KiB)")
        return
    ok = True
    for name in a.names:  # one process per fixture: the official repositories share module names
        subprocess.run([sys.executable, __file__, "--one", name], check=True)
        if a.check:
            ok &= check(name)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
