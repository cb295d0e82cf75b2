"""Tests of PSNR and SSIM (infdiff.metrics.pixel).

SSIM is checked against an independent transcription of skimage's ``structural_similarity`` (gaussian
weights, sigma 1.5, population covariance) built on scipy.ndimage's Gaussian filter with reflect
padding and the crop skimage applies, plus closed forms that hold for any correct implementation.
"""

import warnings

import numpy as np
import pytest
import scipy.ndimage
import torch

from infdiff.metrics.pixel import gaussian_window, psnr, ssim


def _images(n: int = 3, c: int = 3, h: int = 24, w: int = 30, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images (blurred noise + a gradient): SSIM is neither ~0 nor ~1 on them."""
    rng = np.random.default_rng(seed)
    x = scipy.ndimage.gaussian_filter(rng.normal(size=(n, c, h, w)), sigma=(0, 0, 2, 2)) * 400
    x += np.linspace(0, 80, w)[None, None, None, :] + 100
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _noisy(x: np.ndarray, std: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(x + rng.normal(0, std, size=x.shape)), 0, 255).astype(np.uint8)


def _skimage_ssim(x: np.ndarray, y: np.ndarray, L: float) -> np.ndarray:
    """skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=0) per image, transcribed onto scipy.ndimage."""
    truncate, sigma = 3.5, 1.5
    win = 2 * int(truncate * sigma + 0.5) + 1
    pad = (win - 1) // 2
    C1, C2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    out = []
    for a, b in zip(x.astype(np.float64), y.astype(np.float64)):
        per_channel = []
        for p, q in zip(a, b):
            f = lambda t: scipy.ndimage.gaussian_filter(t, sigma=sigma, truncate=truncate, mode="reflect")
            ux, uy = f(p), f(q)
            vx, vy, vxy = f(p * p) - ux * ux, f(q * q) - uy * uy, f(p * q) - ux * uy
            S = ((2 * ux * uy + C1) * (2 * vxy + C2)) / ((ux**2 + uy**2 + C1) * (vx + vy + C2))
            per_channel.append(S[pad:-pad, pad:-pad].mean())
        out.append(np.mean(per_channel))
    return np.array(out)


def test_psnr_closed_form_for_known_mse():
    # Kept away from 0 and 255 so that +-2d never clips.
    x = _images().clip(20, 235)
    # +-d on a random half of the pixels: MSE = d^2 exactly.
    d = 7
    sign = np.random.default_rng(3).choice([-1, 1], size=x.shape)
    y = (x.astype(int) + d * sign).astype(np.uint8)
    expected = 10 * np.log10(255.0**2 / d**2)
    np.testing.assert_allclose(psnr(x, y), expected, rtol=1e-12)
    # Per image: a second image with twice the error is 20 log10(2) ~ 6.02 dB lower.
    y2 = y.copy()
    y2[1] = x[1].astype(int) + 2 * d * sign[1]
    np.testing.assert_allclose(psnr(x, y2), [expected, expected - 20 * np.log10(2), expected], rtol=1e-12)


def test_psnr_identical_is_inf_without_warnings():
    x = _images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = psnr(x, x)
    assert v.shape == (3,) and np.all(np.isinf(v)) and np.all(v > 0)


def test_ssim_identical_is_one():
    x = _images()
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-12)


def test_ssim_of_constant_images_is_luminance_term():
    a, b = 60, 200
    x = np.full((1, 3, 16, 16), a, np.uint8)
    y = np.full((1, 3, 16, 16), b, np.uint8)
    C1 = (0.01 * 255) ** 2
    # Zero variance: contrast-structure term is C2 / C2 = 1, only luminance remains.
    expected = (2 * a * b + C1) / (a**2 + b**2 + C1)
    np.testing.assert_allclose(ssim(x, y), expected, rtol=1e-12)


def test_ssim_matches_skimage_transcription():
    x, y = _images(seed=0), _noisy(_images(seed=0), 25.0)
    ref = _skimage_ssim(x, y, 255.0)
    assert 0.2 < ref.min() and ref.max() < 0.95  # a non-trivial regime
    np.testing.assert_allclose(ssim(x, y), ref, rtol=1e-10)
    # Unrelated images: low and possibly negative SSIM, still matching.
    z = _images(seed=5)
    np.testing.assert_allclose(ssim(x, z), _skimage_ssim(x, z, 255.0), rtol=1e-10, atol=1e-12)


def test_ssim_symmetric_and_lower_for_noisier_images():
    x = _images()
    y = _noisy(x, 20.0)
    np.testing.assert_allclose(ssim(x, y), ssim(y, x), rtol=1e-12)
    values = [ssim(x, _noisy(x, s)) for s in (2.0, 10.0, 40.0)]
    assert np.all(values[0] > values[1]) and np.all(values[1] > values[2])
    p = [psnr(x, _noisy(x, s)) for s in (2.0, 10.0, 40.0)]
    assert np.all(p[0] > p[1]) and np.all(p[1] > p[2])


def test_uint8_and_float_agree_numpy_and_torch():
    x, y = _images(), _noisy(_images(), 15.0)
    fx, fy = x / 127.5 - 1.0, y / 127.5 - 1.0
    np.testing.assert_allclose(psnr(fx, fy), psnr(x, y), rtol=1e-10)
    np.testing.assert_allclose(ssim(fx, fy), ssim(x, y), rtol=1e-10)
    # float32 torch tensors: same numbers up to float32 rounding of the inputs.
    tx, ty = torch.from_numpy(fx).float(), torch.from_numpy(fy).float()
    np.testing.assert_allclose(ssim(tx, ty), ssim(x, y), rtol=1e-5)
    np.testing.assert_allclose(psnr(torch.from_numpy(x), torch.from_numpy(y)), psnr(x, y), rtol=1e-12)


def test_window_and_input_errors():
    x = _images()
    with pytest.raises(TypeError, match="same kind"):
        psnr(x, x / 127.5 - 1)
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, x[:2])
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(x[:, :, :8, :8], x[:, :, :8, :8])
    with pytest.raises(ValueError, match="odd"):
        ssim(x, x, window=10)
    g = gaussian_window(11, 1.5)
    assert g.sum().item() == pytest.approx(1.0) and torch.equal(g, g.flip(0))
