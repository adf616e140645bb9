"""Per-epoch time of the fast path (``fast_path=True``) against the eager trainers and a plain ``Trainer``, on one GPU.

Every trainer trains ``cifar_resnet32`` (KD and PEFD: a random frozen ``cifar_resnet32x4`` teacher, as their
presets) at batch 128 on 50,000 random 32x32 uint8 images with 100 classes held in memory (no dataset, no internet;
pixel content does not change the speed), with the data layer's batched CIFAR augmentation, in fp32 and bf16.
Rows, for each precision:

- ``plain``: a stock ``transformers.Trainer`` with cross-entropy (``benchmarks/throughput.py``'s ``PlainTrainer``);
- ``eager``: the hf_kd trainer as it runs by default;
- ``fast (CUDA graph)``: ``fast_path=True`` with ``FastStep.mode="cuda_graph"``: the eager step captured whole in a
  ``torch.cuda.CUDAGraph`` (no compiler; a few seconds of set-up);
- ``fast (compiled)``: ``fast_path=True`` as it runs by default: ``torch.compile(mode="reduce-overhead")`` of the whole
  step (inductor + CUDA graphs; minutes of compile), measured last, for as many trainers as the budget leaves.

Each row runs a few untimed warm-up steps (compile / capture included; its wall time is the ``set-up s`` column),
then a timed window of at most ``--window`` seconds or 390 steps, synchronised at both ends; the epoch time is
ms/step x 390 (50,000 images at batch 128, last partial batch dropped), i.e. an extrapolation from the window when it
holds fewer than 390 steps (the ``steps`` column). FFSD's rows add the 299-epoch schedule (training only, no
evaluation): epoch time x 299. GPU utilisation is NVML's (``torch.cuda.utilization`` or ``nvidia-smi``) sampled every
0.1 s over the window; peak memory is ``torch.cuda.max_memory_allocated`` over the whole row.

The whole run is budgeted (``--budget``, default 380 s): rows run in worker subprocesses that are killed at their
deadline, rows print as they complete, failures are reported per row, and the table is printed at the end and
written to ``$OUT/fast_path.md`` when ``OUT`` is set.

    python benchmarks/fast_path.py
    python benchmarks/fast_path.py --budget 900 --window 5
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEPS_PER_EPOCH = 390
BATCH = 128


# --- one row (inside a worker) ----------------------------------------------------------------------------------------
class _Util:
    """NVML GPU utilisation sampled every 0.1 s in a thread."""

    def __init__(self):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read():
        import torch

        try:
            return float(torch.cuda.utilization())
        except Exception:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", str(torch.cuda.current_device())], capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(self.read())
            except Exception:
                return
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)

    @property
    def mean(self):
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timer_callback(warmup: int, window: float, result: dict):
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            result["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                _sync()
                result["setup_s"] = time.perf_counter() - result["t0"]
                self.util = _Util().__enter__()
                self.start = time.perf_counter()
            elif state.global_step > warmup:
                n = state.global_step - warmup
                if n >= STEPS_PER_EPOCH or time.perf_counter() - self.start >= window:
                    _sync()
                    result["elapsed"], result["steps"] = time.perf_counter() - self.start, n
                    self.util.__exit__()
                    result["util"] = self.util.mean
                    control.should_training_stop = True

    return Timer()


def run_row(spec: dict, images, window: float) -> dict:
    import torch
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    import hf_kd
    from hf_kd.data import BatchAugment, ImageCollator
    from hf_kd.data.loading import CIFAR100_MEAN, CIFAR100_STD
    import yaml

    from hf_kd.methods import get_method

    sys.path.insert(0, HERE)
    from throughput import PlainTrainer

    method, precision, path = spec["method"], spec["precision"], spec["path"]
    warmup = 5
    result = {}
    bf16 = precision == "bf16"
    common = dict(output_dir="/tmp/hf_kd_fast_path_bench", max_steps=warmup + STEPS_PER_EPOCH,
                  per_device_train_batch_size=BATCH, report_to=[], save_strategy="no", eval_strategy="no",
                  logging_strategy="steps", logging_steps=100, bf16=bf16, dataloader_drop_last=True, seed=0,
                  disable_tqdm=True, use_cpu=not torch.cuda.is_available())  # CPU: a dry run of the script

    def student(arch="cifar_resnet32", seed=0):
        torch.manual_seed(seed)
        return hf_kd.create_student(arch, 100, mean=CIFAR100_MEAN, std=CIFAR100_STD)

    aug = BatchAugment(CIFAR100_MEAN, CIFAR100_STD, "cifar")
    timer = _timer_callback(warmup, window, result)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if path == "plain":
        tr = PlainTrainer(model=student(), args=TrainingArguments(
            **common, remove_unused_columns=False, learning_rate=0.1, optim="sgd",
            optim_args="momentum=0.9,nesterov=True", weight_decay=5e-4), train_dataset=images,
            data_collator=ImageCollator(), augmentation=aug, callbacks=[timer])
    else:
        cls = get_method(method)
        args_cls = cls.args_class
        teacher = "cifar_resnet32x4" if cls.uses_teacher == "required" else None  # the presets' KD teacher
        preset = yaml.safe_load(open(os.path.join(ROOT, "recipes", "configs", cls.reference_preset))) \
            if cls.reference_preset else {}
        extra = {k: preset[k] for k in ("pad_mode",) if k in preset}  # FFSD's reflect padding
        # a method whose arguments declare their own optimiser (FFSD: SGD over the networks + Adam) keeps it
        own_optimizer = "optim" in vars(args_cls).get("__annotations__", {})
        opt = {} if own_optimizer else dict(learning_rate=0.1, optim="sgd", optim_args="momentum=0.9,nesterov=True",
                                            weight_decay=5e-4)
        args = args_cls(**common, **opt, **extra, fast_path=path != "eager")
        tr = cls(model=student(), teacher=student(teacher, 1) if teacher else None, args=args,
                 train_dataset=images, augmentation=aug, callbacks=[timer])
        if path == "fast_cuda_graph":
            tr.fast_step.mode = "cuda_graph"
    tr.remove_callback(PrinterCallback)
    from torch._dynamo.utils import counters

    skips = sum(counters["inductor"].get(k, 0) for k in list(counters["inductor"]) if "cudagraph_skip" in k)
    tr.train()
    if "elapsed" not in result:
        raise RuntimeError("the timed window did not complete")
    ms = result["elapsed"] / result["steps"] * 1e3
    skips = sum(counters["inductor"].get(k, 0) for k in list(counters["inductor"]) if "cudagraph_skip" in k) - skips
    out = dict(spec, ms_step=ms, epoch_s=ms * STEPS_PER_EPOCH / 1e3, steps=result["steps"], util=result["util"],
               peak_mib=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan"),
               setup_s=result["setup_s"])
    if path == "fast_compiled" and skips:
        out["note"] = f"inductor skipped CUDA graphs {skips}x"
    del tr
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def worker(specs: list[dict], deadline: float, window: float):
    """Run rows in order; one JSON line per row on stdout. Exit 3 after a CUDA error (the context may be broken)."""
    import torch

    import hf_kd  # noqa: F401  (registers the CIFAR backbones)
    from hf_kd.data import InMemoryImages

    g = torch.Generator().manual_seed(0)
    n = STEPS_PER_EPOCH * BATCH + BATCH
    images = InMemoryImages(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                            torch.randint(0, 100, (n,), generator=g))
    if torch.cuda.is_available():
        torch.zeros(1, device="cuda").sum().item()  # CUDA context before the first row
    for spec in specs:
        left = deadline - time.time()
        if left < spec.get("min_s", 10):
            print("ROW " + json.dumps(dict(spec, error=f"not run: {left:.0f} s of the budget left")), flush=True)
            continue
        try:
            row = run_row(spec, images, window)
        except Exception as e:  # report the row, keep the table
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:200]
            print("ROW " + json.dumps(dict(spec, error=msg)), flush=True)
            if "CUDA" in msg or "cuda" in msg:
                sys.exit(3)
            continue
        print("ROW " + json.dumps(row), flush=True)


# --- orchestration ------------------------------------------------------------------------------------------------------
def run_worker(specs, deadline, window, on_row) -> list[dict]:
    """Run ``specs`` in worker subprocesses until done or ``deadline``; restart after a worker dies."""
    done = []
    remaining = list(specs)
    while remaining and time.time() < deadline - 5:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(remaining), "--deadline",
               str(deadline), "--window", str(window)]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        err_tail = []

        def drain(stream=proc.stderr, tail=err_tail):  # keep the last lines of the worker's stderr
            for line in stream:
                tail.append(line)
                del tail[:-20]

        threading.Thread(target=drain, daemon=True).start()
        killer = threading.Timer(max(1.0, deadline - time.time()), proc.kill)
        killer.start()
        for line in proc.stdout:
            if line.startswith("ROW "):
                row = json.loads(line[4:])
                done.append(row)
                remaining = remaining[1:]
                on_row(row)
        proc.wait()
        killer.cancel()
        if remaining and proc.returncode not in (0, 3):
            why = "killed at its time budget" if time.time() >= deadline - 1 else \
                f"worker exited {proc.returncode}: {''.join(err_tail[-3:]).strip()[-200:]}"
            row = dict(remaining[0], error=why)
            done.append(row)
            on_row(row)
            remaining = remaining[1:]
    for spec in remaining:
        row = dict(spec, error="not run: budget spent")
        done.append(row)
        on_row(row)
    return done


PATH_NAMES = {"plain": "plain Trainer (CE)", "eager": "eager", "fast_cuda_graph": "fast (CUDA graph)",
              "fast_compiled": "fast (compiled, reduce-overhead)"}


def fmt_row(r: dict, plain: dict) -> str:
    name = "plain (cifar_resnet32, CE)" if r["path"] == "plain" else r["method"]
    if "error" in r:
        return f"| {name} | {r['precision']} | {PATH_NAMES[r['path']]} | - | - | - | - | - | - | - | {r['error']} |"
    base = plain.get(r["precision"])
    ratio = f"{r['ms_step'] / base:.2f}" if base else "-"
    full = f"{r['epoch_s'] * 299 / 60:.1f} min" if r["method"] == "ffsd" and r["path"] != "plain" else ""
    return (f"| {name} | {r['precision']} | {PATH_NAMES[r['path']]} | {r['epoch_s']:.2f} | {r['ms_step']:.2f} | "
            f"{ratio} | {r['steps']} | {r['util']:.0f} | {r['peak_mib']:.0f} | {r['setup_s']:.1f} | "
            f"{full} {r.get('note', '')} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=380.0, help="seconds for the whole run, compilation included")
    p.add_argument("--window", type=float, default=2.0, help="timed seconds per row at most (or 390 steps)")
    p.add_argument("--methods", nargs="*", default=None, help="method names (default: every method of the registry)")
    p.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.worker:
        return worker(json.loads(opts.worker), opts.deadline, opts.window)

    start = time.time()
    end = start + opts.budget - 10
    import torch

    if opts.methods is None:
        sys.path.insert(0, ROOT)
        from hf_kd.methods import methods

        opts.methods = list(methods())

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    header = (f"{datetime.date.today()} | {dev} | torch {torch.__version__} | cifar_resnet32, batch {BATCH}, "
              f"{STEPS_PER_EPOCH} steps/epoch (50k random uint8 images in memory), KD/PEFD teacher "
              f"cifar_resnet32x4 (random, frozen) | timed window <= {opts.window:.0f} s or 390 steps after 5 warm-up "
              f"steps, epoch = ms/step x 390 | `python benchmarks/fast_path.py {' '.join(sys.argv[1:])}`".rstrip())
    cols = ("| trainer | precision | path | epoch s | ms/step | x plain | steps timed | GPU util % | peak MiB | "
            "set-up s | FFSD 299 epochs / note |\n|---|---|---|---|---|---|---|---|---|---|---|")
    print(header + "\n\n" + cols, flush=True)
    rows, plain = [], {}

    def on_row(r):
        rows.append(r)
        if r["path"] == "plain" and "ms_step" in r:
            plain[r["precision"]] = r["ms_step"]
        print(fmt_row(r, plain), flush=True)

    order = ["ffsd"] + [m for m in opts.methods if m != "ffsd"] if "ffsd" in opts.methods else list(opts.methods)
    cheap = []
    for prec in opts.precisions:
        cheap.append(dict(method="supervised", precision=prec, path="plain", min_s=8))
        for m in order:
            cheap += [dict(method=m, precision=prec, path="eager", min_s=8),
                      dict(method=m, precision=prec, path="fast_cuda_graph", min_s=10)]
    # eager and CUDA-graph rows first (seconds each), then the compiled rows, each in its own worker (a compile
    # that outlasts the budget is killed without losing the rest)
    run_worker(cheap, min(end, start + 0.6 * opts.budget), opts.window, on_row)
    compiled = [dict(method=m, precision=prec, path="fast_compiled", min_s=40)
                for prec in opts.precisions for m in order]
    compiled.sort(key=lambda s: (s["method"] not in ("ffsd", "supervised") or s["precision"] != "fp32",
                                 s["method"] != "ffsd", s["precision"] != "fp32"))
    for spec in compiled:
        if end - time.time() < spec["min_s"]:
            on_row(dict(spec, error="not run: budget spent"))
            continue
        run_worker([spec], end, opts.window, on_row)

    table = header + "\n\n" + cols + "\n" + "\n".join(fmt_row(r, plain) for r in rows) + "\n"
    print(f"\n{table}\ntotal {time.time() - start:.0f} s", flush=True)
    if os.environ.get("OUT"):
        os.makedirs(os.environ["OUT"], exist_ok=True)
        with open(os.path.join(os.environ["OUT"], "fast_path.md"), "w") as f:
            f.write(table)
        with open(os.path.join(os.environ["OUT"], "fast_path.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
