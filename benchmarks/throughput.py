"""Training throughput and peak memory of every hf_kd trainer, as ratios to a plain ``transformers.Trainer``.

For each trainer it measures images/s and time per optimizer step on the same student, batch and device, in the
same process, next to a stock ``Trainer`` training the same student with cross-entropy. It prints each trainer's
time per step as a ratio to the plain one and to its FLOP-weighted ideal: plain time x (the trainer's training-step
FLOPs / the plain step's FLOPs), where FLOPs are counted by ``torch.utils.flop_counter`` over one real step (forward
and backward of every network it runs: students, teacher, auxiliary modules). A ratio to ideal near 1 means the
method costs what its networks cost; above 1 is overhead (Python, small kernels, syncs).

Images are random uint8 tensors held in memory (content does not change the speed), augmented on the device like
real data. Examples:

    python benchmarks/throughput.py                                  # CPU, small settings, a few minutes
    python benchmarks/throughput.py --device cuda --batch_size 128 --steps 50 --bf16 --channels_last
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Trainer, TrainerCallback, TrainingArguments

import hf_kd
from hf_kd.data import BatchAugment, ImageCollator, InMemoryImages
from hf_kd.data.loading import CIFAR100_MEAN, CIFAR100_STD


def method_registry():
    """name -> (trainer class, needs a teacher, extra arguments), for every distillation method of the registry."""
    from hf_kd.methods import methods

    return {name: (cls, cls.uses_teacher == "required", {}) for name, cls in methods().items() if name != "supervised"}


class StepTimer(TrainerCallback):
    """Wall time of optimizer steps warmup+1 .. warmup+steps (device-synchronised), and FLOPs of one step."""

    def __init__(self, warmup: int, steps: int, device: str, count_flops: bool):
        self.warmup, self.steps, self.device, self.count_flops = warmup, steps, device, count_flops
        self.start = self.elapsed = None
        self.flops = None
        self._counter = None

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.count_flops and state.global_step == 1:  # one real step, after the first (lazy init)
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops, self._counter = self._counter.get_total_flops(), None
        if state.global_step == self.warmup:
            self._sync()
            self.start = time.perf_counter()
            if self.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
        elif state.global_step == self.warmup + self.steps:
            self._sync()
            self.elapsed = time.perf_counter() - self.start


class PlainTrainer(Trainer):
    """The baseline: stock ``Trainer`` and the student's own CE loss, fed exactly like the hf_kd trainers (uint8 batch
    moved to the device, then the same batched crop/flip + normalisation there), so only the method differs."""

    def __init__(self, *args, augmentation: BatchAugment, channels_last: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.augmentation, self.channels_last = augmentation, channels_last

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        x = self.augmentation(inputs["pixel_values"], train=self.model.training)
        inputs["pixel_values"] = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        return inputs


def run_one(name, make_trainer, opts, timer):
    trainer = make_trainer(timer)
    if opts.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    sec_per_step = timer.elapsed / opts.steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if opts.device == "cuda" else float("nan")
    return dict(name=name, sec_per_step=sec_per_step, img_s=opts.batch_size / sec_per_step, flops=timer.flops,
                peak_mib=peak)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--student", default="cifar_resnet20")
    p.add_argument("--teacher", default="cifar_resnet56", help="architecture of the (random, frozen) teacher")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (incl. the FLOP-counted one)")
    p.add_argument("--num_labels", type=int, default=100)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch_compile=True (FLOPs counted without compile)")
    p.add_argument("--methods", nargs="*", default=None, help="subset of: kd ffsd projector_kd self_kd mixskd")
    opts = p.parse_args()
    if opts.warmup < 2:
        p.error("--warmup must be >= 2 (step 2 is the FLOP-counted one)")

    n = opts.batch_size * (opts.warmup + opts.steps + 1)
    g = torch.Generator().manual_seed(0)
    train = InMemoryImages(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                           torch.randint(0, opts.num_labels, (n,), generator=g))
    use_cpu = opts.device == "cpu"
    common = dict(output_dir="/tmp/hf_kd_bench", max_steps=opts.warmup + opts.steps,
                  per_device_train_batch_size=opts.batch_size, report_to=[], save_strategy="no",
                  eval_strategy="no", logging_strategy="no", use_cpu=use_cpu, bf16=opts.bf16, fp16=opts.fp16,
                  torch_compile=opts.compile, dataloader_drop_last=True, learning_rate=0.01, optim="sgd",
                  optim_args="momentum=0.9", disable_tqdm=True)

    def student(arch=None):
        torch.manual_seed(0)
        return hf_kd.create_student(arch or opts.student, opts.num_labels, mean=CIFAR100_MEAN, std=CIFAR100_STD)

    teacher = student(opts.teacher)

    def plain(timer):
        model = student()
        if opts.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return PlainTrainer(model=model, args=TrainingArguments(**common, remove_unused_columns=False),
                            train_dataset=train, data_collator=ImageCollator(),
                            augmentation=BatchAugment(CIFAR100_MEAN, CIFAR100_STD, "cifar"),
                            channels_last=opts.channels_last, callbacks=[timer])

    rows = [run_one("plain Trainer (CE)", plain, opts, StepTimer(opts.warmup, opts.steps, opts.device, True))]
    registry = method_registry()
    for name in opts.methods or list(registry):
        cls, needs_teacher, extra = registry[name]

        def make(timer, cls=cls, needs_teacher=needs_teacher, extra=extra):
            args = cls.args_class(**common, channels_last=opts.channels_last, **extra)
            return cls(model=student(), teacher=copy.deepcopy(teacher) if needs_teacher else None, args=args,
                       train_dataset=train, augmentation=BatchAugment(CIFAR100_MEAN, CIFAR100_STD, "cifar"),
                       callbacks=[timer])

        rows.append(run_one(name, make, opts, StepTimer(opts.warmup, opts.steps, opts.device, True)))

    base = rows[0]
    dev = torch.cuda.get_device_name() if opts.device == "cuda" else f"CPU ({platform.processor() or 'x86_64'}, " \
                                                                    f"{torch.get_num_threads()} threads)"
    print(f"\n{datetime.date.today()} | {dev} | torch {torch.__version__} | student {opts.student}, teacher "
          f"{opts.teacher}, batch {opts.batch_size}, 32x32, {opts.steps} timed steps | bf16={opts.bf16} "
          f"fp16={opts.fp16} channels_last={opts.channels_last} compile={opts.compile}\n")
    print("| trainer | img/s | ms/step | x plain | GFLOP/step | x plain FLOPs | x FLOP-ideal | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["sec_per_step"] / base["sec_per_step"]
        fl = r["flops"] / base["flops"] if r["flops"] and base["flops"] else float("nan")
        print(f"| {r['name']} | {r['img_s']:.0f} | {r['sec_per_step'] * 1e3:.1f} | {ratio:.2f} | "
              f"{(r['flops'] or 0) / 1e9:.2f} | {fl:.2f} | {ratio / fl:.2f} | "
              f"{'-' if r['peak_mib'] != r['peak_mib'] else round(r['peak_mib'])} |")  # peak memory: CUDA only


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
