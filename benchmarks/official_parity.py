"""hf_kd against the official code, whole runs: a method's official training loop and hf_kd's recipe for it, trained
on the same data subset with the same schedule, several seeds each, final-epoch accuracy compared.

The per-step parity tests (``tests/golden``) show that one step of hf_kd computes what one step of the official code
computes. This benchmark asks the end-to-end question those tests cannot answer: do whole runs end at the same
accuracy? Each side keeps its own random streams (initialisation, data order, augmentation draws), so single runs
differ by seed noise; the comparison is of means over seeds, with a 95 % Welch t-interval on the difference.

    HF_KD_OFFICIAL=/path/to/checkouts PYTHONPATH=. python benchmarks/official_parity.py \\
        --dataset <CIFAR-100 folder> --dataset_title "CIFAR-100 (60k pool, stratified 50k/10k re-split)" \\
        --seeds 5 6 7 8 --out benchmarks/results/official-parity-cpu
    python benchmarks/official_parity.py --out benchmarks/results/official-parity-cpu --summarize

``HF_KD_OFFICIAL`` is a folder with one git checkout per official repository, named like the repository (here
``FFSD``: https://github.com/SJLeo/FFSD); ``HF_KD_OFFICIAL_FFSD`` overrides that one path (the convention of
``tests/golden/generate_fixtures.py``). Keep checkouts outside this repository: no official code is copied here.
The official code is imported from the checkout and driven as it is; what the driver substitutes is listed per method
in ``SUBSTITUTIONS`` and written into ``results.json``.

Setting (defaults: the CPU accuracy table's, ``benchmarks/results/cifar100-cpu``): the class-balanced 5,000-image
training subset (``subset_seed`` 0), evaluation on the whole evaluation split, 8 epochs of batch 64 (last partial
batch dropped), SGD momentum 0.9 (no Nesterov) lr 0.05 with transformers' cosine schedule per step and no warm-up,
weight decay 5e-4, 4-pixel zero-padded random crop + horizontal flip. The hf_kd side is exactly the accuracy table's
run of the method (``benchmarks/accuracy.py``'s config, its recipe, ``recipes/<recipe>.py --config``).

Runs are resumable: each writes ``runs/<method>/<side>-seed<k>/result.json`` when it finishes and a later sitting
skips it; an interrupted hf_kd run continues from its last epoch checkpoint (exact, see ``hf_kd.trainers.base``),
an interrupted official run starts again. Each run records its thread count: on the CPU, float reductions depend on
it, so a seeded re-run reproduces bit for bit only with the same number of threads (``--threads``, default 1).
Runs go one at a time. Writes ``results.json`` (settings, every run, the summary) and ``results.md`` (the table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

SIDES = ("official", "hf_kd")
OFFICIAL_REPOS = {"ffsd": ("FFSD", "https://github.com/SJLeo/FFSD"),
                  "projector_kd": ("PEFD", "https://github.com/chenyd7/PEFD")}
# What the driver changes in the official code's run, per method (recorded in results.json).
SUBSTITUTIONS = {
    "ffsd": [
        "data: CIFARTrainer.create_dataLoader is replaced by loaders over hf_kd's training subset and evaluation split "
        "(the same uint8 images hf_kd trains on), through the official torchvision pipeline on PIL images (Pad(4), "
        "RandomHorizontalFlip, RandomCrop(32), ToTensor, Normalize with the official CIFAR-100 statistics) with "
        "padding_mode 'constant' instead of 'reflect' (the table's pad_mode); train batch --batch_size (official 128) "
        "with drop_last (official: kept), evaluation batch 500; no workers, no pinned memory (CPU)",
        "options: the official parser's defaults with --model <architecture>, --lr, --weight_decay, batch sizes, "
        "--gpu_ids -1, --display_id 0, --no_html; temperature, lambdas and model_num (2) stay at the official defaults",
        "utils.html is replaced by an empty module when its dependency 'dominate' is missing (it only writes HTML "
        "pages, which --no_html turns off)",
        "no Nesterov: every SGD param group gets nesterov=False after the official constructor (the table's "
        "optim_args momentum=0.9)",
        "schedule: the official per-epoch schedulers are not stepped; every optimizer (students, fusion module, "
        "leader, decoders' Adams) follows transformers' get_cosine_schedule_with_warmup(0 warm-up, epochs x steps), "
        "stepped once per iteration after the iteration's last update (when the loop asks for the next batch)",
        "epoch loop: the body of the official Trainer.train() for 1-based epochs 1..E (lambda_warmup(e), "
        "train_with_test(e)), test(e) every --eval_every epochs, without its per-epoch checkpoint saving; the official "
        "range(start_epoch, n_epochs) would train one epoch less",
        "seed: transformers.set_seed(seed) before the official Trainer is built (the official code sets none)",
    ],
    "projector_kd": [
        "teacher: one hf_kd teacher (the accuracy table's: --teacher_architecture trained --teacher_epochs epochs "
        "with the CE recipe, seed 0) serves both sides; its weights are loaded into the official models/resnet.py "
        "network of the same depth (key renames only: stem.0/stem.1/stages.i -> conv1/bn1/layer{i+1})",
        "networks: the official models/resnet.py resnet20/resnet56 (RepDistiller's), called directly: "
        "train_student.py's --model_s choices and models.model_dict do not list them",
        "data: train_student.py's CIFAR-100 loaders are replaced by loaders over hf_kd's training subset and "
        "evaluation split (the same uint8 images), yielding (image, label, index) as its is_instance loader does, "
        "through the official torchvision pipeline (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, "
        "Normalize with the official statistics); train batch --batch_size (official 64) with drop_last (official: "
        "kept), evaluation batch 500; no workers (CPU)",
        "method settings: scripts/run_cifar.sh's -r 1 -a 0 -b 25 --distill ours (kd_T 4), and train_student.py::main "
        "as written (dry run for the feature sizes, four Reg projectors of which three are trained and averaged, "
        "one SGD over the student and those three), helper/loops.py::train_distill and ::validate unmodified",
        "schedule: adjust_learning_rate is not called; the SGD follows transformers' "
        "get_cosine_schedule_with_warmup(0 warm-up, epochs x steps), stepped once per iteration after its update",
        "evaluation: validate() every --eval_every epochs instead of every epoch, no checkpoint saving, no "
        "tensorboard logger",
        "seed: transformers.set_seed(seed) before the networks are built (instead of setup_seed(trial * 10))",
    ],
}
HF_KD_DATA = ("data-path swap (--official_data hf_kd): the official loop's training batches come from hf_kd's data path "
              "instead (HfKdBatches: a permutation per epoch of the in-memory uint8 subset, one BatchAugment call per "
              "batch, the data's own statistics); evaluation keeps the official pipeline")


# --- official checkout --------------------------------------------------------------------------------------------
def official_checkout(method: str) -> Path:
    name = OFFICIAL_REPOS[method][0]
    env = os.environ.get("HF_KD_OFFICIAL_" + re.sub(r"\W", "_", name).upper())
    root = os.environ.get("HF_KD_OFFICIAL")
    if not env and not root:
        raise SystemExit(f"Set HF_KD_OFFICIAL to a folder holding a git checkout of {OFFICIAL_REPOS[method][1]} named "
                         f"{name} (or HF_KD_OFFICIAL_{name.upper()} to the checkout itself).")
    path = Path(env or Path(root) / name).resolve()
    if not (path / ".git").exists():
        raise SystemExit(f"{path} is not a git checkout of {OFFICIAL_REPOS[method][1]}")
    if ROOT in path.parents or path == ROOT:
        raise SystemExit(f"{path} is inside the hf_kd repository; keep official checkouts outside it")
    return path


def checkout_provenance(path: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "clean": git("status", "--porcelain") == ""}


# --- settings -----------------------------------------------------------------------------------------------------
def hf_kd_config(o, method: str, seed: int, run_dir: Path) -> dict:
    """The accuracy table's run of ``method`` (``benchmarks/accuracy.py``: common settings + the method's preset
    fields), for this seed and folder."""
    import accuracy

    teacher = teacher_dir(o) if method in accuracy.NEEDS_TEACHER else None
    return accuracy.run_config(o, method, seed, run_dir, teacher)


def teacher_dir(o) -> Path:
    """The one teacher of the methods that need one (no ``result.json`` there: it is not a row of the table)."""
    return Path(o.out) / "runs" / "_teacher" / f"{o.teacher_architecture}-seed0"


def threads_note(threads: int) -> str:
    return f"{threads} thread(s) per run, one run at a time"


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({os.cpu_count()} cores, {cpu}), torch {torch.__version__}"


# --- one run ------------------------------------------------------------------------------------------------------
def run_env(o) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, OMP_NUM_THREADS=str(o.threads), PYTHONPATH=path, TOKENIZERS_PARALLELISM="false")


def run_hf_kd(o, method: str, seed: int, run_dir: Path) -> dict:
    cfg = hf_kd_config(o, method, seed, run_dir)
    spent = train_hf_kd(o, method, cfg, run_dir)
    run = accuracy_of(run_dir)
    final = run["evals"][-1]["heads"]
    heads = {("leader" if k == "top1" else k[:-len("_top1")]): 100.0 * v for k, v in final.items()
             if k.endswith("top1")}
    return dict(final_top1=100.0 * run["final_top1"], final_top5=100.0 * run["final_top5"], heads=heads,
                evals=[dict(epoch=e["epoch"], top1=100.0 * e["top1"]) for e in run["evals"]], config=cfg,
                wall_seconds=spent)


def accuracy_of(run_dir: Path) -> dict:
    import accuracy

    return accuracy.read_run(run_dir)


def train_hf_kd(o, method: str, cfg: dict, run_dir: Path) -> float:
    """Runs hf_kd's recipe for ``method`` (``teacher``: the CE recipe) with ``cfg`` in ``run_dir`` unless it finished
    there; resumes from the last epoch checkpoint. Returns the wall seconds spent on it."""
    import accuracy

    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "trainer_state.json").is_file():  # not yet finished (an export writes it at the end)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        recipe = accuracy.METHODS["ce" if method == "teacher" else method][0]
        cmd = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), "--config", str(run_dir / "config.yaml")]
        ckpt = accuracy.latest_checkpoint(run_dir)
        if ckpt is not None:
            cmd += ["--resume_from_checkpoint", str(ckpt)]
        elif any(run_dir.glob("checkpoint-*")) or (run_dir / "config.json").exists():
            cmd += ["--overwrite_output_dir"]
        spent = _timed(cmd, run_dir, o)
    else:
        spent = _spent(run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    if saved != cfg:
        differ = sorted(k for k in set(saved) | set(cfg) if saved.get(k) != cfg.get(k))
        raise SystemExit(f"{run_dir} was trained with another config (differs in {differ}); remove it or use the "
                         "same flags")
    return spent


def ensure_teacher(o) -> dict:
    """Trains the shared teacher once (resumable) and returns its description for the settings."""
    import accuracy

    folder = teacher_dir(o)
    cfg = accuracy.run_config(o, "teacher", 0, folder, None)
    print(f"[official_parity] teacher {o.teacher_architecture} ({o.teacher_epochs} epochs) in {folder}", flush=True)
    train_hf_kd(o, "teacher", cfg, folder)
    for c in folder.glob("checkpoint-*"):
        import shutil

        shutil.rmtree(c, ignore_errors=True)
    run = accuracy_of(folder)
    return dict(architecture=o.teacher_architecture, epochs=o.teacher_epochs, seed=0,
                final_top1=round(100.0 * run["final_top1"], 2), folder=str(folder.relative_to(Path(o.out))))


def run_official(o, method: str, seed: int, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_official_run", method, "--_run_dir", str(run_dir),
           "--seeds", str(seed), "--out", str(o.out), *shlex.split(o.setting_flags)]
    spent = _timed(cmd, run_dir, o)
    out = json.loads((run_dir / "official.json").read_text())
    return dict(out, wall_seconds=spent)


def _spent(run_dir: Path) -> float:
    timing = run_dir / "wall_time.json"
    return json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")


def _timed(cmd, run_dir: Path, o) -> float:
    spent = _spent(run_dir)
    spent = 0.0 if math.isnan(spent) else spent
    start = time.perf_counter()
    with open(run_dir / "log.txt", "a") as log:
        rc = subprocess.call(cmd, env=run_env(o), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    spent += time.perf_counter() - start
    (run_dir / "wall_time.json").write_text(json.dumps({"seconds": spent}))
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {rc}); see {run_dir / 'log.txt'}")
    return spent


def execute(o, method: str, side: str, seed: int) -> dict:
    run_dir = Path(o.out) / "runs" / method / f"{side}-seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    print(f"[official_parity] start {method} {side} seed {seed}", flush=True)
    res = (run_official if side == "official" else run_hf_kd)(o, method, seed, run_dir)
    result = dict(method=method, side=side, seed=seed, threads=o.threads, hardware=hardware(),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **res)
    done.write_text(json.dumps(result, indent=1))
    for c in run_dir.glob("checkpoint-*"):  # finished: the export and trainer_state.json stay
        import shutil

        shutil.rmtree(c, ignore_errors=True)
    print(f"[official_parity] done {method} {side} seed {seed}: final top-1 {result['final_top1']:.2f} "
          f"({result['wall_seconds'] / 60:.1f} min)", flush=True)
    return result


# --- the official FFSD loop (runs in its own process: the official repository's top-level names) ------------------
def official_ffsd(o, seed: int, run_dir: Path) -> dict:
    import types

    import torch

    torch.set_num_threads(o.threads)
    checkout = official_checkout("ffsd")
    sys.path.insert(0, str(checkout))
    try:
        import dominate  # noqa: F401
    except ImportError:  # utils.visualizer imports utils.html, which needs dominate; HTML output is off
        sys.modules["utils.html"] = types.ModuleType("utils.html")
    import utils  # noqa: E402  (the official package)

    utils.html = sys.modules.get("utils.html") or utils.html
    import CIFARTrainer  # noqa: E402
    import torchvision.transforms as T
    import utils.util as official_util
    from options import options as official_options
    from torch.utils.data import DataLoader
    from transformers import get_cosine_schedule_with_warmup, set_seed

    # data/cifar100.py's statistics; its Pad(4) with padding_mode 'constant' (see SUBSTITUTIONS)
    train_ds, test_ds = official_cifar_datasets(o, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                                                [T.Pad(4, padding_mode="constant"), T.RandomHorizontalFlip(),
                                                 T.RandomCrop(32)])

    class Loaders:
        pass

    loaders = Loaders()
    CIFARTrainer.create_dataLoader = lambda opt: loaders

    opt = official_options.parser.parse_args([
        "--dataroot", str(o.dataset), "--dataset", "cifar100", "--model", o.student.replace("cifar_", ""),
        "--name", "official", "--checkpoints_dir", str(run_dir), "--gpu_ids", "-1", "--display_id", "0", "--no_html",
        "--train_batch_size", str(o.batch_size), "--test_batch_size", "500", "--lr", str(o.lr),
        "--weight_decay", str(o.weight_decay), "--momentum", "0.9", "--n_epochs", str(o.epochs)])
    opt.gpu_ids = []
    logger = official_util.get_logger(str(run_dir / "official.log"))

    set_seed(seed)
    # the schedulers step when the loop asks for the next batch: after the previous iteration's last update
    train_loader = official_train_loader(o, train_ds)
    schedulers = []  # filled once the official optimizers exist
    loaders.trainLoader = _stepping(train_loader, schedulers)
    loaders.testLoader = DataLoader(test_ds, batch_size=500, shuffle=False)
    trainer = CIFARTrainer.Trainer(opt, logger)
    sgd = [*trainer.optimizers, trainer.fusion_optimizer, trainer.leader_optimizer]
    adam = [*trainer.sd_optimizers, trainer.sd_leader_optimizer]
    for opt_ in sgd:
        for g in opt_.param_groups:
            g["nesterov"] = False
    total = o.epochs * len(train_loader)
    schedulers += [get_cosine_schedule_with_warmup(x, 0, total) for x in sgd + adam]

    evals = []
    for epoch in range(1, o.epochs + 1):
        trainer.visualizer.reset()
        trainer.lambda_warmup(epoch)
        trainer.train_with_test(epoch, topk=(1,))
        if epoch % o.eval_every == 0 or epoch == o.epochs:
            _, acc, _, avg, oracle = trainer.test(epoch, topk=(1,))
            evals.append(dict(epoch=epoch, top1=float(acc[-1].avg)))
    heads = {"leader": float(acc[-1].avg), "fusion": float(acc[-2].avg),
             **{f"student{m}": float(acc[m].avg) for m in range(trainer.model_num)},
             "students_average": float(avg.avg), "students_oracle": float(oracle.avg)}
    with torch.no_grad():  # the leader's top-5 (the official test reports top-1 only)
        trainer.leader_model.eval()
        hit = n = 0
        for x, y in loaders.testLoader:
            logits, _ = trainer.leader_model(x)
            hit += (logits.topk(5, 1).indices == y[:, None]).any(1).sum().item()
            n += len(y)
    steps = schedulers[0].last_epoch
    if steps != total:
        raise RuntimeError(f"the schedule stepped {steps} times, expected {total}")
    return dict(final_top1=heads["leader"], final_top5=100.0 * hit / n, heads=heads, evals=evals,
                official=dict(repository=OFFICIAL_REPOS["ffsd"][1], **checkout_provenance(checkout)),
                steps=steps, train_images=len(train_ds), eval_images=len(test_ds),
                torch_threads=torch.get_num_threads())


# --- the official PEFD loop (its own process: the official repository's top-level names) ----------------------------
def official_pefd(o, seed: int, run_dir: Path) -> dict:
    import contextlib
    import io

    import torch
    import torch.nn as nn
    import torchvision.transforms as T
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader
    from transformers import get_cosine_schedule_with_warmup, set_seed

    torch.set_num_threads(o.threads)
    checkout = official_checkout("projector_kd")
    sys.path.insert(0, str(checkout))
    import models.resnet as official_resnet  # noqa: E402  (the official packages)
    from distiller_zoo import DistillKL
    from helper.loops import train_distill, validate
    from models.util import Reg

    # dataset/cifar100.py's training pipeline and statistics
    train_ds, test_ds = official_cifar_datasets(o, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
                                                [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()],
                                                with_index=True)
    depth = {a: a.replace("cifar_", "") for a in (o.student, o.teacher_architecture)}
    for arch, name in depth.items():
        if not hasattr(official_resnet, name):
            raise SystemExit(f"{arch}: the official models/resnet.py has no {name}")

    # train_student.py's options: scripts/run_cifar.sh -r 1 -a 0 -b 25 --distill ours; kd_T 4 (its default)
    opt = argparse.Namespace(distill="ours", gamma=1.0, alpha=0.0, beta=25.0, kd_T=4.0, print_freq=10 ** 9,
                             learning_rate=o.lr, momentum=0.9, weight_decay=o.weight_decay)
    set_seed(seed)
    n_cls = len(train_ds.classes)
    model_t = getattr(official_resnet, depth[o.teacher_architecture])(num_classes=n_cls)
    model_s = getattr(official_resnet, depth[o.student])(num_classes=n_cls)
    state = load_file(str(teacher_dir(o) / "model.safetensors"))
    model_t.load_state_dict({official_key(k): v for k, v in state.items()}, strict=True)

    # train_student.py::main, as written for --distill ours
    data = torch.randn(2, 3, 32, 32)
    model_t.eval()
    model_s.eval()
    feat_t, _ = model_t(data, is_feat=True)
    feat_s, _ = model_s(data, is_feat=True)
    regs = [Reg(feat_s[-1].shape[1], feat_t[-1].shape[1]) for _ in range(4)]
    module_list = nn.ModuleList([model_s, *regs])
    trainable_list = nn.ModuleList([model_s, *regs[:3]])  # the official list: regress_s4 is never trained
    criterion_list = nn.ModuleList([nn.CrossEntropyLoss(), DistillKL(opt.kd_T), nn.CrossEntropyLoss()])
    optimizer = torch.optim.SGD(trainable_list.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    module_list.append(model_t)

    train_loader = official_train_loader(o, train_ds)
    test_loader = DataLoader(test_ds, batch_size=500, shuffle=False)
    total = o.epochs * len(train_loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, total)
    with contextlib.redirect_stdout(io.StringIO()):
        teacher_top1, _, _ = validate(test_loader, model_t, criterion_list[0], opt)
    evals = []
    for epoch in range(1, o.epochs + 1):
        with contextlib.redirect_stdout(io.StringIO()):
            train_distill(epoch, _stepping(train_loader, [scheduler]), module_list, criterion_list, optimizer, opt)
        if epoch % o.eval_every == 0 or epoch == o.epochs:
            with contextlib.redirect_stdout(io.StringIO()):
                top1, top5, _ = validate(test_loader, model_s, criterion_list[0], opt)
            evals.append(dict(epoch=epoch, top1=float(top1)))
            print(f"[official pefd] epoch {epoch}: top-1 {float(top1):.2f}", flush=True)
    if scheduler.last_epoch != total:
        raise RuntimeError(f"the schedule stepped {scheduler.last_epoch} times, expected {total}")
    return dict(final_top1=float(top1), final_top5=float(top5), heads={"student": float(top1)}, evals=evals,
                teacher_top1=float(teacher_top1),
                official=dict(repository=OFFICIAL_REPOS["projector_kd"][1], **checkout_provenance(checkout)),
                steps=scheduler.last_epoch, train_images=len(train_ds), eval_images=len(test_ds),
                torch_threads=torch.get_num_threads())


def official_key(key: str) -> str:
    """hf_kd's CIFAR ResNet keys (``timm_model.stem.0`` / ``stem.1`` / ``stages.i.j``) -> the official CIFAR ResNets'
    (``conv1`` / ``bn1`` / ``layer{i+1}.j``)."""
    key = key.removeprefix("timm_model.").replace("stem.0.", "conv1.", 1).replace("stem.1.", "bn1.", 1)
    return re.sub(r"^stages\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)


def _stepping(loader, schedulers):
    """``loader``, stepping ``schedulers`` when the loop asks for the next batch (after the iteration's update)."""

    class SteppingLoader:
        dataset = loader.dataset

        def __len__(self):
            return len(loader)

        def __iter__(self):
            for batch in loader:
                yield batch
                for s in schedulers:
                    s.step()

    return SteppingLoader()


def official_train_loader(o, train_ds):
    """The official loop's training batches: its torchvision pipeline per sample (``--official_data torchvision``,
    the default), or hf_kd's data path (``hf_kd``: ``HfKdBatches``), for the data-path swap experiment."""
    from torch.utils.data import DataLoader

    if o.official_data == "hf_kd":
        return HfKdBatches(train_ds, o.batch_size)
    return DataLoader(train_ds, batch_size=o.batch_size, shuffle=True, drop_last=True)


class HfKdBatches:
    """hf_kd's data path feeding an official loop: each epoch a permutation of the in-memory uint8 subset
    (``torch.randperm``), batches of ``batch_size`` (last partial batch dropped), each turned into the training batch
    by one ``BatchAugment`` call (4-pixel zero-padded crop + flip, batched, normalised with the data's own statistics,
    as the recipe does); yields what ``dataset`` would (with the index where it gives one)."""

    def __init__(self, dataset, batch_size: int):
        import torch

        from hf_kd.data.augment import BatchAugment

        self.dataset, self.batch_size = dataset, batch_size
        self.pixels = torch.from_numpy(dataset.images).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.tensor(dataset.labels)
        self.augment = BatchAugment(dataset.mean, dataset.std, "cifar", padding=4, pad_mode="constant")

    def __len__(self):
        return len(self.labels) // self.batch_size

    def __iter__(self):
        import torch

        perm = torch.randperm(len(self.labels))
        for k in range(len(self)):
            idx = perm[k * self.batch_size:(k + 1) * self.batch_size]
            x, y = self.augment(self.pixels[idx], train=True), self.labels[idx]
            yield (x, y, idx) if self.dataset.index else (x, y)


def official_cifar_datasets(o, mean, std, augment: list, with_index: bool = False):
    """hf_kd's training subset and evaluation split (the same decoded uint8 images hf_kd trains on) as torchvision
    datasets of PIL images through an official pipeline: the ``augment`` transforms, ToTensor, Normalize(mean, std)
    (evaluation: ToTensor, Normalize)."""
    import torchvision.transforms as T
    from PIL import Image
    from torch.utils.data import Dataset

    from hf_kd.data import load_image_data

    data = load_image_data(o.dataset, max_train_samples=o.max_train_samples, subset_seed=0,
                           max_eval_samples=o.max_eval_samples).in_memory()
    if max(abs(a - b) for a, b in zip(list(data.mean) + list(data.std), tuple(mean) + tuple(std))) > 1e-3:
        raise SystemExit(f"the data's normalisation {data.mean}/{data.std} is not the official one {mean}/{std}")

    class Images(Dataset):  # like torchvision's CIFAR100 (with the index, like RepDistiller's CIFAR100Instance)
        classes = list(range(int(data.train.labels.max()) + 1))
        mean, std = data.mean, data.std  # hf_kd's statistics of the data (HfKdBatches normalises with them)

        def __init__(self, split, transform, index):
            self.images = split.pixels.permute(0, 2, 3, 1).contiguous().numpy()
            self.labels = split.labels.tolist()
            self.transform, self.index = transform, index

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            x = self.transform(Image.fromarray(self.images[i]))
            return (x, self.labels[i], i) if self.index else (x, self.labels[i])

    train_tf = T.Compose([*augment, T.ToTensor(), T.Normalize(mean, std)])
    test_tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    return Images(data.train, train_tf, with_index), Images(data.eval, test_tf, False)


OFFICIAL_LOOPS = {"ffsd": official_ffsd, "projector_kd": official_pefd}


# --- summary ------------------------------------------------------------------------------------------------------
def recorded_runs(out: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*/result.json"))]
    if (out / "results.json").is_file():  # a results folder kept without runs/
        have = {(r["method"], r["side"], r["seed"]) for r in runs}
        runs += [r for r in json.loads((out / "results.json").read_text())["runs"]
                 if (r["method"], r["side"], r["seed"]) not in have]
    return sorted(runs, key=lambda r: (r["method"], r["side"], r["seed"]))


def summarize(out: Path, settings: dict) -> dict:
    from accuracy import mean_std, welch_interval

    runs = recorded_runs(out)
    rows = []
    for method in sorted({r["method"] for r in runs}):
        side = {s: [r for r in runs if r["method"] == method and r["side"] == s] for s in SIDES}
        row = dict(method=method)
        for s in SIDES:
            xs = [r["final_top1"] for r in side[s]]
            m, sd = mean_std(xs) if xs else (float("nan"), float("nan"))
            row[s] = dict(n=len(xs), mean=m, std=sd, seeds=[r["seed"] for r in side[s]], values=xs,
                          threads=sorted({r.get("threads") for r in side[s]}, key=str))
        if side["official"] and side["hf_kd"]:
            d, lo, hi = welch_interval([r["final_top1"] for r in side["hf_kd"]],
                                       [r["final_top1"] for r in side["official"]])
            row["difference"] = dict(hf_kd_minus_official=d, ci95=[lo, hi])
        rows.append(row)
    summary = dict(settings=settings, rows=rows, runs=runs,
                   written=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "results.md").write_text(table(summary))
    return summary


def _fmt(x, nd=2):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def table(summary: dict) -> str:
    s = summary["settings"]
    lines = [f"# hf_kd against the official code, whole runs ({s['dataset_title']})", "",
             "Top-1 (%) of the exported network (FFSD: the leader; PEFD: the student) after the last epoch, mean ± "
             "sample std over seeds; the difference "
             "is hf_kd − official with its 95 % Welch t-interval. n is the number of finished runs per side.", "",
             "| method | official code | hf_kd recipe | hf_kd − official [95 % CI] | seeds (official / hf_kd) |",
             "|---|---|---|---|---|"]
    for r in summary["rows"]:
        cells = []
        for side in SIDES:
            x = r[side]
            cells.append("no run yet" if not x["n"] else f"{_fmt(x['mean'])} (n = 1)" if x["n"] == 1 else
                         f"{_fmt(x['mean'])} ± {_fmt(x['std'])} (n = {x['n']})")
        d = r.get("difference")
        diff = (f"{d['hf_kd_minus_official']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
                if d and not math.isnan(d["ci95"][0]) else "n/a (needs 2 runs per side)")
        lines.append(f"| {s['method_titles'].get(r['method'], r['method'])} | {cells[0]} | {cells[1]} | {diff} | "
                     f"{', '.join(map(str, r['official']['seeds'])) or '-'} / "
                     f"{', '.join(map(str, r['hf_kd']['seeds'])) or '-'} |")
    lines += ["", "Per run (final top-1 %):", ""]
    for r in summary["rows"]:
        for side in SIDES:
            vals = ", ".join(f"seed {k}: {v:.2f}" for k, v in zip(r[side]["seeds"], r[side]["values"]))
            lines.append(f"- {r['method']}, {side}: {vals or 'none yet'}")
    lines += ["", f"Data: {s['dataset_title']} (`{s['dataset']}`), {s['train_subset']}; evaluation on "
                  f"{s['eval_images']}.", f"Schedule: {s['schedule']}.",
              *(["**Data-path swap experiment**: the official loops are fed by hf_kd's data path (`--official_data "
                 "hf_kd`), see the substitutions in `results.json`."] if s.get("official_data") == "hf_kd" else []),
              f"Hardware: {s['hardware']}; {s['threads']}.",
              *([f"Teacher (PEFD, both sides): hf_kd's {t['architecture']} trained {t['epochs']} epochs with the CE "
                 f"recipe on the same subset and schedule (seed {t['seed']}), top-1 {t['final_top1']:.2f} %."]
                if (t := s.get("teacher")) else []),
              "Official code: " + "; ".join(f"{m}: {v}" for m, v in s["official_code"].items()) + ".",
              f"Command: `{s['command']}`. Dates: {s['dates']}.", ""]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "official-parity-cpu"))
    p.add_argument("--methods", nargs="+", default=["ffsd"], choices=list(OFFICIAL_REPOS))
    p.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dataset", default=os.environ.get("HF_KD_CIFAR100"),
                   help="the local CIFAR-100 copy (60k pool, stratified 50k/10k re-split); default: $HF_KD_CIFAR100")
    p.add_argument("--dataset_title", default="CIFAR-100 (60k pool, stratified 50k/10k re-split)")
    p.add_argument("--max_train_samples", type=int, default=5000)
    p.add_argument("--max_eval_samples", type=int, default=None)
    p.add_argument("--student", default="cifar_resnet20")
    p.add_argument("--teacher_architecture", default="cifar_resnet56", help="the teacher of the methods that need one")
    p.add_argument("--teacher_epochs", type=int, default=16, help="its training epochs (the CPU accuracy table's)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--eval_every", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (results depend on it on the CPU)")
    p.add_argument("--official_data", choices=["torchvision", "hf_kd"], default="torchvision",
                   help="the official loops' training data: their torchvision pipeline (the comparison), or hf_kd's "
                        "data path (the data-path swap experiment: use its own --out)")
    p.add_argument("--summarize", action="store_true", help="only rebuild results.json/md from finished runs")
    p.add_argument("--_official_run", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_run_dir", default=None, help=argparse.SUPPRESS)
    o = p.parse_args()
    if not o.dataset and not o.summarize:
        p.error("--dataset: give the folder of the local CIFAR-100 copy (or set HF_KD_CIFAR100)")
    o.bf16 = False
    o.setting_flags = shlex.join(
        f"--{k}={getattr(o, k)}" for k in ("dataset", "max_train_samples", "student", "teacher_architecture",
                                          "teacher_epochs", "epochs", "batch_size", "lr", "weight_decay",
                                          "eval_every", "threads", "official_data") if getattr(o, k) is not None)
    if o.max_eval_samples is not None:
        o.setting_flags += f" --max_eval_samples={o.max_eval_samples}"
    if o._official_run:  # the child process of one official run
        res = OFFICIAL_LOOPS[o._official_run](o, o.seeds[0], Path(o._run_dir))
        (Path(o._run_dir) / "official.json").write_text(json.dumps(res, indent=1))
        return
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "settings.json"
    if o.summarize:
        if not settings_file.is_file():
            p.error(f"--summarize: {settings_file} does not exist")
        print(table(summarize(out, json.loads(settings_file.read_text()))))
        return
    if o.epochs % o.eval_every:
        p.error("--epochs must be a multiple of --eval_every, so that the last epoch is evaluated")

    import accuracy
    from hf_kd.data import load_image_data
    from hf_kd.data.loading import describe_subset

    data = load_image_data(o.dataset, max_train_samples=o.max_train_samples, max_eval_samples=o.max_eval_samples)
    o.train_images = len(data.train)
    o.dataset_title = o.dataset_title or o.dataset
    teacher_methods = [m for m in o.methods if m in accuracy.NEEDS_TEACHER]
    settings = dict(
        dataset=o.dataset, dataset_title=o.dataset_title,
        train_subset=describe_subset(data.source.get("train_subset")) or f"all {len(data.train):,} images",
        eval_images=f"{len(data.eval):,} images of split '{data.source['eval_split']}'", student=o.student,
        schedule=(f"{o.epochs} epochs, batch {o.batch_size} (last partial batch dropped), SGD momentum 0.9 (no "
                  f"Nesterov) lr {o.lr}, transformers' cosine per step without warm-up, weight decay "
                  f"{o.weight_decay}, pad-4 (zeros) crop + flip, evaluation every {o.eval_every} epochs"),
        common=accuracy.common_config(o),
        method_hyperparameters={m: accuracy.method_fields(m) for m in o.methods},
        method_titles={m: accuracy.LABELS.get(m, m) + f", {o.student}"
                       + (f" (teacher {o.teacher_architecture})" if m in teacher_methods else "") for m in o.methods},
        substitutions={m: SUBSTITUTIONS[m] + ([HF_KD_DATA] if o.official_data == "hf_kd" else []) for m in o.methods},
        official_data=o.official_data,
        official_code={m: f"{OFFICIAL_REPOS[m][1]} @ {checkout_provenance(official_checkout(m))['commit'][:7]}"
                       for m in o.methods},
        hardware=hardware(), threads=threads_note(o.threads), seeds=o.seeds,
        command="python benchmarks/official_parity.py " + shlex.join(sys.argv[1:]))
    if settings_file.is_file():  # a later sitting continues the same experiment, or adds methods to it
        old = json.loads(settings_file.read_text())
        differ = [k for k in ("dataset", "common", "schedule") if old.get(k) != settings[k]]
        differ += ["official_data"] if old.get("official_data", "torchvision") != o.official_data else []
        differ += [f"{k}[{m}]" for k in ("method_hyperparameters", "official_code") for m in o.methods
                   if m in old.get(k, {}) and old[k][m] != settings[k][m]]
        if teacher_methods and old.get("teacher") and old["teacher"]["architecture"] != o.teacher_architecture:
            differ.append("teacher")
        if differ:
            raise SystemExit(f"{out} holds runs of another setting (differs in {differ}); use the same flags or a "
                             "new --out")
        for k in ("method_hyperparameters", "method_titles", "substitutions", "official_code"):
            settings[k] = {**old.get(k, {}), **settings[k]}
        settings["teacher"] = old.get("teacher")
        settings["seeds"] = sorted(set(old.get("seeds", [])) | set(o.seeds))
        settings["dates"] = old.get("dates", "")
    today = datetime.date.today().isoformat()
    settings["dates"] = ", ".join(sorted(set(filter(None, settings.get("dates", "").split(", "))) | {today}))
    settings_file.write_text(json.dumps(settings, indent=1))
    if teacher_methods:  # trained once, before any run that needs it
        settings["teacher"] = ensure_teacher(o)
        settings_file.write_text(json.dumps(settings, indent=1))

    failures = []
    for seed in o.seeds:  # sides alternate seed by seed: a change in machine load hits both
        for method in o.methods:
            for side in o.sides:
                try:
                    execute(o, method, side, seed)
                except Exception as e:  # noqa: BLE001 - report every failed run, keep the others
                    failures.append(str(e))
                    print(f"[official_parity] {e}", flush=True)
                summarize(out, settings)
    print((out / "results.md").read_text())
    if failures:
        raise SystemExit("failed runs:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
