"""The modulated LayerNorm without autograd: eager ops against the one-pass C++ kernel (infdiff.fused_norm).

Times ``LN(v) * (1 + scale) + shift`` on [B, N, C] slices the sampling path normalises (∞-Diff's 32 channels,
the MLP baseline's 256), eager (``layer_norm`` + ``addcmul``, as :class:`ModulatedLayerNorm` runs with
autograd) and fused, alternating the two in one process, in float32 and bf16 (bf16 out, as under autocast),
and checks that they agree. Prints the CPU, ms for each and the speed-up (eager / fused).

Usage:
  python benchmarks/bench_norm.py [--threads 1 2] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infdiff import fused_norm  # noqa: E402
from infdiff.cpp_build import cpp_available  # noqa: E402
from infdiff.nets.blocks import layer_norm  # noqa: E402
from infdiff.provenance import _cpu_info  # noqa: E402

SHAPES = [(1, 16384, 32), (16, 1024, 32), (32, 512, 256)]   # one slice: ∞-Diff at 1024 / 256 px, MLP at 64 px


def _ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=50)
    a = p.parse_args(argv)
    ok, why = cpp_available("cpu")
    if not ok:
        sys.exit(f"the fused kernel cannot be built here: {why}")
    cpu = _cpu_info()
    print(f"CPU: {cpu['cpu_model']}, torch capability {cpu['cpu_capability']}, torch {torch.__version__}")
    print("threads | B, N, C | dtype | eager ms | fused ms | speed-up")
    g = torch.Generator().manual_seed(0)
    for threads in a.threads:
        torch.set_num_threads(threads)
        for B, N, C in SHAPES:
            for dtype in (torch.float32, torch.bfloat16):
                v = torch.randn(B, N, C, generator=g).to(dtype)
                gain = (1 + 0.1 * torch.randn(B, 1, C, generator=g)).to(dtype)
                shift = (0.1 * torch.randn(B, 1, C, generator=g)).to(dtype)
                with torch.no_grad():
                    eager = lambda: torch.addcmul(shift, layer_norm(v), gain)            # noqa: E731
                    fused = lambda: fused_norm.modulated_norm(v, gain, shift)            # noqa: E731
                    torch.testing.assert_close(fused().float(), eager().float(), rtol=2e-2, atol=3e-2)
                    te, tf = [], []
                    for _ in range(3):          # alternate blocks of each, so machine noise hits both alike
                        te += _ms(eager, a.repeats // 3 + 1)
                        tf += _ms(fused, a.repeats // 3 + 1)
                e, f = statistics.median(te), statistics.median(tf)
                print(f"{threads} | {B}, {N}, {C} | {str(dtype)[6:]} | {e:.3f} | {f:.3f} | {e / f:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
