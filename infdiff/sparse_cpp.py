"""The sparse depthwise operator (Eq. 20) as hand-written C++ loops over the sampled neighbours only.

The compiled gathers (:mod:`infdiff.sparse_compiled`) run over the full [B*N, k*k] neighbour table, so at
ratio r they multiply the zero row of a missing neighbour (1 - r) of the time, and inductor turns the
weight gradient (a reduction over all B*N points per kernel offset) into one long dependency chain per
output vector: on the Xeon it took ~5x the forward. The loops in ``csrc/sparse_gather.cpp`` visit each
point's ~r*k*k *sampled* neighbours (:meth:`SparseGeometry.compact_table`), and the weight gradient
accumulates per fixed chunk of points into a [k*k, C] block that stays in cache:

    out[z, c]    = scale[z] * sum_j w[off[z, j], c] * v[nb[z, j], c]            (Eq. 20, Monte Carlo)
    grad_v[m, c] = sum_j w[-off[m, j], c] * g'[nb[m, j], c]     (symmetry of the neighbour relation)
    grad_w[o, c] = sum_z sum_{j: off[z, j] = o} g'[z, c] * v[nb[z, j], c]         with g' = g * scale

Float32 only (the operator always runs in at least float32, :func:`infdiff.sparse._in_work_dtype`), CPU
only, parallel over points with torch's intra-op threads; the chunked weight-gradient sum makes every
result independent of the thread count. The extension is built on first use by
``torch.utils.cpp_extension`` (g++ and ninja; ~1 min on 2 cores) into ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) and loaded from there afterwards; its name carries the CPU capability it
was built for, so a home directory shared by AVX-512 and AVX2 machines keeps one build of each.

Backends agree to 1e-5 in float32 (tests/test_sparse.py); ``benchmarks/bench_sparse.py`` measures them.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["cpp_available", "sparse_depthwise_cpp"]

SOURCE = Path(__file__).resolve().parent / "csrc" / "sparse_gather.cpp"
# Instruction sets per torch CPU capability: the build targets what torch itself dispatches to here, not
# -march=native (a build must stay valid on every machine of the same capability).
ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma"],
             "AVX2": ["-mavx2", "-mfma"]}


def cpp_available(device: torch.device | str) -> tuple[bool, str]:
    """(True, "") if the C++ kernels can be built and run on ``device``, else (False, why)."""
    return _available(torch.device(device).type)


@functools.cache
def _available(device_type: str) -> tuple[bool, str]:
    from torch.utils.cpp_extension import is_ninja_available

    if device_type != "cpu":
        return False, f"the C++ sparse kernels run on the CPU only, not on '{device_type}'"
    if shutil.which("g++") is None:
        return False, "building the C++ sparse kernels needs g++ on PATH (e.g. `apt-get install g++`)"
    if not (is_ninja_available() or _ninja_from_wheel()):
        return False, "building the C++ sparse kernels needs ninja (`pip install ninja`, in the lock)"
    return True, ""


def _ninja_from_wheel() -> bool:
    """Put the ``ninja`` wheel's binary on PATH (a virtual environment that is not activated has it off
    PATH) for torch.utils.cpp_extension, which runs ``ninja`` by name; True if it is usable then."""
    from torch.utils.cpp_extension import is_ninja_available

    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return is_ninja_available()


@functools.cache
def _extension():
    from torch.utils.cpp_extension import load

    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp", *ISA_FLAGS.get(capability, [])]
    return load(name=f"infdiff_sparse_gather_{capability.lower()}", sources=[str(SOURCE)],
                extra_cflags=flags, extra_ldflags=["-fopenmp"])


def _with_zero_row(w: Tensor) -> Tensor:
    """[K, C] -> [K+1, C]: the zero weight row that the offset K (no neighbour) indexes."""
    return torch.cat([w, w.new_zeros(1, w.shape[1])])


class _CppDepthwiseFn(torch.autograd.Function):
    """out = scale * sum_j w[off[:, j]] * v[nb[:, j]]; backward from the same two kernels (module docstring)."""

    @staticmethod
    def forward(ctx, v: Tensor, w: Tensor, scale: Tensor, nb: Tensor, off: Tensor) -> Tensor:
        # v [Z, C], w [K, C] offset-major, scale [Z, 1], nb / off [Z, J]
        out = _extension().gather_conv(v, _with_zero_row(w), nb, off).mul_(scale)
        ctx.save_for_backward(v, w, scale, nb, off)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        v, w, scale, nb, off = ctx.saved_tensors
        gs = (g * scale).contiguous()
        grad_v = grad_w = None
        if ctx.needs_input_grad[0]:
            # offset index K-1-o is -o for the row-major symmetric offsets
            grad_v = _extension().gather_conv(gs, _with_zero_row(w.flip(0)), nb, off)
        if ctx.needs_input_grad[1]:
            grad_w = _extension().weight_grad(v, gs, nb, off, w.shape[0])
        return grad_v, grad_w, None, None, None


def sparse_depthwise_cpp(v: Tensor, w: Tensor, scale: Tensor, nb: Tensor, off: Tensor) -> Tensor:
    """Eq. 20 by the C++ kernels.

    Args:
        v: [Z, C] float32 features of all Z = B*N points; w: [K, C] float32 kernel, offset-major
            (row-major (dy, dx)); scale: [Z, 1] Monte-Carlo factor K / count;
        nb, off: [Z, J] compact neighbour table and offsets (:meth:`SparseGeometry.compact_table`).
    Returns:
        [Z, C].
    """
    ok, why = cpp_available(v.device)
    if not ok:
        raise RuntimeError(f"sparse backend 'cpp' cannot run here: {why}; use backend 'compiled' or 'torch'")
    return _CppDepthwiseFn.apply(v.contiguous(), w.contiguous(), scale, nb, off)
