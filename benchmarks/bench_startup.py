"""What a Snakemake job pays before it does any work: the imports of a fresh interpreter.

Every job of the workflow is a new Python process, and Table 1 has 64 of them (the micro DAG of the tests
59), most of which finish their actual work in a second or less. This script times, in fresh interpreters
(median of ``--repeats``; one thread each, one at a time), what the job kinds import:

- an SWD or consistency job's whole path: the evaluation module, then SWD on 16 tiny images (numpy only);
- ``import torch`` (every training and sampling job);
- ``torch._dynamo``, which torch imports on the first ``torch.optim`` optimiser (every training job) and
  ``torch._inductor``, which the sparse operator's compiled backend needs; provenance used to import the
  latter in every job that had torch, to name the backend ``auto`` would have picked;
- ``cleanfid.fid`` (FID jobs: clean-fid's Fréchet distance comes with torchvision).

Usage:
  python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SWD_JOB = ("import numpy as np; from infdiff.evaluate import compute_metric; from infdiff.config import load_config; "
            f"s = load_config({str(REPO / 'config.yaml')!r})['evaluate']; "
            "x = np.random.default_rng(0).integers(0, 256, (16, 3, 16, 16), dtype=np.uint8); "
            "compute_metric('swd', x, x[::-1].copy(), {**s, 'swd': {**s['swd'], 'min_samples': 1, 'min_res': 8, "
            "'n_boot': 10}}); import sys; assert 'torch' not in sys.modules")

CASES = [
    ("python alone", "pass"),
    ("SWD job: evaluation module + SWD of 16 images at 16 px", _SWD_JOB),
    ("import torch", "import torch"),
    ("import torch + torch._dynamo (first torch.optim optimiser)", "import torch, torch._dynamo"),
    ("import torch + torch._inductor (compiled sparse backend)", "import torch, torch._inductor"),
    ("import cleanfid.fid (FID's Fréchet distance; torchvision)", "import cleanfid.fid"),
]


def fresh_interpreter_s(code: str, repeats: int) -> float:
    """Median wall seconds of ``python -c code`` in a fresh interpreter (one thread), over ``repeats`` runs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"CPU: {cpu}; median of {a.repeats} fresh interpreters each")
    fresh_interpreter_s("import torch", 1)  # warm the file cache: the first import reads ~1 GB from disk
    rows = [(name, fresh_interpreter_s(code, a.repeats)) for name, code in CASES]
    torch_s = dict(rows)["import torch"]
    print("| what a job starts with | wall s | vs `import torch` |")
    print("|---|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} | {s / torch_s:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
