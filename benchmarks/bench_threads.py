"""One N-thread job, or N one-thread jobs side by side? (How the workflow sizes its train and sample jobs.)

On a CPU the workflow gives each training job one thread, so that `snakemake --cores N` trains N runs at
once (workflow/rules/common.smk, `TRAIN_THREADS`). This script measures whether that is the faster way to
use the cores, for the runs of a table: for each run it times the optimiser step (as training does it:
infdiff.step_timing.optimiser_step) in one process with N threads, then in N processes of one thread
started together, and prints the throughput ratio

    speed-up = N * t(one N-thread step) / t(one 1-thread step while N - 1 others run)

(> 1: the side-by-side jobs finish a table's trainings sooner). Medians over ``--repeats`` steps, all
in one run on one machine; the CPU kind is printed beside the numbers.

``--what sample --res R --batch B`` times a sampling step instead (one DDPM step of B images at R px, as the
sample jobs run them; workflow/rules/sample.smk gives the jobs at 128 px and above 2 threads: measured at about
the throughput of two one-thread jobs, README "Performance", and they end sooner at the tail of the DAG).

Usage:
  python benchmarks/bench_threads.py [--runs infdiff,mlp_pixel] [--cores 2] [--repeats 15]
  python benchmarks/bench_threads.py --what sample --res 128 --batch 32 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from infdiff.config import load_config, run_config  # noqa: E402
from infdiff.step_timing import optimiser_step  # noqa: E402


def median_step_ms(run: str, threads: int, repeats: int, warmup: int = 3, what: str = "train",
                   res: int | None = None, batch: int | None = None) -> float:
    """Median ms of one optimiser step of ``run`` (config.yaml) with ``threads`` intra-op threads, or with
    ``what="sample"`` of one sampling step of ``batch`` images at ``res`` px (bf16 where the run uses it)."""
    torch.set_num_threads(threads)
    cfg = run_config(load_config(REPO / "config.yaml"), run)
    if what == "train":
        step, _ = optimiser_step(cfg)
        per_call = 1
    else:
        from infdiff.methods import build_method
        from infdiff.precision import autocast, resolve_precision

        torch.manual_seed(0)
        method, precision, per_call = build_method(cfg).eval(), resolve_precision(cfg["precision"], "cpu"), 2

        def step():
            with torch.no_grad(), autocast(precision, "cpu"):
                method.sample(list(range(batch)), res, per_call, progress=False, sampler="ddpm", batch_size=batch)
        warmup = 1
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3 / per_call)
    return statistics.median(times)


def _child(run: str, threads: int, repeats: int, what: str, res: int | None, batch: int | None) -> subprocess.Popen:
    code = (f"import json, sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import bench_threads as b; "
            f"print(json.dumps(b.median_step_ms({run!r}, {threads}, {repeats}, what={what!r}, res={res!r}, "
            f"batch={batch!r})))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cfg = load_config(REPO / "config.yaml")
    p.add_argument("--runs", default=",".join(r["run"] for r in cfg["tables"]["table1"]["rows"]),
                   help="comma-separated runs of config.yaml (default: Table 1's rows)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--what", choices=("train", "sample"), default="train")
    p.add_argument("--res", type=int, default=None, help="sampling resolution (--what sample)")
    p.add_argument("--batch", type=int, default=None, help="images per sampling step (--what sample)")
    a = p.parse_args(argv)
    if a.what == "sample" and not (a.res and a.batch):
        p.error("--what sample needs --res and --batch")
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, {a.cores} cores, torch {torch.__version__}")
    what = "optimiser step" if a.what == "train" else f"sampling step, {a.batch} images at {a.res} px"
    print(f"| run ({what}) | 1 job x {a.cores} threads: ms/step | {a.cores} jobs x 1 thread: ms/step | speed-up |")
    print("|---|---:|---:|---:|")
    for run in a.runs.split(","):
        wide = json.loads(_child(run, a.cores, a.repeats, a.what, a.res, a.batch).communicate()[0])
        procs = [_child(run, 1, a.repeats, a.what, a.res, a.batch) for _ in range(a.cores)]
        narrow = statistics.mean(json.loads(pr.communicate()[0]) for pr in procs)
        print(f"| {run} | {wide:.0f} | {narrow:.0f} | {a.cores * wide / narrow:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
