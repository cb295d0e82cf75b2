"""The sampling path's modulated LayerNorm, and the residual MLP after it, as C++ passes (CPU, no autograd).

Every ∞-Diff block, the MLP baseline and the U-ViT normalise with :class:`~infdiff.nets.blocks.ModulatedLayerNorm`,

    out[b, n] = (LN(v[b, n]) * gain[b] + shift[b]) * zgain[b]      (gain = 1 + scale(t), zgain = 1 + s_z(z))

In eager torch that is a LayerNorm kernel, an ``addcmul`` and casts, each a pass over [B, N, C] (and torch's
LayerNorm is slow on the narrow rows here). ``csrc/modulated_norm.cpp`` computes it in one pass, the
statistics of each row in float32: on 2 cores of the AMX Xeon 2-4x faster than the eager ops at C = 32 and
256 (README, "Performance"); :func:`modulated_norm` can write float32 channel planes for the FFT convolution.
:func:`residual_mlp` is the rest of an ∞-Diff block after its convolution (residual, bias, the second norm,
the MLP, residual) in one pass over tasks of points, and :func:`merge` the skip merge before an up block.
:func:`gelu_mlp` is a wide pointwise MLP (the MLP baseline's blocks) as two oneDNN products, the GELU
computed on the first one's output tile. None has a backward, so only the no-gradient path (sampling) uses
them; training and guided sampling keep the eager ops. Where the extension cannot be built (no g++ or
ninja) or off the CPU, the eager ops run; which one ran is recorded in provenance (``norm_kernels``,
:func:`kernels_used`).

Both agree with the eager ops to float32 rounding (tests/test_fused_norm.py). For a bf16 input the norm is
slightly *more* precise than eager bf16 autocast, which rounds LN(v) to bf16 before the modulation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from infdiff.cpp_build import cpp_available, load_extension

__all__ = ["RESIDUAL_MLP_TASK_BYTES", "usable", "modulated_norm", "kernels_used", "matmul_dtype",
           "residual_mlp_usable", "residual_mlp", "merge", "onednn_bf16_linear", "gelu_mlp_usable", "gelu_mlp"]

_USED: set[str] = set()
# Working set of one task of :func:`residual_mlp` (u in float32, the norm, the hidden layer, fc2's output):
# ~11k points of an ∞-Diff block (C = 32). Measured on the AMX Xeon (256 px, 16 images, 2 threads): 4 MiB
# 81-84 ms per call, 1 MiB 90, 512 KiB 94; the products' speed at K = 32 grows with the rows they get.
RESIDUAL_MLP_TASK_BYTES = 1 << 22


def usable(v: Tensor) -> bool:
    """True if :func:`modulated_norm` runs for ``v`` here: no autograd, a CPU float32/bf16 tensor, and the
    extension can be built. Records the kernel the caller is about to use ("cpp" or "torch")."""
    if torch.is_grad_enabled():
        return False
    ok = v.device.type == "cpu" and v.dtype in (torch.float32, torch.bfloat16) and cpp_available("cpu")[0]
    _USED.add("cpp" if ok else "torch")
    return ok


def kernels_used() -> list[str]:
    """Sorted kernels ("cpp", "torch") the modulated LayerNorms ran without autograd in this process."""
    return sorted(_USED)


def _rows(t: Tensor, B: int, C: int) -> Tensor:
    """Per-image modulation [B, 1, C] (or [B, C]), any float dtype -> [B, C] float32, contiguous."""
    return t.reshape(B, C).float().contiguous()


def modulated_norm(v: Tensor, gain: Tensor, shift: Tensor, zgain: Tensor | None = None, eps: float = 1e-5,
                   dtype: torch.dtype | None = None, channel_major: bool = False) -> Tensor:
    """(LN(v) * gain + shift) * zgain in one pass.

    Args:
        v: [B, N, C] float32 or bf16 (any strides; copied to contiguous if needed).
        gain, shift, zgain: [B, 1, C] (or [B, C]) per-image modulation, any float dtype; zgain optional.
        eps: LayerNorm's eps.
        dtype: of the result, float32 or bf16; None: the dtype the eager ops would give
            (``addcmul(shift, LN(v), gain) * zgain``: torch's type promotion of the four). The sparse
            convolutions ask for float32, the dtype they compute in (no bf16 rounding and cast passes).
        channel_major: the result is a [B, N, C] view of [B, C, N] storage (the FFT convolution's planes).
    Returns:
        [B, N, C], computed in float32 and rounded once to ``dtype``.
    """
    B, _, C = v.shape
    if dtype is None:
        dtype = torch.promote_types(torch.promote_types(shift.dtype, v.dtype), gain.dtype)
        if zgain is not None:
            dtype = torch.promote_types(dtype, zgain.dtype)
    z = _rows(zgain, B, C) if zgain is not None else v.new_empty(0, dtype=torch.float32)
    bf16 = dtype == torch.bfloat16      # written as bf16 by the kernel (one rounding, no cast pass)
    out = load_extension("modulated_norm").modulated_norm(v.contiguous(), _rows(gain, B, C), _rows(shift, B, C), z,
                                                          eps, bf16, channel_major)
    return out if bf16 or dtype == torch.float32 else out.to(dtype)


def matmul_dtype(weight: Tensor) -> torch.dtype:
    """The dtype a ``Linear`` with this weight computes in here: autocast's CPU dtype where autocast is on,
    else the weight's own."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype


def residual_mlp_usable(v: Tensor, fc1: torch.nn.Linear) -> bool:
    """True if :func:`residual_mlp` runs for ``v`` here (:func:`usable`, and products in float32 or bf16)."""
    return usable(v) and matmul_dtype(fc1.weight) in (torch.float32, torch.bfloat16)


def residual_mlp(v: Tensor, mod: tuple[Tensor, Tensor, Tensor | None], fc1: torch.nn.Linear, fc2: torch.nn.Linear,
                 h: Tensor | None = None, cbias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """The residual MLP after a modulated LayerNorm, in C++ tasks of points:

        u = v + h + cbias,     out = u + fc2(GELU(fc1((LN(u) * gain + shift) * zgain)))

    (an ∞-Diff block after its convolution: h = K(LN_t(v)), cbias K's bias; with neither, a plain residual
    MLP block). Eager, that is a slice loop in Python (:func:`~infdiff.nets.blocks.pointwise`) with ~10 ops,
    copies of strided slices and casts per slice; here each task of :data:`RESIDUAL_MLP_TASK_BYTES` reads
    its points of v and h once (h in the order of its unit stride: the FFT's channel-major output needs no
    transposed copy), and the tasks run on the cores in parallel. The MLP baseline (C = 256) keeps the eager
    ops: at its width the products dominate and were slower split into tasks (measured, README).

    Args:
        v: [B, N, C] float32 or bf16, any strides; h: the same shape (may be channel-major), or None.
        mod: (gain, shift, zgain or None), each [B, 1, C] (:meth:`ModulatedLayerNorm.modulation`).
        fc1, fc2: the MLP's ``Linear`` layers (C -> H -> C); their products run in :func:`matmul_dtype`
            (bf16 under autocast, the normalised rows rounded to it once, as autocast's cast does).
        cbias: [C] float32 (a convolution's bias) or None.
    Returns:
        [B, N, C] in the eager ops' dtype (float32 where v, h or cbias is float32, else the products'),
        u and the norm computed in float32 and the result rounded once. Callers check
        :func:`residual_mlp_usable` first.
    """
    B, N, C = v.shape
    H = fc1.weight.shape[0]
    mm = matmul_dtype(fc1.weight)
    u_dtype = v.dtype
    for t in (h, cbias):
        if t is not None:
            u_dtype = torch.promote_types(u_dtype, t.dtype)
    out_dtype = torch.promote_types(u_dtype, mm)
    gain, shift, zgain = mod
    empty = v.new_empty(0, dtype=torch.float32)
    w1, b1, w2, b2 = (p.detach().to(mm).contiguous() for p in (fc1.weight, fc1.bias, fc2.weight, fc2.bias))
    task_rows = max(16, RESIDUAL_MLP_TASK_BYTES // (C * 4 + C * mm.itemsize * 2 + H * mm.itemsize))
    return load_extension("modulated_norm").residual_mlp(
        v, empty if h is None else h, empty if cbias is None else cbias.detach().float().contiguous(),
        _rows(gain, B, C), _rows(shift, B, C), empty if zgain is None else _rows(zgain, B, C),
        w1, b1, w2, b2, eps, task_rows, out_dtype == torch.bfloat16)


def merge(u: Tensor, skip: Tensor, linear: torch.nn.Linear) -> Tensor:
    """``linear(cat([u, skip], -1))`` in C++ tasks of points: an ∞-Diff up block's skip merge.

    Eager, that is two products per slice of :func:`~infdiff.nets.blocks.pointwise` (W_u u + W_s s, no
    concatenation), each after a cast of the slice, and a transposed copy of each slice of u (the grid's
    channel-major read); here each task reads its points of u and skip once, rounds them side by side into
    one [rows, 2C] buffer and makes one product with K = 2C into the output (1024 px, one image, 2 threads
    of the AMX Xeon, bf16: 58-71 -> 40-45 ms per merge; the pass is bound by reading the float32 inputs).

    Args:
        u, skip: [B, N, C] float32 or bf16, any strides. linear: ``Linear(2C, Co)``.
    Returns:
        [B, N, Co] in :func:`matmul_dtype` (bf16 under autocast, as the eager ``Linear``), the inputs rounded
        to it once and the product accumulated in float32. Callers check :func:`residual_mlp_usable` first.
    """
    mm = matmul_dtype(linear.weight)
    w, b = (p.detach().to(mm).contiguous() for p in (linear.weight, linear.bias))
    C, Co = u.shape[-1], w.shape[0]
    rows = max(16, RESIDUAL_MLP_TASK_BYTES // (2 * C * 4 + 2 * C * mm.itemsize + Co * mm.itemsize))
    return load_extension("modulated_norm").merge(u, skip, w, b, rows)


def onednn_bf16_linear(v: Tensor) -> bool:
    """True if ``v`` is a CPU tensor under bf16 autocast and torch is built with oneDNN's fused linear
    (``torch.ops.mkldnn._linear_pointwise``, what torch's compiler uses for the same fusions): what both
    oneDNN point MLPs need, :func:`gelu_mlp` (sampling) and :func:`infdiff.point_mlp.gelu_mlp` (training)."""
    return (v.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def gelu_mlp_usable(v: Tensor) -> bool:
    """True if :func:`gelu_mlp` runs for ``v`` here: no autograd and :func:`onednn_bf16_linear`. Records
    "onednn_gelu" when it does."""
    ok = not torch.is_grad_enabled() and onednn_bf16_linear(v)
    if ok:
        _USED.add("onednn_gelu")
    return ok


def gelu_mlp(v: Tensor, params: tuple[Tensor, Tensor, Tensor, Tensor], residual: Tensor | None = None) -> Tensor:
    """``fc2(GELU(fc1(v)))`` (plus ``residual``) in bf16 as two oneDNN products: the exact (erf) GELU applied to
    the first product's output while it is in cache instead of in a pass of its own over the hidden layer, and
    the residual added to the second product's accumulator (oneDNN's binary post-op) instead of in a pass of
    its own over the result, which is then rounded to bf16 once instead of twice.

    At the MLP baseline's width (256 -> 512 -> 256, 4096 points, 1 thread of the AMX Xeon) a block's norm and
    MLP took 3.4 instead of 4.1 ms, and the second product with the residual 0.94 instead of 1.12 ms (README,
    "Performance"). Callers check :func:`gelu_mlp_usable`.

    Args:
        v: [..., C] any float dtype (rounded to bf16 once, as autocast's cast does).
        params: (fc1.weight [H, C], fc1.bias [H], fc2.weight [C, H], fc2.bias [C]) in bf16
            (:meth:`~infdiff.nets.blocks.PointMLP.bf16_params`: cast once, not per slice of points).
        residual: [..., C] or None (rounded to bf16, as the eager sum under autocast reads it).
    Returns:
        [..., C] bf16, as the eager ops under bf16 autocast.
    """
    w1, b1, w2, b2 = params
    lin = torch.ops.mkldnn._linear_pointwise
    h = lin(v.to(torch.bfloat16), w1, b1, "gelu", [], "none")
    if residual is None:
        return lin(h, w2, b2, "none", [], "")
    return lin.binary(h, residual.to(torch.bfloat16).contiguous(), w2, b2, "add")
