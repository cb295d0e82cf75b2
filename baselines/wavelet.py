"""One-level 2-D LeGall 5/3 wavelet transform: the first and last layer of simple diffusion's U-ViT.

Hoogeboom et al. (2023, "simple diffusion", Sec. 3.3) downsample the image *before* the network with the
invertible, linear 5/3 wavelet of JPEG2000 (pywavelets ``bior2.2``), process the four half-resolution
subbands stacked on the channel axis, and upsample at the end with the inverse transform. It is cheaper
than running convolutions at full resolution and, in their experiments, better than a strided conv.

Lifting (Sweldens 1996; JPEG2000 Part 1, Annex F) along one axis of a signal x of even length N, with
s_n = x_{2n} (even samples) and d_n = x_{2n+1} (odd samples)::

    predict:  d_n <- d_n - (s_n + s_{n+1}) / 2          high-pass, taps (-1/2, 1, -1/2)
    update:   s_n <- s_n + (d_{n-1} + d_n) / 4          low-pass,  taps (-1/8, 1/4, 3/4, 1/4, -1/8)

Boundary: whole-sample symmetric extension (x_{-k} = x_k, x_{N-1+k} = x_{N-1-k}), i.e. s_{N/2} = s_{N/2-1}
and d_{-1} = d_0, the extension JPEG2000 prescribes for this filter pair. Lifting steps are inverted by
running them backwards with the signs flipped, so ``idwt2(dwt2(x)) == x`` up to float rounding for any
input (the extension only decides *which* values enter each step, never invertibility).

Normalisation: the lifting outputs are scaled by sqrt(2) (low) and -1/sqrt(2) (high), which is exactly
pywavelets' ``bior2.2``: dec_lo = sqrt(2) (-1/8, 1/4, 3/4, 1/4, -1/8), dec_hi = -(1/sqrt 2) (-1/2, 1, -1/2)
(tested against ``pywt.dwt2(x, "bior2.2", mode="reflect")`` where pywt is installed: equal away from the
border; pywt pads its output instead of keeping N/2 samples). In 2-D the LL band is then 2x the local
mean (a constant image c gives LL = 2c) and white noise keeps per-band variances of order 1 (LL 2.07,
LH/HL 1.08, HH 0.56), so the network's input and output channels are well scaled without extra learned
normalisation.

Subband layout: ``dwt2(x)[:, k*C:(k+1)*C]`` for k = 0..3 is LL, LH, HL, HH, where the first letter is
the filter along the rows (height, dim -2) and the second along the columns (width, dim -1). So LH is
low-pass vertically and high-pass horizontally (vertical edges respond). The transform is elementwise
arithmetic only (no matmuls), so it runs in the input's dtype and is unaffected by autocast.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["dwt1", "idwt1", "dwt2", "idwt2", "WaveletDown", "WaveletUp"]

_LOW_GAIN = math.sqrt(2.0)        # lifting low band -> pywavelets' bior2.2 normalisation
_HIGH_GAIN = -1.0 / math.sqrt(2.0)  # lifting high band -> bior2.2 (sign included)


def _next(s: Tensor) -> Tensor:
    """s_{n+1} along the last dim with the symmetric extension s_{N/2} = s_{N/2-1}."""
    return torch.cat([s[..., 1:], s[..., -1:]], dim=-1)


def _prev(d: Tensor) -> Tensor:
    """d_{n-1} along the last dim with the symmetric extension d_{-1} = d_0."""
    return torch.cat([d[..., :1], d[..., :-1]], dim=-1)


def dwt1(x: Tensor) -> tuple[Tensor, Tensor]:
    """One-level 5/3 analysis along the last dim: x [..., N] (N even) -> (low, high), each [..., N/2]."""
    if x.shape[-1] % 2:
        raise ValueError(f"the 5/3 wavelet needs an even length, got {x.shape[-1]}")
    s, d = x[..., 0::2], x[..., 1::2]
    d = d - 0.5 * (s + _next(s))             # predict the odd samples from their even neighbours
    s = s + 0.25 * (_prev(d) + d)            # update: the even samples become a smoothed signal
    return s * _LOW_GAIN, d * _HIGH_GAIN


def idwt1(low: Tensor, high: Tensor) -> Tensor:
    """Inverse of :func:`dwt1`: (low, high) [..., N/2] -> x [..., N] (the lifting steps undone in reverse)."""
    s, d = low / _LOW_GAIN, high / _HIGH_GAIN
    s = s - 0.25 * (_prev(d) + d)
    d = d + 0.5 * (s + _next(s))
    # Interleave even/odd samples: [..., N/2, 2] -> [..., N].
    return torch.stack([s, d], dim=-1).flatten(-2)


def dwt2(x: Tensor) -> Tensor:
    """2-D one-level 5/3 DWT: x [B, C, H, W] (H, W even) -> [B, 4C, H/2, W/2], bands LL, LH, HL, HH."""
    if x.ndim != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"dwt2 needs [B, C, H, W] with even H and W, got {tuple(x.shape)}")
    lo_w, hi_w = dwt1(x)                                   # along the columns (width)
    # Along the rows (height): transpose so the transformed dim is last.
    ll, hl = (b.transpose(-1, -2) for b in dwt1(lo_w.transpose(-1, -2)))
    lh, hh = (b.transpose(-1, -2) for b in dwt1(hi_w.transpose(-1, -2)))
    # Naming: (row filter, column filter); lo_w/hi_w were the column filters.
    return torch.cat([ll, lh, hl, hh], dim=1)


def idwt2(y: Tensor) -> Tensor:
    """Inverse of :func:`dwt2`: [B, 4C, H/2, W/2] -> [B, C, H, W] (exact up to float rounding)."""
    if y.ndim != 4 or y.shape[1] % 4:
        raise ValueError(f"idwt2 needs [B, 4C, h, w], got {tuple(y.shape)}")
    ll, lh, hl, hh = y.chunk(4, dim=1)
    lo_w = idwt1(ll.transpose(-1, -2), hl.transpose(-1, -2)).transpose(-1, -2)
    hi_w = idwt1(lh.transpose(-1, -2), hh.transpose(-1, -2)).transpose(-1, -2)
    return idwt1(lo_w, hi_w)


class WaveletDown(nn.Module):
    """:func:`dwt2` as a (parameter-free) layer: [B, C, H, W] -> [B, 4C, H/2, W/2]."""

    def forward(self, x: Tensor) -> Tensor:
        return dwt2(x)


class WaveletUp(nn.Module):
    """:func:`idwt2` as a (parameter-free) layer: [B, 4C, H/2, W/2] -> [B, C, H, W]."""

    def forward(self, y: Tensor) -> Tensor:
        return idwt2(y)
