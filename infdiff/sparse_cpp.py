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
result independent of the thread count. The extension is built on first use (g++ and
ninja; ~1 min on 2 cores) and loaded from the extension cache afterwards (:mod:`infdiff.cpp_build`).

Backends agree to 1e-5 in float32 (tests/test_sparse.py); ``benchmarks/bench_sparse.py`` measures them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from infdiff.cpp_build import cpp_available, load_extension

__all__ = ["cpp_available", "sparse_depthwise_cpp"]


def _with_zero_row(w: Tensor) -> Tensor:
    """[K, C] -> [K+1, C]: the zero weight row that the offset K (no neighbour) indexes."""
    return torch.cat([w, w.new_zeros(1, w.shape[1])])


class _CppDepthwiseFn(torch.autograd.Function):
    """out = scale * sum_j w[off[:, j]] * v[nb[:, j]]; backward from the same two kernels (module docstring)."""

    @staticmethod
    def forward(ctx, v: Tensor, w: Tensor, scale: Tensor, nb: Tensor, off: Tensor) -> Tensor:
        # v [Z, C], w [K, C] offset-major, scale [Z, 1], nb / off [Z, J]
        out = load_extension("sparse_gather").gather_conv(v, _with_zero_row(w), nb, off).mul_(scale)
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
            grad_v = load_extension("sparse_gather").gather_conv(gs, _with_zero_row(w.flip(0)), nb, off)
        if ctx.needs_input_grad[1]:
            grad_w = load_extension("sparse_gather").weight_grad(v, gs, nb, off, w.shape[0])
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
