"""Sparse depthwise convolution on irregular pixel subsets (Eq. 20) and its dense/FFT counterparts.

∞-Diff's top level (Sec. 4.2, Fig. 4) applies a translation-invariant kernel kappa to a function known
only at a random subset of the pixels of an R x R grid:

    x(c) = int_{N(c)} kappa(c - y) v(y) dy                                              (Eq. 20)

The integral is estimated by Monte Carlo over the sampled points in the k x k window around c:

    out[n] = (k*k / count[n]) * sum_o w[:, o] * v[nbr[n, o]]

where o runs over the k*k kernel offsets, ``nbr[n, o]`` is the sampled point at offset o from point n
(or "missing", contributing 0) and ``count[n]`` the number of sampled points in the window that lie
inside the image. At ratio 1 this is exactly a dense depthwise convolution (cross-correlation, as
``F.conv2d``) divided by the fraction of the window inside the image (zero padding outside).

Lengths are continuous: a kernel trained with k taps at ``train_res`` is bilinearly resized to
``kernel_size_at(k, R, train_res)`` taps at resolution R (taps at their continuous positions) and
divided by the area ratio, so the kernel's integral (not its sum over taps) is what the model learnt.

Backends (all agree to 1e-5, see tests/test_sparse.py):

* ``"torch"``: neighbour tables built once per point set (:class:`SparseGeometry`), gathers only, and a
  custom autograd function whose backward also uses only gathers. This is the training hot path: about
  4x less work than a dense convolution at ratio 1/4 and 2x faster than autograd through the gathers.
* ``"compiled"``: the same gathers fused by ``torch.compile`` into one loop nest per kernel over the full
  [B*N, k*k] neighbour table (:mod:`infdiff.sparse_compiled`), forward and backward. Several times faster
  than ``"torch"`` on a CPU (benchmarks/bench_sparse.py); needs a C++ compiler (CPU) or Triton (CUDA).
* ``"cpp"``: hand-written C++ loops over each point's *sampled* neighbours only, forward and backward
  (:mod:`infdiff.sparse_cpp`, CPU, float32): the compiled kernels multiply the zero rows of missing
  neighbours too and their weight gradient is a long reduction per offset; these skip both (~3-10x
  faster per kernel at ratio 1/4, benchmarks/bench_sparse.py). Needs g++ and ninja (built on first use).
* ``"dense"``: scatter the points onto the R x R grid and convolve (``F.conv2d(groups=C)`` for small
  kernels, FFT for large ones, whose cost does not grow with the kernel); the normaliser is the box
  sum of the sampling mask. Used for sampling on the full grid (k grows to 57 taps at 256 px).
* ``"auto"``: dense when at least half the pixels are present (always on the full grid) or the
  neighbour table would be huge; else cpp on a CPU where the C++ kernels build, compiled where only
  torch.compile can build its kernels, and torch elsewhere. In training, cpp also takes the (nearly)
  full grids of small windows (``CPP_MAX_NEIGHBOURS``). :func:`gather_backend` says which gathers run
  here, and results record the backends in their provenance.

:func:`sparse_conv` is the same operator with a full C_out x C_in kernel (the "Regular Convs" ablation
of Table 2): gathers + one matmul per kernel offset, or a direct dense ``F.conv2d`` (no FFT).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from infdiff import fft_pairs
from infdiff.cpp_build import load_extension
from infdiff.sparse_compiled import compiled_available, sparse_depthwise_compiled
from infdiff.sparse_cpp import cpp_available, sparse_depthwise_cpp

__all__ = ["kernel_size_at", "resize_kernel", "SparseGeometry", "sparse_depthwise_conv", "sparse_conv", "reads_planes",
           "depthwise_conv2d", "box_count", "BACKENDS", "GATHER_BACKENDS", "FFT_MIN_KERNEL", "gather_backend", "backends_used"]

BACKENDS = ("auto", "torch", "compiled", "cpp", "dense")
# The backends that gather the sampled neighbours (the same useful work, done by different kernels).
GATHER_BACKENDS = ("torch", "compiled", "cpp")
# Kernels at least this wide go through the FFT. Measured on 2 CPU cores (batch 8, 32 channels): oneDNN's
# direct depthwise conv is fast up to k=13 (~1 ms at 64 px) but falls off a cliff at k=15 (38 ms at 64 px,
# 170 ms at 128 px) where the FFT takes 3-15 ms and does not grow with k.
FFT_MIN_KERNEL = 15
FFT_CHUNK = 2 ** 18
# Elements per block of the point-major -> channel-major transpose (:func:`_planes`): ~1 MB, in cache.
TRANSPOSE_BLOCK = 2 ** 18
# "auto" never builds a neighbour table with more entries than this (int64: 8 bytes each); above it the
# dense backend is cheaper anyway (e.g. 256^2 points x 57^2 offsets would be 1.7e9 entries per image).
TORCH_TABLE_LIMIT = 2 ** 25
# "auto" switches to the dense backend from this sampling ratio up: gathers cost ~ratio * k^2 per point,
# the dense conv a constant. Measured crossover on 2 CPU cores (fwd+bwd, k=7, 32-64 channels): 0.4-0.5.
AUTO_DENSE_RATIO = 0.5
# "auto" uses the compiled kernels from this many multiply-adds (B*N * k*k * C) up. Below it a forward is
# well under a millisecond either way and the ~1 s it takes a process to load the compiled kernels from
# inductor's cache (~30 s to compile them on a fresh machine) would not pay off.
COMPILED_MIN_WORK = 2 ** 22
# In training (forward + backward) "auto" keeps the C++ gathers on (nearly) full grids while the mean number
# of sampled pixels per window, ratio * k*k, is at most this. Measured on 2 cores of the AMX Xeon, with the
# dense conv then on NCHW planes (batch 8, 32 channels, 64 px, fwd+bwd ms, cpp vs dense): ratio 1, k 7: 9.5
# vs 30.3; k 11: 21.6 vs 58.1; k 15 (FFT): 40.4 vs 15.4; ratio 1/2, k 15: 9.6 vs 19.2; k 29: 34.0 vs 23.8.
# Forward alone (sampling) the dense conv stays faster on full grids (ratio 1, k 7: 1.9 vs 2.9 ms), so
# without gradients nothing changes.
CPP_MAX_NEIGHBOURS = 128
# ...except on a full grid of at most this many values (B * N * C), where the dense conv's channels-last
# kernels (`_grid_view`, commit bdd0492) now win (fwd + bwd ms, cpp vs dense, k 7 / 11 / 13): batch 32,
# 32 channels, 32 px, 1 thread 16.4 / 40.7 / 53.1 vs 15.3 / 31.9 / 46.3; batch 8, 32 channels, 64 px,
# 2 threads 8.5 / 21.3 / 29.8 vs 7.7 / 16.3 / 24.4. At paper scale the C++ gathers stay ahead (batch 16,
# 64 channels, 128 px, 2 threads: 103 / 270 / 399 vs 213 / 348 / 470), and below ratio 1 always (1/2: 3-5x).
DENSE_GRAD_MAX_VALUES = 2 ** 20


# ----------------------------------------------------------------------------------------------------
# Kernel sizes and resizing (continuous units)
# ----------------------------------------------------------------------------------------------------
def kernel_size_at(k: int, R: int, train_res: int) -> int:
    """Odd kernel size at resolution R covering the same continuous extent as k taps at train_res.

    ``k * R / train_res`` rounded to the nearest odd integer (halves round up, e.g. 7 -> 57 at 256 px
    when trained at 32 px) and at least 1. Odd so the kernel stays centred on its point.
    """
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {k}")
    s = k * R / train_res
    # nearest odd integer: odd numbers are 2m + 1, so round (s - 1) / 2 to the nearest m (half up)
    m = math.floor((s - 1) / 2 + 0.5)
    return max(1, 2 * m + 1)


def resize_kernel(weight: Tensor, k_new: int) -> Tensor:
    """Resize a kernel to ``k_new x k_new`` taps keeping its integral.

    Args:
        weight: [C, k, k] (depthwise) or [C_out, C_in, k, k] (regular).
        k_new: new (odd) size.
    Returns:
        [..., k_new, k_new]: bilinear resize, then divided by the area ratio ``(k_new / k)^2`` so that
        ``sum(weight)`` -- the Riemann sum of the kernel's integral -- is kept: exactly for a constant
        kernel, to <2% for smooth ones (-> 0 as k_new grows).

    The resize uses ``align_corners=False``: tap j of the new kernel then sits at its true continuous
    offset ``(j - h_new) / R`` (cells of the old kernel cover ``(i - h +- 0.5) / R_train``). With
    ``align_corners=True`` the corner taps are pinned to the old corner taps, which stretches the kernel
    by ``(k - 0.5) / (k - 1)`` per axis and inflated the integral of a smooth 7-tap kernel by 13-34%
    at 64-1024 px (measured), so it does not keep the integral it is divided for.
    """
    k = weight.shape[-1]
    if weight.shape[-2] != k:
        raise ValueError(f"kernel must be square, got {tuple(weight.shape[-2:])}")
    if k_new == k:
        return weight
    lead = weight.shape[:-2]
    w = F.interpolate(weight.reshape(-1, 1, k, k), size=(k_new, k_new), mode="bilinear", align_corners=False)
    return (w * (k / k_new) ** 2).reshape(*lead, k_new, k_new)


# ----------------------------------------------------------------------------------------------------
# Dense helpers: box counts and depthwise convolution (direct or FFT)
# ----------------------------------------------------------------------------------------------------
def box_count(mask: Tensor, k: int) -> Tensor:
    """Number of sampled pixels in the k x k window around every pixel (zero padding outside).

    Args:
        mask: [B, 1, R, R] 0/1 (any dtype).
    Returns:
        [B, 1, R, R] int64 counts, exact: an integral image (cumsum) in integers, so the cost does not
        depend on k and no rounding can leak into the normaliser.
    """
    h = k // 2
    m = F.pad(mask.to(torch.int64), (h + 1, h, h + 1, h))  # one extra leading zero row/col for S[-1]
    S = m.cumsum(-1).cumsum(-2)
    R0, R1 = mask.shape[-2:]
    # window sum = S[y + k, x + k] - S[y, x + k] - S[y + k, x] + S[y, x] in the padded frame
    return (S[..., k:k + R0, k:k + R1] - S[..., :R0, k:k + R1]
            - S[..., k:k + R0, :R1] + S[..., :R0, :R1])


def _fast_size(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3, 5 (fast FFT lengths)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def fft_length(n: int, k: int) -> int:
    """FFT length of :func:`_fft_depthwise` along an axis of n samples for a k-tap kernel: the smallest
    2-3-5-smooth length >= n + k // 2 (benchmarks/bench_fft.py compares it with the linear n + k - 1)."""
    return _fast_size(n + k // 2)


def _fft_depthwise(x: Tensor, weight: Tensor, out_scale: Tensor | None = None,
                   spectra: dict | None = None) -> Tensor:
    """'Same' depthwise cross-correlation by FFT. x [B, C, H, W], weight [C, k, k] -> [B, C, H, W],
    times ``out_scale`` ([1, 1, H, W]) if given (fused into the chunk loop while the chunk is in cache).

    Without autograd on a CPU (sampling) two channels share each complex transform
    (:mod:`infdiff.fft_pairs`); otherwise every channel plane gets its own ``rfft2`` / ``irfft2``.

    ``spectra``: a dict that keeps the kernel's spectra between calls with the same weight (sampling runs
    the same kernel at every step: a third of the transforms). The caller owns it and empties it when the
    weight changes (:class:`~infdiff.nets.blocks.SparseDepthwiseConv`); it holds one FFT size at a time.
    """
    B, C, H, W = x.shape
    k = weight.shape[-1]
    h = k // 2
    # The FFT computes a circular convolution of length M. Its linear part has H + k - 1 = H + 2h samples,
    # of which the 'same' crop keeps [h, h + H); with M >= H + h the tail wraps only onto [0, h), which it drops.
    # So M >= H + h suffices (not H + k - 1): 1152 instead of 1250 per axis at 1024 px (k = 225), 288
    # instead of 320 at 256 px. A kernel wider than M (k > H + h) loses only taps at offsets >= H, which
    # never reach a pixel of the image.
    Mh, Mw = fft_length(H, k), fft_length(W, k)
    if spectra is not None and spectra.get("size") != (Mh, Mw, k, weight.dtype, weight.device):
        spectra.clear()
        spectra["size"] = (Mh, Mw, k, weight.dtype, weight.device)
    if fft_pairs.usable(x, weight):
        # Sampling: two channels per complex transform (infdiff/fft_pairs.py), the kernels' spectra whole.
        fft_pairs.record("pairs")
        wf = None if spectra is None else spectra.get("all")
        if wf is None:
            wf = torch.fft.rfft2(weight.flip(-1, -2), s=(Mh, Mw))                          # [C, Mh, Mw//2+1]
            if spectra is not None:
                spectra["all"] = wf
        return fft_pairs.depthwise(x, wf, Mh, Mw, h, out_scale)
    fft_pairs.record("rfft")
    plane = Mh * (Mw // 2 + 1)
    # (image, channel) planes are independent. Blocks of ~2^18 complex values stay in cache: measured
    # 4x faster than one big transform at 256 px on 2 CPU cores, and memory stays bounded at 1024 px.
    if B * plane <= FFT_CHUNK:
        cstep, bstep = max(1, FFT_CHUNK // (B * plane)), B
    else:
        cstep, bstep = 1, max(1, FFT_CHUNK // plane)
    out = x.new_empty(B, C, H, W)
    # Without autograd (where the paired path cannot run: no C++ extension, one channel, float64) one
    # zero-padded buffer serves every chunk (its [H, W] corner is overwritten,
    # the rest stays zero; rfft2(x, s=...) allocates, zeroes and fills a padded copy per call), the spectra
    # are multiplied in place and the result is written straight into ``out``.
    padded = None if torch.is_grad_enabled() else x.new_zeros(min(B, bstep), min(C, cstep), Mh, Mw)
    for c0 in range(0, C, cstep):
        # Cross-correlation = convolution with the flipped kernel; the 'same' part starts at offset h.
        wf = None if spectra is None else spectra.get((c0, cstep))
        if wf is None:
            wf = torch.fft.rfft2(weight[c0:c0 + cstep].flip(-1, -2), s=(Mh, Mw))     # [c, Mh, Mw//2+1]
            if spectra is not None:
                spectra[(c0, cstep)] = wf
        for b0 in range(0, B, bstep):
            xs = x[b0:b0 + bstep, c0:c0 + cstep]
            if padded is None:
                xf = torch.fft.rfft2(xs, s=(Mh, Mw)) * wf
            else:
                buf = padded[:xs.shape[0], :xs.shape[1]]
                buf[..., :H, :W] = xs
                xf = torch.fft.rfft2(buf).mul_(wf)
            y = torch.fft.irfft2(xf, s=(Mh, Mw))[..., h:h + H, h:h + W]
            dst = out[b0:b0 + bstep, c0:c0 + cstep]
            if out_scale is None:
                dst.copy_(y)
            elif padded is None:
                dst.copy_(y * out_scale)
            else:
                torch.mul(y, out_scale, out=dst)           # normalised while the chunk is in cache
    return out


def conv_method(k: int) -> str:
    """The method "auto" picks for a k x k depthwise convolution: "fft" from FFT_MIN_KERNEL taps, else "direct"."""
    return "fft" if k >= FFT_MIN_KERNEL else "direct"


def depthwise_conv2d(x: Tensor, weight: Tensor, method: str = "auto", out_scale: Tensor | None = None,
                     spectra: dict | None = None) -> Tensor:
    """Zero-padded 'same' depthwise cross-correlation (the ``F.conv2d(groups=C)`` convention).

    Args:
        x: [B, C, H, W]; weight: [C, k, k] with k odd.
        method: "direct" (F.conv2d), "fft", or "auto" (fft when k >= FFT_MIN_KERNEL).
        out_scale: optional [1, 1, H, W] factor applied to the output (e.g. the window normaliser).
        spectra: the FFT path's cache of kernel spectra (see :func:`_fft_depthwise`); ignored by "direct".
    Returns:
        [B, C, H, W].
    """
    k = weight.shape[-1]
    if method == "auto":
        method = conv_method(k)
    if method == "direct":
        y = F.conv2d(x, weight.unsqueeze(1), padding=k // 2, groups=x.shape[1])
        return y if out_scale is None else y * out_scale
    if method == "fft":
        return _fft_depthwise(x, weight, out_scale, spectra)
    raise ValueError(f"unknown conv method '{method}' (known: auto, direct, fft)")


# ----------------------------------------------------------------------------------------------------
# Geometry of a point set: window counts and neighbour tables
# ----------------------------------------------------------------------------------------------------
class SparseGeometry:
    """Neighbour structure of a point set on the R x R grid, built once per forward and shared by all
    sparse convolutions of that forward (they all use the same kernel size at resolution R).

    Args:
        idx: [B, N] int64 distinct pixel indices (row * R + col) per row.
        R: grid resolution; k: odd kernel size at this resolution.

    Attributes (tables are built lazily, on first use, so the dense full-grid path never pays for them):
        dense: True when every row holds all R*R pixels (N == R*R).
        count: [B, N] int64 number of sampled pixels inside the image in each point's k x k window
            (>= 1: the point itself).
        nbr: [B, N, k*k] int64 local index (0..N-1) of the point at each offset, N = "not sampled or
            outside the image". Offsets are row-major over (dy, dx) in -h..h, matching weight[:, dy+h, dx+h].
    """

    def __init__(self, idx: Tensor, R: int, k: int):
        if idx.ndim != 2:
            raise ValueError(f"idx must be [B, N], got shape {tuple(idx.shape)}")
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel size must be a positive odd integer, got {k}")
        self.idx = idx.long()
        self.R, self.k = int(R), int(k)
        self.B, self.N = idx.shape
        self.K = self.k * self.k
        self.device = idx.device
        self.dense = self.N == self.R * self.R
        self._cache: dict = {}

    # -- shared, cheap quantities ------------------------------------------------------------------
    @property
    def raster(self) -> bool:
        """True when idx is exactly 0..R*R-1 in every row (then scatter/gather are plain reshapes)."""
        if "raster" not in self._cache:
            ar = torch.arange(self.N, device=self.device)
            self._cache["raster"] = bool(self.dense and torch.equal(self.idx, ar.expand_as(self.idx)))
        return self._cache["raster"]

    @property
    def mask(self) -> Tensor:
        """[B, 1, R, R] bool, True where a point is sampled."""
        if "mask" not in self._cache:
            m = torch.zeros(self.B, self.R * self.R, dtype=torch.bool, device=self.device)
            m.scatter_(1, self.idx, True)
            self._cache["mask"] = m.view(self.B, 1, self.R, self.R)
        return self._cache["mask"]

    @property
    def count_grid(self) -> Tensor:
        """[B, 1, R, R] int64 number of sampled in-image pixels in the k x k window of every pixel."""
        if "count_grid" not in self._cache:
            self._cache["count_grid"] = box_count(self.mask, self.k)
        return self._cache["count_grid"]

    @property
    def count(self) -> Tensor:
        """[B, N] int64 window counts at the points (denominator of the Monte-Carlo estimate)."""
        if "count" not in self._cache:
            self._cache["count"] = self.count_grid.view(self.B, -1).gather(1, self.idx)
        return self._cache["count"]

    def scale(self, dtype: torch.dtype) -> Tensor:
        """[B, N, 1] Monte-Carlo factor k*k / count (1 / sampled fraction of the window)."""
        key = ("scale", dtype)
        if key not in self._cache:
            self._cache[key] = (self.K / self.count.to(dtype)).unsqueeze(-1)
        return self._cache[key]

    # -- neighbour tables (torch backend) ----------------------------------------------------------
    def _global_nbr(self) -> Tensor:
        """[B*N, K] global neighbour ids b*N + n (-1 = missing), via a padded dense index map."""
        if "gnbr" not in self._cache:
            B, N, R, k = self.B, self.N, self.R, self.k
            h = k // 2
            Rp = R + 2 * h  # padding by h makes every window lookup in-bounds; the border stays -1
            row = torch.div(self.idx, R, rounding_mode="floor")
            col = self.idx - row * R
            b = torch.arange(B, device=self.device).view(B, 1)
            pos = b * Rp * Rp + (row + h) * Rp + (col + h)             # [B, N] in the padded map
            imap = torch.full((B * Rp * Rp,), -1, dtype=torch.int64, device=self.device)
            imap[pos.view(-1)] = torch.arange(B * N, device=self.device)
            d = torch.arange(-h, h + 1, device=self.device)
            offs = (d.view(-1, 1) * Rp + d.view(1, -1)).view(-1)       # [K], row-major (dy, dx)
            look = (pos.view(-1, 1) + offs).view(-1)
            self._cache["gnbr"] = imap.index_select(0, look).view(B * N, self.K)   # [B*N, K]
        return self._cache["gnbr"]

    @property
    def nbr(self) -> Tensor:
        """[B, N, K] local neighbour index, N where the offset holds no sampled in-image pixel."""
        g = self._global_nbr()
        local = g - (torch.arange(self.B, device=self.device) * self.N).repeat_interleave(self.N).view(-1, 1)
        return torch.where(g >= 0, local, self.N).view(self.B, self.N, self.K)

    def full_table(self) -> tuple[Tensor, Tensor]:
        """The compiled backend's tables (cached): nbr [Z, K] global neighbour ids with Z = missing, and
        its transpose [K, Z] (contiguous), Z = B*N."""
        if "full_table" not in self._cache:
            g = self._global_nbr()
            nbr = torch.where(g >= 0, g, self.B * self.N)
            self._cache["full_table"] = (nbr, nbr.t().contiguous())
        return self._cache["full_table"]

    def compact_table(self) -> tuple[Tensor, Tensor]:
        """Point-major compact neighbour tables (cached; the cpp backend's, and transposed the torch
        backend's), Z = B*N, Kmax = most sampled neighbours of any point (~ratio * K at ratio < 1):
            nb [Z, Kmax]: the j-th sampled neighbour of each point in offset order (Z = none: the zero row);
            off [Z, Kmax]: its kernel offset (K = none: the zero weight row).
        """
        if "compact_table" not in self._cache and self.device.type == "cpu" and cpp_available("cpu")[0]:
            # One C++ pass per row (csrc/sparse_gather.cpp), the same tables as the torch code below.
            self._cache["compact_table"] = load_extension("sparse_gather").compact_table(
                self._global_nbr().contiguous(), self.B * self.N)
        if "compact_table" not in self._cache:
            Z, K = self.B * self.N, self.K
            g = self._global_nbr()
            valid = g >= 0
            Kmax = int(valid.sum(1).max()) if Z > 0 else 0
            # A stable sort of "missing" (True last) keeps each point's sampled offsets first, in offset order.
            order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices[:, :Kmax]
            have = valid.gather(1, order)
            nb = torch.where(have, g.gather(1, order), Z).contiguous()
            off = torch.where(have, order, K).contiguous()
            self._cache["compact_table"] = (nb, off)
        return self._cache["compact_table"]

    def tables(self):
        """Compact gather tables of the torch backend (cached).

        Returns (Z = B*N, the zero row index used for padding):
            nbT [Kmax, Z]: j-th sampled neighbour of each point (Z when a point has fewer than Kmax);
            offT [Kmax, Z]: its kernel offset (K = zero weight row);
            by_offset: list of K pairs (dest ids, source ids) of all neighbour pairs at each offset, used
                for the weight gradient (a sum over the pairs of one offset).
        At ratio r the compact table has ~r*K columns instead of K: the gathers skip unsampled pixels.
        """
        if "tables" not in self._cache:
            nb, off = self.compact_table()                               # slot j = rank among the valid ones
            self._cache["tables"] = (nb.t().contiguous(), off.t().contiguous(), self.pairs())
        return self._cache["tables"]

    def pairs(self) -> list[tuple[Tensor, Tensor]]:
        """Offset-major neighbour pairs (cached): K pairs (dest ids, source ids) into 0..B*N-1, one per
        kernel offset o (row-major over (dy, dx)): source s is the sampled point at offset o from dest d.

        Within one offset every dest (and every source) occurs at most once, so a scatter-add over a pair
        list never collides. Used by the depthwise weight gradient and by the full-kernel conv, which
        runs one [P_o, C_in] x [C_in, C_out] matmul per offset over only the P_o ~ r*B*N valid pairs.
        """
        if "pairs" not in self._cache:
            Z, K = self.B * self.N, self.K
            g = self._global_nbr()
            valid = g >= 0
            # nonzero of the transposed mask is sorted by offset, then dest.
            q = valid.t().contiguous().view(-1).nonzero().squeeze(1)
            o_q, d_q = torch.div(q, Z, rounding_mode="floor"), q % Z
            s_q = g.view(-1).index_select(0, d_q * K + o_q)
            sizes = torch.bincount(o_q, minlength=K).tolist()
            self._cache["pairs"] = list(zip(d_q.split(sizes), s_q.split(sizes)))
        return self._cache["pairs"]


# ----------------------------------------------------------------------------------------------------
# Torch backend: gathers forward, gathers backward
# ----------------------------------------------------------------------------------------------------
def _gather_conv(vp: Tensor, wz: Tensor, nbT: Tensor, offT: Tensor) -> Tensor:
    """sum_j wz[offT[j]] * vp[nbT[j]]: vp [Z+1, C] (zero last row), wz [K+1, C] (zero last row)."""
    out = vp.new_zeros(nbT.shape[1], vp.shape[1])
    # One gather of Z rows per slot: small, cache-friendly ops beat one huge [Z, Kmax, C] gather on CPU.
    for j in range(nbT.shape[0]):
        out.addcmul_(vp.index_select(0, nbT[j]), wz.index_select(0, offT[j]))
    return out


class _SparseDepthwiseFn(torch.autograd.Function):
    """out = scale * sum_o w[o] * v[nbr[:, o]] with a backward made of gathers only.

    Backward (g' = g * scale, the neighbour relation is symmetric: m is at offset o from n iff n is at
    offset -o from m, and offset index K-1-o is -o for row-major symmetric offsets):
        grad_v[m]  = sum_o w[-o] * g'[nbr[m, o]]   -> the forward op with the flipped kernel
        grad_w[o]  = sum_{pairs (n, m) at offset o} g'[n] * v[m]
    """

    @staticmethod
    def forward(ctx, v: Tensor, w: Tensor, scale: Tensor, geom: SparseGeometry) -> Tensor:
        # v [Z, C], w [K, C], scale [Z, 1]
        nbT, offT, _ = geom.tables()
        zero = v.new_zeros(1, v.shape[1])
        out = _gather_conv(torch.cat([v, zero]), torch.cat([w, zero]), nbT, offT).mul_(scale)
        ctx.save_for_backward(v, w, scale)
        ctx.geom = geom
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        v, w, scale = ctx.saved_tensors
        nbT, offT, by_offset = ctx.geom.tables()
        gs = g * scale
        zero = v.new_zeros(1, v.shape[1])
        grad_v = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_v = _gather_conv(torch.cat([gs, zero]), torch.cat([w.flip(0), zero]), nbT, offT)
        if ctx.needs_input_grad[1]:
            # Per offset: a dot product over its neighbour pairs (no scatter-add: index_add_ is slow on CPU).
            grad_w = torch.stack([(gs.index_select(0, d) * v.index_select(0, s)).sum(0)
                                  for d, s in by_offset])
        return grad_v, grad_w, None, None


def _torch_backend(v: Tensor, geom: SparseGeometry, weight: Tensor) -> Tensor:
    B, N, C = v.shape
    w = weight.reshape(C, -1).t().contiguous()                   # [K, C], offset-major
    scale = geom.scale(v.dtype).reshape(B * N, 1)
    out = _SparseDepthwiseFn.apply(v.reshape(B * N, C), w, scale, geom)
    return out.view(B, N, C)


def _compiled_backend(v: Tensor, geom: SparseGeometry, weight: Tensor) -> Tensor:
    B, N, C = v.shape
    w = weight.reshape(C, -1).t()                                # [K, C], offset-major
    scale = geom.scale(v.dtype).reshape(B * N, 1)
    return sparse_depthwise_compiled(v.reshape(B * N, C), w, scale, *geom.full_table()).view(B, N, C)


def _cpp_backend(v: Tensor, geom: SparseGeometry, weight: Tensor) -> Tensor:
    B, N, C = v.shape
    w = weight.reshape(C, -1).t()                                # [K, C], offset-major
    scale = geom.scale(v.dtype).reshape(B * N, 1)
    return sparse_depthwise_cpp(v.reshape(B * N, C), w, scale, *geom.compact_table()).view(B, N, C)


# The backends the sparse operators have run in this process (provenance records them, infdiff.provenance).
_USED: set[str] = set()


def backends_used() -> list[str]:
    """Sorted names of the backends ("dense", "torch", "compiled", "cpp") the sparse operators ran in this process."""
    return sorted(_USED)


def gather_backend(device: torch.device | str, work: int | None = None) -> str:
    """The gather backend "auto" uses on ``device`` for an operator of ``work`` multiply-adds: on a CPU
    and from COMPILED_MIN_WORK up, "cpp" where the C++ kernels can be built (g++ and ninja), else
    "compiled" where torch.compile can build its kernels (a C++ compiler); "torch" otherwise (CUDA keeps
    the eager gathers it was measured with)."""
    device = torch.device(device)
    if device.type != "cpu" or not (work is None or work >= COMPILED_MIN_WORK):
        return "torch"
    if cpp_available(device)[0]:
        return "cpp"
    return "compiled" if compiled_available(device)[0] else "torch"


# ----------------------------------------------------------------------------------------------------
# Dense backend: scatter to the grid, convolve, renormalise by the box count of the mask
# ----------------------------------------------------------------------------------------------------
def _planes(v: Tensor) -> Tensor:
    """[B, N, C] point-major -> [B, C, N] contiguous, transposed in blocks of points that stay in cache.

    A channel plane of the point-major layout is strided by C: read in place (or by one ``contiguous()``
    of the transposed view) every cache line of the tensor is loaded once per channel. Small tensors are
    returned as the transposed view, and so are views of channel-major storage (no copy).
    """
    B, N, C = v.shape
    if B * N * C <= TRANSPOSE_BLOCK or v.transpose(1, 2).is_contiguous():
        return v.transpose(1, 2)     # small, or already channel-major storage (pointwise(channel_major=True))
    out = v.new_empty(B, C, N)
    step = max(1, TRANSPOSE_BLOCK // (B * C))
    for n0 in range(0, N, step):
        out[:, :, n0:n0 + step] = v[:, n0:n0 + step].transpose(1, 2)
    return out


def _grid_view(v: Tensor, R: int, method: str) -> Tensor:
    """Point-major features of the full grid in raster order, [B, R*R, C], as the [B, C, R, R] input of
    :func:`depthwise_conv2d` with ``method`` ("direct" or "fft").

    "direct": the point-major layout *is* channels-last (NHWC), so the input is a view, no copy, and
    oneDNN's channels-last depthwise kernels run on it and return channels-last output (measured on the
    AMX Xeon, B 32, C 32, 32 px, k 7, 1 thread: forward 2.8 -> 1.4 ms, forward + backward 68 -> 17 ms
    against NCHW planes; bit-identical). "fft": channel planes, which the transforms read contiguously.
    """
    B, _, C = v.shape
    if method == "direct":
        return v.contiguous().view(B, R, R, C).permute(0, 3, 1, 2)
    return _planes(v).reshape(B, C, R, R)


def _dense_backend(v: Tensor, geom: SparseGeometry, weight: Tensor, method: str = "auto",
                   spectra: dict | None = None) -> Tensor:
    B, N, C = v.shape
    R = geom.R
    method = conv_method(geom.k) if method == "auto" else method
    if geom.raster:
        # Full grid in raster order: scatter/gather are reshapes and every image shares one normaliser,
        # applied on the grid where the broadcast runs over contiguous memory.
        scale = geom.K / geom.count_grid[:1].to(v.dtype)                     # [1, 1, R, R]
        y = depthwise_conv2d(_grid_view(v, R, method), weight, method, out_scale=scale, spectra=spectra)
        # [B, N, C]: a contiguous view of channels-last output ("direct"), channel-major storage ("fft")
        return y.flatten(2).transpose(1, 2)
    # Unsampled pixels hold 0, so the convolution sums exactly the sampled neighbours.
    grid = v.new_zeros(B, R * R, C).scatter(1, geom.idx.unsqueeze(-1).expand(B, N, C), v)
    y = depthwise_conv2d(_grid_view(grid, R, method), weight, method, spectra=spectra).flatten(2)
    if method == "direct":                                                   # channels-last: gather rows
        y = y.transpose(1, 2).gather(1, geom.idx.unsqueeze(-1).expand(B, N, C))
    else:                                                                    # channel planes
        y = y.gather(2, geom.idx.unsqueeze(1).expand(B, C, N)).transpose(1, 2)
    return y * geom.scale(v.dtype)


def _check_backend(geom: SparseGeometry, backend: str, channels: int = 1, grad: bool = False) -> str:
    """Validate ``backend`` and resolve "auto": dense on (nearly) full grids or when the neighbour table
    would be huge, gathers otherwise (their cost grows with the sampling ratio, the dense conv's does not).

    ``grad``: the depthwise operator will be differentiated (training). Then the C++ kernels, where they
    build, also take (nearly) full grids while a window holds at most CPP_MAX_NEIGHBOURS sampled pixels
    on average: their backward beats the dense conv's there (CPP_MAX_NEIGHBOURS), except on small full grids
    (DENSE_GRAD_MAX_VALUES)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sparse backend '{backend}' (known: {', '.join(BACKENDS)})")
    if backend == "auto":
        work = geom.B * geom.N * geom.K * channels
        big = geom.B * geom.N * geom.K > TORCH_TABLE_LIMIT
        dense = geom.dense or big or geom.N >= AUTO_DENSE_RATIO * geom.R ** 2
        small_full = geom.dense and geom.B * geom.N * channels <= DENSE_GRAD_MAX_VALUES
        cpp_dense = (grad and not big and not small_full and geom.N * geom.K <= CPP_MAX_NEIGHBOURS * geom.R ** 2
                     and gather_backend(geom.device, work) == "cpp")
        backend = "dense" if dense and not cpp_dense else gather_backend(geom.device, work)
    return backend


def reads_planes(geom: SparseGeometry, backend: str = "auto", channels: int = 1) -> bool:
    """Whether :func:`sparse_depthwise_conv` without autograd reads ``v`` as channel planes at ``geom``: the dense
    backend with the FFT method (:func:`_planes`). Otherwise (the direct conv's channels-last view, the gather
    backends) it reads point-major rows, and channel-major input costs a transposing copy of the whole tensor."""
    return _check_backend(geom, backend, channels) == "dense" and conv_method(geom.k) == "fft"


def _in_work_dtype(fn, v: Tensor, weight: Tensor) -> Tensor:
    """Run ``fn(v, weight)`` in at least float32 with autocast off and cast back to v's dtype.

    The Monte-Carlo sum and the FFT run in at least float32, also under autocast (bf16 AMP on CUDA):
    torch.fft has no bf16 kernels and a 57 x 57 window summed in bf16 loses the integral's precision.
    """
    out_dtype = v.dtype
    work = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
    with torch.autocast(v.device.type, enabled=False):
        out = fn(v.to(work), weight.to(work))
    return out.to(out_dtype)


def sparse_depthwise_conv(v: Tensor, geom: SparseGeometry, weight: Tensor, backend: str = "auto",
                          spectra: dict | None = None) -> Tensor:
    """Monte-Carlo sparse depthwise convolution (Eq. 20).

    Args:
        v: [B, N, C] features at the points of ``geom``.
        geom: :class:`SparseGeometry` of the points (kernel size geom.k).
        weight: [C, k, k] with k == geom.k (resize with :func:`resize_kernel` first at other resolutions).
        backend: "auto" | "torch" | "compiled" | "cpp" | "dense" (see module docstring; "auto" picks by sampling
            ratio, operator size and machine).
        spectra: the dense backend's cache of kernel spectra between calls with the same weight (the
            caller empties it when the weight changes; see :func:`_fft_depthwise`).
    Returns:
        [B, N, C]: out[n] = (k*k / count[n]) * sum_o weight[:, o] * v[nbr[n, o]], i.e. the dense depthwise
        cross-correlation divided by the sampled in-image fraction of each window.
    """
    backend = _check_backend(geom, backend, weight.shape[0],
                             grad=torch.is_grad_enabled() and (v.requires_grad or weight.requires_grad))
    if weight.ndim != 3 or weight.shape[-1] != geom.k or weight.shape[-2] != geom.k:
        raise ValueError(f"weight must be [C, {geom.k}, {geom.k}] for this geometry, got {tuple(weight.shape)}")
    if v.shape[:2] != (geom.B, geom.N) or v.shape[2] != weight.shape[0]:
        raise ValueError(f"v {tuple(v.shape)} does not match geometry [B={geom.B}, N={geom.N}] "
                         f"and weight channels {weight.shape[0]}")
    _USED.add(backend)
    if backend == "dense":
        return _in_work_dtype(lambda v, w: _dense_backend(v, geom, w, spectra=spectra), v, weight)
    fn = {"compiled": _compiled_backend, "cpp": _cpp_backend, "torch": _torch_backend}[backend]
    return _in_work_dtype(lambda v, w: fn(v, geom, w), v, weight)


# ----------------------------------------------------------------------------------------------------
# Regular (full C_out x C_in) sparse convolution: the `regular_conv` ablation of Table 2
# ----------------------------------------------------------------------------------------------------
def _pairs_conv(v: Tensor, wm: Tensor, pairs) -> Tensor:
    """out[d] = sum_o v[s] @ wm[o] over the pairs (d, s) of each offset o.

    v [Z, C_in], wm [K, C_in, C_out] -> [Z, C_out]. One gather + matmul + scatter-add per offset over
    only the ~r*Z valid pairs: measured 2.3x faster than multiplying full (zero-padded) neighbour
    columns at ratio 1/4 and 3.5x faster than the dense conv (B=32, R=32, C=32, k=7, 2 CPU cores).
    """
    out = v.new_zeros(v.shape[0], wm.shape[2])
    for o, (d, s) in enumerate(pairs):
        if d.numel():
            # dests are distinct within one offset, so index_add_ never accumulates collisions.
            out.index_add_(0, d, v.index_select(0, s) @ wm[o])
    return out


class _SparseFullFn(torch.autograd.Function):
    """out = scale * sum_o v[nbr[:, o]] @ wm[o], with a backward made of the same gathers.

    Backward (g' = g * scale; pairs at offset o are the swapped pairs at offset -o = K-1-o):
        grad_v     = the forward op with wm'[o] = wm[K-1-o]^T    (flipped kernel, transposed channels)
        grad_wm[o] = v[s]^T @ g'[d]                              over the pairs (d, s) of offset o
    Only v, wm and scale are saved: no [Z, K, C] activation is ever materialised.
    """

    @staticmethod
    def forward(ctx, v: Tensor, wm: Tensor, scale: Tensor, geom: SparseGeometry) -> Tensor:
        # v [Z, C_in], wm [K, C_in, C_out], scale [Z, 1]
        out = _pairs_conv(v, wm, geom.pairs()).mul_(scale)
        ctx.save_for_backward(v, wm, scale)
        ctx.geom = geom
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        v, wm, scale = ctx.saved_tensors
        pairs = ctx.geom.pairs()
        gs = g * scale
        grad_v = grad_wm = None
        if ctx.needs_input_grad[0]:
            grad_v = _pairs_conv(gs, wm.flip(0).transpose(1, 2), pairs)
        if ctx.needs_input_grad[1]:
            grad_wm = torch.stack([v.index_select(0, s).t() @ gs.index_select(0, d) for d, s in pairs])
        return grad_v, grad_wm, None, None


def _torch_full_backend(v: Tensor, geom: SparseGeometry, weight: Tensor) -> Tensor:
    B, N, C_in = v.shape
    C_out = weight.shape[0]
    wm = weight.reshape(C_out, C_in, -1).permute(2, 1, 0).contiguous()       # [K, C_in, C_out]
    scale = geom.scale(v.dtype).reshape(B * N, 1)
    return _SparseFullFn.apply(v.reshape(B * N, C_in), wm, scale, geom).view(B, N, C_out)


def _dense_full_backend(v: Tensor, geom: SparseGeometry, weight: Tensor) -> Tensor:
    """Scatter to the grid, F.conv2d with the full kernel, renormalise by the box count.

    Direct convolution only: its cost is B * C_out * C_in * R^2 * k^2 multiply-adds, which grows as R^4
    because k grows with R (at 256 px, k = 57: ~0.45 TFLOP per image per layer at C = 32). Fine for the
    ablation's training ratios and for sampling up to ~2x the training resolution; sampling a
    `regular_conv` model far above that is slow (an FFT variant would need a C_out x C_in spectrum).
    """
    B, N, C_in = v.shape
    R, k, C_out = geom.R, geom.k, weight.shape[0]
    if geom.raster:
        x = v.transpose(1, 2).reshape(B, C_in, R, R)
        y = F.conv2d(x, weight, padding=k // 2) * (geom.K / geom.count_grid[:1].to(v.dtype))
        return y.reshape(B, C_out, N).transpose(1, 2)
    # Unsampled pixels hold 0, so the convolution sums exactly the sampled neighbours.
    grid = v.new_zeros(B, R * R, C_in).scatter(1, geom.idx.unsqueeze(-1).expand(B, N, C_in), v)
    y = F.conv2d(grid.transpose(1, 2).reshape(B, C_in, R, R), weight, padding=k // 2).reshape(B, C_out, R * R)
    y = y.gather(2, geom.idx.unsqueeze(1).expand(B, C_out, N)).transpose(1, 2)
    return y * geom.scale(v.dtype)


def sparse_conv(v: Tensor, geom: SparseGeometry, weight: Tensor, backend: str = "auto") -> Tensor:
    """Monte-Carlo sparse convolution with a full (regular) kernel: Eq. 20 with kappa(c - y) a
    C_out x C_in matrix instead of a diagonal one (the "Regular Convs" ablation, Table 2).

    Args:
        v: [B, N, C_in] features at the points of ``geom``.
        geom: :class:`SparseGeometry` of the points (kernel size geom.k).
        weight: [C_out, C_in, k, k] (the ``F.conv2d`` layout) with k == geom.k; resize with
            :func:`resize_kernel` at other resolutions.
        backend: "auto" | "torch" (gathers + one matmul per offset, gather-only backward) | "dense"
            (scatter + direct ``F.conv2d``; see :func:`_dense_full_backend` for its cost at large k).
            "compiled" and "cpp" run the "torch" path: a full kernel's cost is its per-offset matmuls, which
            already run at the matmul rate, so there is no compiled variant to gain from.
    Returns:
        [B, N, C_out]: out[n] = (k*k / count[n]) * sum_o weight[:, :, o] @ v[nbr[n, o]], i.e. the dense
        cross-correlation divided by the sampled in-image fraction of each window (same normaliser as
        :func:`sparse_depthwise_conv`, so a switch of kernel type changes nothing else).
    """
    backend = _check_backend(geom, backend)
    if weight.ndim != 4 or weight.shape[-1] != geom.k or weight.shape[-2] != geom.k:
        raise ValueError(f"weight must be [C_out, C_in, {geom.k}, {geom.k}] for this geometry, "
                         f"got {tuple(weight.shape)}")
    if v.shape[:2] != (geom.B, geom.N) or v.shape[2] != weight.shape[1]:
        raise ValueError(f"v {tuple(v.shape)} does not match geometry [B={geom.B}, N={geom.N}] "
                         f"and weight input channels {weight.shape[1]}")
    _USED.add("dense" if backend == "dense" else "torch")
    fn = _dense_full_backend if backend == "dense" else _torch_full_backend
    return _in_work_dtype(lambda v, w: fn(v, geom, w), v, weight)
