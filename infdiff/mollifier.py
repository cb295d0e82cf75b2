"""The Gaussian mollifier T of mollified diffusion (Sec. 3.2) and its (Wiener) inverse.

Mollified diffusion smooths every state by a linear operator T so that x_t is a continuous function
(Eq. 11: x_t = sqrt(alpha_bar_t) T x0 + sqrt(1 - alpha_bar_t) T xi). Here T is a Gaussian blur whose std
is fixed in *continuous* units: ``std_px`` pixels at the training resolution ``train_res``, hence
``std_px * R / train_res`` pixels at resolution R. The same T then means the same operator on functions at
every resolution.

Boundary: reflective (half-sample symmetric, "d c b a | a b c d"). A blur of the mirrored image is
diagonalised by the orthonormal DCT-II: the cosines cos(pi k (n + 1/2) / R) are the symmetric-extension
Fourier modes, with continuous angular frequency omega_k = pi k / R per pixel. A Gaussian of std s pixels
multiplies the mode by its Fourier transform exp(-omega_k^2 s^2 / 2), so in one dimension

    T_1d = D^t diag(g) D,   g_k = exp(-(pi k / R)^2 s^2 / 2),

and in two dimensions T x = T_1d x T_1d^t (separable: the 2-D gain is g_k g_l). g_k at a fixed continuous
frequency (k / R fixed) is the same at every R, which is the resolution consistency in the DCT domain.
std_px = 0 gives T = I, i.e. the unmollified (white-noise, Sec. 3.1) process.

Efficiency: T_1d (and T_1d^{-1}) are precomputed [R, R] matrices, so T x costs two matmuls per image,
cached per (R, device, dtype); on [B, 3, 1024, 1024] that is a pair of batched GEMMs. Only the Wiener
filter (whose 2-D gain g_k g_l / (g_k^2 g_l^2 + inv_snr^2) is not separable) needs the explicit DCT.
Since the std is a fixed fraction of the image, g_k depends on k alone and falls below 1e-10 beyond the
same ~70 modes at every R: from 256 px on, T and the Wiener filter keep only the K modes whose gain can
reach an output (MODE_TOL) and cost ~4KR^2 instead of ~4R^3 multiply-adds per image (K = 70 at 1024 px:
~14x fewer; 42-51 -> 4 ms per sampling step there on 2 CPU cores). The dropped modes change no output by more
than MODE_TOL times its scale, ~600x below float32 rounding.

All three operators are symmetric matrices on the flattened image, so T^t = T (used in Eq. 11-12).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Mollifier", "dct_matrix"]

# Cached orthonormal DCT-II matrices keyed by (R, device, dtype). A handful of resolutions is used per
# run, so the cache stays small; building a 1024 x 1024 matrix on every call would dominate sampling.
_DCT_CACHE: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}
# Largest gain (of T, or of the Wiener filter) a DCT mode may have and still be dropped (see "Efficiency").
MODE_TOL = 1e-10


def _device(device) -> torch.device:
    """Normalise a device spec so cache keys agree ('cuda' and x.device == 'cuda:0' are one device)."""
    d = torch.device("cpu" if device is None else device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def dct_matrix(R: int, device=None, dtype=torch.float32) -> Tensor:
    """Orthonormal DCT-II matrix D [R, R] (cached): DCT(x) = D x along a dimension, D D^t = I.

    D[k, n] = c_k cos(pi k (2n + 1) / (2R)) with c_0 = sqrt(1/R), c_k = sqrt(2/R) (scipy's ``norm="ortho"``).
    """
    key = (int(R), _device(device), dtype)
    if key not in _DCT_CACHE:
        # Built in float64 on the CPU and cast once: the cosines are then exact to the target dtype.
        n = torch.arange(R, dtype=torch.float64)
        k = n[:, None]
        D = torch.cos(math.pi * k * (2 * n[None, :] + 1) / (2 * R)) * math.sqrt(2.0 / R)
        D[0] = D[0] / math.sqrt(2.0)
        _DCT_CACHE[key] = D.to(device=key[1], dtype=dtype)
    return _DCT_CACHE[key]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16/fp16 under AMP, float32) is computed in float32,
    since half-precision DCT matrices would blur with visible error."""
    if not x.is_floating_point():
        raise TypeError(f"the mollifier needs a floating-point tensor, got {x.dtype}")
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class Mollifier:
    """Gaussian mollifier T (Sec. 3.2) with std fixed in continuous units, reflective boundary via the DCT-II.

    Args:
        std_px: blur std in pixels at the training resolution (paper: 1.0). 0 disables mollification.
        train_res: the training resolution R_train that ``std_px`` refers to.
        inv_snr: regulariser of the Wiener de-mollification (official code: 0.05).
    """

    def __init__(self, std_px: float = 1.0, train_res: int = 32, inv_snr: float = 0.05):
        if not std_px >= 0:
            raise ValueError(f"std_px must be >= 0, got {std_px!r}")
        if not (train_res >= 1):
            raise ValueError(f"train_res must be >= 1, got {train_res!r}")
        if not inv_snr >= 0:
            raise ValueError(f"inv_snr must be >= 0, got {inv_snr!r}")
        self.std_px = float(std_px)
        self.train_res = int(train_res)
        self.inv_snr = float(inv_snr)
        # Operator matrices keyed by (kind, R, device, dtype); see _matrix.
        self._cache: dict[tuple, Tensor] = {}

    def __repr__(self) -> str:
        return f"Mollifier(std_px={self.std_px}, train_res={self.train_res}, inv_snr={self.inv_snr})"

    def std_at(self, R: int) -> float:
        """Blur std in pixels at resolution R: std_px * R / train_res (a fixed length in [0, 1]^2)."""
        return self.std_px * R / self.train_res

    def noise_scale(self, R: int) -> float:
        """Factor for white noise at resolution R so that T xi has its per-pixel variance at R_train.

        A Gaussian blur of std s px leaves white noise a per-pixel variance ~ 1 / (4 pi s^2); at R the std
        is s R / R_train px, so the variance falls by (R_train / R)^2 and the noise is scaled by
        R / R_train (docs/architecture.md, "Tensors and coordinates"). Without mollification (std 0) white
        noise has unit variance at every R: factor 1.
        """
        return R / self.train_res if self.std_px > 0 else 1.0

    def gains(self, R: int, device=None, dtype=torch.float32) -> Tensor:
        """Separable DCT-domain eigenvalues of T at resolution R.

        Returns:
            g [R], g_k = exp(-(pi k / R)^2 std_at(R)^2 / 2): the Fourier transform of a Gaussian of std
            std_at(R) px at the DCT mode's frequency pi k / R. The 2-D eigenvalue of mode (k, l) is g_k g_l.
        """
        k = torch.arange(R, dtype=torch.float64)
        g = torch.exp(-((math.pi * k / R) ** 2) * self.std_at(R) ** 2 / 2)
        return g.to(device=_device(device), dtype=dtype)

    def _matrix(self, kind: str, R: int, device, dtype) -> Tensor:
        """Cached 1-D operator D^t diag(h(g)) D [R, R] with h = identity ("T") or 1/g ("inv")."""
        key = (kind, int(R), _device(device), dtype)
        if key not in self._cache:
            D = dct_matrix(R, dtype=torch.float64)
            g = self.gains(R, dtype=torch.float64)
            h = g if kind == "T" else 1.0 / g
            # Composed in float64 so the float32 operator is T_1d rounded once, not a product of roundings.
            self._cache[key] = (D.T @ (h[:, None] * D)).to(device=key[2], dtype=dtype)
        return self._cache[key]

    def modes(self, R: int, floor: float = 1.0) -> int:
        """Number K of leading DCT modes at resolution R whose gain g_k reaches ``MODE_TOL * floor``; the
        operators below drop the others where that saves at least half the work (:func:`_truncates`).
        ``floor`` is inv_snr^2 for the Wiener filter, whose gain is at most g_k / inv_snr^2."""
        if floor <= 0:
            return R
        return int((self.gains(R, dtype=torch.float64) >= MODE_TOL * floor).sum())

    def _factors(self, kind: str, R: int, K: int, device, dtype) -> tuple[Tensor, Tensor]:
        """Cached (D_K, h(g_K)[:, None] * D_K), both [K, R]: T_1d = D_K^t diag(g_K) D_K on its K modes."""
        key = (kind, int(R), K, _device(device), dtype)
        if key not in self._cache:
            D = dct_matrix(R, dtype=torch.float64)[:K]
            h = self.gains(R, dtype=torch.float64)[:K]
            self._cache[key] = (D.to(device=key[3], dtype=dtype), (h[:, None] * D).to(device=key[3], dtype=dtype))
        return self._cache[key]

    def _apply_separable(self, kind: str, x: Tensor) -> Tensor:
        R = x.shape[-1]
        if x.shape[-2] != R:
            raise ValueError(f"the mollifier needs square images [..., R, R], got {tuple(x.shape)}")
        dt = _compute_dtype(x)
        K = self.modes(R) if kind == "T" else R
        # Autocast off: under bf16 AMP the matmuls would otherwise be rounded to 8 mantissa bits.
        with torch.autocast(x.device.type, enabled=False):
            if _truncates(K, R):
                # T x T^t = D_K^t (L x L^t) D_K with L = diag(g_K) D_K: four thin products.
                D, L = self._factors(kind, R, K, x.device, dt)
                return (D.T @ (L @ x.to(dt) @ L.T) @ D).to(x.dtype)
            M = self._matrix(kind, R, x.device, dt)
            # Separable 2-D operator: rows then columns, M x M^t (M is symmetric, written M^t for clarity).
            return (M @ x.to(dt) @ M.T).to(x.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        """T x for images x [..., R, R]; returns the same shape and dtype. T^t = T (symmetric)."""
        if self.std_px == 0:
            return x
        return self._apply_separable("T", x)

    def inverse(self, x: Tensor) -> Tensor:
        """Exact T^{-1} x (divide every DCT mode by g_k g_l), same shape.

        For tests and identities only: 1/g grows like exp((pi s)^2 / 2) at the highest frequency, so on
        real samples it amplifies noise enormously; use ``wiener`` to de-mollify samples.
        """
        if self.std_px == 0:
            return x
        return self._apply_separable("inv", x)

    def wiener(self, x: Tensor) -> Tensor:
        """Wiener de-mollification IDCT[ G DCT(x) / (G^2 + inv_snr^2) ], G_kl = g_k g_l; same shape.

        This is the estimate of x0 from T x0 used before scoring samples (Sec. 3.2, official inv_snr
        0.05): modes with G >> inv_snr are inverted almost exactly, modes below it are damped instead of
        amplified.
        """
        R = x.shape[-1]
        if x.shape[-2] != R:
            raise ValueError(f"the mollifier needs square images [..., R, R], got {tuple(x.shape)}")
        if self.std_px == 0 and self.inv_snr == 0:
            return x
        dt = _compute_dtype(x)
        K = self.modes(R, self.inv_snr ** 2)
        K = K if _truncates(K, R) else R
        key = ("wiener", R, K, _device(x.device), dt)
        if key not in self._cache:
            g = self.gains(R, dtype=torch.float64)[:K]
            G = g[:, None] * g[None, :]
            self._cache[key] = (G / (G**2 + self.inv_snr**2)).to(device=key[3], dtype=dt)
        D = dct_matrix(R, device=x.device, dtype=dt)[:K]   # the first K modes (all of them below 256 px)
        with torch.autocast(x.device.type, enabled=False):  # the filter amplifies errors up to 1/inv_snr
            X = D @ x.to(dt) @ D.T                      # 2-D DCT-II, modes [K, K]
            return (D.T @ (self._cache[key] * X) @ D).to(x.dtype)  # filter, then inverse DCT


def _truncates(K: int, R: int) -> bool:
    """Whether keeping K of R modes (2KR^2 + 2K^2R multiply-adds per image) saves at least half of the dense
    2R^3: from 256 px on for the default mollifier (K ~ 70); below that the dense matrices run as before."""
    return 2 * K * R * R + 2 * K * K * R <= R ** 3
