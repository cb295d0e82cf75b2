"""Wall time and peak memory of sampling the embedded ∞-Diff at one resolution (Fig. 2's 1024 px sample).

Builds the run's network (initial weights: a trained model runs the same operations at the same cost),
samples ``--n`` images at ``--res`` px with the configured sampler and step count, as the workflow's
sample rule does (``infdiff.sample``'s batching, the run's precision, Wiener de-mollification), and prints
the wall time and the peak resident memory of this process. Run it once per code version back to back on
one machine to compare them (the README's performance section does).

Usage:
  python benchmarks/bench_sample.py [--run RUN] [--res 1024] [--n 1] [--steps 50] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from infdiff.config import load_config, run_config  # noqa: E402
from infdiff.methods import build_method  # noqa: E402
from infdiff.precision import autocast, resolve_precision  # noqa: E402
from infdiff.sample import MAX_BATCH_PIXELS  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="default: figures.run of config.yaml (the ∞-Diff run)")
    p.add_argument("--res", type=int, default=1024)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="default: sample.steps of config.yaml")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    config = load_config(REPO / "config.yaml")
    a.run = a.run or config["figures"]["run"]
    cfg = run_config(config, a.run)
    steps = a.steps or config["sample"]["steps"]
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    precision = resolve_precision(cfg["precision"], "cpu")
    batch = max(1, min(config["sample"]["batch_size"], MAX_BATCH_PIXELS // a.res ** 2))
    t0 = time.perf_counter()
    with torch.no_grad(), autocast(precision, "cpu"):
        for s in range(0, a.n, batch):
            method.sample(list(range(s, min(a.n, s + batch))), a.res, steps, progress=False,
                          sampler=config["sample"]["sampler"])
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(run=a.run, resolution=a.res, n=a.n, steps=steps, sampler=config["sample"]["sampler"],
                          seconds=round(wall, 2), seconds_per_image=round(wall / a.n, 2),
                          peak_rss_mb=round(peak_mb), threads=torch.get_num_threads(), precision=precision,
                          cpu_capability=torch.backends.cpu.get_cpu_capability())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
