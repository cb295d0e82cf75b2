"""Tests for infdiff.mollifier: the DCT, T against independent blurs, symmetry, inverses."""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage as ndi
import torch

from infdiff.mollifier import Mollifier, dct_matrix


def explicit_T(m: Mollifier, R: int) -> torch.Tensor:
    """T as an explicit [R^2, R^2] matrix: column j is T applied to the j-th basis image (float64)."""
    basis = torch.eye(R * R, dtype=torch.float64).reshape(R * R, R, R)
    return m(basis).reshape(R * R, R * R).T


def mirror_fft_blur(x: np.ndarray, s: float) -> np.ndarray:
    """Independent reference for T: mirror the image (half-sample symmetric, d c b a | a b c d) to a
    2R x 2R periodic signal, multiply its FFT by the continuous Gaussian's transfer function
    exp(-omega^2 s^2 / 2), crop. Uses numpy's FFT, not the DCT matrices under test."""
    R = x.shape[-1]
    ext = np.concatenate([x, x[::-1]], axis=0)
    ext = np.concatenate([ext, ext[:, ::-1]], axis=1)
    w = 2 * np.pi * np.fft.fftfreq(2 * R)                    # angular frequency per pixel
    H = np.exp(-(w**2) * s**2 / 2)
    y = np.fft.ifft2(np.fft.fft2(ext) * H[:, None] * H[None, :]).real
    return y[:R, :R]


@pytest.mark.parametrize("R", [1, 2, 5, 16, 33])
def test_dct_matrix_orthonormal_and_matches_scipy(R):
    D = dct_matrix(R, dtype=torch.float64)
    assert D.shape == (R, R)
    assert torch.allclose(D @ D.T, torch.eye(R, dtype=torch.float64), atol=1e-12)
    x = np.random.default_rng(R).standard_normal(R)
    assert np.allclose(D.numpy() @ x, scipy.fft.dct(x, type=2, norm="ortho"), atol=1e-12)
    assert dct_matrix(R, dtype=torch.float64) is D  # cached per (R, device, dtype)
    assert dct_matrix(R).dtype == torch.float32


def test_gains_formula_and_resolution_consistency():
    m = Mollifier(std_px=1.0, train_res=32)
    g = m.gains(32, dtype=torch.float64)
    k = torch.arange(32, dtype=torch.float64)
    assert torch.allclose(g, torch.exp(-((math.pi * k / 32) ** 2) / 2))
    assert g[0] == 1  # the mean (k = 0) passes untouched
    # Same continuous frequency (same k on [0, 1]) -> same gain at every resolution, since the std in
    # pixels grows with R: this is the "T is one operator on functions" property.
    for R in (64, 256, 1024):
        assert torch.allclose(m.gains(R, dtype=torch.float64)[:32], g, rtol=1e-12)


def test_std_at_scales_with_R():
    m = Mollifier(std_px=1.5, train_res=64)
    assert m.std_at(64) == 1.5
    assert m.std_at(128) == 3.0
    assert m.std_at(32) == 0.75
    assert m.std_at(1024) == 24.0


@pytest.mark.parametrize("s", [0.7, 1.0, 2.5])
def test_T_equals_mirror_fft_gaussian(s):
    # Exact (up to float64 rounding): T is by construction the continuous Gaussian transfer function on
    # the half-sample-symmetric extension; the Nyquist bin of that extension is zero, so dropping it in
    # the DCT changes nothing.
    R = 24
    m = Mollifier(std_px=s, train_res=R)
    x = np.random.default_rng(0).uniform(-1, 1, (R, R))
    y = m(torch.from_numpy(x)).numpy()
    assert np.allclose(y, mirror_fft_blur(x, s), atol=1e-12)


@pytest.mark.parametrize("s", [1.0, 2.0])
def test_T_equals_spatial_gaussian_blur_reflect(s):
    # Independent spatial reference: scipy's sampled, normalised Gaussian kernel with mode="reflect"
    # (half-sample symmetric, the same boundary as the DCT-II). The two differ only in the kernel: the
    # DCT uses the continuous Gaussian's spectrum exp(-omega^2 s^2 / 2), a sampled kernel has the aliased
    # spectrum sum_j exp(-(omega + 2 pi j)^2 s^2 / 2), which differs by at most ~exp(-pi^2 s^2 / 2) near the
    # Nyquist frequency (0.0072 at s = 1, 3e-9 at s = 2). The tolerance is that bound times max|x|
    # (plus float64 rounding), so s = 2 is a tight test and s = 1 a test at the 1e-3 level.
    R = 32
    m = Mollifier(std_px=s, train_res=R)
    x = np.random.default_rng(1).uniform(-1, 1, (2, R, R))
    y = m(torch.from_numpy(x)).numpy()
    # Kernel radius truncate * s < R keeps scipy's reflection to a single mirror image.
    ref = np.stack([ndi.gaussian_filter(xi, s, mode="reflect", truncate=min(12.0, (R - 1) / s)) for xi in x])
    tol = math.exp(-(math.pi**2) * s**2 / 2) * np.abs(x).max() + 1e-9
    b = 4  # boundary band (pixels) where the reflection matters
    interior = (slice(None), slice(b, -b), slice(b, -b))
    assert np.abs(y - ref)[interior].max() < tol
    edge = np.ones((R, R), bool)
    edge[b:-b, b:-b] = False
    assert np.abs(y - ref)[:, edge].max() < tol
    # A zero-padding or periodic boundary would differ by O(0.1) at the edges: make sure the test sees it.
    wrong = np.stack([ndi.gaussian_filter(xi, s, mode="wrap", truncate=min(12.0, (R - 1) / s)) for xi in x])
    assert np.abs(y - wrong)[:, edge].max() > 10 * tol


def test_explicit_matrix_symmetric_and_separable():
    R = 6
    m = Mollifier(std_px=1.0, train_res=R)
    T = explicit_T(m, R)
    assert torch.allclose(T, T.T, atol=1e-12)
    # Separable: T = T_1d (x) T_1d (Kronecker product), T_1d = D^t diag(g) D.
    D = dct_matrix(R, dtype=torch.float64)
    g = m.gains(R, dtype=torch.float64)
    T1d = D.T @ torch.diag(g) @ D
    assert torch.allclose(T, torch.kron(T1d, T1d), atol=1e-12)
    # Rows sum to one (averaging operator).
    assert torch.allclose(T.sum(1), torch.ones(R * R, dtype=torch.float64), atol=1e-12)


def test_T_is_self_adjoint():
    m = Mollifier(std_px=1.0, train_res=16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)
    lhs = (m(x) * y).sum(dim=(-2, -1))
    rhs = (x * m(y)).sum(dim=(-2, -1))
    assert torch.allclose(lhs, rhs, atol=1e-10)


def test_T_preserves_constants():
    m = Mollifier(std_px=1.0, train_res=16)
    for R in (16, 31, 64):
        c = torch.full((2, 3, R, R), 0.37)
        assert torch.allclose(m(c), c, atol=1e-5)


def test_inverse_round_trip_float64():
    m = Mollifier(std_px=1.0, train_res=32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(m.inverse(m(x)), x, atol=1e-4)
    assert torch.allclose(m(m.inverse(x)), x, atol=1e-4)


def test_wiener_exact_gain_on_dct_modes_and_smooth_round_trip():
    R = 32
    m = Mollifier(std_px=1.0, train_res=R, inv_snr=0.05)
    n = torch.arange(R, dtype=torch.float64)
    g = m.gains(R, dtype=torch.float64)
    for k, l in [(0, 0), (1, 0), (2, 3), (10, 7), (25, 30)]:
        # A separable DCT mode is an eigenvector of both T and the Wiener filter.
        x = torch.cos(math.pi * k * (n[:, None] + 0.5) / R) * torch.cos(math.pi * l * (n[None, :] + 0.5) / R)
        G = g[k] * g[l]
        assert torch.allclose(m(x), G * x, atol=1e-12)
        assert torch.allclose(m.wiener(m(x)), G**2 / (G**2 + 0.05**2) * x, atol=1e-12)
    # Smooth image (low-frequency cosines): the Wiener filter undoes T up to its regularisation,
    # |1 - G^2 / (G^2 + inv_snr^2)| <= 0.0026 for these modes.
    xx = torch.cos(math.pi * 1 * (n[:, None] + 0.5) / R) + 0.5 * torch.cos(math.pi * 2 * (n[None, :] + 0.5) / R)
    assert (m.wiener(m(xx)) - xx).abs().max() < 0.004
    # inv_snr = 0 is the exact inverse.
    m0 = Mollifier(std_px=1.0, train_res=R, inv_snr=0.0)
    x = torch.randn(R, R, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(m0.wiener(m0(x)), x, atol=1e-6)


@pytest.mark.parametrize("R", [256, 512])
def test_kept_modes_give_the_dense_operators(R):
    # From 256 px T and the Wiener filter run on the leading modes only (~70 of R): the same values as the
    # dense DCT-domain operators, to the truncation's 1e-10 in float64 and to float32 rounding in float32.
    m = Mollifier(std_px=1.0, train_res=32, inv_snr=0.05)
    K, Kw = m.modes(R), m.modes(R, 0.05**2)
    assert K < Kw < R // 3                                 # the thin products are the ones that ran
    x = torch.randn(2, R, R, dtype=torch.float64, generator=torch.Generator().manual_seed(R))
    D = dct_matrix(R, dtype=torch.float64)
    g = m.gains(R, dtype=torch.float64)
    G = g[:, None] * g[None, :]
    X = D @ x @ D.T
    dense_T = D.T @ (G * X) @ D
    dense_W = D.T @ (G / (G**2 + 0.05**2) * X) @ D
    torch.testing.assert_close(m(x), dense_T, rtol=0, atol=1e-9)
    torch.testing.assert_close(m.wiener(x), dense_W, rtol=0, atol=1e-9)
    torch.testing.assert_close(m(x.float()), dense_T.float(), rtol=0, atol=2e-6)
    torch.testing.assert_close(m.wiener(x.float()), dense_W.float(), rtol=0, atol=2e-5)
    # The Wiener filter keeps more modes: its gain is up to g / inv_snr^2.
    assert (g[K:] < 1e-10).all() and (g[Kw:] < 1e-10 * 0.05**2).all() and g[Kw - 1] >= 1e-10 * 0.05**2


def test_shapes_dtypes_and_identity_mollifier():
    m = Mollifier(std_px=1.0, train_res=8)
    x = torch.randn(2, 3, 5, 8, 8)
    y = m(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.allclose(y.double(), m(x.double()), atol=1e-5)
    assert m.wiener(x).shape == x.shape
    with pytest.raises(ValueError, match="square"):
        m(torch.zeros(1, 3, 8, 9))
    ident = Mollifier(std_px=0.0, train_res=8)
    assert torch.equal(ident(x), x)
    assert torch.allclose(ident.wiener(x), x / (1 + 0.05**2), atol=1e-6)
    with pytest.raises(ValueError):
        Mollifier(std_px=-1.0)
