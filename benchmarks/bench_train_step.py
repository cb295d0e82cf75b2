"""Whole ∞-Diff training step per coordinate ratio (Table 3's speed-up), measured interleaved in one run.

Two architectures:
  embedded   the embedded default (config.yaml run `infdiff`: 32 px, C=32, grid U-Net 16 px, batch 32)
  ffhq128    the paper's FFHQ-128 architecture (workflow/presets/paper-ffhq128.yaml: sparse level at 128 px,
             64 channels, kernel 7, 3 sparse blocks, grid U-Net at 64 px, base 64, mults 1,2,4,8, and the
             encoder of the autoencoder framework: 94M parameters) at the preset's batch of 16

Both train at the run's batch size unless ``--batch`` says otherwise. The batch matters for the speed-up: the
optimiser update, the weights' casts under autocast and the U-Net's weight-bound deepest levels cost the same
at every batch and every ratio, so a smaller batch than training's makes the coordinate ratio look less
effective than it is (README "Performance" gives both the preset's batch and ``--batch 4``).

Every repeat times one optimiser step at each ratio in a rotated order (same model, batch and optimiser),
so machine noise hits all ratios alike, each after an untimed step at that ratio (``--settle``: the first
step after a switch page-faults freshly mapped memory, which training at one ratio does not pay); the
speed-up is median(ratio 1) / median(ratio r).

Usage:
  python benchmarks/bench_train_step.py --arch ffhq128 [--batch 4] [--repeats 10] [--optimizer loop] [--out FILE.csv]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from infdiff.config import deep_merge, prepare_config, run_config  # noqa: E402
from infdiff.io import write_csv  # noqa: E402
from infdiff.optim import IMPLEMENTATIONS  # noqa: E402
from infdiff.provenance import _cpu_info  # noqa: E402
from infdiff.step_timing import time_train_steps  # noqa: E402

ARCHS = {"embedded": None, "ffhq128": "workflow/presets/paper-ffhq128.yaml"}


def arch_config(arch: str) -> dict:
    """The resolved config of the ∞-Diff run the figures show (``figures.run``) under the embedded default
    or a paper preset."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    if ARCHS[arch]:
        base = deep_merge(base, yaml.safe_load((REPO / ARCHS[arch]).read_text()))
    config = prepare_config(base)
    return run_config(config, config["figures"]["run"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="embedded")
    p.add_argument("--batch", type=int, default=None, help="default: the run's train.batch_size (32 embedded, 16 ffhq128)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--settle", type=int, default=1,
                   help="untimed steps at a ratio after switching to it (infdiff.step_timing; 0: the old timing)")
    p.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default=None, help="sparse operator backend (default: the network's, auto)")
    p.add_argument("--precision", default=None, help="override the run's precision (auto, fp32, bf16)")
    p.add_argument("--optimizer", choices=IMPLEMENTATIONS, default="fused",
                   help="implementation of infdiff.optim.adam (training's: fused)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="CSV (default: results/benchmarks/bench/train_step-<arch>.csv)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = arch_config(args.arch)
    if args.precision:
        cfg["precision"] = args.precision
    batch = args.batch or cfg["train"]["batch_size"]
    rows = time_train_steps(cfg, args.ratios, repeats=args.repeats, warmup=args.warmup, batch_size=batch,
                            device=args.device, backend=args.backend, optimizer=args.optimizer,
                            settle=args.settle)
    out = Path(args.out or REPO / f"results/benchmarks/bench/train_step-{args.arch}.csv")
    meta = {"arch": args.arch, "device": args.device, "threads": torch.get_num_threads(),
            "cpu_model": _cpu_info()["cpu_model"], "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "backend": args.backend or "auto", "precision": cfg["precision"], "optimizer": args.optimizer}
    write_csv(out, [{**meta, **r} for r in rows])
    for r in rows:
        print(f"{args.arch} {args.backend or 'auto'} {cfg['precision']} {args.optimizer} batch {batch} ratio {r['ratio']:<6} {r['median_ms']:9.1f} ms  "
              f"speed-up {r['speedup']:.2f}x  saved-for-backward {r['saved_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
