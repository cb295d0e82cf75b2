"""The norms of training, forward + backward: eager ops against the C++ kernels.

Times, alternating the two in one process (medians), on the shapes training meets:

- the U-Nets' group norm with a ResBlock's scale-shift, ``GN(x) * (1 + scale) + shift``, on channels-last
  activations: eager is torch's group norm of a float32 copy, a cast back and ``addcmul`` (what
  ``GroupNorm32`` and ``ResBlock`` ran before :mod:`infdiff.group_norm`), against the one-pass kernel;
- the modulated LayerNorm of the sparse blocks, the MLP baseline and the U-ViT, ``LN(v) * (1 + scale) + shift``
  on [B, N, C]: ``layer_norm`` + ``addcmul`` against :mod:`infdiff.layer_norm`'s kernel.

Each case is timed in the dtype training runs it in on this CPU (bf16 where ``precision: auto`` picks it,
else float32), forward and backward, and checked to agree. Prints the CPU, ms for each and eager / kernel.

Usage:
  python benchmarks/bench_norm_grad.py [--threads 1] [--repeats 30]
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
from infdiff import group_norm as GN  # noqa: E402
from infdiff import layer_norm as LN  # noqa: E402
from infdiff.cpp_build import cpp_available  # noqa: E402
from infdiff.nets.blocks import layer_norm  # noqa: E402
from infdiff.precision import resolve_precision  # noqa: E402
from infdiff.provenance import _cpu_info  # noqa: E402

# (name, shape, groups): the embedded U-Net's 16 px level (batch 32), the FFHQ-128 preset's 64 px level (batch 16)
GROUP_SHAPES = [("embedded U-Net, 16 px", (32, 64, 16, 16), 16), ("FFHQ-128 U-Net, 64 px", (16, 64, 64, 64), 32)]
# (name, [B, N, C]): ∞-Diff's sparse level and the MLP baseline at 32 px, ratio 1/4 (batch 32)
LAYER_SHAPES = [("∞-Diff sparse level", (32, 256, 32)), ("MLP baseline", (32, 256, 256))]


def _group_case(shape, groups, dtype):
    B, C = shape[:2]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    scale, shift = (0.3 * torch.randn(B, C, generator=g)).to(dtype), torch.randn(B, C, generator=g).to(dtype)
    scale.requires_grad_(), shift.requires_grad_()
    dy = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)

    def eager():
        y = F.group_norm(x.float(), groups, eps=1e-5).type(dtype)
        return torch.addcmul(shift[:, :, None, None], y, 1 + scale[:, :, None, None])

    def kernel():
        return GN.group_norm(x, groups, eps=1e-5, gain=1 + scale, shift=shift)

    return eager, kernel, (x, scale, shift), dy


def _layer_case(shape, dtype):
    B, N, C = shape
    g = torch.Generator().manual_seed(0)
    v = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    scale, shift = (0.3 * torch.randn(B, 1, C, generator=g)).to(dtype), torch.randn(B, 1, C, generator=g).to(dtype)
    scale.requires_grad_(), shift.requires_grad_()
    dy = torch.randn(shape, generator=g).to(dtype)

    def eager():
        return torch.addcmul(shift, layer_norm(v), 1 + scale)

    def kernel():
        return LN.modulated_layer_norm(v, 1 + scale, shift)

    return eager, kernel, (v, scale, shift), dy


def _step(fn, inputs, dy):
    y = fn()
    return y, torch.autograd.grad(y, inputs, dy)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args(argv)
    ok, why = cpp_available("cpu")
    if not ok:
        raise SystemExit(f"the C++ kernels cannot be built here: {why}")
    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if resolve_precision("auto", "cpu") == "bf16" else torch.float32
    info = _cpu_info()
    print(f"{info.get('cpu_model')} ({info.get('cpu_capability')}), {a.threads} thread(s), {str(dtype)[6:]}, "
          f"forward + backward, medians of {a.repeats}")
    cases = [(name, *_group_case(shape, groups, dtype)) for name, shape, groups in GROUP_SHAPES]
    cases += [(name, *_layer_case(shape, dtype)) for name, shape in LAYER_SHAPES]
    print(f"{'case':28s} {'eager ms':>9s} {'kernel ms':>10s} {'eager/kernel':>13s}")
    for name, eager, kernel, inputs, dy in cases:
        (ye, ge), (yk, gk) = _step(eager, inputs, dy), _step(kernel, inputs, dy)
        tol = 0.05 if dtype == torch.bfloat16 else 1e-4
        for e, k in zip((ye, *ge), (yk, *gk)):
            err = (e.float() - k.float()).abs().max().item() / max(1.0, e.float().abs().max().item())
            if err > tol:
                raise SystemExit(f"{name}: eager and kernel disagree ({err:.2e})")
        times = {"eager": [], "kernel": []}
        for _ in range(3):
            _step(eager, inputs, dy), _step(kernel, inputs, dy)
        for _ in range(a.repeats):
            for which, fn in (("eager", eager), ("kernel", kernel)):
                t0 = time.perf_counter()
                _step(fn, inputs, dy)
                times[which].append((time.perf_counter() - t0) * 1e3)
        e, k = statistics.median(times["eager"]), statistics.median(times["kernel"])
        print(f"{name:28s} {e:9.2f} {k:10.2f} {e / k:12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
