"""Golden parity fixtures: what the official code of each method computes, and the hf_kd side of the comparison.

A fixture (``tests/golden/<name>.json``, written by ``tests/golden/generate_fixtures.py`` from checkouts of the
official repositories) holds a small problem and what the official training loop computes on it in float64:

- ``data``: 16 real CIFAR-100 images (uint8, base64), their labels, and per step the augmentation parameters (crop
  offsets into the padded image, horizontal flips) and the normalisation, so both sides see the same float64 batch;
- ``hf_kd``: how to rebuild the hf_kd trainer: trainer class, preset (``recipes/configs/*.yaml``: optimizer and method
  settings), argument overrides, student/teacher architecture and the seed of hf_kd's own initialisation. The
  generator builds exactly this trainer, copies its initial weights into the official modules and runs the official
  loop, so both sides start from the same tensors;
- ``terms``: every loss term per step, in hf_kd's names and convention (unweighted, as ``log_terms`` logs them);
- ``init``: per tensor sum and sum of squares of the initial state (checks the rebuild);
- ``delta``: per tensor (final - initial) after the steps: sum, sum of |.|, sum of squares and a few sampled
  entries. Comparing the update rather than the weights keeps the check sensitive: a step moves weights by ~1e-3 of
  their size;
- ``provenance``: official repository, commit, the exact minimal patches applied to it and why.

``run_hf_kd`` rebuilds the trainer, runs the same steps with ``Trainer.train`` and returns the same statistics;
``compare`` lists every disagreement beyond the tolerance (``RTOL``, 1e-8 relative).
"""

from __future__ import annotations

import base64
import importlib
import json
import math
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
FIXTURE_DIR = TESTS / "golden"
# The issue asked for 1e-6; 1e-8 is stricter on purpose: hf_kd and the official code agree to <= 5e-11 here, while a
# float32 detour inside a float64 run (e.g. PEFD's cosine loss cast to float32) moves the updates by only ~5e-7.
RTOL = 1e-8
TERM_ATOL = 1e-14  # a loss term near 0 (a CE of 1e-7) carries the absolute rounding of its O(10) logits

# preset keys that describe the data path, evaluation or bookkeeping, not the optimisation being compared
_NOT_COMPARED = {"output_dir", "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "eval_strategy", "save_strategy", "save_total_limit", "logging_steps", "dataloader_drop_last",
                 "augmentation", "pad_mode", "random_resized_crop", "norm_mean", "norm_std"}


# --- fixture files ---------------------------------------------------------------------------------------------------
def fixture_path(name: str) -> Path:
    return FIXTURE_DIR / f"{name}.json"


def load_fixture(name: str) -> dict:
    with open(fixture_path(name)) as f:
        return json.load(f)


def save_fixture(name: str, fixture: dict) -> Path:
    path = fixture_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(fixture, f, indent=1, sort_keys=False)
        f.write("\n")
    return path


def encode_images(images: np.ndarray) -> str:
    """uint8 (N, 3, H, W) -> base64 of the raw bytes (shape stored beside it)."""
    return base64.b64encode(np.ascontiguousarray(images, dtype=np.uint8).tobytes()).decode("ascii")


def decode_images(data: dict) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(data["images"]), dtype=np.uint8)
    return raw.reshape(data["images_shape"]).copy()


# --- the batches both sides train on ---------------------------------------------------------------------------------
def augment(images: np.ndarray, crops: np.ndarray, flips: np.ndarray, padding: int, pad_mode: str) -> np.ndarray:
    """Pad by ``padding`` (``constant`` zeros or ``reflect``), crop H x W at ``crops[n] = (top, left)`` of the padded
    image, flip horizontally where ``flips[n]``: the CIFAR augmentation with its random draws given."""
    n, _, h, w = images.shape
    p = padding
    padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect" if pad_mode == "reflect" else "constant")
    out = np.stack([padded[i, :, t:t + h, l:l + w] for i, (t, l) in enumerate(crops)])
    out[flips] = out[flips][..., ::-1]
    return out


def batches(fixture: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per step the normalised float64 batch (B, 3, H, W) and its labels, from the fixture's images and draws."""
    data = fixture["data"]
    images = decode_images(data)
    labels = torch.tensor(data["labels"], dtype=torch.long)
    mean = np.asarray(data["mean"], dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(data["std"], dtype=np.float64).reshape(1, -1, 1, 1)
    out = []
    for step in data["augmentation"]:
        u8 = augment(images, np.asarray(step["crops"]), np.asarray(step["flips"], dtype=bool), data["padding"],
                     data["pad_mode"])
        x = (u8.astype(np.float64) / 255.0 - mean) / std
        out.append((torch.from_numpy(np.ascontiguousarray(x)), labels.clone()))
    return out


# --- the hf_kd trainer of a fixture ----------------------------------------------------------------------------------
def _import(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _student(spec: dict, num_labels: int):
    from hf_kd.models import create_student

    torch.manual_seed(spec["seed"])
    return create_student(spec["architecture"], num_labels, model_args=spec.get("model_args") or {})


def _preset(spec: dict) -> dict:
    """The fixture's preset, or {} where the fixture names every setting in its ``args`` (``preset`` null)."""
    if not spec.get("preset"):
        return {}
    with open(ROOT / spec["preset"]) as f:
        return yaml.safe_load(f)


def trainer_args(fixture: dict, output_dir: str):
    """The trainer's arguments: the preset's optimizer and method settings, the fixture's overrides, and the run
    plumbing (batch, the fixture's steps in one epoch, the batches in order, no evaluation or checkpoints, CPU)."""
    spec = fixture["hf_kd"]
    args_class = _import(spec["trainer"]).args_class
    preset = _preset(spec)
    fields = set(args_class.__dataclass_fields__)
    kwargs = {k: v for k, v in preset.items() if k in fields and k not in _NOT_COMPARED}
    kwargs.update(spec.get("args") or {})
    steps = len(fixture["data"]["augmentation"])
    kwargs.update(output_dir=output_dir, per_device_train_batch_size=len(fixture["data"]["labels"]), max_steps=steps,
                  num_train_epochs=1, train_sampling_strategy="sequential", dataloader_drop_last=True,
                  report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no", logging_steps=1,
                  disable_tqdm=True, seed=spec.get("trainer_seed", 42))
    return args_class(**kwargs)


def preset_model_args(fixture: dict) -> dict:
    spec = fixture["hf_kd"]
    return {**(_preset(spec).get("model_args") or {}), **(spec["student"].get("model_args") or {})}


def build_trainer(fixture: dict, output_dir: str):
    """The hf_kd trainer of ``fixture`` in float64, with its initial weights from hf_kd's own initialisation at the
    fixture's seed (student, then the trainer's auxiliary modules, all drawn from torch's global RNG in that order)."""
    spec = fixture["hf_kd"]
    num_labels = spec["num_labels"]
    teacher = None
    if spec.get("teacher"):
        teacher = _student(spec["teacher"], num_labels).double()
    student = _student({**spec["student"], "model_args": preset_model_args(fixture)}, num_labels)
    steps = batches(fixture)
    dataset = [{"pixel_values": x[i], "labels": int(y[i])} for x, y in steps for i in range(len(y))]
    trainer = _import(spec["trainer"])(model=student, teacher=teacher, args=trainer_args(fixture, output_dir),
                                       train_dataset=dataset)
    trainer.model.double()
    return trainer


def run_hf_kd(fixture: dict, output_dir: str) -> dict:
    """Rebuild the fixture's trainer, train the fixture's steps, and return what the fixture holds for the official
    side: ``terms`` (per step), ``init`` and ``delta`` statistics, and MixSKD's mixup draws."""
    trainer = build_trainer(fixture, output_dir)
    init = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    terms, draws = [], []
    log_terms = trainer.log_terms

    def record_terms(values):
        if trainer.model.training:
            terms.append({k: float(v.detach()) for k, v in values.items()})
        return log_terms(values)

    trainer.log_terms = record_terms
    if hasattr(trainer, "next_mixup"):
        next_mixup = trainer.next_mixup

        def record_mixup(*a, **kw):
            lam, perm = next_mixup(*a, **kw)
            draws.append({"lam": lam, "perm": perm.tolist()})
            return lam, perm

        trainer.next_mixup = record_mixup
    teacher = None
    if trainer.teacher is not None:
        teacher = init_stats({k.replace("timm_model.", "", 1): v for k, v in trainer.teacher.state_dict().items()})
    trainer.train()
    final = trainer.model.state_dict()
    return {"terms": terms, "mixup": draws, "init": init_stats(init), "teacher_init": teacher,
            "delta": delta_stats(init, final, fixture.get("delta"))}


# --- statistics ------------------------------------------------------------------------------------------------------
def sample_indices(key: str, numel: int, k: int = 4) -> list[int]:
    """k fixed flat indices of a tensor, a function of its name (so both sides sample the same entries)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return sorted(int(i) for i in rng.choice(numel, size=min(k, numel), replace=False))


def init_stats(state: dict) -> dict:
    out = {}
    for key, t in state.items():
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.double()
            out[key] = {"shape": list(t.shape), "sum": float(t.sum()), "sumsq": float((t * t).sum())}
        else:
            out[key] = {"shape": list(t.shape), "value": t.flatten().tolist()}
    return out


def delta_stats(init: dict, final: dict, like: Optional[dict] = None) -> dict:
    """Per tensor statistics of final - init (floating tensors) or the final values (integer buffers)."""
    out = {}
    for key, t0 in init.items():
        t1 = final[key].detach().cpu()
        if not t1.is_floating_point():
            out[key] = {"value": t1.flatten().tolist()}
            continue
        d = (t1.double() - t0.detach().cpu().double()).flatten()
        idx = like[key]["idx"] if like and key in like else sample_indices(key, d.numel())
        out[key] = {"sum": float(d.sum()), "abs_sum": float(d.abs().sum()), "sumsq": float((d * d).sum()),
                    "idx": idx, "val": [float(d[i]) for i in idx]}
    return out


# --- comparison ------------------------------------------------------------------------------------------------------
def _rel(a: float, b: float, scale: float) -> float:
    err = abs(a - b)
    return 0.0 if err == 0 else (err / scale if scale > 0 else math.inf)


def compare(fixture: dict, result: dict, rtol: float = RTOL) -> tuple[list[str], dict]:
    """Every disagreement between the fixture (official) and ``result`` (hf_kd) beyond ``rtol``, and the largest
    relative error per category.

    Relative errors: a loss term to |official| (+ TERM_ATOL / rtol); a tensor update's sum to its sum of |.|, its
    sum of squares and sum of |.| to themselves, a sampled entry to max(|entry|, rms of the update). Initial states
    must agree to 1e-12 (the same code builds them; a difference means hf_kd's initialisation changed and the fixture
    is stale)."""
    problems, worst = [], {"terms": 0.0, "delta": 0.0, "init": 0.0}

    def check(category, what, rel, tol):
        worst[category] = max(worst[category], rel)
        if rel > tol:
            problems.append(f"{what}: relative error {rel:.3g} > {tol:g}")

    for part in ("init", "teacher_init"):
        ref_init, got_init = fixture.get(part) or {}, result.get(part) or {}
        if set(ref_init) != set(got_init):
            only_fixture, only_hf_kd = sorted(set(ref_init) - set(got_init)), sorted(set(got_init) - set(ref_init))
            problems.append(f"{part}: state keys differ: only in the fixture {only_fixture[:8]}, only in hf_kd "
                            f"{only_hf_kd[:8]}")
        for key in sorted(set(ref_init) & set(got_init)):
            r, g = ref_init[key], got_init[key]
            if r["shape"] != g["shape"]:
                problems.append(f"{part} {key}: shape {g['shape']} != fixture {r['shape']}")
            elif "value" in r:
                if r["value"] != g["value"]:
                    problems.append(f"{part} {key}: {g['value']} != fixture {r['value']}")
            else:
                numel = math.prod(r["shape"])
                check("init", f"{part} {key} sum", _rel(g["sum"], r["sum"], (numel * r["sumsq"]) ** 0.5), 1e-12)
                check("init", f"{part} {key} sum of squares", _rel(g["sumsq"], r["sumsq"], r["sumsq"]), 1e-12)
    if problems:
        problems.insert(0, "the rebuilt initial state differs from the fixture's: hf_kd's initialisation (or the "
                           "module structure) changed since the fixture was generated; regenerate it with "
                           "tests/golden/generate_fixtures.py (see tests/golden/README.md)")
        return problems, worst

    ref_terms, got_terms = fixture["terms"], result["terms"]
    if len(ref_terms) != len(got_terms):
        problems.append(f"{len(got_terms)} training steps logged terms, the fixture has {len(ref_terms)}")
    for step, (r, g) in enumerate(zip(ref_terms, got_terms)):
        if not r:
            problems.append(f"step {step}: the fixture holds no loss terms (an incomplete fixture)")
        if set(r) != set(g):
            problems.append(f"step {step}: terms {sorted(g)} != fixture {sorted(r)}")
        for name in sorted(set(r) & set(g)):
            check("terms", f"step {step} term {name} ({g[name]!r} vs official {r[name]!r})",
                  _rel(g[name], r[name], abs(r[name]) + TERM_ATOL / rtol), rtol)

    if fixture.get("mixup"):
        if len(result["mixup"]) != len(fixture["mixup"]):
            problems.append(f"{len(result['mixup'])} mixup draws recorded, the fixture has {len(fixture['mixup'])}")
        for step, (r, g) in enumerate(zip(fixture["mixup"], result["mixup"])):
            if r["perm"] != g["perm"] or abs(r["lam"] - g["lam"]) > 1e-15:
                problems.append(f"step {step}: mixup draw (lam {g['lam']}, perm {g['perm']}) != fixture "
                                f"({r['lam']}, {r['perm']})")

    if set(fixture["delta"]) != set(fixture["init"]):  # every trained tensor's update, or the fixture is incomplete
        problems.append(f"the fixture's updates cover {len(fixture['delta'])} tensors, its initial state "
                        f"{len(fixture['init'])}: {sorted(set(fixture['init']) ^ set(fixture['delta']))[:8]}")
    for key in sorted(set(result["delta"]) - set(fixture["delta"])):
        problems.append(f"{key}: updated by hf_kd, absent from the fixture")
    for key, r in fixture["delta"].items():
        g = result["delta"].get(key)
        if g is None:
            problems.append(f"{key}: missing in hf_kd's state")
            continue
        if "value" in r:
            if r["value"] != g["value"]:
                problems.append(f"{key}: {g['value']} != official {r['value']}")
            continue
        numel = math.prod(fixture["init"][key]["shape"]) or 1
        rms = (r["sumsq"] / numel) ** 0.5
        check("delta", f"{key} update sum", _rel(g["sum"], r["sum"], r["abs_sum"]), rtol)
        check("delta", f"{key} update sum|.|", _rel(g["abs_sum"], r["abs_sum"], r["abs_sum"]), rtol)
        check("delta", f"{key} update sum of squares", _rel(g["sumsq"], r["sumsq"], r["sumsq"]), rtol)
        if not len(r["idx"]) == len(r["val"]) == len(g["val"]):
            problems.append(f"{key}: {len(g['val'])} sampled entries, the fixture has {len(r['val'])}")
        for i, rv, gv in zip(r["idx"], r["val"], g["val"]):
            check("delta", f"{key} update [{i}] ({gv!r} vs official {rv!r})", _rel(gv, rv, max(abs(rv), rms)), rtol)
    return problems, worst
