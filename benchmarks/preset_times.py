"""Expected full-schedule training time of every recipe preset, from measured time per optimizer step.

For each ``recipes/configs/*.yaml`` it builds the preset's trainer (student, teacher architecture, batch size,
optimizer, method arguments) on CIFAR-100-sized random uint8 images held in memory (the GPU machine has no internet;
pixel content does not change the speed), runs ``--warmup`` steps, times the next ``--steps`` optimizer steps
(device-synchronised), and extrapolates: epoch = steps per epoch of 50,000 images x time per step; schedule =
epochs x epoch. Evaluation and start-up are not included. Prints a markdown table.

    python benchmarks/preset_times.py --warmup 10 --steps 40            # on a GPU
    python benchmarks/preset_times.py --only ffsd_cifar100_resnet32 --steps 3 --warmup 1   # a quick CPU check
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import tempfile

import torch
from throughput import StepTimer  # benchmarks/ is on sys.path when this script runs

import hf_kd
from hf_kd.data import BatchAugment, InMemoryImages
from hf_kd.data.loading import CIFAR100_MEAN, CIFAR100_STD
from hf_kd.recipes import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_preset(path: str, opts) -> dict:
    name = os.path.basename(path)[:-5]
    from hf_kd.methods import methods

    cls = next(c for c in methods().values() if name.startswith(c.preset_prefix))  # the method owning the preset
    needs_teacher = cls.uses_teacher == "required"
    total = opts.warmup + opts.steps
    model_args, _, args = parse_args(cls.args_class, {}, [
        "--config", path, "--output_dir", tempfile.mkdtemp(prefix="hf_kd_preset_"), "--max_steps", str(total),
        "--eval_strategy", "no", "--save_strategy", "no", "--logging_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", *opts.extra])
    n = total * args.per_device_train_batch_size
    g = torch.Generator().manual_seed(0)
    train = InMemoryImages(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                           torch.randint(0, 100, (n,), generator=g))
    torch.manual_seed(0)
    student = hf_kd.create_student(model_args.student, 100, mean=CIFAR100_MEAN, std=CIFAR100_STD,
                                   model_args=json.loads(model_args.model_args) if model_args.model_args else None)
    teacher = (hf_kd.create_student(model_args.teacher_architecture, 100, mean=CIFAR100_MEAN, std=CIFAR100_STD)
               if needs_teacher else None)
    timer = StepTimer(opts.warmup, opts.steps, "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu",
                      count_flops=False)
    trainer = cls(model=student, teacher=teacher, args=args, train_dataset=train, callbacks=[timer],
                  augmentation=BatchAugment(CIFAR100_MEAN, CIFAR100_STD, "cifar"))
    trainer.train()
    per_step = timer.elapsed / opts.steps
    batch = args.per_device_train_batch_size
    steps_per_epoch = 50_000 // batch if args.dataloader_drop_last else math.ceil(50_000 / batch)
    epoch = per_step * steps_per_epoch
    return dict(preset=name, student=model_args.student, teacher=model_args.teacher_architecture if needs_teacher
                else None, batch=batch, ms_per_step=1000 * per_step, epoch_s=epoch, epochs=args.num_train_epochs,
                schedule_h=epoch * args.num_train_epochs / 3600)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--only", nargs="*", default=None, help="preset names (without .yaml)")
    opts, opts.extra = p.parse_known_args()
    paths = sorted(glob.glob(os.path.join(ROOT, "recipes", "configs", "*.yaml")))
    if opts.only:
        paths = [q for q in paths if os.path.basename(q)[:-5] in opts.only]
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{datetime.date.today()} | {dev} | torch {torch.__version__} | {opts.warmup} warm-up + {opts.steps} timed "
          f"steps per preset, fp32 unless flags say otherwise: {' '.join(opts.extra) or '-'}\n")
    print("| preset | student (teacher) | batch | ms/step | epoch (50k images) | epochs | training time |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        if "_imagenet1k_" in os.path.basename(path):  # 224 px, 1000 classes, 1.28M images: not this 32-px harness
            print(f"| {os.path.basename(path)[:-5]} | not timed: CIFAR-sized harness | | | | | |", flush=True)
            continue
        try:
            r = time_preset(path, opts)
        except Exception as e:  # noqa: BLE001 - one failing preset must not hide the others
            print(f"| {os.path.basename(path)[:-5]} | failed: {type(e).__name__}: {str(e)[:120]} | | | | | |",
                  flush=True)
            continue
        who = r["student"] + (f" ({r['teacher']})" if r["teacher"] else "")
        print(f"| {r['preset']} | {who} | {r['batch']} | {r['ms_per_step']:.1f} | {r['epoch_s']:.1f} s | "
              f"{r['epochs']:.0f} | {r['schedule_h']:.2f} h |", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
