"""Wall time of the SWD metric and its bootstrap interval at the shapes of Table 1's evaluation jobs.

Scores ``--n`` random images against ``--n-ref`` others at ``--res`` px with the settings of config.yaml's
``evaluate.swd`` (patches, directions, bootstrap replicates), once per ``--workers`` value, ``--repeats``
times in alternation, and prints the medians with the CPU. Random images cost what samples cost: the work
depends on the shapes only. ``--repo`` imports ``infdiff`` from another checkout (e.g. ``git worktree add
/tmp/base <commit>``), so that two versions can be timed back to back on one machine.

Usage:
  python benchmarks/bench_swd.py [--res 32] [--n 256] [--n-ref 256] [--workers 1 2] [--repeats 3] [--repo PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--n", type=int, default=256, help="generated images (Table 1 at 32 px: 256)")
    p.add_argument("--n-ref", type=int, default=256, help="reference images")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--repo", type=Path, default=REPO, help="checkout to import infdiff from (default: this one)")
    a = p.parse_args(argv)
    sys.path.insert(0, str(a.repo.resolve()))
    from infdiff.metrics.swd import swd, swd_bootstrap
    from infdiff.provenance import _cpu_info

    settings = yaml.safe_load((REPO / "config.yaml").read_text())["evaluate"]["swd"]
    n_boot = settings.pop("n_boot")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (a.n, 3, a.res, a.res), dtype=np.uint8)
    ref = rng.integers(0, 256, (a.n_ref, 3, a.res, a.res), dtype=np.uint8)
    times: dict[str, list[float]] = {}
    for _ in range(a.repeats):
        t = time.perf_counter()
        swd(x, ref, **settings)
        times.setdefault("swd (point estimate)", []).append(time.perf_counter() - t)
        for w in a.workers:
            t = time.perf_counter()
            swd_bootstrap(x, ref, n_boot=n_boot, workers=w, **settings)
            times.setdefault(f"swd_bootstrap, {n_boot} replicates, {w} worker(s)", []).append(time.perf_counter() - t)
    import torch  # only so that provenance names torch's CPU capability (the metric itself is numpy)

    cpu = _cpu_info()
    print(f"CPU: {cpu['cpu_model']}, torch capability {cpu['cpu_capability']} (torch {torch.__version__}, "
          f"numpy {np.__version__}); infdiff from {a.repo}")
    print(f"{a.n} vs {a.n_ref} images at {a.res} px; {settings}")
    for name, ts in times.items():
        print(f"{name:48s} median {statistics.median(ts):7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in ts)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
