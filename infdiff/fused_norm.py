"""The modulated LayerNorm of the sampling path as one C++ pass over the points (CPU, no autograd).

Every ∞-Diff block, the MLP baseline and the U-ViT normalise with :class:`~infdiff.nets.blocks.ModulatedLayerNorm`,

    out[b, n] = (LN(v[b, n]) * gain[b] + shift[b]) * zgain[b]      (gain = 1 + scale(t), zgain = 1 + s_z(z))

In eager torch that is a LayerNorm kernel, an ``addcmul`` and casts, each a pass over [B, N, C] (and torch's
LayerNorm is slow on the narrow rows here). ``csrc/modulated_norm.cpp`` computes it in one pass, the
statistics of each row in float32: on 2 cores of the AMX Xeon 2-4x faster than the eager ops at C = 32 and
256 (README, "Performance"). It has no backward, so only the no-gradient path (sampling) uses it; training
and guided sampling keep the eager ops. Where the extension cannot be built (no g++ or ninja) or off the
CPU, the eager ops run; which one ran is recorded in provenance (``norm_kernels``, :func:`kernels_used`).

Agrees with the eager ops to float32 rounding (tests/test_fused_norm.py). For a bf16 input it is slightly
*more* precise than eager bf16 autocast, which rounds LN(v) to bf16 before the modulation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from infdiff.cpp_build import cpp_available, load_extension

__all__ = ["usable", "modulated_norm", "kernels_used"]

_USED: set[str] = set()


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


def modulated_norm(v: Tensor, gain: Tensor, shift: Tensor, zgain: Tensor | None = None,
                   eps: float = 1e-5) -> Tensor:
    """(LN(v) * gain + shift) * zgain in one pass.

    Args:
        v: [B, N, C] float32 or bf16 (any strides; copied to contiguous if needed).
        gain, shift, zgain: [B, 1, C] (or [B, C]) per-image modulation, any float dtype; zgain optional.
        eps: LayerNorm's eps.
    Returns:
        [B, N, C] in the dtype the eager ops would give (``addcmul(shift, LN(v), gain) * zgain``: torch's
        type promotion of the four), computed in float32.
    """
    B, _, C = v.shape
    dtype = torch.promote_types(torch.promote_types(shift.dtype, v.dtype), gain.dtype)
    if zgain is not None:
        dtype = torch.promote_types(dtype, zgain.dtype)

    def rows(t: Tensor) -> Tensor:
        return t.reshape(B, C).float().contiguous()

    z = rows(zgain) if zgain is not None else v.new_empty(0, dtype=torch.float32)
    bf16 = dtype == torch.bfloat16      # written as bf16 by the kernel (one rounding, no cast pass)
    out = load_extension("modulated_norm").modulated_norm(v.contiguous(), rows(gain), rows(shift), z, eps, bf16)
    return out if bf16 or dtype == torch.float32 else out.to(dtype)
