"""Achieved FLOP/s of training and sampling steps against the measured peak of this machine (a roofline).

Peaks are measured here, in the same run, not taken from a data sheet:
  matmul      a 2048 x 2048 x 2048 product in float32 and in bfloat16 (what dense layers can reach)
  conv        a 3x3 convolution, 64 -> 64 channels on 32 x 32, batch 32, channels-last (the grid U-Nets)
  bandwidth   a 256 MB copy (bytes read + written per second: what bounds gathers and pointwise ops)

Steps are the runs of the embedded default (config.yaml), built as training builds them, each timed as
the median of ``--repeats`` steps after warm-up; FLOPs come from the cost model (infdiff/cost.py: the
sparse operator by formula, the rest counted by FlopCounterMode). The fraction is achieved / peak of the
precision the run uses (``precision`` resolved on this CPU: infdiff/precision.py).

``--floor TARGET`` turns the same peaks into the least time a whole target can take here: every job of the
target (the cost model's jobs and FLOPs, ``python -m infdiff cost``) at the matmul peak of its run's
precision on all threads, jobs perfectly packed. Only what the cost model counts is in it (products,
convolutions, attention, the sparse operator; no elementwise work, no start-up, no SWD), so a run can never
be faster: a target above it cannot be met on this CPU by engineering, only by less arithmetic.
``--precision fp32`` prices every run in float32 (what ``precision: auto`` resolves to on a CPU without
native bf16, such as an AVX2-only one).

Usage:
  python benchmarks/roofline.py [--runs RUN ...] [--sample-res 32 256]
                                [--repeats 5] [--threads N] [--out results/benchmarks/bench/roofline.csv]
  python benchmarks/roofline.py --floor table1 [--configfile FILE ...] [--precision fp32] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from infdiff.config import load_config, run_config  # noqa: E402
from infdiff.cost import TARGETS, estimate, load_workflow_config, sample_flops_per_image, train_flops_per_image  # noqa: E402
from infdiff.io import write_csv  # noqa: E402
from infdiff.methods import build_method, method_spec  # noqa: E402
from infdiff.precision import autocast, resolve_precision  # noqa: E402
from infdiff.step_timing import optimiser_step  # noqa: E402


def _median_s(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peaks(repeats: int = 5) -> dict[str, float]:
    """Measured GFLOP/s of matmul and conv (float32, bfloat16) and GB/s of a copy on this machine."""
    out = {}
    n = 2048
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        out[f"matmul_{name}"] = 2 * n ** 3 / _median_s(lambda: a @ b, repeats) / 1e9
        x = torch.randn(32, 64, 32, 32, dtype=dt).contiguous(memory_format=torch.channels_last)
        w = torch.randn(64, 64, 3, 3, dtype=dt).contiguous(memory_format=torch.channels_last)
        flops = 2 * 32 * 64 * 64 * 9 * 32 * 32
        out[f"conv_{name}"] = flops / _median_s(lambda: F.conv2d(x, w, padding=1), repeats) / 1e9
    src = torch.empty(2 ** 26)                                  # 256 MB of float32
    dst = torch.empty_like(src)
    out["copy_GBps"] = 2 * src.numel() * 4 / _median_s(lambda: dst.copy_(src), repeats) / 1e9
    return out


def train_step(cfg: dict, repeats: int) -> float:
    """Median seconds of one optimiser step of the run at its batch size and precision."""
    step, _ = optimiser_step(cfg)
    return _median_s(step, repeats)


def sample_step(cfg: dict, R: int, batch: int, repeats: int) -> float:
    """Median seconds of one reverse step at R for ``batch`` images: (2 steps - 1 step), so the fixed
    cost of initial noise and de-mollification cancels."""
    method = build_method(cfg).eval()
    seeds = list(range(batch))

    def run(steps):
        with torch.no_grad(), autocast(cfg["precision"], "cpu"):
            method.sample(seeds, R, steps, progress=False, sampler="ddpm", batch_size=batch)

    two, one = _median_s(lambda: run(2), repeats, 1), _median_s(lambda: run(1), repeats, 1)
    return max(two - one, 1e-9)


def floor(config: dict, target: str, peak: dict[str, float], precision: str | None = None) -> dict:
    """The least wall time of ``target``'s counted FLOPs on this machine: each job's FLOPs (cost model) at the
    measured matmul peak of its run's precision (``precision`` overrides every run's), all jobs perfectly
    packed on the threads the peaks were measured with. Returns per-run seconds and the total."""
    per_run: dict[str, dict] = {}
    for job in estimate(config, target)["jobs"]:
        if job["total_flops"] is None:
            raise SystemExit(f"roofline --floor: {job['kind']} {job['run']} has no known size (a folder split)")
        prec = precision or resolve_precision(run_config(config, job["run"])["precision"], "cpu")
        row = per_run.setdefault(job["run"], {"precision": prec, "train_tflop": 0.0, "sample_tflop": 0.0})
        row["train_tflop" if job["kind"].startswith("train") else "sample_tflop"] += job["total_flops"] / 1e12
    for row in per_run.values():
        row["peak_gflops"] = peak[f"matmul_{row['precision']}"]
        row["seconds"] = (row["train_tflop"] + row["sample_tflop"]) * 1e3 / row["peak_gflops"]
    return {"runs": per_run, "seconds": sum(r["seconds"] for r in per_run.values())}


def main_floor(a, peak: dict[str, float], machine: dict) -> int:
    config = load_workflow_config(a.configfile, base=REPO / "config.yaml")
    result = floor(config, a.floor, peak, a.precision)
    print(f"{'run':<18}{'prec':>6}{'train TFLOP':>13}{'sample TFLOP':>14}{'peak GFLOP/s':>14}{'floor s':>9}")
    rows = []
    for run, r in result["runs"].items():
        print(f"{run:<18}{r['precision']:>6}{r['train_tflop']:>13.1f}{r['sample_tflop']:>14.1f}"
              f"{r['peak_gflops']:>14.0f}{r['seconds']:>9.0f}")
        rows.append({"target": a.floor, "run": run, **r, **machine})
    total = result["seconds"]
    print(f"{a.floor}: at least {total:.0f} s ({total / 60:.1f} min) on {machine['threads']} threads of this CPU "
          f"({machine['cpu_capability']}), every counted FLOP at the matmul peak")
    out = Path(a.out.replace("roofline.csv", f"floor-{a.floor}.csv"))
    write_csv(out, rows)
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=None, help="default: the runs of Table 1's rows")
    p.add_argument("--sample-res", type=int, nargs="+", default=[32, 256])
    p.add_argument("--sample-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(REPO / "results/benchmarks/bench/roofline.csv"))
    p.add_argument("--floor", choices=TARGETS, default=None,
                   help="the least time this target's counted FLOPs need here (writes floor-TARGET.csv)")
    p.add_argument("--configfile", nargs="*", default=[], help="with --floor: presets merged over config.yaml")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="with --floor: price every run in this precision (default: each run's, resolved here)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    config = load_config(REPO / "config.yaml")
    runs = a.runs or [row["run"] for row in config["tables"]["table1"]["rows"]]
    peak = peaks(a.repeats)
    machine = dict(cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads(),
                   torch=torch.__version__)
    print(f"{machine['threads']} threads, {machine['cpu_capability']}: matmul {peak['matmul_fp32']:.0f} GFLOP/s "
          f"fp32, {peak['matmul_bf16']:.0f} bf16; conv {peak['conv_fp32']:.0f} fp32, {peak['conv_bf16']:.0f} bf16; "
          f"copy {peak['copy_GBps']:.1f} GB/s")
    if a.floor:
        return main_floor(a, peak, machine)
    rows = []
    for run in runs:
        cfg = run_config(config, run)
        prec = resolve_precision(cfg["precision"], "cpu")
        B = cfg["train"]["batch_size"]
        flops = train_flops_per_image(cfg)[0] * B
        s = train_step(cfg, a.repeats)
        rows.append(dict(run=run, step="train", resolution=cfg["resolution"], batch=B, precision=prec,
                         gflop=flops / 1e9, seconds=s))
        for R in a.sample_res:
            if R != cfg["resolution"] and not method_spec(cfg["method"]).any_resolution:
                continue                          # e.g. the U-ViT samples at its training resolution only
            per_step, _ = sample_flops_per_image(cfg, R, "ddpm")
            s = sample_step(cfg, R, a.sample_batch, a.repeats)
            rows.append(dict(run=run, step="sample", resolution=R, batch=a.sample_batch, precision=prec,
                             gflop=per_step * a.sample_batch / 1e9, seconds=s))
    for r in rows:
        r["gflops"] = r["gflop"] / r["seconds"]
        r["peak_matmul_gflops"] = peak[f"matmul_{r['precision']}"]
        r["fraction_of_matmul_peak"] = r["gflops"] / r["peak_matmul_gflops"]
        r.update(machine)
        r.update({f"peak_{k}": v for k, v in peak.items()})
    print(f"{'run':<18}{'step':<8}{'px':>5}{'batch':>6}{'prec':>6}{'GFLOP':>9}{'ms':>9}{'GFLOP/s':>9}{'of peak':>9}")
    for r in rows:
        print(f"{r['run']:<18}{r['step']:<8}{r['resolution']:>5}{r['batch']:>6}{r['precision']:>6}{r['gflop']:>9.2f}"
              f"{r['seconds'] * 1e3:>9.1f}{r['gflops']:>9.1f}{r['fraction_of_matmul_peak']:>9.1%}")
    out = Path(a.out)
    write_csv(out, rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
