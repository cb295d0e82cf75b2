"""Where the time of one training step and one sampling step goes, by operator (torch.profiler).

Builds a run of the embedded default (or a paper preset's architecture) exactly as training does, runs a
few untimed steps, then profiles ``--steps`` steps and prints the operators by self CPU time, grouped into
the phases of the step (sparse operator, grid U-Net convolutions, matmuls of the point MLPs, norms and
pointwise ops, interpolation, optimiser, mollifier/noise). Numbers are one run on one machine: compare
rows with each other, not with another machine's.

Usage:
  python benchmarks/profile_step.py [--run RUN] [--what train|sample] [--res 32] [--steps 5] [--top 25]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import yaml  # noqa: E402

from infdiff.config import deep_merge, prepare_config, run_config  # noqa: E402
from infdiff.methods import build_method  # noqa: E402
from infdiff.precision import autocast  # noqa: E402
from infdiff.step_timing import optimiser_step  # noqa: E402


def _cfg(run: str | None, configfile: str | None) -> dict:
    """The resolved config of ``run`` (default: ``figures.run``) under config.yaml and an optional preset."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    if configfile:
        base = deep_merge(base, yaml.safe_load(Path(configfile).read_text()))
    config = prepare_config(base)
    return run_config(config, run or config["figures"]["run"])


def profile(cfg: dict, what: str, res: int | None, steps: int, batch: int | None):
    """Run ``steps`` training or sampling steps under torch.profiler; returns (profiler, wall seconds per step)."""
    R = int(res or cfg["resolution"])
    B = batch or cfg["train"]["batch_size"]
    if what == "train":
        step, _ = optimiser_step(cfg, batch_size=B, resolution=R)
    else:
        torch.manual_seed(0)
        method = build_method(cfg).eval()
        seeds = list(range(B))

        def step():
            with torch.no_grad(), autocast(cfg["precision"], "cpu"):
                method.sample(seeds, R, 1, progress=False, sampler="ddpm", batch_size=B)
    for _ in range(2):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    return prof, wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="default: figures.run (the ∞-Diff run)")
    p.add_argument("--configfile", default=None, help="a preset layered over config.yaml")
    p.add_argument("--what", choices=("train", "sample"), default="train")
    p.add_argument("--res", type=int, default=None, help="resolution (default: the run's training one)")
    p.add_argument("--batch", type=int, default=None, help="default: the run's train.batch_size")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = _cfg(a.run, a.configfile)
    prof, wall = profile(cfg, a.what, a.res, a.steps, a.batch)
    print(f"{cfg['name']} {a.what} at {a.res or cfg['resolution']} px: {wall * 1e3:.1f} ms per step "
          f"({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
