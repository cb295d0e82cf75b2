"""The sampling path's FFT convolution: two channels per complex transform against the real transforms.

Without autograd on a CPU, ``infdiff.sparse.depthwise_conv2d(..., "fft")`` packs two real channel planes
into one complex FFT (``infdiff.fft_pairs``: one ``fft2`` and one ``ifft2`` per two channels, C++ packing
and spectral product); elsewhere it runs ``rfft2`` / ``irfft2`` per channel. This times both on the batch a
sampling job uses at each resolution (``infdiff.sample.MAX_BATCH_PIXELS``), the embedded model's 32 channels
and its resized kernel, the kernel spectra cached as between sampling steps, interleaved in one process, and
checks that they agree to float32 rounding.

Usage:
  python benchmarks/bench_fft_pairs.py [--res 64 128 256 512 1024] [--repeats 5] [--channels 32] [--threads N]
Prints one row per resolution: ms per convolution for each path (the faster of two interleaved medians) and
the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import infdiff.fft_pairs as fft_pairs  # noqa: E402
import infdiff.sparse as sparse  # noqa: E402
from infdiff.provenance import _cpu_info  # noqa: E402
from infdiff.sample import MAX_BATCH_PIXELS  # noqa: E402


def _time(x, w, pairs: bool, repeats: int):
    """Median seconds of ``repeats`` no-grad FFT convolutions on one path, and the output."""
    usable = fft_pairs.usable
    if not pairs:
        fft_pairs.usable = lambda *args: False
    try:
        spectra: dict = {}
        with torch.no_grad():
            y = sparse.depthwise_conv2d(x, w, "fft", spectra=spectra)   # builds and caches the kernel spectra
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                sparse.depthwise_conv2d(x, w, "fft", spectra=spectra)
                ts.append(time.perf_counter() - t0)
    finally:
        fft_pairs.usable = usable
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
    with torch.no_grad():                                    # usable() asks for no autograd
        if not fft_pairs.usable(torch.zeros(1, 2, 1, 1), torch.zeros(1)):
            raise SystemExit("the paired path cannot run here (it needs g++ and ninja to build infdiff/csrc)")
    cpu = _cpu_info()
    print(f"{cpu['cpu_model']}, cpu capability {cpu['cpu_capability']}, {torch.get_num_threads()} threads, "
          f"{a.channels} channels, best of 2 interleaved medians of {a.repeats}")
    print(f"{'px':>5} {'k':>4} {'batch':>5} {'M':>5} | {'rfft ms':>8} | {'pairs ms':>8} | speed-up")
    for R in a.res:
        k = sparse.kernel_size_at(a.kernel, R, a.train_res)
        B = max(1, MAX_BATCH_PIXELS // (R * R))
        torch.manual_seed(0)
        x, w = torch.randn(B, a.channels, R, R), torch.randn(a.channels, k, k) / k
        t: dict = {}
        for _ in range(2):                                   # interleaved: rfft, pairs, rfft, pairs
            for pairs in (False, True):
                s, y = _time(x, w, pairs, a.repeats)
                t.setdefault(pairs, []).append(s)
                t[(pairs, "y")] = y
        err = (t[(False, "y")] - t[(True, "y")]).abs().max().item()
        if err > 1e-5 * t[(False, "y")].abs().max().item():
            raise AssertionError(f"{R} px: the two paths disagree by {err:.2e}")
        real, paired = min(t[False]) * 1e3, min(t[True]) * 1e3
        print(f"{R:>5} {k:>4} {B:>5} {sparse.fft_length(R, k):>5} | {real:>8.1f} | {paired:>8.1f} | "
              f"{real / paired:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
