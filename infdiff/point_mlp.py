"""The point MLP of training, ``fc2(GELU(fc1(v)))``, with a backward of its own (CPU, bf16 autocast).

:class:`~infdiff.nets.blocks.PointMLP` in a training step under bf16 autocast runs in eager torch as a product
(``addmm``, which first copies the broadcast bias into its output), a GELU pass over the hidden layer
``h`` [R, H], a second product, and in the backward pass a product ``dA = dY W2`` and a ``gelu_backward``
pass that reads ``dA`` and ``h`` again: on the MLP baseline's blocks (8192 points, 256 -> 512 -> 256) the two
GELU passes were ~18% of its training step (torch.profiler, 1 thread, the AMX Xeon; README, "Performance").

Here the forward keeps the GELU's derivative ``d = GELU'(h)`` instead of ``h`` (both computed in one C++
pass, ``csrc/gelu.cpp``), and the backward applies it inside oneDNN's product (a binary "mul" post-op):

    h = v W1^T + b1,   a = GELU(h),   d = GELU'(h),   y = a W2^T + b2 (+ residual)       forward
    dH = (dY W2) * d,  dW2 = dY^T a,  db2 = sum_r dY,  dW1 = dH^T v,  db1 = sum_r dH,  dv = dH W1    backward

so the hidden layer's gradient is rounded to bf16 once (from the float32 accumulator times ``d``) instead of
twice. The bias gradients are summed as autograd sums them (bf16 sums, float32 accumulation inside).
Operands are rounded to bf16 as autocast rounds them; the parameter gradients come back in the parameters'
dtype, as through autocast's casts.
:func:`usable` says when it runs (and records ``onednn_gelu_grad`` for provenance); elsewhere (no extension,
float32, CUDA, no autograd) the caller runs the eager ops. Tested against the float64 formula and against
the eager ops (tests/test_point_mlp.py). The MLP baseline's training step took 118.3 instead of 135.7 ms
(batch 32, 1 thread, the AMX Xeon; README, "Performance").
"""

from __future__ import annotations

import torch
from torch import Tensor

from infdiff.cpp_build import cpp_available, load_extension
from infdiff.fused_norm import onednn_bf16_linear

__all__ = ["MIN_ROWS", "usable", "gelu_mlp", "kernels_used"]

_USED: set[str] = set()
# Fewer points than this keep the eager ops: at the U-ViT's 512 tokens (128 -> 256 -> 128) the oneDNN path
# took 1.29 against 1.19 ms forward and backward, at 2048 2.91 against 2.94, at ∞-Diff's 8192 points
# (32 -> 64 -> 32) 2.24 against 2.43, at the MLP baseline's (256 -> 512 -> 256) 24.1 against 25.7 (1 thread,
# the AMX Xeon, medians of five alternating runs).
MIN_ROWS = 2048


def kernels_used() -> list[str]:
    """Sorted kernels ("onednn_gelu_grad") this module ran in this process (provenance)."""
    return sorted(_USED)


def usable(v: Tensor) -> bool:
    """True if :func:`gelu_mlp` runs for ``v`` [..., C] here: autograd on, at least :data:`MIN_ROWS` points,
    :func:`~infdiff.fused_norm.onednn_bf16_linear` (a CPU tensor under bf16 autocast, oneDNN's fused linear)
    and the C++ extension buildable. Records "onednn_gelu_grad" when it does."""
    ok = (torch.is_grad_enabled() and v.numel() >= MIN_ROWS * v.shape[-1] and onednn_bf16_linear(v)
          and cpp_available("cpu")[0])
    if ok:
        _USED.add("onednn_gelu_grad")
    return ok


def _bf16(t: Tensor) -> Tensor:
    """``t`` rounded to bf16 (as autocast's cast rounds it), contiguous for oneDNN."""
    return t.to(torch.bfloat16).contiguous()


class _GeluMLP(torch.autograd.Function):
    """See the module docstring. Inputs v [R, C], residual [R, C] bf16 or None; parameters in any float dtype."""

    @staticmethod
    def forward(ctx, v, w1, b1, w2, b2, residual):
        lin = torch.ops.mkldnn._linear_pointwise
        x, w1b, b1b, w2b, b2b = (_bf16(t) for t in (v, w1, b1, w2, b2))
        h = lin(x, w1b, b1b, "none", [], "")                                # [R, H] bf16
        a, d = load_extension("gelu").gelu_with_grad(h)
        del h
        y = (lin(a, w2b, b2b, "none", [], "") if residual is None
             else lin.binary(a, _bf16(residual), w2b, b2b, "add"))       # residual added to the accumulator
        ctx.save_for_backward(x, a, d, w1b, w2b)
        ctx.dtypes = (v.dtype, w1.dtype, b1.dtype, w2.dtype, b2.dtype)
        ctx.has_residual = residual is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        x, a, d, w1b, w2b = ctx.saved_tensors
        dt_v, dt_w1, dt_b1, dt_w2, dt_b2 = ctx.dtypes
        g = _bf16(gy)                                                       # [R, C]
        dw2 = (g.t() @ a).to(dt_w2)                                         # [C, H]
        db2 = g.sum(0).to(dt_b2)
        # dH = (dY W2) * GELU'(h): the product's accumulator times d, rounded once
        dh = torch.ops.mkldnn._linear_pointwise.binary(g, d, w2b.t().contiguous(), None, "mul")   # [R, H]
        dw1 = (dh.t() @ x).to(dt_w1)                                        # [H, C]
        db1 = dh.sum(0).to(dt_b1)
        dv = (dh @ w1b).to(dt_v)                                            # [R, C]
        return dv, dw1, db1, dw2, db2, (gy if ctx.has_residual else None)


def gelu_mlp(v: Tensor, fc1: torch.nn.Linear, fc2: torch.nn.Linear, residual: Tensor | None = None) -> Tensor:
    """``fc2(GELU(fc1(v)))`` (plus ``residual``) with the backward above: v [..., C] -> [..., C] bf16.

    The residual is added to the second product's accumulator when it is bf16 (the sum then rounded once, as
    the sampling path does); a float32 residual is added outside in float32, as the eager sum under autocast
    promotes it. Callers check :func:`usable` first.
    """
    C = v.shape[-1]
    fuse = residual is not None and residual.dtype == torch.bfloat16
    y = _GeluMLP.apply(v.reshape(-1, C), fc1.weight, fc1.bias, fc2.weight, fc2.bias,
                       residual.reshape(-1, C) if fuse else None).view(*v.shape[:-1], -1)
    return residual + y if residual is not None and not fuse else y
