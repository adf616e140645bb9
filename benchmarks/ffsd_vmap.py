"""Does running FFSD's identical-architecture networks as one batched network pay?

FFSD trains a leader and M common students of one architecture on the same batch. This times, for N networks of
``--arch`` at ``--batch`` images, forward (logits + the 3 stage maps FFSD reads) and backward of a cross-entropy:

- ``loop``: the N networks one after another, as ``FFSDTrainer`` runs them;
- ``vmap``: one network over stacked weights, ``torch.func.stack_module_state`` + ``functional_call`` under
  ``torch.vmap`` (the N weight sets as one batched set of kernels).

Caveat measured here, not hidden: ``vmap`` cannot update BatchNorm's running statistics in place, so the ``vmap``
row runs its BatchNorms without running statistics (``torch.func.replace_all_batch_norm_modules_``): it computes the
same training-mode forward and gradients but would need the running statistics recomputed separately to be usable.
It is therefore an upper bound on the gain. ``--graph`` also times both inside a captured ``torch.cuda.CUDAGraph``
(the fast path's ``cuda_graph`` mode), which removes launch overhead from the loop as well.

Prints ms per step and vmap / loop as a ratio measured in the same run (CPU figures say nothing about a GPU, which
is where this question matters: run it there).

    python benchmarks/ffsd_vmap.py                       # CPU, batch 32, a few steps
    python benchmarks/ffsd_vmap.py --device cuda --batch 128 --steps 50 --graph
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

import hf_kd
from hf_kd.data.loading import CIFAR100_MEAN, CIFAR100_STD


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def _graphed(fn):
    """``fn`` captured once in a CUDA graph (after warm-up on a side stream); the returned callable replays it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="cifar_resnet32")
    p.add_argument("--networks", type=int, nargs="*", default=[2, 3], help="N: 2 common students; 3 with the leader")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--graph", action="store_true", help="also time both inside a CUDA graph (GPU only)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (args.batch,), device=device)
    base = hf_kd.create_student(args.arch, 100, mean=CIFAR100_MEAN, std=CIFAR100_STD).to(device).train()

    print(f"{args.arch}, batch {args.batch}, {args.steps} timed steps after {args.warmup}, device {device}, "
          f"torch {torch.__version__}")
    print("| networks | loop ms/step | vmap ms/step | vmap / loop |" + (" loop, graph | vmap, graph | ratio |"
                                                                        if args.graph else ""))
    print("|---|---|---|---|" + ("---|---|---|" if args.graph else ""))
    for n in args.networks:
        nets = [copy.deepcopy(base) for _ in range(n)]
        params = [p for m in nets for p in m.parameters()]

        def loop():
            loss = 0
            for m in nets:
                out = m.forward_kd(x)
                loss = loss + F.cross_entropy(out.logits, y) + sum(s.float().mean() for s in out.stages[-3:]) * 0
            return torch.autograd.grad(loss, params)

        bn_free = _KD(copy.deepcopy(base))
        torch.func.replace_all_batch_norm_modules_(bn_free)
        stacked, buffers = torch.func.stack_module_state([copy.deepcopy(bn_free) for _ in range(n)])
        stacked = {k: v.detach().requires_grad_() for k, v in stacked.items()}

        def per_net(p, b):
            logits, stages = torch.func.functional_call(bn_free, (p, b), (x,))
            return F.cross_entropy(logits, y) + sum(s.float().mean() for s in stages) * 0

        def vmapped():
            losses = torch.vmap(per_net)(stacked, buffers)
            return torch.autograd.grad(losses.sum(), list(stacked.values()))

        row = [_time(loop, args.steps, args.warmup, device), _time(vmapped, args.steps, args.warmup, device)]
        cells = f"| {n} | {row[0]:.1f} | {row[1]:.1f} | {row[1] / row[0]:.2f} |"
        if args.graph and device.type == "cuda":
            g = [_time(_graphed(loop), args.steps, args.warmup, device),
                 _time(_graphed(vmapped), args.steps, args.warmup, device)]
            cells += f" {g[0]:.1f} | {g[1]:.1f} | {g[1] / g[0]:.2f} |"
        print(cells, flush=True)


class _KD(torch.nn.Module):
    """``forward`` = ``forward_kd`` (functional_call calls ``forward``), returning (logits, stages) as a tuple."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, x):
        out = self.student.forward_kd(x)
        return out.logits, tuple(out.stages[-3:])


if __name__ == "__main__":
    main()
