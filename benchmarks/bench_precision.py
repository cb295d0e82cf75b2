"""fp32 against bf16 autocast, per run of Table 1: one training step and one sampling step, back to back.

``precision: auto`` (infdiff/precision.py) picks bf16 on CPUs with native bf16 (avx512_bf16 / AMX) and
fp32 elsewhere. This benchmark is the evidence for that choice on the machine it runs on: for each run it
builds the network once (initial weights: a trained one does the same operations), then alternates fp32
and bf16 (fp32, bf16, bf16, fp32, ...) so both see the same machine noise, and prints the median
milliseconds of a training step (batch of the run, Adam, as training does) and of one DDPM sampling step
(``--sample-n`` images at ``--sample-res`` px), with the fp32 / bf16 ratio (> 1: bf16 is faster).
On a CPU without native bf16, bf16 is emulated: expect ratios below 1 there, which is why ``auto``
means fp32 on such CPUs.

Usage:
  python benchmarks/bench_precision.py [--runs RUN ...] [--repeats 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from infdiff.config import load_config, run_config  # noqa: E402
from infdiff.methods import build_method  # noqa: E402
from infdiff.precision import autocast, resolve_precision  # noqa: E402
from infdiff.provenance import _cpu_info  # noqa: E402
from infdiff.step_timing import optimiser_step  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def _interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds of each callable, called in alternating order (ABBA...) after ``warmup`` rounds."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for rep in range(repeats):
        for n in (names if rep % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=None, help="default: the rows of tables.table1 in config.yaml")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--sample-res", type=int, default=32)
    p.add_argument("--sample-n", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    config = load_config(REPO / "config.yaml")
    runs = a.runs or [row["run"] for row in config["tables"]["table1"]["rows"]]
    cpu = _cpu_info()
    print(f"{cpu['cpu_model']}, cpu capability {cpu['cpu_capability']}, {torch.get_num_threads()} threads; "
          f"precision 'auto' resolves to {resolve_precision('auto', 'cpu')} here")
    print(f"{'run':<18} {'config':>6} | {'train fp32':>10} {'bf16':>7} {'ratio':>6} | "
          f"{'sample fp32':>11} {'bf16':>7} {'ratio':>6}   (ms per step, medians of {a.repeats})")
    for run in runs:
        cfg = run_config(config, run)
        train = {}
        for prec in PRECISIONS:
            c = copy.deepcopy(cfg)
            c["precision"] = prec
            train[prec] = optimiser_step(c)[0]
        t = _interleaved(train, a.repeats)
        torch.manual_seed(0)
        method = build_method(cfg).eval()
        seeds = list(range(a.sample_n))
        # An autoencoder run samples given z; a fixed random z costs what the latent model's z would.
        cond = torch.randn(a.sample_n, method.net.z_dim) if getattr(method, "conditional", False) else None

        def sampler(prec):
            def step():
                with torch.no_grad(), autocast(prec, "cpu"):
                    method.sample(seeds, a.sample_res, 1, progress=False, sampler="ddpm", batch_size=a.sample_n,
                                  cond=cond)
            return step

        s = _interleaved({prec: sampler(prec) for prec in PRECISIONS}, max(2, a.repeats // 2), warmup=1)
        print(f"{run:<18} {cfg['precision']:>6} | {t['fp32'] * 1e3:>10.1f} {t['bf16'] * 1e3:>7.1f} "
              f"{t['fp32'] / t['bf16']:>5.2f}x | {s['fp32'] * 1e3:>11.1f} {s['bf16'] * 1e3:>7.1f} "
              f"{s['fp32'] / s['bf16']:>5.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
