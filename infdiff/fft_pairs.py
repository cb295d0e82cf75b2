"""Two real channel planes per complex transform: the FFT depthwise convolution without autograd (CPU).

The FFT convolution (:func:`infdiff.sparse.depthwise_conv2d`, large kernels at high sampling resolutions)
transforms every channel plane forward and back. For real planes x1, x2 one complex transform of
z = x1 + i x2 gives both spectra, since X1[k] = (Z[k] + conj Z[-k]) / 2 and X2[k] = (Z[k] - conj Z[-k]) / 2i;
after the kernels' products the pair is packed again as Y = Y1 + i Y2, whose inverse transform is y1 + i y2
(both real). Per two channels that is one ``fft2`` and one ``ifft2`` of M x N complex values instead of two
``rfft2`` and two ``irfft2`` of half the size, and MKL's complex-to-real inverse is the slow one (~2.4 ms
against ~1.0 ms forward for one 1152 x 1152 plane on 2 cores of the AMX Xeon; the pair's ``ifft2`` ~2.0 ms).
``csrc/fft_pairs.cpp`` packs the planes into the zero-padded buffer, forms Y from Z in place (each pair of
frequencies {k, -k} once) and writes the cropped, normalised real and imaginary parts back as two planes.

Only the no-gradient path uses it (sampling; the products have no backward). The result equals the
real-transform path's to float32 rounding (tests/test_fft_pairs.py). Provenance records which path ran
(``fft_kernels``: "pairs" or "rfft", :func:`kernels_used`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from infdiff.cpp_build import cpp_available, load_extension

__all__ = ["PAIR_CHUNK", "usable", "depthwise", "kernels_used", "record"]

# Complex values per transform call (8 MiB): measured on the AMX Xeon, 2 threads, 32 channels, against the
# real-transform path's 2^18 half-plane values: 64 px (batch 64) 31 -> 18 ms, 128 px (32) 59 -> 36 ms,
# 256 px (16) 123 -> 77 ms, 512 px (2) 95 -> 54 ms, 1024 px (1) 175 -> 120 ms; 2^18, 2^19, 2^21 and 2^22
# values per call were slower at every size but 1024 px, where one pair is 1.3M values.
PAIR_CHUNK = 1 << 20
_USED: set[str] = set()


def record(kind: str) -> None:
    """Note that the FFT convolution ran on path ``kind`` ("pairs" or "rfft") in this process."""
    _USED.add(kind)


def kernels_used() -> list[str]:
    """Sorted FFT convolution paths ("pairs", "rfft") this process ran."""
    return sorted(_USED)


def usable(x: Tensor, weight: Tensor) -> bool:
    """True if :func:`depthwise` can run for ``x`` and ``weight``: no autograd, CPU float32 tensors, at least
    two channels, and the C++ extension can be built."""
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and x.shape[1] >= 2 and cpp_available("cpu")[0])


def depthwise(x: Tensor, spectra: Tensor, M: int, N: int, h: int, out_scale: Tensor | None = None) -> Tensor:
    """'Same' depthwise cross-correlation of x with the kernels whose spectra are given, two channels per
    complex transform.

    Args:
        x: [B, C, H, W] float32 (any strides).
        spectra: [C, M, N // 2 + 1] complex64: ``rfft2`` of each flipped k x k kernel at size (M, N), with
            M >= H + h and N >= W + h (:func:`infdiff.sparse.fft_length`).
        M, N: the transform size.
        h: the kernel's half width k // 2: the 'same' output starts at offset h of the linear convolution.
        out_scale: optional [1, 1, H, W] factor applied to the output (the window normaliser).
    Returns:
        [B, C, H, W] float32. An odd C pairs its last channel with a zero plane.
    """
    B, C, H, W = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    ops = load_extension("fft_pairs")
    P, plane = (C + 1) // 2, M * N
    if B * plane <= PAIR_CHUNK:
        pstep, bstep = min(P, max(1, PAIR_CHUNK // (B * plane))), B
    else:
        pstep, bstep = 1, max(1, PAIR_CHUNK // plane)
    # One zero-padded buffer for every chunk: pack overwrites the [H, W] corner of each plane it uses, the
    # rest stays zero; a smaller last chunk uses the first whole planes of it.
    buf = x.new_zeros(min(B, bstep) * pstep * plane, dtype=torch.complex64)
    scale = x.new_empty(0) if out_scale is None else out_scale.reshape(H, W).float().contiguous()
    out = x.new_empty(B, C, H, W)
    for c0 in range(0, C, 2 * pstep):
        c1 = min(C, c0 + 2 * pstep)
        for b0 in range(0, B, bstep):
            b1 = min(B, b0 + bstep)
            z = buf[:(b1 - b0) * ((c1 - c0 + 1) // 2) * plane].view(b1 - b0, (c1 - c0 + 1) // 2, M, N)
            ops.pack(x[b0:b1, c0:c1], z)
            Z = torch.fft.fft2(z)
            ops.pair_product_(Z, spectra[c0:c1])
            ops.unpack(torch.fft.ifft2(Z), out[b0:b1, c0:c1], scale, h)
    return out
