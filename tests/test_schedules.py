"""Whole schedules: every preset's learning rates and scheduled loss weights, at every optimizer step of the full run,
against what the OFFICIAL code of its method gives (``tests/golden/schedules/<preset>.json``).

The 3-step golden fixtures (``test_golden.py``) pin what a step computes; a milestone, a warm-up or FFSD's lambda ramp
off by one epoch (or one step) at epoch 150 would pass them. Here each preset is parsed as its recipe parses it, its
trainer is built through the real class (the preset's student, and its teacher architecture where the method needs
one; a data set of CIFAR-100's 50,000 training examples that is never read), and its optimizer and scheduler are
created as ``Trainer.train`` creates them (``set_initial_training_values`` on the real training dataloader, then
``create_optimizer_and_scheduler(max_steps)``). The loop then does, per optimizer step, what ``Trainer._run_epoch``
does around a step, without training: the method's per-step inputs (``step_inputs``: FFSD's warmed-up lambdas, read
from ``state.epoch``), the learning rate of each param group as ``optimizer.step()`` would use it,
``lr_scheduler.step()``, ``global_step += 1`` and ``state.epoch = epoch + (step + 1) / steps_in_epoch``.

Every hf_kd param group is compared with the official param group(s) holding the same parameters (the fixture maps
official groups to hf_kd parameter-name prefixes), step by step. Tolerance ``RTOL`` (1e-12 relative): the official
code reaches the same numbers in another floating-point order (FFSD's decoders: ``MultiStepLR`` multiplies the current
lr by 0.1 at each milestone, hf_kd scales the initial lr by 0.1**k; MixSKD's warm-up computes (0.1 * k) / N, hf_kd
0.1 * (k / N)), which moves them by 1-2 ulp (measured 1.7e-16 and 2.7e-16 relative; the other presets agree
exactly); a schedule off by one step moves a value by >= 2.6e-4 (the last warm-up step, 1/3910) and one off by one
epoch at a milestone by a factor of 10.
"""

from __future__ import annotations

import json
import re
import runpy

import numpy as np
import pytest
import torch

import golden_parity as gp

SCHEDULES = gp.FIXTURE_DIR / "schedules"
PRESETS = sorted(p.stem for p in SCHEDULES.glob("*.json"))
RTOL = 1e-12
CIFAR100_TRAIN, CIFAR100_TEST = 50000, 10000
IMAGENET_TRAIN, IMAGENET_VAL = 1281167, 50000
SAMPLED_RANDOM_STEPS = 20000  # ImageNet presets: besides every warm-up step and every epoch's first and last step

# no optimizer steps here (nothing trains): torch's reminder to step the optimizer first does not apply
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before"),
              # the ImageNet presets' loader workers: never started here (no batch is drawn)
              pytest.mark.filterwarnings("ignore:This DataLoader will create")]


def load(name: str) -> dict:
    with open(SCHEDULES / f"{name}.json") as f:
        return json.load(f)


def expand(runs: list) -> np.ndarray:
    """Per-step values from the fixture's runs ([value, count], or a bare value for a run of one)."""
    values, counts = zip(*[(r, 1) if isinstance(r, (int, float)) else r for r in runs])
    return np.repeat(np.asarray(values, dtype=np.float64), counts)


def group_lr(fixture: dict, i: int) -> np.ndarray:
    """Per-step lr of official group ``i`` (a group equal to an earlier one at every step names it: ``lr_same_as``)."""
    group = fixture["groups"][i]
    if "lr_same_as" in group:
        (group,) = [g for g in fixture["groups"] if g["name"] == group["lr_same_as"]]
    return expand(group["lr"])


def is_imagenet(fixture: dict) -> bool:
    return fixture["data"]["train_examples"] == IMAGENET_TRAIN


def sample_steps(steps: int, steps_per_epoch: int, warmup_epochs: int, seed: int = 0) -> np.ndarray:
    """The optimizer steps compared on an ImageNet schedule (up to 3 million steps; stepping the scheduler through
    all of them would take minutes): every step of the first ``warmup_epochs`` epochs, the first and last step of
    every epoch (where milestones, per-epoch values and lambda ramps change) and ``SAMPLED_RANDOM_STEPS`` seeded
    random steps."""
    starts = np.arange(0, steps, steps_per_epoch)
    picked = [np.arange(min(steps, warmup_epochs * steps_per_epoch)), starts, starts + steps_per_epoch - 1,
              np.random.default_rng(seed).integers(0, steps, SAMPLED_RANDOM_STEPS)]
    return np.unique(np.concatenate(picked))


class Examples(torch.utils.data.Dataset):
    """A data set of ``n`` examples that is never read: the schedule depends only on how many batches it gives."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        raise AssertionError("the schedule test reads no data")


def recipe_arguments(preset: str, output_dir: str):
    """(method class, (model, data, training) arguments) of ``preset`` exactly as its recipe script parses it (the
    recipe's own defaults under the YAML), by running the recipe with ``hf_kd.recipes.run`` intercepted."""
    import hf_kd.recipes
    from hf_kd.methods import methods

    owners = [cls for cls in methods().values() if preset.startswith(cls.preset_prefix)]
    assert len(owners) == 1, f"{preset}: claimed by {owners}"
    parsed = {}

    def intercept(cls, defaults=None, argv=None, quick=None):
        parsed["cls"] = cls
        parsed["args"] = hf_kd.recipes.parse_args(
            cls.args_class, defaults, ["--config", str(gp.ROOT / "recipes" / "configs" / f"{preset}.yaml"),
                                       "--output_dir", output_dir, "--report_to", "none"], quick=quick)

    real_run = hf_kd.recipes.run
    hf_kd.recipes.run = intercept
    try:
        runpy.run_path(str(gp.ROOT / "recipes" / f"{owners[0].recipe}.py"), run_name="__main__")
    finally:
        hf_kd.recipes.run = real_run
    assert parsed["cls"] is owners[0]
    return parsed["cls"], parsed["args"]


def build_trainer(preset: str, output_dir: str, imagenet: bool = False):
    """The preset's trainer, built through its real class: the preset's student (its model_args), its teacher
    architecture where the method needs a teacher, CIFAR-100's split sizes (ImageNet-1k's with ``imagenet``)."""
    from hf_kd.models import create_student

    cls, (model_args, _, args) = recipe_arguments(preset, output_dir)
    torch.manual_seed(0)
    extra = json.loads(model_args.model_args) if model_args.model_args else {}
    classes, train, test = (1000, IMAGENET_TRAIN, IMAGENET_VAL) if imagenet else (100, CIFAR100_TRAIN, CIFAR100_TEST)
    student = create_student(model_args.student, classes, model_args=extra)
    teacher = create_student(model_args.teacher_architecture, classes) if cls.uses_teacher == "required" else None
    return cls(model=student, teacher=teacher, args=args, train_dataset=Examples(train), eval_dataset=Examples(test))


def scheduled_weights(trainer, names):
    """A function giving the scheduled loss weights ``names`` that the trainer's next training step would use (its
    ``step_inputs``, as ``compute_loss`` calls them with the batch size and device), or None when there are none."""
    if not names:
        return None
    batch, device, step_inputs = trainer.args.per_device_train_batch_size, trainer.args.device, trainer.step_inputs

    def read() -> list[float]:
        lambdas = step_inputs(batch, device)["lambdas"]
        return [float(lambdas[n]) for n in names]

    return read


def run_schedule(trainer, weight_names=(), sample_warmup_epochs=None) -> dict:
    """Per optimizer step of the whole run: each param group's lr and the scheduled weights, with the scheduler and
    ``state`` advanced as ``Trainer._run_epoch`` advances them (no forward, backward or update).

    With ``sample_warmup_epochs`` (ImageNet), only the steps of ``sample_steps`` are computed: for step k the
    scheduler is put where k steps leave it (``last_epoch = k - 1``, then its own ``step()``: hf_kd's schedules are
    ``LambdaLR``s, whose lr depends on the step count only) and ``state`` where the loop leaves it before step k."""
    from transformers.trainer_callback import TrainerState

    args = trainer.args
    assert args.gradient_accumulation_steps == 1 and args.world_size == 1
    loader = trainer.get_train_dataloader()
    epochs, updates_per_epoch, _, _, _, steps_in_epoch, max_steps = trainer.set_initial_training_values(args, loader)
    trainer.create_optimizer_and_scheduler(num_training_steps=max_steps)
    groups, scheduler = trainer.optimizer.param_groups, trainer.lr_scheduler  # the group dicts the scheduler sets
    trainer.state = TrainerState()  # epoch 0, global step 0: what train() starts from
    state = trainer.state
    lrs, weights, read_weights = [], [], scheduled_weights(trainer, weight_names)
    if sample_warmup_epochs is not None:
        assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
        assert epochs * steps_in_epoch == max_steps
        steps = sample_steps(max_steps, steps_in_epoch, sample_warmup_epochs)
        for k in steps.tolist():
            epoch, step = divmod(k, steps_in_epoch)
            scheduler.last_epoch = k - 1
            scheduler.step()
            state.global_step = k
            state.epoch = float(epoch) if step == 0 else epoch + step / steps_in_epoch
            if read_weights is not None:
                weights.append(read_weights())
            lrs.append([group["lr"] for group in groups])
    else:
        steps = None
        for epoch in range(epochs):
            for step in range(steps_in_epoch):
                if state.global_step >= max_steps:
                    break
                if read_weights is not None:
                    weights.append(read_weights())
                lrs.append([group["lr"] for group in groups])
                scheduler.step()
                state.global_step += 1
                state.epoch = epoch + (step + 1) / steps_in_epoch
    return {"lrs": np.asarray(lrs, dtype=np.float64),
            "weights": np.asarray(weights, dtype=np.float64).reshape(len(lrs), len(weight_names)),
            "steps_per_epoch": updates_per_epoch, "epochs": epochs, "steps": max_steps, "at": steps}


def official_groups_of(trainer, fixture) -> list[list[int]]:
    """For each hf_kd param group, the indices of the official groups holding its parameters (by the longest of the
    fixture's hf_kd name prefixes that matches each parameter's name)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    names = {id(p): n for n, p in model.named_parameters()}
    prefixes = [(prefix, i) for i, g in enumerate(fixture["groups"]) for prefix in g["hf_kd_prefixes"]]
    out, covered = [], set()
    for group in trainer.optimizer.param_groups:
        owners = set()
        for p in group["params"]:
            matches = sorted((len(prefix), i) for prefix, i in prefixes if names[id(p)].startswith(prefix))
            assert matches, f"hf_kd parameter {names[id(p)]} is in no official group of the fixture"
            owners.add(matches[-1][1])
        out.append(sorted(owners))
        covered |= owners
    missing = [g["name"] for i, g in enumerate(fixture["groups"]) if i not in covered]
    assert not missing, f"official groups {missing} hold no parameter of hf_kd's optimizer"
    return out


def differences(name: str, got: np.ndarray, want: np.ndarray, steps_per_epoch: int, rtol: float = RTOL,
                at=None) -> list:
    """Where ``got`` (hf_kd, per step) differs from ``want`` (official) beyond ``rtol`` relative: a message with the
    first differing step, its 0-based epoch and both values, and how many steps differ. ``at``: the steps ``got``
    holds (a sample), else every step."""
    if at is not None:
        want = want[at] if want.shape[0] > int(at[-1]) else want[:0]
    if got.shape != want.shape:
        return [f"{name}: {got.shape[0]} steps, the official run has {want.shape[0]}"]
    bad = np.flatnonzero((got != want) & ~(np.abs(got - want) <= rtol * np.abs(want)))
    if not bad.size:
        return []
    s = int(bad[0]) if at is None else int(at[bad[0]])
    got, want = (got, want) if at is None else (dict(zip(at.tolist(), got)), dict(zip(at.tolist(), want)))
    return [f"{name}: {bad.size} steps differ beyond {rtol:g}; first at step {s} (epoch {s // steps_per_epoch}, "
            f"step {s % steps_per_epoch} of it): hf_kd {float(got[s])!r}, official {float(want[s])!r}"]


def largest_relative_difference(got: np.ndarray, want: np.ndarray, at=None) -> float:
    if at is not None:
        want = want[at] if want.shape[0] > int(at[-1]) else want[:0]
    if got.shape != want.shape:
        return float("inf")
    differ = got != want
    return float(np.max(np.abs(got - want)[differ] / np.abs(want)[differ], initial=0.0))


def compare(trainer, fixture: dict, result: dict) -> tuple[list[str], float]:
    """Every disagreement of ``result`` (hf_kd) with the official schedule, and the largest relative difference."""
    problems, worst = [], 0.0
    for key in ("steps_per_epoch", "epochs", "steps"):
        if result[key] != fixture[key]:
            problems.append(f"{key}: hf_kd {result[key]}, official {fixture[key]}")
    spe, at = fixture["steps_per_epoch"], result["at"]
    for k, owners in enumerate(official_groups_of(trainer, fixture)):
        for i in owners:
            want, got = group_lr(fixture, i), result["lrs"][:, k]
            name = f"lr of hf_kd param group {k} vs official group {fixture['groups'][i]['name']}"
            problems += differences(name, got, want, spe, at=at)
            worst = max(worst, largest_relative_difference(got, want, at))
    for j, (weight, runs) in enumerate(fixture["weights"].items()):
        want, got = expand(runs), result["weights"][:, j]
        problems += differences(weight, got, want, spe, at=at)
        worst = max(worst, largest_relative_difference(got, want, at))
    return problems, worst


@pytest.mark.parametrize("preset", PRESETS)
def test_schedule_matches_official_code(preset, tmp_path):
    fixture = load(preset)
    imagenet = is_imagenet(fixture)
    trainer = build_trainer(preset, str(tmp_path), imagenet=imagenet)
    # ImageNet: every step of the first 5 epochs (each preset's lr warm-up and FFSD's lambda ramp), every epoch's first
    # and last step, and a seeded random sample
    result = run_schedule(trainer, list(fixture["weights"]), sample_warmup_epochs=5 if imagenet else None)
    problems, worst = compare(trainer, fixture, result)
    prov = fixture["provenance"]
    assert not problems, (
        f"{preset}: hf_kd's schedule differs from the official one ({prov['repository']} @ {prov['commit'][:12]}, "
        f"{prov['command']}; largest relative difference {worst:.3g}):\n  " + "\n  ".join(problems))


def test_every_preset_has_a_schedule_fixture():
    """A new preset needs its official schedule (tests/golden/generate_schedules.py), or it is pinned by nothing."""
    presets = {p.stem for p in (gp.ROOT / "recipes" / "configs").glob("*.yaml")}
    assert presets == set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_schedule_fixture_provenance(preset):
    """Each fixture says where it comes from and is whole: every step of every epoch, for every group and weight."""
    fixture = load(preset)
    prov = fixture["provenance"]
    assert prov["repository"].startswith("https://github.com/") and re.fullmatch(r"[0-9a-f]{40}", prov["commit"])
    assert prov["generator"] == "tests/golden/generate_schedules.py" and prov["command"].startswith("python ")
    assert all(p["why"] for p in prov["patches"])
    assert fixture["preset"] == f"recipes/configs/{preset}.yaml"
    assert fixture["steps"] == fixture["epochs"] * fixture["steps_per_epoch"] > 0
    assert fixture["data"]["train_examples"] == (IMAGENET_TRAIN if "_imagenet1k_" in preset else CIFAR100_TRAIN)
    assert fixture["groups"] and all(g["hf_kd_prefixes"] for g in fixture["groups"])
    for i in range(len(fixture["groups"])):
        assert group_lr(fixture, i).shape == (fixture["steps"],)
    for series in fixture["weights"].values():
        assert expand(series).shape == (fixture["steps"],)
    if preset.startswith("ffsd_"):
        assert set(fixture["weights"]) == {"lambda_diversity", "lambda_fusion", "lambda_self_distillation"}


def test_schedule_comparison_catches_one_step_and_one_epoch():
    """The comparison itself: the official values pass; a warm-up one step late, a milestone one epoch late and a
    lambda ramp one epoch early do not."""
    mix = load("mixskd_cifar100_resnet18")
    spe = mix["steps_per_epoch"]
    lr = expand(mix["groups"][0]["lr"])
    assert differences("lr", lr.copy(), lr, spe) == []
    late = np.concatenate([[lr[0]], lr[:-1]])  # every value one step later
    assert "first at step 1 (epoch 0" in differences("lr", late, lr, spe)[0]
    milestone = 105 * spe  # the first decay (absolute epoch 105)
    shifted = lr.copy()
    shifted[milestone:milestone + spe] = lr[milestone - 1]
    assert f"first at step {milestone} (epoch 105, step 0" in differences("lr", shifted, lr, spe)[0]

    ffsd = load("ffsd_cifar100_resnet20")
    spe = ffsd["steps_per_epoch"]
    lam = expand(ffsd["weights"]["lambda_fusion"])
    early = np.concatenate([lam[spe:], np.repeat(lam[-1], spe)])  # each epoch's lambda one epoch early
    assert "first at step 0 (epoch 0" in differences("lambda_fusion", early, lam, spe)[0]
    one_ulp = np.nextafter(lam, np.inf)  # the floating-point order differences the tolerance is for
    assert differences("lambda_fusion", one_ulp, lam, spe) == []
