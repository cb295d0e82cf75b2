"""The README's "What a preset costs" table: `python -m infdiff cost` for every preset, one row each.

  python benchmarks/cost_readme.py [--target table1] [--tflops X] [--out-dir results/cost]

Writes results/cost/<preset>-<target>.{md,json} (every job, as `python -m infdiff cost --md/--json`) and
prints the summary table (GPU-hours by job kind) with the commit the numbers came from.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infdiff import cost  # noqa: E402
from infdiff.io import atomic_write  # noqa: E402
from infdiff.provenance import _git_info  # noqa: E402

KINDS = ("train", "train_latent", "encode_train", "train_step_ratios", "sample", "sample_latent", "features")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="table1", choices=cost.TARGETS)
    p.add_argument("--tflops", type=float, default=cost.DEFAULT_TFLOPS)
    p.add_argument("--out-dir", default="results/cost")
    p.add_argument("--presets", nargs="*", default=None, help="default: every workflow/presets/paper-*.yaml")
    a = p.parse_args(argv)
    presets = a.presets or sorted(str(x.relative_to(REPO)) for x in (REPO / "workflow" / "presets").glob("paper-*.yaml"))
    git = _git_info(REPO)
    rows = []
    for preset in presets:
        t0 = time.time()
        config = cost.load_workflow_config([REPO / preset], base=REPO / "config.yaml")
        result = cost.estimate(config, a.target, tflops=a.tflops)
        result.update(git, configfiles=[preset])
        stem = Path(a.out_dir) / f"{Path(preset).stem}-{a.target}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        for suffix, text in ((".md", cost.to_markdown(result)), (".json", cost.to_json(result))):
            with atomic_write(stem.with_suffix(suffix), "w", encoding="utf-8") as f:
                f.write(text)
        hours = {k: cost._gpu_hours(v, a.tflops) for k, v in result["by_kind"].items()}
        rows.append((Path(preset).stem, result, hours))
        print(f"{preset}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    kinds = [k for k in KINDS if any(k in h for _, _, h in rows)]
    print(f"| preset ({a.target}) | total FLOPs | GPU-hours | " + " | ".join(kinds) + " |")
    print("|---|---|---|" + "---|" * len(kinds))
    for name, result, hours in rows:
        print(f"| {name} | {cost._fmt(result['total_flops'], 'FLOP')} | {cost._hours(result['gpu_hours'])} | "
              + " | ".join(cost._hours(hours.get(k)) for k in kinds) + " |")
    print(f"\nGPU-hours at {a.tflops:g} TFLOP/s sustained ({a.tflops / cost.A100_BF16_PEAK_TFLOPS:.0%} of an A100's "
          f"bf16 peak); commit {git['commit'][:10]}{' (dirty)' if git['dirty'] else ''}; per-job tables in "
          f"{a.out_dir}/<preset>-{a.target}.md.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
