"""Wall time of one training epoch of a recipe preset, at the preset's full-schedule settings, on CIFAR-100-sized data.

Reads a preset (``recipes/configs/*.yaml``: student, batch size, optimizer, lambdas, ...), replaces the dataset by
50,000 random 32x32 uint8 images with 100 classes held in memory (the fast data path; pixel content does not change
the speed, and the GPU machine has no internet for the real CIFAR-100), and times one epoch of ``trainer.train()``
with the data layer's batched CIFAR augmentation. Prints the epoch time and img/s next to a plain
``transformers.Trainer`` epoch of the same student with cross-entropy in the same process.

    python benchmarks/epoch_time.py --method ffsd --config recipes/configs/ffsd_cifar100_resnet32.yaml
    python benchmarks/epoch_time.py --method ffsd --config ... --bf16 true --channels_last true
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time

import torch
from throughput import PlainTrainer  # benchmarks/ is on sys.path when this script runs
from transformers import TrainingArguments

import hf_kd
from hf_kd.data import BatchAugment, ImageCollator, InMemoryImages
from hf_kd.data.loading import CIFAR100_MEAN, CIFAR100_STD
from hf_kd.recipes import parse_args

from hf_kd.methods import get_method, methods


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=sorted(methods()))
    p.add_argument("--config", required=True, help="a recipes/configs/*.yaml preset")
    p.add_argument("--num_images", type=int, default=50_000)
    p.add_argument("--skip_plain", action="store_true", help="do not time the plain Trainer epoch")
    opts, extra = p.parse_known_args()  # extra: recipe flags after the preset, e.g. --bf16 true

    cls = get_method(opts.method)
    out = tempfile.mkdtemp(prefix="hf_kd_epoch_")
    model_args, _, args = parse_args(cls.args_class, {}, [
        "--config", opts.config, "--output_dir", out, "--num_train_epochs", "1", "--eval_strategy", "no",
        "--save_strategy", "no", "--logging_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        *extra])
    g = torch.Generator().manual_seed(0)
    n = opts.num_images
    train = InMemoryImages(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                           torch.randint(0, 100, (n,), generator=g))
    aug = BatchAugment(CIFAR100_MEAN, CIFAR100_STD, "cifar")

    def student():
        torch.manual_seed(args.seed)
        return hf_kd.create_student(model_args.student, 100, mean=CIFAR100_MEAN, std=CIFAR100_STD)

    teacher = None
    if opts.method in ("kd", "projector_kd"):  # a random frozen teacher costs what a trained one does
        torch.manual_seed(1)
        teacher = hf_kd.create_student(model_args.teacher_architecture, 100, mean=CIFAR100_MEAN, std=CIFAR100_STD)
    rows = []
    if not opts.skip_plain:
        plain_args = TrainingArguments(**{k: getattr(args, k) for k in (
            "output_dir", "num_train_epochs", "per_device_train_batch_size", "learning_rate", "weight_decay",
            "optim", "optim_args", "bf16", "fp16", "seed", "dataloader_drop_last", "torch_compile", "use_cpu")},
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
            remove_unused_columns=False)
        model = student()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)

        t = PlainTrainer(model=model, args=plain_args, train_dataset=train, data_collator=ImageCollator(),
                         augmentation=aug, channels_last=args.channels_last)
        start = time.perf_counter()
        t.train()
        rows.append(("plain Trainer (CE), same student", time.perf_counter() - start))
    trainer = cls(model=student(), teacher=teacher, args=args, train_dataset=train, augmentation=aug)
    start = time.perf_counter()
    trainer.train()
    rows.append((f"{opts.method} ({cls.__name__})", time.perf_counter() - start))

    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.use_cpu else "CPU"
    print(f"\n{datetime.date.today()} | {dev} | torch {torch.__version__} | {opts.config} | student "
          f"{model_args.student} | batch {args.per_device_train_batch_size} | {n} images/epoch | bf16={args.bf16} "
          f"channels_last={args.channels_last} compile={args.torch_compile} | {' '.join(sys.argv[1:])}\n")
    print("| run | epoch s | img/s | x plain |")
    print("|---|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.1f} | {n / sec:.0f} | {sec / rows[0][1]:.2f} |")


if __name__ == "__main__":
    main()
