"""Accuracy matrix: every method against the plain cross-entropy baseline of the same student, over seeds.

Each (method, seed) is one run of the method's own recipe (``recipes/<recipe>.py --config <run>/config.yaml``) in
its own folder under ``--out``. All runs share one student, data subset, schedule and augmentation; each method adds
only its own hyperparameters, read unchanged from its paper preset (``recipes/configs/*.yaml``: temperatures, loss
weights, projectors, mixup alpha, ...). The baseline (``ce``) is the same student, schedule and augmentation with
plain cross-entropy. KD and PEFD share one teacher, trained once (seed 0) before them and reported in the table.

Resumable: a finished run (``result.json`` in its folder, or its record in ``results.json`` when the folder is gone,
as in a results folder copied without ``runs/``) is skipped; an interrupted one continues from its last checkpoint
(``save_strategy=epoch``). So a long matrix can be spread over several sittings, even on different machines: a later
sitting must use the first one's data, student, teacher and schedule (it stops, naming what differs, otherwise), may
add methods and seeds, and is recorded beside the earlier ones (its command, hardware and methods) in
``settings.json``. ``--rerun METHOD`` discards that method's finished runs of the given seeds and trains them again.
Writes
``results.json`` (settings, every run's evaluations and loss terms, the summary), ``results.md`` (the table) and
``accuracy.png`` (bars with error bars; mean eval curves).

Reproducing a cell: a run's ``config.yaml`` (in ``results.json``, ``runs[i].config``) with the same number of torch
threads (``runs[i].threads``: each run gets ``OMP_NUM_THREADS=--threads``) reproduces its numbers bit for bit on the
same machine and software, also when other work shares the cores or the run was resumed from an epoch checkpoint.
Another thread count changes the order of float reductions on the CPU, so the trajectory, and the final accuracy by
about the seed-to-seed spread: re-run with ``OMP_NUM_THREADS`` set to the recorded count. The evaluation schedule is
part of the setting too (each evaluation draws one number from torch's global RNG for its DataLoader, which shifts
the later augmentation draws).

    python benchmarks/accuracy.py --dataset <CIFAR-100 folder> \\
        --dataset_title "CIFAR-100 (60k pool, stratified 50k/10k re-split)" --max_train_samples 5000 \\
        --epochs 10 --seeds 0 1 2 --jobs 2 --out benchmarks/results/cifar100-cpu
    python benchmarks/accuracy.py --out benchmarks/results/cifar100-cpu --summarize   # table/plot from what exists

Headline: the top-1 after the last epoch (mean ± sample std over seeds). The best evaluation is reported beside it
and labelled as such. The gain over the baseline comes with a 95 % Welch t-interval on the difference of means.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent



def _from_registry():
    """Rows from the method registry (``hf_kd.methods``): the baseline ``ce`` (the supervised trainer) first, then
    every method with a ``reference_preset``: row -> (recipe script, trainer class name, the paper preset giving the
    method's own hyperparameters); labels from ``short_name``; the methods that need a teacher."""
    from hf_kd.methods import methods

    registry = methods()
    rows = {"ce": (registry["supervised"].recipe, registry["supervised"].__name__, None)}
    labels = {"ce": registry["supervised"].short_name, "teacher": "teacher"}
    for name, cls in registry.items():
        if cls.reference_preset:
            rows[name] = (cls.recipe, cls.__name__, cls.reference_preset)
            labels[name] = cls.short_name
    teacher = tuple(n for n, cls in registry.items() if n in rows and cls.uses_teacher == "required")
    return rows, labels, teacher


METHODS, LABELS, NEEDS_TEACHER = _from_registry()
# Preset fields that are augmentation, not the method: every run uses the common batched CIFAR augmentation, so the
# baseline sees exactly the same data pipeline (LightSKD's preset uses a random-resized crop instead).
COMMON_OVERRIDES = {"random_resized_crop": False}


def method_fields(method: str) -> dict:
    """The method's own hyperparameters from its preset: fields its arguments class adds to DistillationArguments."""
    _, trainer_name, preset = METHODS[method]
    if preset is None:
        return {}
    import hf_kd.trainers as trainers
    from hf_kd.arguments import DistillationArguments

    own = {f.name for f in dataclasses.fields(getattr(trainers, trainer_name).args_class)}
    own -= {f.name for f in dataclasses.fields(DistillationArguments)}
    cfg = yaml.safe_load((ROOT / "recipes" / "configs" / preset).read_text())
    picked = {k: v for k, v in cfg.items() if k in own}
    picked.update({k: v for k, v in COMMON_OVERRIDES.items() if k in own})
    return picked


def common_config(o) -> dict:
    steps_per_epoch = o.train_images // o.batch_size  # dataloader_drop_last
    return dict(
        dataset=o.dataset, dataset_title=o.dataset_title, max_train_samples=o.max_train_samples, subset_seed=0,
        max_eval_samples=o.max_eval_samples, in_memory=True, student=o.student, num_train_epochs=o.epochs,
        per_device_train_batch_size=o.batch_size, per_device_eval_batch_size=500, learning_rate=o.lr, optim="sgd",
        optim_args="momentum=0.9", weight_decay=o.weight_decay, lr_scheduler_type="cosine", augmentation="cifar",
        pad_mode="constant", dataloader_drop_last=True, eval_strategy="steps",
        eval_steps=max(1, o.eval_every * steps_per_epoch), save_strategy="epoch", save_total_limit=1,
        logging_steps=max(1, steps_per_epoch // 4), report_to="none", disable_tqdm=True, bf16=o.bf16)


def run_config(o, method: str, seed: int, run_dir: Path, teacher_dir: Path | None) -> dict:
    cfg = common_config(o)
    if method == "teacher":
        cfg.update(student=o.teacher_architecture, num_train_epochs=o.teacher_epochs,
                   eval_steps=cfg["eval_steps"] * max(1, round(o.teacher_epochs / o.epochs)))
    cfg.update(method_fields(method) if method != "teacher" else {})
    if method in NEEDS_TEACHER:
        cfg["teacher"] = str(teacher_dir)
    cfg.update(seed=seed, output_dir=str(run_dir))
    return {k: v for k, v in cfg.items() if v is not None}


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    complete = [c for c in ckpts if (c / "trainer_state.json").is_file()]
    return complete[-1] if complete else None


def read_run(run_dir: Path) -> dict:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    evals = [dict(epoch=e["epoch"], top1=e["eval_top1"], top5=e.get("eval_top5"),
                  heads={k[len("eval_"):]: v for k, v in e.items() if k.startswith("eval_") and "top1" in k})
             for e in history if "eval_top1" in e]
    losses = [{k: v for k, v in e.items() if k == "epoch" or k == "loss" or k.startswith("loss_")}
              for e in history if "loss" in e and "eval_top1" not in e]
    return dict(final_top1=evals[-1]["top1"], final_top5=evals[-1]["top5"], best_top1=max(e["top1"] for e in evals),
                evals=evals, losses=losses)


def recorded_runs(out: Path) -> list[dict]:
    """Every finished run of the matrix in ``out``: each ``runs/<method>-seed<k>/result.json``, and each run recorded
    in ``results.json`` whose folder is gone (a results folder copied or committed without ``runs/``)."""
    found = {}
    if (out / "results.json").is_file():
        for r in json.loads((out / "results.json").read_text())["runs"]:
            if not (out / "runs" / f"{r['method']}-seed{r['seed']}").exists():
                found[r["method"], r["seed"]] = r
    for path in (out / "runs").glob("*/result.json"):
        r = json.loads(path.read_text())
        found[r["method"], r["seed"]] = r
    return sorted(found.values(), key=lambda r: f"{r['method']}-seed{r['seed']}")


def restore_runs(out: Path, drop=()) -> None:
    """Before a sitting: give every finished run its ``runs/<method>-seed<k>/result.json`` back (so ``execute`` skips
    it), except the ``(method, seed)`` pairs in ``drop``, which are forgotten with their folders (``--rerun``)."""
    drop = set(drop)
    runs = [r for r in recorded_runs(out) if (r["method"], r["seed"]) not in drop]
    for method, seed in drop:
        shutil.rmtree(out / "runs" / f"{method}-seed{seed}", ignore_errors=True)
    if (out / "results.json").is_file():
        summary = json.loads((out / "results.json").read_text())
        (out / "results.json").write_text(json.dumps(dict(summary, runs=runs), indent=1))
    for r in runs:
        done = out / "runs" / f"{r['method']}-seed{r['seed']}" / "result.json"
        if not done.is_file():
            done.parent.mkdir(parents=True)
            done.write_text(json.dumps(r, indent=1))


def join_sitting(old: dict | None, new: dict, rerun=()) -> dict:
    """The settings of a matrix after one more sitting. A sitting must train what the earlier ones trained: same
    common run settings (data, subset, student, schedule, augmentation), teacher, and, for a method that already has
    runs, the same method hyperparameters (unless it is re-run); otherwise the table would mix two experiments, so
    this stops and names the differences. Seeds and methods are the union; each sitting's command, hardware and
    methods are kept in ``sittings``."""
    sitting = {k: new[k] for k in ("date", "command", "hardware", "methods", "seeds")}
    new = {k: v for k, v in new.items() if k not in ("date", "command", "hardware", "methods")}
    if old is None:
        return dict(new, sittings=[sitting])
    differ = [f"{k}: {old['common'].get(k)!r} before, {new['common'].get(k)!r} now"
              for k in sorted(set(old["common"]) | set(new["common"])) if old["common"].get(k) != new["common"].get(k)]
    differ += [f"{k}: {old.get(k)!r} before, {new[k]!r} now" for k in ("teacher", "teacher_epochs")
               if old.get(k) != new[k]]
    old_hp = old.get("method_hyperparameters", {})
    differ += [f"{m}'s hyperparameters: {old_hp[m]} before, {hp} now (pass --rerun {m} to train it again)"
               for m, hp in new["method_hyperparameters"].items() if m in old_hp and old_hp[m] != hp and m not in rerun]
    missing = sorted(set(old.get("seeds", [])) - set(new["seeds"]))
    differ += [f"{m}'s hyperparameters changed, but its runs of seeds {missing} would stay: re-run every seed"
               for m in rerun if m in old_hp and old_hp[m] != new["method_hyperparameters"].get(m) and missing]
    if differ:
        raise SystemExit("this sitting does not continue the matrix already in --out, whose settings.json says "
                         "otherwise:\n  " + "\n  ".join(differ) + "\nuse the same flags as before, or a new --out")
    sittings = old.get("sittings") or [dict(date=None, command=old.get("command"), hardware=old.get("hardware"),
                                            methods=list(old_hp), seeds=old.get("seeds"))]
    merged = dict(old, method_hyperparameters={**old_hp, **new["method_hyperparameters"]},
                  seeds=sorted(set(old.get("seeds", [])) | set(new["seeds"])), sittings=[*sittings, sitting])
    merged.pop("command", None)
    merged.pop("hardware", None)
    return merged


def execute(o, method: str, seed: int, teacher_dir: Path | None, lock: threading.Lock) -> dict:
    run_dir = Path(o.out) / "runs" / f"{method}-seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_config(o, method, seed, run_dir, teacher_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    recipe = METHODS["ce" if method == "teacher" else method][0]
    cmd = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), "--config", str(run_dir / "config.yaml")]
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        cmd += ["--resume_from_checkpoint", str(ckpt)]
    timing = run_dir / "wall_time.json"
    spent = json.loads(timing.read_text())["seconds"] if timing.is_file() else 0.0
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=str(o.threads), PYTHONPATH=path, TOKENIZERS_PARALLELISM="false")
    with lock:
        print(f"[accuracy] start {method} seed {seed}" + (f" (resuming {ckpt.name})" if ckpt else ""), flush=True)
    start = time.perf_counter()
    with open(run_dir / "log.txt", "a") as log:
        rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    spent += time.perf_counter() - start
    timing.write_text(json.dumps({"seconds": spent}))
    if rc != 0:
        raise RuntimeError(f"{method} seed {seed} failed (exit {rc}); see {run_dir / 'log.txt'}")
    # the thread count is part of what reproduces a run: CPU float reductions (and so every later step) depend on it
    result = dict(method=method, seed=seed, wall_seconds=spent, command=" ".join(cmd[1:3]) + " --config config.yaml",
                  threads=o.threads, config=cfg, **read_run(run_dir))
    done.write_text(json.dumps(result, indent=1))
    for c in run_dir.glob("checkpoint-*"):  # finished: the export and trainer_state.json stay
        shutil.rmtree(c, ignore_errors=True)
    with lock:
        print(f"[accuracy] done {method} seed {seed}: final top-1 {result['final_top1']:.4f} "
              f"({spent / 60:.1f} min)", flush=True)
    return result


def mean_std(xs):
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return m, s


def welch_interval(a, b, level=0.95):
    """Mean of a - mean of b with a Welch t-interval (nan when either has fewer than 2 values)."""
    from scipy import stats

    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    d = ma - mb
    if len(a) < 2 or len(b) < 2:
        return d, float("nan"), float("nan")
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    h = stats.t.ppf(0.5 + level / 2, df) * se
    return d, d - h, d + h


def summarize(out: Path, settings: dict) -> dict:
    runs = recorded_runs(out)
    by = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r)
    base = [r["final_top1"] for r in by.get("ce", [])]
    rows = []
    for m in ["teacher", *METHODS]:
        rs = sorted(by.get(m, []), key=lambda r: r["seed"])
        if not rs:
            continue
        final = [r["final_top1"] for r in rs]
        best = [r["best_top1"] for r in rs]
        row = dict(method=m, label=LABELS[m], seeds=[r["seed"] for r in rs], final=final, best=best,
                   final_mean_std=mean_std(final), best_mean_std=mean_std(best),
                   final_top5_mean=mean_std([r["final_top5"] for r in rs])[0],
                   wall_minutes=mean_std([r["wall_seconds"] / 60 for r in rs])[0],
                   num_evaluations=len(rs[0]["evals"]))
        if m not in ("teacher", "ce") and base:
            row["gain"] = welch_interval(final, base)
        rows.append(row)
    summary = dict(settings=settings, rows=rows, runs=runs,
                   written=datetime.datetime.now().isoformat(timespec="seconds"))
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "results.md").write_text(table(summary))
    plot(summary, out / "accuracy.png")
    plot_loss_terms(summary, out / "loss_terms.png")
    return summary


def pct(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def sittings_text(s: dict) -> str:
    sittings = s.get("sittings") or [s]
    if len(sittings) == 1:
        return f"Hardware: {sittings[0].get('hardware')}. Command: `{sittings[0].get('command')}`."
    return f"Run in {len(sittings)} sittings: " + "; ".join(
        f"({i}) {', '.join(LABELS.get(m, m) for m in x.get('methods') or [])}"
        f"{', ' + x['date'] if x.get('date') else ''}, hardware: {x.get('hardware')}, command: `{x.get('command')}`"
        for i, x in enumerate(sittings, 1)) + "."


def table(summary: dict) -> str:
    s = summary["settings"]
    lines = [f"Data: {s.get('dataset_title') or s.get('dataset')}; train subset {s.get('train_subset')}, "
             f"evaluated on {s.get('eval_images')}. Student `{s.get('student')}`, teacher `{s.get('teacher')}` "
             f"({s.get('teacher_epochs')} epochs). Schedule: {s.get('schedule')}. Seeds {s.get('seeds')}. "
             + sittings_text(s), "",
             "| method | top-1, final epoch (mean ± std) | top-1, best evaluation (mean ± std) | gain over CE, final "
             "(95 % CI) | top-5 final (mean) | runs | minutes per run |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        (fm, fs), (bm, bs) = r["final_mean_std"], r["best_mean_std"]
        gain = r.get("gain")
        g = (f"{100 * gain[0]:+.2f} [{100 * gain[1]:+.2f}, {100 * gain[2]:+.2f}]" if gain and not math.isnan(gain[1])
             else (f"{100 * gain[0]:+.2f}" if gain else "—"))
        lines.append(f"| {r['label']} | {pct(fm)} ± {pct(fs)} | {pct(bm)} ± {pct(bs)} (best of "
                     f"{r['num_evaluations']}) | {g} | {pct(r['final_top5_mean'])} | {len(r['seeds'])} | "
                     f"{r['wall_minutes']:.1f} |")
    lines += ["", "Top-1/top-5 in %. 'final epoch' is the headline; 'best evaluation' is the maximum over the "
              "evaluations made during the run, reported beside it only. Gain: difference of the final-epoch means, "
              "95 % Welch t-interval over seeds."]
    if s.get("note"):
        lines += ["", f"Note: {s['note']}"]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = summary["rows"]
    fig = Figure(figsize=(12, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_bar, ax_curve = fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[1, 1.3]))
    colors = {m: f"C{i}" for i, m in enumerate(["teacher", *METHODS])}
    for i, r in enumerate(rows):
        (m, s) = r["final_mean_std"]
        ax_bar.bar(i, 100 * m, yerr=0 if math.isnan(s) else 100 * s, color=colors[r["method"]], capsize=4)
        ax_bar.scatter([i] * len(r["final"]), [100 * x for x in r["final"]], color="k", s=8, zorder=3)
    ax_bar.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=25, ha="right", fontsize=8)
    ax_bar.set(ylabel="top-1 (%), final epoch", title="Final-epoch top-1, mean ± std (dots: seeds)")
    finals = [100 * x for r in rows for x in r["final"]]
    if finals:
        ax_bar.set_ylim(max(0, min(finals) - 5), max(finals) + 3)
    by = {}
    for run in summary["runs"]:
        by.setdefault(run["method"], []).append(run)
    for m, runs in by.items():
        n = min(len(r["evals"]) for r in runs)
        xs = [runs[0]["evals"][k]["epoch"] for k in range(n)]
        ys = [100 * sum(r["evals"][k]["top1"] for r in runs) / len(runs) for k in range(n)]
        ax_curve.plot(xs, ys, marker="o", color=colors[m], label=LABELS[m])
    ax_curve.set(xlabel="epoch", ylabel="top-1 (%)", title="Evaluations during training (mean over seeds)")
    ax_curve.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    for ax in (ax_bar, ax_curve):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def plot_loss_terms(summary: dict, path: Path) -> None:
    """One panel per method: every logged loss term (unweighted, as logged) per epoch, mean over seeds, log scale.

    What to read against the method: e.g. that a distillation term falls, that CE of a distilled student keeps up
    with the baseline's, where a warm-up switches a term on."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by = {}
    for run in summary["runs"]:
        if run["losses"]:
            by.setdefault(run["method"], []).append(run)
    if not by:
        return
    from matplotlib import colormaps

    cols = 2
    rows = math.ceil(len(by) / cols)
    fig = Figure(figsize=(8 * cols, 3.6 * rows), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (m, runs) in zip(axes, by.items()):
        keys = sorted({k for r in runs for e in r["losses"] for k in e if k != "epoch"})
        for i, k in enumerate(keys):
            n = min(len(r["losses"]) for r in runs)
            pts = [(runs[0]["losses"][j]["epoch"],
                    sum(r["losses"][j].get(k, float("nan")) for r in runs) / len(runs)) for j in range(n)]
            pts = [(x, y) for x, y in pts if y == y and y > 0]
            if pts:
                ax.plot(*zip(*pts), color=colormaps["tab20"](i % 20),
                        label="total (weighted)" if k == "loss" else k[5:])
        ax.set(yscale="log", xlabel="epoch", title=LABELS.get(m, m))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(keys) // 12)
    for ax in axes[len(by):]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results folder (runs/<method>-seed<k>/ inside)")
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--dataset_title", default=None)
    p.add_argument("--max_train_samples", type=int, default=5000)
    p.add_argument("--max_eval_samples", type=int, default=None)
    p.add_argument("--student", default="cifar_resnet20")
    p.add_argument("--teacher_architecture", default="cifar_resnet56")
    p.add_argument("--teacher_epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--eval_every", type=int, default=5, help="epochs between evaluations (the last is always one)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--rerun", nargs="+", default=[], choices=list(METHODS),
                   help="discard these methods' finished runs of --seeds and train them again")
    p.add_argument("--summarize", action="store_true", help="only rebuild results.json/md/png from finished runs")
    o = p.parse_args()
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "settings.json"
    old = json.loads(settings_file.read_text()) if settings_file.is_file() else None
    if o.summarize:
        if old is None:
            p.error(f"--summarize: {settings_file} does not exist, so there is no matrix to summarize")
        summarize(out, old)
        return
    if set(o.rerun) - set(o.methods):
        p.error(f"--rerun {' '.join(sorted(set(o.rerun) - set(o.methods)))}: not among --methods, so it would not be "
                "trained again; add it to --methods")
    if o.epochs % o.eval_every:
        p.error("--epochs must be a multiple of --eval_every, so that the last epoch is evaluated")
    o.threads = o.threads or max(1, (os.cpu_count() or 1) // o.jobs)

    from hf_kd.data import load_image_data
    from hf_kd.data.loading import describe_subset

    data = load_image_data(o.dataset, max_train_samples=o.max_train_samples, max_eval_samples=o.max_eval_samples)
    sub = data.source.get("train_subset")
    o.train_images = len(data.train)  # what --max_train_samples selects (all of them for 0 or more than there are)
    settings = dict(
        dataset=o.dataset, dataset_title=o.dataset_title or o.dataset, train_subset=describe_subset(sub) or
        f"all {len(data.train):,} images", eval_images=f"{len(data.eval):,} images of split '{data.source['eval_split']}'",
        student=o.student, teacher=o.teacher_architecture, teacher_epochs=o.teacher_epochs, seeds=o.seeds,
        schedule=(f"{o.epochs} epochs, batch {o.batch_size}, SGD momentum 0.9 lr {o.lr} cosine to 0, weight decay "
                  f"{o.weight_decay}, pad-4 crop + flip, evaluation every {o.eval_every} epochs"
                  + (", bf16" if o.bf16 else "")),
        hardware=f"{hardware()}, {o.jobs} run(s) at a time, {o.threads} thread(s) each",
        command="python benchmarks/accuracy.py " + shlex.join(sys.argv[1:]), methods=o.methods,
        date=datetime.date.today().isoformat(),
        method_hyperparameters={m: method_fields(m) for m in o.methods}, common=common_config(o))
    settings = join_sitting(old, settings, o.rerun)  # before anything is discarded: a mismatch changes nothing
    restore_runs(out, drop=[(m, k) for m in o.rerun for k in o.seeds])
    settings_file.write_text(json.dumps(settings, indent=1))

    lock = threading.Lock()
    teacher_dir = out / "runs" / "teacher-seed0"
    failures = []
    with ThreadPoolExecutor(max_workers=o.jobs) as pool:
        teacher = (pool.submit(execute, o, "teacher", 0, None, lock)
                   if any(m in NEEDS_TEACHER for m in o.methods) else None)

        def job(method, seed):
            if method in NEEDS_TEACHER:
                teacher.result()  # raises if the teacher failed
            return execute(o, method, seed, teacher_dir, lock)

        # seed by seed (complete sets first); within a seed the runs that wait for the teacher last
        order = sorted(o.methods, key=lambda m: m in NEEDS_TEACHER)
        futures = [pool.submit(job, m, s) for s in o.seeds for m in order]
        for f in [teacher, *futures] if teacher else futures:
            try:
                f.result()
            except Exception as e:  # noqa: BLE001 - report every failed run, keep the others
                failures.append(str(e))
                print(f"[accuracy] {e}", flush=True)
            summarize(out, settings)
    print((out / "results.md").read_text())
    if failures:
        raise SystemExit("failed runs:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
