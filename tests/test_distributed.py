"""Two gloo processes on the CPU (`accelerate launch --multi_gpu --num_processes 2`, HF_NOTES §4: `--cpu` would
silently start ONE process) against one process with gradient_accumulation_steps=2 and the same per-device batch."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "ddp_train.py")
# trainers whose 2-process result must equal the 1-process GA=2 one (parameters; BN buffers differ by design)
PARITY = ["supervised", "kd", "projector_kd"]
RUN_ONLY = []  # trainers whose per-batch randomness or state differs between the two layouts


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out, procs, grad_accum, names):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    if procs > 1:
        cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", str(procs), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), SCRIPT]
    else:
        cmd = [sys.executable, SCRIPT]
    run = subprocess.run(cmd + [str(out), str(grad_accum), *names], capture_output=True, text=True, timeout=900,
                         env=env)
    assert run.returncode == 0, run.stderr[-5000:]


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(tmp_path):
    names = PARITY + RUN_ONLY
    launch(tmp_path / "ddp", 2, 1, names)
    launch(tmp_path / "single", 1, 2, PARITY)
    for name in names:
        info = json.load(open(tmp_path / "ddp" / f"{name}_info.json"))
        assert info == {"world_size": 2, "steps": 3}, (name, info)  # really two processes
        export = tmp_path / "ddp" / name
        assert sorted(p for p in os.listdir(export) if not p.startswith(".")) == \
            ["README.md", "config.json", "model.safetensors", "training_args.bin", "training_curves.png"], name  # one export, main only
    for name in PARITY:
        a = torch.load(tmp_path / "ddp" / f"{name}_student.pt")
        b = torch.load(tmp_path / "single" / f"{name}_student.pt")
        for k in a:
            if "running_" in k or "num_batches" in k:
                continue
            # fp32 reduction order differs (all-reduce vs accumulation): measured max 1.2e-5 after 3 steps; a
            # missing gradient sync or a wrong accumulation scale moves parameters by ~1e-2
            err = (a[k] - b[k]).abs().max().item()
            assert err < 5e-5, f"{name}: {k} differs by {err}"
