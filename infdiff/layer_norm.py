"""The modulated LayerNorm of training as one C++ pass forward and one backward (CPU).

Every ∞-Diff sparse block, the MLP baseline and the U-ViT's transformer normalise each point over its
channels and modulate it per image (:class:`~infdiff.nets.blocks.ModulatedLayerNorm`):

    y[b, n] = (LN(v[b, n]) * gain[b] + shift[b]) * zgain[b]      (gain = 1 + scale(t), zgain = 1 + s_z(z))

With autograd, in eager torch, that is a LayerNorm, an ``addcmul`` (and a product with zgain), each a pass
over [B, N, C] forward and more backward (the modulation's gradients are reductions over the points).
``csrc/layer_norm.cpp`` folds zgain into gain and shift and makes one pass forward and one backward, each
row's statistics in float32 like torch's LayerNorm, the result rounded once to the eager ops' dtype.
Forward and backward agree with the eager ops to float32 rounding (tests/test_layer_norm.py).

The no-gradient path (sampling) has its own pass, :func:`infdiff.fused_norm.modulated_norm`. Where the
extension cannot be built, or off the CPU, the eager ops run; which one ran with autograd is recorded in
provenance (``layer_norm_kernels``, :func:`kernels_used`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from infdiff.cpp_build import cpp_available, load_extension

__all__ = ["usable", "kernels_used", "modulated_layer_norm"]

_USED: set[str] = set()


def usable(v: Tensor, *modulation: Tensor | None) -> bool:
    """True if :func:`modulated_layer_norm` runs for ``v`` (and its gain, shift, zgain) here: autograd on, a CPU
    [B, N, C] tensor, everything float32 or bf16, and the extension can be built. Records the kernel the
    caller is about to use ("cpp" or "torch")."""
    if not torch.is_grad_enabled():
        return False
    ok = (v.device.type == "cpu" and v.dim() == 3 and v.numel() > 0 and cpp_available("cpu")[0]
          and all(t.dtype in (torch.float32, torch.bfloat16) for t in (v, *modulation) if t is not None))
    _USED.add("cpp" if ok else "torch")
    return ok


def kernels_used() -> list[str]:
    """Sorted kernels ("cpp", "torch") the modulated LayerNorms ran with autograd in this process."""
    return sorted(_USED)


class _ModulatedLayerNormFn(torch.autograd.Function):
    """v [B N, C] (rows of B images of N points), gain and shift [B, C] float32 -> LN(v) * gain + shift."""

    @staticmethod
    def forward(ctx, v: Tensor, gain: Tensor, shift: Tensor, N: int, eps: float, out_bf16: bool) -> Tensor:
        y, mean, rstd = load_extension("layer_norm").forward(v, gain, shift, N, eps, out_bf16)
        ctx.save_for_backward(v, gain, mean, rstd)
        ctx.N = N
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        v, gain, mean, rstd = ctx.saved_tensors
        dv, dgain, dshift = load_extension("layer_norm").backward(dy.contiguous(), v, gain, mean, rstd, ctx.N)
        return dv, dgain, dshift, None, None, None


def modulated_layer_norm(v: Tensor, gain: Tensor, shift: Tensor, zgain: Tensor | None = None,
                         eps: float = 1e-5) -> Tensor:
    """(LN(v) * gain + shift) * zgain with autograd, in one C++ pass each way (callers check :func:`usable`).

    Args:
        v: [B, N, C] float32 or bf16 (copied to contiguous if needed).
        gain, shift, zgain: [B, 1, C] (or [B, C]) per-image modulation, any float dtype; zgain optional.
    Returns:
        [B, N, C] in the dtype the eager ops give (``addcmul(shift, LN(v), gain) * zgain``: torch's type
        promotion of the four), computed in float32 and rounded once.
    """
    B, N, C = v.shape
    dtype = torch.promote_types(torch.promote_types(v.dtype, gain.dtype), shift.dtype)
    g, s = gain.reshape(B, C).float(), shift.reshape(B, C).float()
    if zgain is not None:
        dtype = torch.promote_types(dtype, zgain.dtype)
        z = zgain.reshape(B, C).float()
        g, s = g * z, s * z
    y = _ModulatedLayerNormFn.apply(v.reshape(B * N, C).contiguous(), g.contiguous(), s.contiguous(), N, eps,
                                    dtype == torch.bfloat16)
    return y.view(B, N, C)
