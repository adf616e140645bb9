"""Import cost of hf_kd, as ratios to ``import torch`` measured in the same run.

Each statement runs in a fresh interpreter (``python -c``), ``--repeat`` times; the figure is the median CPU time
(user + system of the child, from ``resource.getrusage``), which a busy machine disturbs far less than wall time.
Ratios to ``import torch`` are what carries between machines: ``import hf_kd`` costs torch + timm (it registers the
CIFAR backbones in timm, and timm imports torchvision) and nothing else; the trainers (transformers' Trainer),
datasets and the model cards load on first use.

    python benchmarks/import_time.py                 # 5 repeats, about a minute on 2 busy cores
    python benchmarks/import_time.py --repeat 9 --importtime   # also the 8 costliest modules of `import hf_kd`
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

STATEMENTS = {
    "import torch": "import torch",  # the baseline
    "import timm": "import timm",
    "import hf_kd": "import hf_kd",
    "load an export (transformers + hf_kd)": "import hf_kd; from transformers import AutoModelForImageClassification",
    "from hf_kd import KDTrainer": "from hf_kd import KDTrainer",
}


def cpu_seconds(code: str, env: dict) -> float:
    """User + system CPU seconds of one fresh ``python -c code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def costliest(code: str, env: dict, n: int = 8) -> list[tuple[float, str]]:
    """The ``n`` modules with the largest cumulative time under ``python -X importtime``."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    rows = []
    for line in run.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]) / 1e6, parts[2].rstrip()))
    return sorted(rows, reverse=True)[:n]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--importtime", action="store_true", help="list the costliest modules of `import hf_kd`")
    a = p.parse_args(argv)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      env.get("PYTHONPATH")]))
    times = {name: [] for name in STATEMENTS}
    for _ in range(a.repeat):  # interleaved, so a load change hits every statement alike
        for name, code in STATEMENTS.items():
            times[name].append(cpu_seconds(code, env))
    base = statistics.median(times["import torch"])
    print(f"CPU seconds (median of {a.repeat} fresh interpreters) and ratio to `import torch`:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:40s} {med:6.2f} s   x{med / base:5.2f}")
    if a.importtime:
        print("costliest modules of `import hf_kd` (cumulative wall seconds, -X importtime):")
        for sec, mod in costliest("import hf_kd", env):
            print(f"  {sec:6.2f} s {mod}")


if __name__ == "__main__":
    main()
