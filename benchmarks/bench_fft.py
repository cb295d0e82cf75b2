"""The full-grid FFT depthwise convolution at sampling resolutions: two comparisons, each in one process.

The dense backend convolves the embedded ∞-Diff's resized kernels by FFT at sampling resolutions
(k = 15, 29, 57, 113, 225 taps at 64-1024 px, from 7 taps at 32 px). ``--compare`` picks what is timed:

* ``length`` (default): the FFT is circular; the 'same' output needs a length of only n + k // 2 per axis
  (``infdiff.sparse.fft_length``, now), not the n + k - 1 of a full linear convolution (before). Timed on
  the real-transform path (``rfft2`` / ``irfft2`` per channel, as with autograd).
* ``pairs``: without autograd on a CPU (sampling) two real channels share one complex transform
  (``infdiff.fft_pairs``: one ``fft2`` and one ``ifft2`` per two channels, C++ packing and spectral
  product), against the real transforms per channel on the same no-grad call.

Both variants run ``depthwise_conv2d(..., "fft")`` interleaved in one process (the kernel spectra cached, as
between sampling steps), on the batch a sampling job uses at that resolution
(``infdiff.sample.MAX_BATCH_PIXELS``) and the embedded model's 32 channels, and must agree.

Usage:
  python benchmarks/bench_fft.py [--compare length|pairs] [--res 64 128 256 512 1024] [--repeats 5]
                                 [--channels 32] [--threads N]
Prints one row per resolution: ms for each variant (the faster of two interleaved medians) and the
speed-up (before / now).
"""

from __future__ import annotations

import argparse
import contextlib
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

_LINEAR = lambda n, k: sparse._fast_size(n + k - 1)  # noqa: E731 - the length before
_CIRCULAR = sparse.fft_length


@contextlib.contextmanager
def _patched(module, name: str, value):
    """``module.name = value`` for the duration of the block."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


# compare -> (grad enabled while timing, {variant: context manager factory}), the "before" variant first
COMPARISONS = {
    "length": (True, {"linear (before)": lambda: _patched(sparse, "fft_length", _LINEAR),
                      "circular (now)": contextlib.nullcontext}),
    "pairs": (False, {"rfft per channel (before)": lambda: _patched(fft_pairs, "usable", lambda *a: False),
                      "two channels per fft (now)": contextlib.nullcontext}),
}


def _time(x, w, variant, grad: bool, repeats: int):
    """Median seconds of ``repeats`` FFT convolutions under ``variant``, and the output."""
    spectra: dict = {}
    with variant(), torch.set_grad_enabled(grad):
        y = sparse.depthwise_conv2d(x, w, "fft", spectra=spectra)       # builds and caches the kernel spectra
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sparse.depthwise_conv2d(x, w, "fft", spectra=spectra)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts), y


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--compare", choices=sorted(COMPARISONS), default="length")
    p.add_argument("--res", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--kernel", type=int, default=7, help="taps at the training resolution")
    p.add_argument("--train-res", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    grad, variants = COMPARISONS[a.compare]
    if a.compare == "pairs":
        with torch.no_grad():                               # usable() asks for no autograd
            if not fft_pairs.usable(torch.zeros(1, 2, 1, 1), torch.zeros(1)):
                raise SystemExit("the paired path cannot run here (it needs g++ and ninja to build infdiff/csrc)")
    before, now = variants
    cpu = _cpu_info()
    print(f"{cpu['cpu_model']}, cpu capability {cpu['cpu_capability']}, {torch.get_num_threads()} threads, "
          f"{a.channels} channels, best of 2 interleaved medians of {a.repeats}")
    print(f"{'px':>5} {'k':>4} {'batch':>5} {'M before':>8} {'M now':>6} | {before:>26} | {now:>26} | speed-up")
    for R in a.res:
        k = sparse.kernel_size_at(a.kernel, R, a.train_res)
        B = max(1, MAX_BATCH_PIXELS // (R * R))
        torch.manual_seed(0)
        x, w = torch.randn(B, a.channels, R, R), torch.randn(a.channels, k, k) / k
        t: dict = {}
        for _ in range(2):                                   # interleaved: before, now, before, now
            for name, variant in variants.items():
                s, y = _time(x, w, variant, grad, a.repeats)
                t.setdefault(name, []).append(s)
                t[name + " y"] = y
        err = (t[before + " y"] - t[now + " y"]).abs().max().item()
        if err > 1e-5 * t[before + " y"].abs().max().item():
            raise AssertionError(f"{R} px: the two variants disagree by {err:.2e}")
        ms = {name: min(t[name]) * 1e3 for name in variants}
        m_before = _LINEAR(R, k) if a.compare == "length" else _CIRCULAR(R, k)
        print(f"{R:>5} {k:>4} {B:>5} {m_before:>8} {_CIRCULAR(R, k):>6} | {ms[before]:>26.1f} | "
              f"{ms[now]:>26.1f} | {ms[before] / ms[now]:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
