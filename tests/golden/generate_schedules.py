#!/usr/bin/env python
"""Build the schedule fixtures in ``tests/golden/schedules/`` by running the OFFICIAL schedule code of each method
over a preset's whole run, without training.

    HF_KD_OFFICIAL=/path/to/checkouts PYTHONPATH=. python tests/golden/generate_schedules.py [preset ...]

The checkouts are the ones ``generate_fixtures.py`` uses (same ``HF_KD_OFFICIAL`` layout, clean, at the commits its
fixtures record). The 3-step golden fixtures pin what one step computes; these pin *when* it computes it: the learning
rate of every official parameter group and every scheduled loss weight at every optimizer step of the preset's full
schedule, so that a milestone, warm-up or lambda ramp off by one epoch (or one step) fails a test.

What runs is the official code itself, never a re-implementation of its schedule:

- the official argument parser, on the command line the official scripts give (README / scripts/*.sh);
- the official data-loader construction, over a stand-in for ``torchvision.datasets.CIFAR100`` that has CIFAR-100's
  50,000 training (10,000 test) examples and no images (ImageNet presets: ``torchvision.datasets.ImageFolder`` with
  ILSVRC 2012's 1,281,167 / 50,000; where the official loader is built inside a function not run here, a
  ``DataLoader`` with the official batch size and ``DistributedSampler`` of the official process count, as noted); ``torch.utils.data.DataLoader`` is built with exactly the
  official arguments (batch size, ``drop_last``) and only its length is kept: the loops iterate that many empty
  batches. Steps per epoch therefore come from the official loader;
- the official epoch loop and learning-rate code (``adjust_learning_rate``, ``adjust_lr``, the ``MultiStepLR``
  schedulers, the in-loop decay, FFSD's ``lambda_warmup``). Scripts whose loop lives in ``main()`` / ``__main__`` /
  ``train()`` are executed *sliced*: every statement that does not touch the schedule (forward, loss, logging,
  evaluation, checkpoints) is removed, keeping the control flow (``for``, ``if``, ``break``) around what stays. The
  exact source that ran is stored in the fixture (``provenance.executed``);
- the optimizers are the official ones (``optim.SGD(...)`` as the script builds it, over a stand-in parameter), with
  ``step()`` recording the learning rate of each param group instead of updating anything. FFSD's ``Trainer`` is
  built by its own ``__init__`` and its own ``train()`` runs, with ``train_with_test`` replaced by a recorder (the
  generator checks that the official ``train_with_test`` neither sets a learning rate nor a lambda), ``test`` by a
  stub and ``save_models`` by a no-op.

A fixture stores, per official param group, the learning rate at each optimizer step as runs ``[value, count]``
(run-length encoded, in step order), the same for each scheduled weight, the steps per epoch and how the official
loader gives them, and the hf_kd parameter-name prefixes each official group covers (``tests/test_schedules.py``
maps every hf_kd param group onto them). Values are the official Python floats, stored exactly (JSON ``repr``).

Not run in CI; one process per fixture (the official repositories share top-level module names).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import datetime
import hashlib
import importlib.util
import io
import json
import logging
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import generate_fixtures as gf  # noqa: E402  (official checkouts, provenance, in-memory patches)

OUT_DIR = HERE / "schedules"
CIFAR100_TRAIN, CIFAR100_TEST = 50000, 10000
IMAGENET_TRAIN, IMAGENET_VAL = 1281167, 50000  # ILSVRC 2012 (ImageNet-1k)

# the README command of SJLeo/FFSD (CIFAR-100); --model per preset
FFSD_ARGV = ["--dataroot", "unused", "--dataset", "cifar100", "--lambda_diversity", "1e-5",
             "--lambda_self_distillation", "1000", "--lambda_fusion", "10"]
FFSD_WEIGHTS = ("lambda_diversity", "lambda_fusion", "lambda_self_distillation")


FFSD_IMAGENET_ARGV = ["--dataroot", "unused", "--dataset", "imagenet", "--lambda_diversity", "1e-5",
                      "--lambda_self_distillation", "1000", "--lambda_fusion", "10", "--gpu_ids", "0,1"]
TORCHDISTILL_SCRIPT = "examples/torchvision/image_classification.py"
TORCHDISTILL_KD = "configs/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/kd-resnet18_from_resnet34.yaml"


def _ffsd(model: str) -> dict:
    return dict(kind="ffsd", repo="FFSD", script="cifar.py", argv=FFSD_ARGV + ["--model", model])


def _crd(repo: str, script: str, loop: str, argv: list[str]) -> dict:
    return dict(kind="crd", repo=repo, script=script, loop=loop, argv=argv)


RESNET32X4_T = ["--path_t", "./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth"]
WRN_40_2_T = ["--path_t", "./save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth"]

# preset (recipes/configs/<name>.yaml) -> the official run whose schedule it reproduces
SPECS = {
    "ffsd_cifar100_resnet20": _ffsd("resnet20"),
    "ffsd_cifar100_resnet32": _ffsd("resnet32"),
    "ffsd_cifar100_resnet56": _ffsd("resnet56"),
    "ffsd_cifar100_wrn_16_2": _ffsd("wideresnet1602"),
    "ffsd_cifar100_wrn_40_2": _ffsd("wideresnet4002"),
    # RepDistiller scripts/run_cifar_distill.sh (kd) and scripts/run_cifar_vanilla.sh (teachers)
    "kd_cifar100_resnet32x4_resnet8x4": _crd("RepDistiller", "train_student.py", "train_distill",
                                             RESNET32X4_T + ["--distill", "kd", "--model_s", "resnet8x4", "-r", "0.1",
                                                             "-a", "0.9", "-b", "0", "--trial", "1"]),
    "teacher_cifar100_resnet32x4": _crd("RepDistiller", "train_teacher.py", "train_vanilla",
                                        ["--model", "resnet32x4"]),
    "teacher_cifar100_wrn_40_2": _crd("RepDistiller", "train_teacher.py", "train_vanilla", ["--model", "wrn_40_2"]),
    # PEFD scripts/run_cifar.sh (ours); the WRN pair carries its -a 0 -b 25 over (the preset says so)
    "projector_kd_cifar100_resnet32x4_resnet8x4": _crd("PEFD", "train_student.py", "train_distill",
                                                       RESNET32X4_T + ["--distill", "ours", "--model_s", "resnet8x4",
                                                                       "-a", "0", "-b", "25", "--trial", "1"]),
    "projector_kd_cifar100_wrn_40_2_wrn_16_2": _crd("PEFD", "train_student.py", "train_distill",
                                                    WRN_40_2_T + ["--distill", "ours", "--model_s", "wrn_16_2",
                                                                  "-a", "0", "-b", "25", "--trial", "1"]),
    # Self-KD-Lib scripts/main_cifar.sh
    "mixskd_cifar100_resnet18": dict(kind="mixskd", repo="Self-KD-Lib", script="main_mixskd_cifar.py",
                                     argv=["--arch", "MixSKD_CIFAR_ResNet18"]),
    # LightSKD README: python train.py (its defaults are the CIFAR-100 ResNet-18 run)
    "self_kd_cifar100_resnet18": dict(kind="lightskd", repo="LightSKD", script="train.py", argv=[]),
    # --- ImageNet-1k (1,281,167 training images) ---
    # FFSD README: python distribute_imagenet.py --dataroot ... --dataset imagenet --model resnet18 ...
    "ffsd_imagenet1k_resnet18": dict(kind="ffsd_imagenet", repo="FFSD", script="distribute_imagenet.py",
                                     argv=FFSD_IMAGENET_ARGV + ["--model", "resnet18"], train_examples=IMAGENET_TRAIN),
    "ffsd_imagenet1k_resnet34": dict(kind="ffsd_imagenet", repo="FFSD", script="distribute_imagenet.py",
                                     argv=FFSD_IMAGENET_ARGV + ["--model", "resnet34"], train_examples=IMAGENET_TRAIN),
    # PEFD scripts/run_imagenet.sh
    "projector_kd_imagenet1k_resnet34_resnet18": {
        **_crd("PEFD", "train_student.py", "train_distill",
               ["--path_t", "./save/models/RESNET34_vanilla/ckpt_epoch_90.pth", "--distill", "ours", "--dataset",
                "imagenet", "--model_s", "RESNET18", "-a", "0", "-b", "25", "--trial", "1"]),
        "train_examples": IMAGENET_TRAIN},
    # Self-KD-Lib scripts/main_mixskd_imagenet.sh (8 GPUs of one node)
    "mixskd_imagenet1k_resnet50": dict(kind="mixskd_imagenet", repo="Self-KD-Lib", script="main_mixskd_imagenet.py",
                                       argv=["--arch", "MixSKD_ImageNet_ResNet50", "--batch-size", "128", "--init-lr",
                                             "0.1", "--warmup-epoch", "5", "--lr-type", "cosine", "--epochs", "305",
                                             "--mixup-alpha", "0.2", "--multiprocessing-distributed", "--gpu-id",
                                             "0,1,2,3,4,5,6,7", "--world-size", "1", "--rank", "0"],
                                       gpus=8, train_examples=IMAGENET_TRAIN),
    # torchdistill's published KD run (config + log); the CE baseline trains with the same protocol, no teacher
    "kd_imagenet1k_resnet34_resnet18": dict(kind="torchdistill", repo="torchdistill", script=TORCHDISTILL_SCRIPT,
                                            config=TORCHDISTILL_KD, argv=["--config", TORCHDISTILL_KD],
                                            train_examples=IMAGENET_TRAIN),
    "teacher_imagenet1k_resnet18": dict(kind="torchdistill", repo="torchdistill", script=TORCHDISTILL_SCRIPT,
                                        config=TORCHDISTILL_KD, argv=["--config", TORCHDISTILL_KD],
                                        train_examples=IMAGENET_TRAIN),
}

# official param group -> the hf_kd parameter-name prefixes it covers (the golden fixtures' module mapping)
FFSD_GROUPS = {"student0": ["aux.students.0."], "student1": ["aux.students.1."],
               "leader": ["student.", "aux.trans_fusion."], "fusion": ["aux.fusion."],
               "decoder1": ["aux.decoders.0."], "leader_decoder": ["aux.leader_decoder."]}


# --- data-free stand-ins -----------------------------------------------------------------------------------------
class Batches:
    """What the executed loops iterate instead of the official training DataLoader: as many empty batches as that
    loader has (``len``), each ``(None, None)``; ``dataset`` is the stand-in the official code built it over."""

    def __init__(self, n: int, dataset):
        self.n, self.dataset = n, dataset

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter([(None, None)] * self.n)


def install_stand_ins(log: list):
    """``torchvision.datasets.CIFAR100`` -> a data-free stand-in of the same size; ``torch.utils.data.DataLoader`` ->
    the real class built with the official arguments, of which only the length is kept (``Batches``). Installed
    before any official module is imported, so their ``from ... import`` get them."""
    import torch.utils.data
    import torchvision.datasets

    real_loader = torch.utils.data.DataLoader

    class StandInCIFAR100(torch.utils.data.Dataset):
        """CIFAR-100's split sizes and labels, no images (never indexed: only the loader's length is used)."""

        def __init__(self, root=None, train=True, transform=None, target_transform=None, download=False):
            n = CIFAR100_TRAIN if train else CIFAR100_TEST
            self.train, self.transform = train, transform
            self.targets = [i % 100 for i in range(n)]
            self.classes = [f"class_{i}" for i in range(100)]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, index):
            raise RuntimeError("the CIFAR-100 stand-in holds no images: only the loader's length is used")

    def loader(dataset, *args, **kwargs):
        real = real_loader(dataset, *args, **{**kwargs, "num_workers": 0, "pin_memory": False})
        sampler = kwargs.get("sampler")
        if kwargs.get("batch_sampler") is not None or \
                sampler is not None and not isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
            raise SystemExit("an official loader with its own sampler: record how it batches")
        log.append({"len(dataset)": len(dataset), "batch_size": real.batch_size, "drop_last": real.drop_last,
                    "batches": len(real), **({"sampler": f"DistributedSampler over {sampler.num_replicas} "
                                                         f"processes ({sampler.num_samples} examples each)"}
                                             if sampler is not None else {})})
        return Batches(len(real), dataset)

    class StandInImageFolder(torch.utils.data.Dataset):
        """ILSVRC 2012's split sizes (a root ending in 'train' is the training split), 1000 classes, no images."""

        def __init__(self, root=None, transform=None, target_transform=None, *args, **kwargs):
            n = IMAGENET_TRAIN if str(root).rstrip("/").endswith("train") else IMAGENET_VAL
            self.root, self.transform, self.targets = root, transform, [i % 1000 for i in range(n)]
            self.classes = [f"n{i:08d}" for i in range(1000)]
            self.imgs = self.samples = [("", t) for t in self.targets]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, index):
            raise RuntimeError("the ImageNet stand-in holds no images: only the loader's length is used")

    torchvision.datasets.CIFAR100 = StandInCIFAR100
    torchvision.datasets.ImageFolder = StandInImageFolder
    torch.utils.data.DataLoader = loader


def stub_missing_modules(names):
    """Plotting / HTML libraries the official modules import but the schedule never uses (only when absent)."""
    for name in names:
        root = name.split(".")[0]
        stubbed = root in sys.modules and getattr(sys.modules[root], "__spec__", None) is None
        if name in sys.modules or not stubbed and importlib.util.find_spec(root) is not None:
            continue
        module = types.ModuleType(name)
        module.__getattr__ = lambda attr: None
        sys.modules[name] = module


def recording_optim(log: list):
    """An ``optim`` namespace whose optimizers are the real torch classes, built with the official arguments, whose
    ``step()`` records the learning rate of each param group (in group order) instead of updating anything."""
    import torch

    def recording(cls):
        class Recording(cls):
            def step(self, closure=None):
                log.append([group["lr"] for group in self.param_groups])

        Recording.__name__ = cls.__name__
        return Recording

    return SimpleNamespace(SGD=recording(torch.optim.SGD), Adam=recording(torch.optim.Adam))


def stand_in_module(n_params: int = 1):
    """A module with parameters, for an official ``optim.SGD(x.parameters(), ...)`` over a network not built here."""
    import torch.nn as nn

    return nn.ModuleList([nn.Linear(1, 1, bias=False) for _ in range(n_params)])


# --- slicing the official loops ----------------------------------------------------------------------------------
_COMPOUND = (ast.For, ast.While, ast.If, ast.With)
_CONTROL = (ast.Break, ast.Continue, ast.Global, ast.Nonlocal)


def slice_statements(src: str, nodes, keep, bare_calls=(), kept=None) -> list:
    """The statements of ``nodes`` that ``keep(source)`` selects, with the ``for`` / ``while`` / ``if`` / ``with``
    around them (an empty branch becomes ``pass``) and every ``break`` / ``continue`` / ``global`` of a kept block.
    A kept ``x = f(...)`` with ``f`` in ``bare_calls`` becomes the bare call (its results feed only removed code).
    The line numbers of what is kept are added to ``kept``."""
    kept = set() if kept is None else kept
    out = []
    for node in nodes:
        if isinstance(node, _CONTROL):
            out.append(node)
            kept.add(node.lineno)
        elif isinstance(node, _COMPOUND):
            new, found, inner = copy.copy(node), False, set()
            for field in ("body", "orelse"):
                if hasattr(node, field):
                    part = slice_statements(src, getattr(node, field), keep, bare_calls, inner)
                    found |= any(not isinstance(s, _CONTROL) for s in part)
                    setattr(new, field, part)
            if found:
                new.body = new.body or [ast.Pass()]
                out.append(new)
                kept |= inner | {node.lineno}
        elif isinstance(node, ast.Try):
            if keep(ast.get_source_segment(src, node)):
                raise SystemExit("the schedule code sits in a try block; extend slice_statements")
        elif keep(ast.get_source_segment(src, node)):
            kept.update(range(node.lineno, node.end_lineno + 1))
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                    isinstance(node.value.func, ast.Name) and node.value.func.id in bare_calls:
                node = ast.copy_location(ast.Expr(node.value), node)
            out.append(node)
    return out


def sliced_source(src: str, top_keep, functions: dict, bare_calls=()) -> tuple[str, dict]:
    """The module ``src`` reduced to its schedule: top-level statements (the bodies of ``if __name__ ==
    '__main__'`` and of ``if args.evaluate: ... else:`` inlined, as ``generate_fixtures`` runs them) sliced by
    ``top_keep``; each function named in ``functions`` sliced by its own ``keep`` (or run as written: ``"whole"``);
    every other function dropped. Returns the source to run and what it keeps (line numbers of the official file),
    for the fixture."""
    body, top, kept_in = [], set(), {}
    for node in gf._flatten(ast.parse(src).body):
        if isinstance(node, ast.FunctionDef):
            if functions.get(node.name) == "whole":
                body.append(node)
                kept_in[node.name] = f"as written ({node.lineno}-{node.end_lineno})"
            elif node.name in functions:
                new, lines = copy.copy(node), {node.lineno}
                new.body = slice_statements(src, node.body, functions[node.name], bare_calls, lines) or [ast.Pass()]
                body.append(new)
                kept_in[node.name] = "sliced: " + _ranges(lines)
        else:
            body += slice_statements(src, [node], top_keep, bare_calls, top)
    code = ast.unparse(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[])))
    return code, {"top-level lines": _ranges(top), "functions (lines kept)": kept_in}


def _ranges(lines) -> str:
    """{3, 4, 5, 9} -> '3-5, 9'."""
    out, lines = [], sorted(lines)
    for n in lines:
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


def matcher(*patterns: str):
    regex = re.compile("|".join(patterns), re.M)
    return lambda text: bool(regex.search(text))


def run_sliced(patch, rel: str, namespace: dict, top_keep, functions: dict, patches=(), bare_calls=(),
               executed: dict = None) -> dict:
    """Slice the official file ``rel`` (after ``patches``) and execute it in ``namespace``. ``executed`` records
    which lines ran and the sha256 of the executed source (not the source itself: official code is never stored
    here; rerun the generator to see it)."""
    src = patch.apply(rel, (patch.repo / rel).read_text(), patches)
    code, kept = sliced_source(src, top_keep, functions, bare_calls)
    if executed is not None:
        executed[rel] = {**kept, "sha256 of the executed source": hashlib.sha256(code.encode()).hexdigest()}
    exec(compile(code, f"{patch.repo / rel} (sliced)", "exec"), namespace)
    return namespace


@contextlib.contextmanager
def command_line(argv: list[str]):
    saved, sys.argv = sys.argv, argv
    try:
        yield
    finally:
        sys.argv = saved


# --- the official runs -------------------------------------------------------------------------------------------
CRD_MAIN_KEEP = matcher(r"parse_option\(\)", r"_dataloaders?\w*\(", r"^optimizer = ", r"adjust_learning_rate\(",
                        r"(?<![\w.])train\(", r"opt\.(epochs|learning_rate|lr_decay_epochs|lr_decay_rate|batch_size)"
                                             r"\s*=(?!=)")


def run_crd(spec: dict, repo: Path) -> dict:
    """RepDistiller / PEFD ``train_student.py`` / ``train_teacher.py``: ``parse_option`` as written, ``main()``
    sliced to its data loaders, optimizer and epoch loop (``adjust_learning_rate(epoch, opt, optimizer)`` then
    ``train(...)``), ``train`` being ``helper/loops.py``'s loop sliced to its ``optimizer.step()`` per batch."""
    log, loaders, executed = [], [], {}
    install_stand_ins(loaders)
    with gf.official_imports(repo) as (patch, tmp):
        ns = {"__name__": "official_schedule", "optim": recording_optim(log), "trainable_list": stand_in_module(),
              "model": stand_in_module(), "module_list": None, "criterion_list": None, "criterion": None}
        loop = spec["loop"]
        run_sliced(patch, "helper/loops.py", ns, matcher(r"^(?!)"), {loop: matcher(r"optimizer\.step\(\)")},
                   executed=executed)
        ns["train"] = ns[loop]  # the scripts import it as ``train``
        data_module = "imagenet" if spec.get("train_examples") == IMAGENET_TRAIN else "cifar100"
        keep_top = matcher(r"^import (os|argparse|socket)$", r"^from helper\.util import",
                           rf"^from dataset\.{data_module} import")
        functions = {"parse_option": "whole", "get_teacher_name": "whole", "main": CRD_MAIN_KEEP}
        run_sliced(patch, spec["script"], ns, keep_top, functions, bare_calls=("train",), executed=executed)
        seen, adjust = [], ns["adjust_learning_rate"]

        def adjust_learning_rate(epoch, opt, optimizer):  # the official one, noting the opt main() passes it
            seen.append(opt)
            return adjust(epoch, opt, optimizer)

        ns["adjust_learning_rate"] = adjust_learning_rate
        with command_line([spec["script"], *spec["argv"]]):
            ns["main"]()
        opt = seen[0]  # after main()'s own overrides (ImageNet: batch 256, 100 epochs, lr 0.1, decay at 30/60/90)
    (train_loader,) = [entry for entry in loaders if entry["len(dataset)"] == spec.get("train_examples",
                                                                                           CIFAR100_TRAIN)]
    groups = [dict(name="network", hf_kd_prefixes=[""],
                   official="the one SGD group of train_student.py / train_teacher.py (student and any trained "
                            "projectors: everything hf_kd's optimizer holds)")]
    settings = {"epochs": opt.epochs, "learning_rate": opt.learning_rate, "lr_decay_epochs": opt.lr_decay_epochs,
                "lr_decay_rate": opt.lr_decay_rate, "batch_size": opt.batch_size}
    return dict(rows=[{"lr": row} for row in log], groups=groups, weights=[], loader=train_loader,
                settings=settings, executed=executed, patches=patch.applied)


def run_mixskd(spec: dict, repo: Path) -> dict:
    """Self-KD-Lib ``main_mixskd_cifar.py``: parser, ``load_dataset``, the SGD of ``__main__`` and its epoch loop,
    with ``train()`` sliced to its learning-rate code (``adjust_lr`` per epoch, and per batch during the warm-up)
    and its ``optimizer.step()``."""
    log, loaders, executed = [], [], {}
    install_stand_ins(loaders)
    with gf.official_imports(repo) as (patch, tmp):
        ns = {"__name__": "official_schedule", "optim": recording_optim(log), "trainable_list": stand_in_module(),
              "criterion_list": None}
        keep_top = matcher(r"^import argparse$", r"^from utils import", r"^from dataloader\.dataloaders import",
                           r"^from bisect import", r"^parser\b", r"^args = parser", r"= load_dataset\(",
                           r"^start_epoch = 0", r"^optimizer = optim", r"(?<![\w.])train\(")
        train_keep = matcher(r"adjust_lr\(", r"optimizer\.step\(\)")
        run_sliced(patch, spec["script"], ns, keep_top, {"train": train_keep}, executed=executed, patches=[
            ("args = parser.parse_args()", f"args = parser.parse_args({spec['argv']!r})",
             "the command line of scripts/main_cifar.sh (data and GPU flags left out: unused here)")])
    (train_loader,) = [entry for entry in loaders if entry["len(dataset)"] == CIFAR100_TRAIN]
    args = ns["args"]
    groups = [dict(name="network", hf_kd_prefixes=[""],
                   official="the one SGD group over trainable_list (network and discriminators)")]
    settings = {"epochs": args.epochs, "init_lr": args.init_lr, "lr_type": args.lr_type,
                "milestones": args.milestones, "warmup_epoch": args.warmup_epoch, "batch_size": args.batch_size}
    return dict(rows=[{"lr": row} for row in log], groups=groups, weights=[], loader=train_loader,
                settings=settings, executed=executed, patches=patch.applied)


def run_lightskd(spec: dict, repo: Path) -> dict:
    """LightSKD ``train.py``: parser, train loader, the SGD over ``net`` and ``ada_net`` and the ``__main__`` epoch
    loop (the in-place lr decay at the drop epochs, then ``train(epoch)`` sliced to its ``optimizer.step()`` per
    batch), without the loop's stray ``break`` after the first epoch."""
    log, loaders, executed = [], [], {}
    install_stand_ins(loaders)
    stub_missing_modules(["matplotlib", "matplotlib.pyplot", "seaborn", "pandas"])
    with gf.official_imports(repo) as (patch, tmp):
        ns = {"__name__": "official_schedule", "optim": recording_optim(log), "net": stand_in_module(),
              "ada_net": stand_in_module()}
        keep_top = matcher(r"^import argparse$", r"^from datasets import", r"^parser\b", r"^args = parser",
                           r"^trainloader = ", r"^optimizer = optim", r"\blr\b", r"(?<![\w.])train\(")
        run_sliced(patch, spec["script"], ns, keep_top, {"train": matcher(r"optimizer\.step\(\)")},
                   executed=executed, patches=[
                       ("args = parser.parse_args()", f"args = parser.parse_args({spec['argv']!r})",
                        "the command line: the defaults (CIFAR-100, ResNet-18, 200 epochs)"),
                       ("        full_test()\n        #single_test()\n        break\n",
                        "        full_test()\n        #single_test()\n",
                        "the released loop stops after its first epoch (a stray `break` after full_test()); the "
                        "schedule its arguments describe (200 epochs, lr x0.1 at 60/120/160) needs the loop to go "
                        "on. hf_kd's preset trains all 200 epochs")])
    (train_loader,) = [entry for entry in loaders if entry["len(dataset)"] == CIFAR100_TRAIN]
    args = ns["args"]
    groups = [dict(name="net", hf_kd_prefixes=["student."], official="SGD param group 0: net.parameters()"),
              dict(name="ada_net", hf_kd_prefixes=["aux.adapter."],
                   official="SGD param group 1: ada_net.parameters() (the adapter)")]
    settings = {"epoch": args.epoch, "initial_lr": args.initial_lr, "lr_drop_epoch": args.lr_drop_epoch,
                "lr_drop_percent": args.lr_drop_percent, "batch_size": args.batch_size}
    return dict(rows=[{"lr": row} for row in log], groups=groups, weights=[], loader=train_loader,
                settings=settings, executed=executed, patches=patch.applied)


FFSD_TRAIN_WITH_TEST_WRITES = re.compile(r"scheduler|param_groups|lambda_warmup|\[['\"]lr['\"]\]|"
                                         r"self\.lambda_\w+\s*=(?!=)|\bopt\.(lr|lambda_\w+)\s*=(?!=)")


def run_ffsd(spec: dict, repo: Path) -> dict:
    """FFSD ``cifar.py``: ``Trainer(opt, logger).train()`` of ``CIFARTrainer.py`` as written (its networks, SGD /
    Adam optimizers and ``MultiStepLR`` schedulers from ``utils.get_scheduler``, ``lambda_warmup(epoch)`` per epoch,
    the schedulers stepped after each epoch), with ``train_with_test`` replaced by a recorder that, per batch of the
    official train loader, reads every optimizer's learning rate and the three lambdas as the official
    ``train_with_test`` would read them."""
    loaders = []
    install_stand_ins(loaders)
    stub_missing_modules(["dominate", "dominate.tags"])
    with gf.official_imports(repo) as (patch, tmp):
        source = (repo / "CIFARTrainer.py").read_text()
        trainer_class = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
        body = next(n for n in trainer_class.body if isinstance(n, ast.FunctionDef) and n.name == "train_with_test")
        found = FFSD_TRAIN_WITH_TEST_WRITES.findall(ast.get_source_segment(source, body))
        if found:
            raise SystemExit(f"CIFARTrainer.train_with_test touches the schedule ({found}); the recorder that "
                             "replaces it assumes it only reads learning rates and lambdas")
        import CIFARTrainer
        from options.options import parser

        CIFARTrainer.Visualizer = lambda opt: SimpleNamespace(reset=lambda: None)
        opt = parser.parse_args(spec["argv"] + ["--checkpoints_dir", str(tmp)])
        t = CIFARTrainer.Trainer(opt, logging.getLogger("ffsd_schedule"))
        named = [(f"student{m}", o) for m, o in enumerate(t.optimizers)]
        named += [("leader", t.leader_optimizer), ("fusion", t.fusion_optimizer)]
        named += [(f"decoder{m + 1}", o) for m, o in enumerate(t.sd_optimizers)]
        named += [("leader_decoder", t.sd_leader_optimizer)]
        if [n for n, _ in named] != list(FFSD_GROUPS) or any(len(o.param_groups) != 1 for _, o in named):
            raise SystemExit(f"unexpected FFSD optimizers {[n for n, _ in named]}")
        rows = []

        def train_with_test(epoch, topk=(1,)):
            for _ in t.trainLoader:
                rows.append({"lr": [o.param_groups[0]["lr"] for _, o in named],
                             "weights": [getattr(t, w) for w in FFSD_WEIGHTS], "epoch": epoch})

        meter = SimpleNamespace(avg=0.0)
        t.train_with_test = train_with_test
        t.test = lambda epoch, topk=(1,): (None, [meter] * (t.model_num + 2), None, meter, meter)
        t.save_models = lambda *a, **k: None
        with warnings.catch_warnings():  # the schedulers step without an optimizer.step(): torch warns once
            warnings.simplefilter("ignore")
            t.train()
    (train_loader,) = [entry for entry in loaders if entry["len(dataset)"] == CIFAR100_TRAIN]
    optimizers = {n: f"{type(o).__name__} (lr {o.defaults['lr']}, weight decay {o.defaults['weight_decay']})"
                  for n, o in named}
    where = {"student0": "Trainer.optimizers[0]: models[0]", "student1": "Trainer.optimizers[1]: models[1]",
             "leader": "Trainer.leader_optimizer: leader_model (with its trans-fusion module)",
             "fusion": "Trainer.fusion_optimizer: fusion_module", "decoder1": "Trainer.sd_optimizers[0]: sd_models[0]",
             "leader_decoder": "Trainer.sd_leader_optimizer: sd_leader_model"}
    groups = [dict(name=n, hf_kd_prefixes=FFSD_GROUPS[n], official=f"{where[n]}, {optimizers[n]}, its own "
                                                                    "MultiStepLR") for n in FFSD_GROUPS]
    epochs = [r["epoch"] for r in rows]
    settings = {"n_epochs": opt.n_epochs, "start_epoch": opt.start_epoch, "epochs run": [epochs[0], epochs[-1]],
                "lr": opt.lr, "lr_policy": opt.lr_policy, "lr_decay_iters": opt.lr_decay_iters,
                "lr_decay_gamma": opt.lr_decay_gamma, "train_batch_size": opt.train_batch_size,
                "model_num": opt.model_num, **{w: getattr(opt, w) for w in FFSD_WEIGHTS}}
    executed = {"CIFARTrainer.py": "Trainer.__init__ and Trainer.train as written; train_with_test replaced by the "
                                   "recorder (per batch: every optimizer's lr, lambda_diversity, lambda_fusion, "
                                   "lambda_self_distillation), test by a stub returning accuracy 0, save_models "
                                   "by a no-op, Visualizer by a no-op"}
    return dict(rows=rows, groups=groups, weights=list(FFSD_WEIGHTS), loader=train_loader, settings=settings,
                executed=executed, patches=patch.applied)


def run_ffsd_imagenet(spec: dict, repo: Path) -> dict:
    """FFSD ImageNet: ``ImageNetTrainer.Trainer`` built by its own ``__init__`` (networks at 224 px, SGD / Adam, the
    decoders' ``MultiStepLR`` over ``lr_decay_iters`` [30, 60, 80], ``n_epochs`` forced to 90, batch 256) and its own
    ``train()`` (``lambda_warmup(epoch)`` per epoch, the decoders' schedulers stepped after each epoch), with
    ``train_with_test`` replaced by a recorder that, per batch of the official loader, calls the official
    ``adjust_learning_rates(epoch, batch, dataset_size // train_batch_size)`` exactly as the official
    ``train_with_test`` does first in its batch loop, then reads every optimizer's lr and the three lambdas.
    README's launcher ``distribute_imagenet.py`` runs ``DistributeImageNetTrainer``, whose schedule code is the same
    (checked below) but whose ``__init__`` reads ``opt.leader_weight_decay``, an option ``options/options.py`` never
    defines: it fails as released, so the single-process twin builds the optimizers here."""
    loaders = []
    install_stand_ins(loaders)
    stub_missing_modules(["dominate", "dominate.tags"])
    with gf.official_imports(repo) as (patch, tmp):
        schedule_line = re.compile(r"for epoch in|lambda_warmup|train_with_test\(|scheduler|self\.(start_)?epochs =")

        def method_source(file, name):
            """A Trainer method's code; of ``train`` and ``__init__`` only the schedule lines (the rest, evaluation
            and logging, differ between the two trainers)."""
            src = (repo / file).read_text()
            cls = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
            fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)
            code = ast.unparse(fn)
            if name in ("train", "__init__"):
                code = "\n".join(line.strip() for line in code.splitlines() if schedule_line.search(line))
            return code

        for name in ("adjust_learning_rates", "lambda_warmup", "train", "__init__"):
            if method_source("ImageNetTrainer.py", name) != method_source("DistributeImageNetTrainer.py", name):
                raise SystemExit(f"ImageNetTrainer.{name} differs from DistributeImageNetTrainer.{name}")
        call = "self.adjust_learning_rates(epoch, batch, dataset_size // self.train_batch_size)"
        for file in ("ImageNetTrainer.py", "DistributeImageNetTrainer.py"):
            if (repo / file).read_text().count(call) != 1:
                raise SystemExit(f"{file}: train_with_test no longer sets the lr by `{call}` once per batch")
        import ImageNetTrainer
        from options.options import parser

        opt = parser.parse_args(spec["argv"] + ["--checkpoints_dir", str(tmp)])
        opt.gpu_ids = [int(i) for i in opt.gpu_ids.split(",")]  # options.parse() does this
        opt.data_path = opt.dataroot  # data/imagenet.py reads opt.data_path, which the option file never defines
        t = ImageNetTrainer.Trainer(opt, logging.getLogger("ffsd_schedule"))
        named = [(f"student{m}", o) for m, o in enumerate(t.optimizers)]
        named += [("leader", t.leader_optimizer), ("fusion", t.fusion_optimizer)]
        named += [(f"decoder{m + 1}", o) for m, o in enumerate(t.sd_optimizers)]
        named += [("leader_decoder", t.sd_leader_optimizer)]
        if [n for n, _ in named] != list(FFSD_GROUPS) or any(len(o.param_groups) != 1 for _, o in named):
            raise SystemExit(f"unexpected FFSD optimizers {[n for n, _ in named]}")
        rows = []

        def train_with_test(epoch, topk=(1,)):
            dataset_size = len(t.trainLoader.dataset)
            for batch, _ in enumerate(t.trainLoader):
                t.adjust_learning_rates(epoch, batch, dataset_size // t.train_batch_size)  # the official call
                rows.append({"lr": [o.param_groups[0]["lr"] for _, o in named],
                             "weights": [getattr(t, w) for w in FFSD_WEIGHTS], "epoch": epoch})

        meter = SimpleNamespace(avg=0.0)
        t.train_with_test = train_with_test
        t.test = lambda epoch, topk=(1,): (None, [meter] * (t.model_num + 2), None, meter, meter)
        t.save_models = lambda *a, **k: None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t.train()
    (train_loader,) = [entry for entry in loaders if entry["len(dataset)"] == IMAGENET_TRAIN]
    optimizers = {n: f"{type(o).__name__} (lr {o.defaults['lr']}, weight decay {o.defaults['weight_decay']})"
                  for n, o in named}
    where = {"student0": "Trainer.optimizers[0]", "student1": "Trainer.optimizers[1]",
             "leader": "Trainer.leader_optimizer (with its trans-fusion module)", "fusion": "Trainer.fusion_optimizer",
             "decoder1": "Trainer.sd_optimizers[0] (MultiStepLR per epoch)",
             "leader_decoder": "Trainer.sd_leader_optimizer (MultiStepLR per epoch)"}
    groups = [dict(name=n, hf_kd_prefixes=FFSD_GROUPS[n], official=f"{where[n]}, {optimizers[n]}")
              for n in FFSD_GROUPS]
    epochs = [r["epoch"] for r in rows]
    settings = {"n_epochs (forced)": t.opt.n_epochs, "start_epoch": opt.start_epoch,
                "epochs run": [epochs[0], epochs[-1]], "lr": opt.lr, "lr_decay_iters (forced)": t.opt.lr_decay_iters,
                "train_batch_size (forced)": t.opt.train_batch_size, "fusion_spatial": t.fusion_spatil,
                "len_epoch of the warm-up": IMAGENET_TRAIN // t.train_batch_size, "model": opt.model,
                **{w: getattr(opt, w) for w in FFSD_WEIGHTS}}
    executed = {"ImageNetTrainer.py": "Trainer.__init__, Trainer.train, lambda_warmup and adjust_learning_rates as "
                                      "written (identical to DistributeImageNetTrainer's); train_with_test replaced by "
                                      "the recorder (its official adjust_learning_rates call per batch, then every "
                                      "optimizer's lr and the three lambdas), test by a stub, save_models by a no-op"}
    return dict(rows=rows, groups=groups, weights=list(FFSD_WEIGHTS), loader=train_loader, settings=settings,
                executed=executed, patches=patch.applied + [
                    {"what": "opt.data_path = opt.dataroot", "why": "data/imagenet.py reads opt.data_path, which "
                     "options/options.py never defines (the README passes --dataroot)"},
                    {"what": "ImageNetTrainer instead of DistributeImageNetTrainer", "why": "the README's "
                     "distribute_imagenet.py reads opt.leader_weight_decay, never defined, and fails; the two "
                     "trainers' train, lambda_warmup and adjust_learning_rates are identical (checked), and both "
                     "build the optimizers with the same lr (only the leader's weight decay differs)"}])


def run_mixskd_imagenet(spec: dict, repo: Path) -> dict:
    """Self-KD-Lib ``main_mixskd_imagenet.py``: its parser on the script's command line, its module-level
    ``adjust_lr`` as written, its SGD (``optim.SGD(trainable_list.parameters(), lr=0.1, momentum=0.9,
    weight_decay=args.weight_decay)``), the per-GPU batch ``int(args.batch_size / ngpus_per_node)`` and the training
    loader over a ``DistributedSampler`` of 8 processes. ``train()`` is nested in ``main_worker`` (not sliceable
    here), so its schedule statements run in their official order: per epoch ``if epoch >= args.warmup_epoch:
    adjust_lr(optimizer, epoch, args)``, then per batch ``if epoch < args.warmup_epoch: adjust_lr(optimizer, epoch,
    args, batch_idx, len(trainloader))`` and ``optimizer.step()`` (checked present in the file)."""
    import torch

    log, loaders, executed = [], [], {}
    install_stand_ins(loaders)
    with gf.official_imports(repo) as (patch, tmp):
        src = (repo / spec["script"]).read_text()
        for needed in ("if epoch >= args.warmup_epoch:\n            lr = adjust_lr(optimizer, epoch, args)",
                       "if epoch < args.warmup_epoch:\n                lr = adjust_lr(optimizer, epoch, args, batch_idx, "
                       "len(trainloader))", "for epoch in range(start_epoch, args.epochs):",
                       "args.batch_size = int(args.batch_size / ngpus_per_node)",
                       "optimizer = optim.SGD(trainable_list.parameters(),\n                          lr=0.1, "
                       "momentum=0.9, weight_decay=args.weight_decay)"):
            if src.count(needed) != 1:
                raise SystemExit(f"{spec['script']}: expected once: {needed!r}")
        ns = {"__name__": "official_schedule"}
        keep_top = matcher(r"^import (argparse|math)\s*$", r"^from bisect import", r"^parser\b")
        run_sliced(patch, spec["script"], ns, keep_top, {"adjust_lr": "whole"}, executed=executed)
        # main(): args = parser.parse_args(), on the command line of scripts/main_mixskd_imagenet.sh (data and
        # checkpoint paths left out: unused)
        args, adjust_lr = ns["parser"].parse_args(spec["argv"]), ns["adjust_lr"]
        ngpus_per_node = spec["gpus"]  # the script's --gpu-id 0,...,7 on one node
        args.batch_size = int(args.batch_size / ngpus_per_node)
        train_set = __import__("torchvision").datasets.ImageFolder("train")
        sampler = torch.utils.data.distributed.DistributedSampler(train_set, num_replicas=ngpus_per_node, rank=0)
        trainloader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=False,
                                                  num_workers=args.num_workers, pin_memory=True, sampler=sampler)
        optimizer = recording_optim(log).SGD(stand_in_module().parameters(), lr=0.1, momentum=0.9,
                                             weight_decay=args.weight_decay)
        for epoch in range(0, args.epochs):
            if epoch >= args.warmup_epoch:
                adjust_lr(optimizer, epoch, args)
            for batch_idx, _ in enumerate(trainloader):
                if epoch < args.warmup_epoch:
                    adjust_lr(optimizer, epoch, args, batch_idx, len(trainloader))
                optimizer.step()
    (train_loader,) = [entry for entry in loaders if entry["len(dataset)"] == IMAGENET_TRAIN]
    train_loader["how"] = ("a torch DataLoader with the script's per-GPU batch (128 / 8 = 16) over a DistributedSampler "
                           "of 8 processes of a stand-in of ILSVRC 2012's 1,281,167 training images: 10010 batches "
                           "per process per epoch (global batch 128)")
    groups = [dict(name="network", hf_kd_prefixes=[""],
                   official="the one SGD group over trainable_list (network and discriminators)")]
    settings = {"epochs": args.epochs, "init_lr": args.init_lr, "lr_type": args.lr_type,
                "warmup_epoch": args.warmup_epoch, "per-GPU batch_size": args.batch_size, "gpus": ngpus_per_node,
                "weight_decay": args.weight_decay, "mixup_alpha": args.mixup_alpha}
    executed[spec["script"]]["loop"] = ("train()'s two adjust_lr calls and optimizer.step() in their official order "
                                        "(train() is nested in main_worker)")
    return dict(rows=[{"lr": row} for row in log], groups=groups, weights=[], loader=train_loader,
                settings=settings, executed=executed, patches=patch.applied)


class _AnyTag(__import__("yaml").SafeLoader):
    """torchdistill's YAML with its custom tags (!import_call, !join, ...) read as plain data, nothing constructed."""


_AnyTag.add_multi_constructor("!", lambda loader, suffix, node: (
    loader.construct_mapping(node, deep=True) if isinstance(node, __import__("yaml").MappingNode) else
    loader.construct_sequence(node, deep=True) if isinstance(node, __import__("yaml").SequenceNode) else
    loader.construct_scalar(node)))


def run_torchdistill(spec: dict, repo: Path) -> dict:
    """torchdistill's published run: the config's ``train.optimizer`` (SGD) and ``train.scheduler`` (MultiStepLR,
    stepped once per epoch by the box's ``post_epoch_process``), the lr multiplied by ``lr_factor`` as
    ``examples/torchvision/image_classification.py`` does (``world_size if distributed and args.adjust_lr``, with
    ``world_size=3, adjust_lr=True`` from the log's Namespace line), the training loader of the config's batch size
    and drop_last over a ``DistributedSampler`` of ``world_size`` processes. The result is checked against the lr
    the log prints at the first batch of every epoch, and the log's batches per epoch."""
    import torch
    import yaml

    log, loaders = [], []
    install_stand_ins(loaders)
    config = yaml.load((repo / spec["config"]).read_text(), Loader=_AnyTag)
    log_text = (repo / spec["config"].replace(".yaml", ".log")).read_text()
    namespace = re.search(r"Namespace\((.*)\)", log_text).group(1)
    world_size = int(re.search(r"world_size=(\d+)", namespace).group(1))
    adjust_lr = re.search(r"adjust_lr=(\w+)", namespace).group(1) == "True"
    script = (repo / spec["script"]).read_text()
    if "lr_factor = world_size if distributed and args.adjust_lr else 1" not in script:
        raise SystemExit(f"{spec['script']} no longer scales the lr by world_size under -adjust_lr")
    lr_factor = world_size if world_size > 1 and adjust_lr else 1
    train = config["train"]
    opt_cfg, sched_cfg, loader_cfg = train["optimizer"], train["scheduler"], train["train_data_loader"]["kwargs"]
    if opt_cfg["key"] != "SGD" or sched_cfg["key"] != "MultiStepLR" or sched_cfg.get("scheduling_step", 0):
        raise SystemExit("a torchdistill config other than SGD + per-epoch MultiStepLR")
    kwargs = dict(opt_cfg["kwargs"])
    kwargs["lr"] = kwargs["lr"] * lr_factor  # torchdistill's get_optimizer: lr * lr_factor
    optimizer = recording_optim(log).SGD(stand_in_module().parameters(), **kwargs)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, **sched_cfg["kwargs"])
    train_set = __import__("torchvision").datasets.ImageFolder("train")
    sampler = torch.utils.data.distributed.DistributedSampler(train_set, num_replicas=world_size, rank=0)
    loader = torch.utils.data.DataLoader(train_set, batch_size=loader_cfg["batch_size"],
                                         drop_last=loader_cfg["drop_last"], sampler=sampler)
    firsts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(0, train["num_epochs"]):
            firsts.append(len(log))
            for _ in loader:
                optimizer.step()
            scheduler.step()
    logged = re.findall(r"Epoch: \[(\d+)\]\s+\[\s*0/(\d+)\].*?lr: ([0-9.e-]+)", log_text)
    if [int(e) for e, _, _ in logged] != list(range(train["num_epochs"])):
        raise SystemExit("the log does not print the first batch of every epoch")
    for e, n, lr in logged:
        if int(n) != len(loader) or float(lr) != log[firsts[int(e)]][0]:
            raise SystemExit(f"epoch {e}: the log has {n} batches and lr {lr}, the schedule {len(loader)} and "
                             f"{log[firsts[int(e)]][0]!r}")
    (train_loader,) = [entry for entry in loaders if entry["len(dataset)"] == IMAGENET_TRAIN]
    train_loader["how"] = (f"a torch DataLoader with the config's batch_size {loader_cfg['batch_size']} and drop_last "
                           f"over a DistributedSampler of the log's {world_size} processes of a stand-in of ILSVRC "
                           f"2012's 1,281,167 training images; the batches per epoch equal the log's")
    groups = [dict(name="student", hf_kd_prefixes=[""], official="the one SGD group over the student")]
    settings = {"num_epochs": train["num_epochs"], "optimizer": opt_cfg, "scheduler": sched_cfg,
                "train_data_loader": loader_cfg, "log: world_size": world_size, "log: adjust_lr": adjust_lr,
                "lr_factor": lr_factor, "checked against the log": f"lr and batches of the first batch of all "
                                                                   f"{len(logged)} epochs"}
    executed = {spec["config"]: "train.optimizer, train.scheduler, train.num_epochs, train.train_data_loader read "
                                "from the config; the SGD and MultiStepLR are torch's, built with them",
                spec["script"]: "lr_factor = world_size if distributed and args.adjust_lr else 1 (checked present)"}
    return dict(rows=[{"lr": row} for row in log], groups=groups, weights=[], loader=train_loader,
                settings=settings, executed=executed, patches=[])


RUNNERS = {"crd": run_crd, "mixskd": run_mixskd, "lightskd": run_lightskd, "ffsd": run_ffsd,
           "ffsd_imagenet": run_ffsd_imagenet, "mixskd_imagenet": run_mixskd_imagenet,
           "torchdistill": run_torchdistill}


# --- one fixture -------------------------------------------------------------------------------------------------
def run_length(values: list) -> list:
    """Runs of equal consecutive values, in order: ``[value, count]``, or the bare value for a run of one (MixSKD's
    per-step warm-up is 3,909 distinct values)."""
    runs = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return [value if count == 1 else [value, count] for value, count in runs]


def generate(name: str) -> dict:
    import torch

    spec = SPECS[name]
    repo = gf.repo_path(spec["repo"])
    prov = gf.provenance(spec["repo"])
    with contextlib.redirect_stdout(io.StringIO()):
        out = RUNNERS[spec["kind"]](spec, repo)
    rows, loader = out["rows"], out["loader"]
    spe = loader["batches"]
    if not rows or len(rows) % spe:
        raise SystemExit(f"{name}: {len(rows)} recorded optimizer steps are not whole epochs of {spe} batches")
    lr_rows = [r["lr"] for r in rows]
    if any(len(r) != len(out["groups"]) for r in lr_rows):
        raise SystemExit(f"{name}: the official optimizer has {len(lr_rows[0])} param groups, the fixture names "
                         f"{len(out['groups'])}")
    groups = []
    for i, g in enumerate(out["groups"]):
        runs = run_length([r[i] for r in lr_rows])
        same = next((h["name"] for h in groups if h.get("lr") == runs), None) if len(runs) > 1000 else None
        # a long lr series equal to an earlier group's at every step names that group (FFSD's 4 SGD groups: the
        # ImageNet warm-up is 20,020 distinct values each)
        groups.append({**g, "lr_same_as": same} if same else {**g, "lr": runs})
    weights = {w: run_length([r["weights"][i] for r in rows]) for i, w in enumerate(out["weights"])}
    command = f"python {spec['script']} " + " ".join(spec["argv"])
    return {
        "preset": f"recipes/configs/{name}.yaml",
        "description": "The official schedule of this preset's run: per optimizer step, the learning rate of every "
                       "official param group and every scheduled loss weight, as runs in step order ([value, count], "
                       "or a bare value for a run of one); see tests/golden/README.md",
        "provenance": {**prov, "command": command, "generator": "tests/golden/generate_schedules.py",
                       "generated": datetime.date.today().isoformat(), "torch": torch.__version__,
                       "patches": out["patches"], "executed": out["executed"]},
        "data": {"train_examples": spec.get("train_examples", CIFAR100_TRAIN), "batch_size": loader["batch_size"],
                 "drop_last": loader["drop_last"], **{k: loader[k] for k in ("sampler",) if k in loader},
                 "how": loader.get("how", "the official training DataLoader, built by the official data code over a "
                                          "stand-in of " + ("CIFAR-100's 50,000" if spec.get("train_examples",
                                          CIFAR100_TRAIN) == CIFAR100_TRAIN else "ILSVRC 2012's 1,281,167") +
                                          " training images; its len() is the number of batches per epoch")},
        "official_settings": out["settings"],
        "steps_per_epoch": spe,
        "epochs": len(rows) // spe,
        "steps": len(rows),
        "groups": groups,
        "weights": weights,
    }


def save(name: str, fixture: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    runs = {}  # the run lists go on one line each (a warm-up is thousands of runs)

    def compact(series: list) -> str:
        key = f"@runs{len(runs)}@"
        runs[key] = json.dumps(series, separators=(",", ":"))
        return key

    fixture = {**fixture, "groups": [{**g, "lr": compact(g["lr"])} if "lr" in g else g for g in fixture["groups"]],
               "weights": {k: compact(v) for k, v in fixture["weights"].items()}}
    text = json.dumps(fixture, indent=1)
    for key, value in runs.items():
        text = text.replace(json.dumps(key), value)
    path.write_text(text + "\n")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(SPECS), help=f"presets (default: all of {list(SPECS)})")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: this process, one preset
    a = parser.parse_args()
    unknown = set(a.names) - set(SPECS)
    if unknown:
        raise SystemExit(f"unknown presets {sorted(unknown)}; known: {list(SPECS)}")
    if a.one:
        for name in a.names:
            path = save(name, generate(name))
            fixture = json.loads(path.read_text())
            print(f"wrote {path.relative_to(HERE.parent.parent)} ({path.stat().st_size / 1024:.0f} KiB): "
                  f"{fixture['epochs']} epochs x {fixture['steps_per_epoch']} steps, "
                  f"{sum(len(g.get('lr', [])) for g in fixture['groups'])} lr runs, "
                  f"{sum(len(w) for w in fixture['weights'].values())} weight runs")
        return
    for name in a.names:  # one process per preset: the official repositories share module names
        subprocess.run([sys.executable, __file__, "--one", name], check=True)


if __name__ == "__main__":
    main()
