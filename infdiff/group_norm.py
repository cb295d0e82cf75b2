"""The U-Nets' group norm, and the scale-shift that follows it, as one C++ pass forward and backward (CPU).

Every ResBlock of the grid U-Nets (∞-Diff's, the autoencoder's encoder, the U-ViT's conv levels) normalises

    y[b, c] = f((GN(x)[b, c] * gamma[c] + beta[c]) * gain[b, c] + shift[b, c]),   f = SiLU or the identity

(gamma, beta: the norm's own affine, if any; gain = 1 + scale(t), shift(t): N&D's scale-shift norm, times
1 + s_z(z) in the autoencoder). In eager torch on a CPU under bf16 autocast that is a float32 copy of the
bf16 activations (torch's bf16 channels-last group norm is slower still), the norm, a cast back, an
``addcmul``, the SiLU of the ResBlock, and the backward of each. ``csrc/group_norm.cpp`` folds both affines
into one per-image ``gain`` and ``bias`` and makes two passes over each image, forward (statistics, then y,
the SiLU applied before the one rounding) and backward (sums, then dx; SiLU' applied to dy on the way, from
z recomputed), in the activations' own layout and dtype, statistics in float32/float64. Forward and backward
agree with the eager ops to float32 rounding (tests/test_group_norm.py).

Where it runs: CPU tensors in float32 or bf16, when the extension can be built (g++ and ninja); elsewhere
(CUDA, no compiler) the eager ops run, with the same arithmetic. Which one ran is recorded in provenance
(``group_norm_kernels``, :func:`kernels_used`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from infdiff.cpp_build import cpp_available, load_extension

__all__ = ["usable", "kernels_used", "group_norm"]

_USED: set[str] = set()


def usable(x: Tensor) -> bool:
    """True if the C++ kernel runs for ``x`` here: a CPU float32/bf16 tensor [B, C, ...] and the extension can
    be built. Records the kernel the caller is about to use ("cpp" or "torch")."""
    ok = (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.dim() >= 2
          and x.numel() > 0 and cpp_available("cpu")[0])
    _USED.add("cpp" if ok else "torch")
    return ok


def kernels_used() -> list[str]:
    """Sorted kernels ("cpp", "torch") the group norms ran with in this process."""
    return sorted(_USED)


class _GroupNormFn(torch.autograd.Function):
    """y = f((x - mu) rstd * gain + bias) per group of channels, f = SiLU (``silu``) or the identity; x [B, C, ...],
    gain and bias [B, C] float32."""

    @staticmethod
    def forward(ctx, x: Tensor, gain: Tensor, bias: Tensor, groups: int, eps: float, silu: bool) -> Tensor:
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if not channels_last:
            x = x.contiguous()
        y, mean, rstd = load_extension("group_norm").forward(x, gain, bias, groups, eps, channels_last, silu)
        ctx.save_for_backward(x, gain, bias, mean, rstd)
        ctx.groups, ctx.channels_last, ctx.silu = groups, channels_last, silu
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, gain, bias, mean, rstd = ctx.saved_tensors
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        dy = dy.to(x.dtype).contiguous(memory_format=fmt)
        dx, dgain, dbias = load_extension("group_norm").backward(dy, x, gain, bias, mean, rstd, ctx.groups,
                                                                 ctx.channels_last, ctx.silu)
        return dx, dgain, dbias, None, None, None


def group_norm(x: Tensor, groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5,
               gain: Tensor | None = None, shift: Tensor | None = None, silu: bool = False) -> Tensor:
    """``(GN(x) * weight + bias) * gain + shift``, then SiLU if ``silu``, with the norm's statistics in float32.

    Args:
        x: [B, C, ...] in any float dtype and layout (channels-last is kept).
        groups: G, dividing C. weight, bias: [C], the norm's affine, or None.
        gain, shift: [B, C] per-image scale and shift (both or neither), any float dtype.
        silu: apply SiLU to the result (a ResBlock's activation): on the C++ path before the one rounding, in
            the same pass; on the eager path ``F.silu`` of the rounded result, as the ResBlock did.
    Returns:
        The same shape, dtype and layout as x; the statistics and the affine in float32 (float64 sums on
        the C++ path), rounded once to x's dtype there (the eager path rounds the norm to it before the
        scale-shift, as N&D's GroupNorm32 and ``addcmul`` did).
    """
    if (gain is None) != (shift is None):
        raise ValueError("pass both gain and shift, or neither")
    B, C = x.shape[:2]
    if usable(x):
        g = x.new_ones((1, C), dtype=torch.float32) if weight is None else weight.float()[None]
        b = x.new_zeros((1, C), dtype=torch.float32) if bias is None else bias.float()[None]
        if gain is not None:
            g, b = g * gain.float(), b * gain.float() + shift.float()
        return _GroupNormFn.apply(x, g.expand(B, C).contiguous(), b.expand(B, C).contiguous(), groups, eps, silu)
    y = F.group_norm(x.float(), groups, weight, bias, eps).type(x.dtype)
    if gain is not None:
        extra = (1,) * (x.dim() - 2)
        y = torch.addcmul(shift.reshape(B, C, *extra), y, gain.reshape(B, C, *extra))
    return F.silu(y) if silu else y
