"""Speed of the sparse depthwise convolution (Eq. 20) against a dense depthwise convolution.

All numbers come from one run on one machine, so the ratios are comparable (docs/architecture.md,
"Layout": ratios measured in one run). Default set-up: 64 channels, batch 8, 64 x 64 grid, k = 7, forward + backward (gradients
for the features and the kernel), sampling ratios 1, 1/2, 1/4, 1/8.

Rows:
  dense_conv2d        F.conv2d(groups=C, padding=k//2) on the full grid, NCHW (the reference cost)
  dense_conv2d_cl     the same on a channels-last tensor (oneDNN's faster depthwise path on CPU)
  sparse_torch        gather backend with the gather-only custom backward, at each ratio
  sparse_compiled     the same gathers fused by torch.compile (infdiff/sparse_compiled.py), at each ratio
  sparse_cpp          C++ loops over the sampled neighbours only (infdiff/sparse_cpp.py), at each ratio
  sparse_dense        scatter-to-grid backend (F.conv2d / FFT + normaliser), at each ratio
  geometry_build      building the neighbour tables once per point set (shared by all layers)

Usage:
  python benchmarks/bench_sparse.py [--out results/benchmarks/bench_sparse.csv] [--repeats 30]
                                    [--device cpu|cuda] [--threads N]
Prints the table and writes it as CSV (median and min milliseconds; speed-up = dense NCHW / row median,
speed-up_cl = dense channels-last / row median). The compiled and C++ kernels are built before timing starts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infdiff.io import write_csv  # noqa: E402
from infdiff.sparse import SparseGeometry, sparse_depthwise_conv  # noqa: E402

RATIOS = (1.0, 0.5, 0.25, 0.125)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int, warmup: int = 3) -> list[float]:
    """Wall-clock milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _subset(B: int, R: int, ratio: float, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    N = max(1, round(ratio * R * R))
    if N == R * R:
        return torch.arange(R * R).expand(B, -1).contiguous().to(device)
    return torch.stack([torch.randperm(R * R, generator=g)[:N].sort().values for _ in range(B)]).to(device)


def run(B=8, C=64, R=64, k=7, repeats=30, device="cpu") -> list[dict]:
    dev = torch.device(device)
    torch.manual_seed(0)
    rows = []

    def add(op, ratio, N, ms):
        rows.append(dict(op=op, ratio=ratio, points=N, ms_median=statistics.median(ms), ms_min=min(ms)))

    # Dense reference: full-grid depthwise conv, forward + backward.
    x = torch.randn(B, C, R, R, device=dev, requires_grad=True)
    wd = torch.randn(C, 1, k, k, device=dev, requires_grad=True)

    def dense():
        y = F.conv2d(x, wd, padding=k // 2, groups=C)
        y.backward(torch.ones_like(y))

    add("dense_conv2d", 1.0, R * R, _time(dense, dev, repeats))
    # The same conv on a channels-last tensor (what the dense backend feeds it: [B, N, C] transposed).
    xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()

    def dense_cl():
        y = F.conv2d(xcl, wd, padding=k // 2, groups=C)
        y.backward(torch.ones_like(y))

    add("dense_conv2d_cl", 1.0, R * R, _time(dense_cl, dev, repeats))

    w = torch.randn(C, k, k, device=dev, requires_grad=True)
    for ratio in RATIOS:
        idx = _subset(B, R, ratio, dev)
        N = idx.shape[1]
        v = torch.randn(B, N, C, device=dev, requires_grad=True)

        def build():
            g = SparseGeometry(idx, R, k)
            g.tables()
            g.count

        add("geometry_build", ratio, N, _time(build, dev, repeats))
        geom = SparseGeometry(idx, R, k)
        for backend in ("torch", "compiled", "cpp", "dense"):
            def step(backend=backend):
                y = sparse_depthwise_conv(v, geom, w, backend)
                y.backward(torch.ones_like(y))
            add(f"sparse_{backend}", ratio, N, _time(step, dev, repeats))

    ref, ref_cl = rows[0]["ms_median"], rows[1]["ms_median"]
    meta = dict(device=str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
                cpu_capability=torch.backends.cpu.get_cpu_capability(),
                threads=torch.get_num_threads(), torch=torch.__version__, batch=B, channels=C, res=R, k=k)
    for r in rows:
        r["speedup_vs_dense"] = ref / r["ms_median"]
        r["speedup_vs_dense_cl"] = ref_cl / r["ms_median"]
        r.update(meta)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/benchmarks/bench_sparse.csv")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--res", type=int, default=64)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = run(B=a.batch, C=a.channels, R=a.res, repeats=a.repeats, device=a.device)
    print(f"{a.res} px, batch {a.batch}, {a.channels} channels, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(f"{'op':<16}{'ratio':>7}{'points':>8}{'median ms':>11}{'min ms':>9}{'vs NCHW':>9}{'vs CL':>7}")
    for r in rows:
        print(f"{r['op']:<16}{r['ratio']:>7.3f}{r['points']:>8}{r['ms_median']:>11.2f}{r['ms_min']:>9.2f}"
              f"{r['speedup_vs_dense']:>9.2f}{r['speedup_vs_dense_cl']:>7.2f}")
    out = Path(a.out)
    write_csv(out, rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
