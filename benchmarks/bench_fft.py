"""FFT length of the full-grid depthwise convolution at sampling resolutions: circular vs linear.

The dense backend convolves the embedded ∞-Diff's resized kernels by FFT at sampling resolutions
(k = 15, 29, 57, 113, 225 taps at 64-1024 px, from 7 taps at 32 px). The FFT is circular; the 'same' output
needs a length of only n + k // 2 per axis (``infdiff.sparse.fft_length``, now), not the n + k - 1 of a
full linear convolution (before). This times ``depthwise_conv2d(..., "fft")`` with both lengths, interleaved
in one process (the kernel spectra cached, as between sampling steps), on the batch a sampling job uses at
that resolution (``infdiff.sample.MAX_BATCH_PIXELS``) and the embedded model's 32 channels, and checks that
both agree.

Usage:
  python benchmarks/bench_fft.py [--res 64 128 256 512 1024] [--repeats 5] [--channels 32] [--threads N]
Prints one row per resolution: FFT length and ms for each (the faster of two interleaved medians), and the
speed-up (before / now).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import infdiff.sparse as sparse  # noqa: E402
from infdiff.provenance import _cpu_info  # noqa: E402
from infdiff.sample import MAX_BATCH_PIXELS  # noqa: E402

LENGTHS = {"linear (before)": lambda n, k: sparse._fast_size(n + k - 1), "circular (now)": sparse.fft_length}


def _time(x, w, length, repeats):
    """Median seconds of ``repeats`` FFT convolutions with the FFT length rule ``length`` (and the output)."""
    sparse.fft_length = length
    spectra: dict = {}
    try:
        y = sparse.depthwise_conv2d(x, w, "fft", spectra=spectra)   # builds and caches the kernel spectra
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sparse.depthwise_conv2d(x, w, "fft", spectra=spectra)
            ts.append(time.perf_counter() - t0)
    finally:
        sparse.fft_length = LENGTHS["circular (now)"]
    return statistics.median(ts), y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--res", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--kernel", type=int, default=7, help="taps at the training resolution")
    p.add_argument("--train-res", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cpu = _cpu_info()
    print(f"{cpu['cpu_model']}, cpu capability {cpu['cpu_capability']}, {torch.get_num_threads()} threads, "
          f"{a.channels} channels, best of 2 interleaved medians of {a.repeats}")
    print(f"{'px':>5} {'k':>4} {'batch':>5} | {'M before':>8} {'ms':>8} | {'M now':>6} {'ms':>8} | speed-up")
    for R in a.res:
        k = sparse.kernel_size_at(a.kernel, R, a.train_res)
        B = max(1, MAX_BATCH_PIXELS // (R * R))
        torch.manual_seed(0)
        x, w = torch.randn(B, a.channels, R, R), torch.randn(a.channels, k, k) / k
        t = {}
        for _ in range(2):                                   # interleaved: before, now, before, now
            for name, length in LENGTHS.items():
                s, y = _time(x, w, length, a.repeats)
                t.setdefault(name, []).append(s)
                t[name + " y"] = y
        err = (t["linear (before) y"] - t["circular (now) y"]).abs().max().item()
        if err > 1e-4 * t["linear (before) y"].abs().max().item():
            raise AssertionError(f"{R} px: the two FFT lengths disagree by {err:.2e}")
        before, now = (min(t[n]) * 1e3 for n in LENGTHS)
        print(f"{R:>5} {k:>4} {B:>5} | {LENGTHS['linear (before)'](R, k):>8} {before:>8.1f} | "
              f"{sparse.fft_length(R, k):>6} {now:>8.1f} | {before / now:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
