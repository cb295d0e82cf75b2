"""The 5/3 LeGall wavelet of simple diffusion's U-ViT stem: invertibility, vanishing moments, its filter."""

import math

import pytest
import torch

from baselines.wavelet import WaveletDown, WaveletUp, dwt1, dwt2, idwt2

LEGALL_LOW = torch.tensor([-1 / 8, 1 / 4, 3 / 4, 1 / 4, -1 / 8], dtype=torch.float64)
LEGALL_HIGH = torch.tensor([-1 / 2, 1.0, -1 / 2], dtype=torch.float64)


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 4, 6), (2, 3, 8, 8), (1, 2, 16, 10), (1, 1, 32, 32)])
def test_perfect_reconstruction(shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = dwt2(x)
    B, C, H, W = shape
    assert y.shape == (B, 4 * C, H // 2, W // 2) and y.dtype == torch.float64
    assert torch.allclose(idwt2(y), x, atol=1e-12, rtol=0)
    # The layers are the same maps (and parameter-free).
    assert torch.equal(WaveletUp()(WaveletDown()(x)), idwt2(dwt2(x)))
    assert not list(WaveletDown().parameters())


def test_transform_is_not_trivial():
    """Reconstruction alone would pass for a permutation: the bands must separate frequencies."""
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = dwt2(x)
    assert y[:, 1:].abs().max() > 0.1
    # A checkerboard (highest frequency in both directions) lives in HH only.
    i = torch.arange(16, dtype=torch.float64)
    checker = ((-1) ** (i[:, None] + i[None, :]))[None, None]
    yc = dwt2(checker)
    assert yc[:, :3].abs().max() < 1e-12 and yc[:, 3].abs().min() > 0.5


def test_constant_image_has_no_detail():
    x = torch.full((2, 3, 8, 12), 0.7, dtype=torch.float64)
    ll, lh, hl, hh = dwt2(x).chunk(4, dim=1)
    for band in (lh, hl, hh):
        assert band.abs().max() < 1e-12
    # bior2.2 normalisation: the low-pass has DC gain sqrt(2) per axis, so LL = 2 * the mean.
    assert torch.allclose(ll, torch.full_like(ll, 1.4), atol=1e-12)


def test_linear_ramp_has_no_interior_detail():
    """The 5/3 high-pass (-1/2, 1, -1/2) has two vanishing moments: it annihilates a + b x + c y.

    Only the last row/column of the detail bands see the symmetric extension (which folds the ramp).
    """
    H, W = 12, 16
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    x = (0.3 + 0.05 * xx - 0.08 * yy)[None, None]
    _, lh, hl, hh = dwt2(x).chunk(4, dim=1)
    for band in (lh, hl, hh):
        assert band[..., :-1, :-1].abs().max() < 1e-12
    # ... and the boundary coefficients are not zero (the test can tell the interior from the edge).
    assert lh[..., -1].abs().max() > 1e-3 and hl[..., -1, :].abs().max() > 1e-3


def _analysis_rows(N: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1-D analysis matrices: column p = dwt1 of the unit impulse at p. Returns (low, high) [N/2, N]."""
    low, high = dwt1(torch.eye(N, dtype=torch.float64))       # row p of eye = impulse at p
    return low.T, high.T


def test_analysis_filters_are_legall_5_3():
    low, high = _analysis_rows(16)
    for n in (2, 3, 4, 5):  # interior outputs: the 5 taps centred on the even sample 2n
        assert torch.allclose(low[n, 2 * n - 2:2 * n + 3], math.sqrt(2) * LEGALL_LOW, atol=1e-15)
        assert low[n].abs().sum().item() == pytest.approx(math.sqrt(2) * LEGALL_LOW.abs().sum().item(), abs=1e-14)
        # the high-pass is centred on the odd sample 2n + 1
        assert torch.allclose(high[n, 2 * n:2 * n + 3], -LEGALL_HIGH / math.sqrt(2), atol=1e-15)
        assert high[n].abs().sum().item() == pytest.approx(2 / math.sqrt(2), abs=1e-14)
    # 2-D: LL of an impulse is the outer product of the 1-D low-pass taps.
    imp = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    imp[0, 0, 8, 8] = 1.0
    ll = dwt2(imp)[0, 0]
    taps = math.sqrt(2) * LEGALL_LOW
    # output (n, m) sees input (8, 8) with tap index 8 - (2n - 2): n = 3..5 -> taps 4, 2, 0
    expected = torch.zeros(8, 8, dtype=torch.float64)
    for a, n in enumerate((3, 4, 5)):
        for b, m in enumerate((3, 4, 5)):
            expected[n, m] = taps[4 - 2 * a] * taps[4 - 2 * b]
    assert torch.allclose(ll, expected, atol=1e-15)


def test_matches_pywavelets_bior22_in_the_interior():
    """Same coefficients as ``pywt.dwt2(x, "bior2.2", mode="reflect")`` away from the border.

    pywt pads its output (length N/2 + 2), so its index k + 1 is our k; bands: LL = cA, LH = cV (vertical
    detail), HL = cH, HH = cD. PyWavelets is a test dependency (pyproject's `test` extra).
    """
    import pywt
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = dwt2(x)[0, :, 2:6, 2:6].numpy()
    cA, (cH, cV, cD) = pywt.dwt2(x[0, 0].numpy(), "bior2.2", mode="reflect")
    for k, ref in enumerate((cA, cV, cH, cD)):
        assert abs(ref[3:7, 3:7] - ours[k]).max() < 1e-12, f"band {k}"
