"""Tests of the multi-scale sliced Wasserstein distance (infdiff.metrics.swd).

The pyramid is checked against scipy.ndimage (the reference implementation's own primitive), the
sliced-Wasserstein core against analytic and scipy 1-D Wasserstein distances, and the full metric
against properties any distance between image distributions must have.
"""

import importlib

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

from infdiff.metrics.swd import (
    _quantile_pairing,
    extract_patches,
    laplacian_pyramid,
    normalise_descriptors,
    pyr_down,
    pyr_up,
    pyramid_resolutions,
    random_directions,
    reconstruct_laplacian_pyramid,
    sliced_wasserstein,
    swd,
)

# The reference's 2-D kernel (progressive_growing_of_gans metrics/sliced_wasserstein.py).
_K2D = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float64) / 256.0

# Small settings so every test runs in well under a second.
FAST = dict(patches_per_image=32, directions=128)


def _blobs(n: int, R: int, seed: int, blur: float = 0.0, size=(0.05, 0.15)) -> np.ndarray:
    """Toy image distribution, uint8 [n, 3, R, R]: 1-3 coloured Gaussian blobs (std drawn from `size`,
    in image widths) on a grey background, plus faint pixel noise; optionally blurred afterwards."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:R, 0:R] / R
    out = np.empty((n, 3, R, R), np.float64)
    for i in range(n):
        img = np.full((3, R, R), 0.4)
        for _ in range(rng.integers(1, 4)):
            cx, cy = rng.uniform(0.2, 0.8, 2)
            s = rng.uniform(*size)
            colour = rng.uniform(-0.4, 0.6, 3)
            img += colour[:, None, None] * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        img += rng.normal(0, 0.005, img.shape)
        if blur > 0:
            img = scipy.ndimage.gaussian_filter(img, (0, blur, blur), mode="mirror")
        out[i] = img
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# Pyramid
# ---------------------------------------------------------------------------------------------------


def test_pyramid_resolutions():
    assert pyramid_resolutions(32) == [32, 16]
    assert pyramid_resolutions(256) == [256, 128, 64, 32, 16]
    assert pyramid_resolutions(48) == [48, 24]
    with pytest.raises(ValueError):
        pyramid_resolutions(8)


def test_pyr_down_up_match_scipy_mirror_convolution():
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 16, 16)).astype(np.float32)
    ref_down = scipy.ndimage.convolve(x.astype(np.float64), _K2D[None, None], mode="mirror")[:, :, ::2, ::2]
    np.testing.assert_allclose(pyr_down(x), ref_down, rtol=1e-5, atol=1e-3)
    up = np.zeros((2, 3, 32, 32))
    up[:, :, ::2, ::2] = x
    ref_up = scipy.ndimage.convolve(up, 4 * _K2D[None, None], mode="mirror")
    np.testing.assert_allclose(pyr_up(x), ref_up, rtol=1e-5, atol=1e-3)


def test_laplacian_pyramid_shapes_and_exact_reconstruction():
    x = np.random.default_rng(1).uniform(0, 255, (3, 3, 32, 32)).astype(np.float32)
    pyr = laplacian_pyramid(x, len(pyramid_resolutions(32)))
    assert [p.shape for p in pyr] == [(3, 3, 32, 32), (3, 3, 16, 16)]
    # The coarsest level is the Gaussian level (a blurred, downsampled image), not a band-pass one.
    np.testing.assert_allclose(pyr[-1], pyr_down(x), atol=1e-4)
    np.testing.assert_allclose(reconstruct_laplacian_pyramid(pyr), x, atol=1e-3)
    # A constant image has zero band-pass energy (filter gains sum to 1, mirror padding).
    const = laplacian_pyramid(np.full((1, 3, 64, 64), 77.0, np.float32), 3)
    assert [p.shape[-1] for p in const] == [64, 32, 16]
    assert np.abs(const[0]).max() < 1e-4 and np.abs(const[1]).max() < 1e-4
    np.testing.assert_allclose(const[2], 77.0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# Descriptors
# ---------------------------------------------------------------------------------------------------


def test_extract_patches_matches_slicing():
    rng = np.random.default_rng(2)
    level = rng.normal(size=(2, 3, 16, 16)).astype(np.float32)
    rows = rng.integers(0, 10, (2, 4))
    cols = rng.integers(0, 10, (2, 4))
    desc = extract_patches(level, rows, cols, 7)
    assert desc.shape == (8, 147)
    for i in range(2):
        for p in range(4):
            expect = level[i, :, rows[i, p] : rows[i, p] + 7, cols[i, p] : cols[i, p] + 7].reshape(-1)
            np.testing.assert_array_equal(desc[i * 4 + p], expect)


def test_normalise_descriptors_per_channel():
    rng = np.random.default_rng(3)
    scale = np.array([1.0, 5.0, 0.1])[None, :, None]
    shift = np.array([3.0, -2.0, 9.0])[None, :, None]
    desc = rng.normal(size=(500, 3, 49)) * scale + shift
    z = normalise_descriptors(desc.reshape(500, -1).astype(np.float32)).reshape(500, 3, 49)
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Sliced Wasserstein core
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.5, 2.0])
def test_core_1d_gaussians_matches_analytic_w1(mu):
    # W1(N(0,1), N(mu,1)) = |mu|: the quantile functions differ by the constant mu.
    rng = np.random.default_rng(4)
    A = rng.normal(0.0, 1.0, (20000, 1))
    B = rng.normal(mu, 1.0, (20000, 1))
    dirs = np.ones((1, 1), np.float32)  # the only unit directions in 1-D are +-1
    assert sliced_wasserstein(A, B, dirs) == pytest.approx(mu, abs=0.03)
    assert sliced_wasserstein(A, B, -dirs) == pytest.approx(mu, abs=0.03)


def test_core_multidim_gaussian_shift():
    # A ~ N(0, I), B ~ N(mu e_0, I): along unit w the projections are N(0,1) vs N(mu w_0, 1), W1 = |mu w_0|.
    rng = np.random.default_rng(5)
    mu, D = 3.0, 8
    A = rng.normal(size=(20000, D))
    B = rng.normal(size=(20000, D))
    B[:, 0] += mu
    dirs = random_directions(D, 64, seed=0)
    assert np.allclose(np.linalg.norm(dirs, axis=0), 1, atol=1e-6)
    expect = np.mean(np.abs(mu * dirs[0]))
    assert sliced_wasserstein(A, B, dirs) == pytest.approx(expect, rel=0.05, abs=0.02)


def test_core_unequal_sizes_is_exact_w1():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(37, 1))
    b = rng.gamma(2.0, size=(101, 1))
    expect = scipy.stats.wasserstein_distance(a[:, 0], b[:, 0])
    assert sliced_wasserstein(a, b, np.ones((1, 1))) == pytest.approx(expect, rel=1e-5)
    ia, ib, w = _quantile_pairing(4, 6)
    assert w.sum() == pytest.approx(1.0) and ia.max() == 3 and ib.max() == 5


def test_random_directions_seeded_and_chunked():
    d1 = random_directions(147, 512, seed=[0, 1])
    assert d1.shape == (147, 512) and d1.dtype == np.float32
    np.testing.assert_array_equal(d1, random_directions(147, 512, seed=[0, 1]))
    assert not np.allclose(d1, random_directions(147, 512, seed=[1, 1]))


# ---------------------------------------------------------------------------------------------------
# Full metric
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sets():
    # 256 images: with fewer, the sampling noise of the coarse (image-level) statistics dominates.
    return {
        "a": _blobs(256, 32, seed=10),
        "b": _blobs(256, 32, seed=11),  # disjoint draw, same distribution
        "blurred": _blobs(256, 32, seed=12, blur=1.2),
        "bigger": _blobs(256, 32, seed=13, size=(0.15, 0.3)),  # shifted distribution: larger blobs
    }


@pytest.fixture(scope="module")
def same(sets):
    """SWD between two disjoint draws of the same distribution (the 'real vs real' floor)."""
    return swd(sets["a"], sets["b"], **FAST)


def test_identical_sets_give_zero_and_output_format(sets):
    out = swd(sets["a"], sets["a"], **FAST)
    assert list(out["levels"]) == [32, 16]
    assert all(isinstance(k, int) for k in out["levels"])
    assert all(v == 0.0 for v in out["levels"].values()) and out["avg"] == 0.0


def test_symmetric_and_deterministic(sets, same):
    ba = swd(sets["b"], sets["a"], **FAST)
    assert ba["avg"] == pytest.approx(same["avg"], rel=1e-6)
    assert swd(sets["a"], sets["b"], **FAST) == same
    # Another seed draws other patches/directions: a different but similar estimate.
    other = swd(sets["a"], sets["b"], seed=4, **FAST)["avg"]
    assert other != same["avg"] and other == pytest.approx(same["avg"], rel=0.5)


def test_same_distribution_much_closer_than_noise(sets, same):
    noise = np.random.default_rng(13).integers(0, 256, sets["a"].shape, dtype=np.uint8)
    far = swd(sets["a"], noise, **FAST)
    assert far["avg"] > 5 * same["avg"]
    assert all(far["levels"][r] > 3 * same["levels"][r] for r in (32, 16))


def test_shifted_distribution_scores_worse(sets, same):
    assert swd(sets["a"], sets["bigger"], **FAST)["avg"] > 3 * same["avg"]


def test_blur_is_seen_by_the_fine_level(sets, same):
    # Blur removes fine detail: the band-pass (32 px) level must notice.
    assert swd(sets["a"], sets["blurred"], **FAST)["levels"][32] > 3 * same["levels"][32]


def test_saturating_brightening_scores_worse(sets, same):
    bright = np.clip(sets["b"].astype(np.int64) + 100, 0, 255).astype(np.uint8)
    assert swd(sets["a"], bright, **FAST)["avg"] > 1.8 * same["avg"]


def test_global_affine_intensity_change_is_normalised_away(sets):
    # Per-set, per-channel normalisation (as in the reference) cancels x -> s x + c exactly: the pyramid
    # is linear. Halving first keeps 2 x + 1 integral and unclipped, so no rounding enters.
    half = sets["b"] // 2
    ref = swd(sets["a"], half, **FAST)
    moved = swd(sets["a"], (2 * half + 1).astype(np.uint8), **FAST)
    assert moved["avg"] == pytest.approx(ref["avg"], rel=1e-5)


def test_float_input_equals_uint8_input(sets, same):
    torch = pytest.importorskip("torch")
    # Float images in [-1, 1] are quantised like a uint8 export, so the value is identical.
    as_float = sets["b"].astype(np.float32) / 127.5 - 1.0
    assert swd(sets["a"], as_float, **FAST) == same
    assert swd(torch.from_numpy(sets["a"]), torch.from_numpy(as_float), **FAST) == same


def test_unequal_set_sizes(sets):
    out = swd(sets["a"], sets["b"][:100], **FAST)
    rev = swd(sets["b"][:100], sets["a"], **FAST)
    assert out["avg"] == pytest.approx(rev["avg"], rel=1e-6)
    noise = np.random.default_rng(14).integers(0, 256, (100, 3, 32, 32), dtype=np.uint8)
    assert 0 < out["avg"] < swd(sets["a"], noise, **FAST)["avg"] / 5


def test_multi_level_at_64px():
    a, b = _blobs(8, 64, seed=20), _blobs(8, 64, seed=21)
    out = swd(a, b, **FAST)
    assert list(out["levels"]) == [64, 32, 16]
    assert out["avg"] == pytest.approx(np.mean(list(out["levels"].values())))


def test_input_validation(sets):
    with pytest.raises(ValueError, match="resolution"):
        swd(sets["a"], _blobs(2, 64, seed=1))
    with pytest.raises(ValueError, match=r"\[N, 3, R, R\]"):
        swd(sets["a"][:, :1], sets["a"][:, :1])
    with pytest.raises(ValueError, match="min_res"):
        swd(sets["a"], sets["b"], min_res=64)


def test_single_level_and_chunking_agree_with_full_pyramid(monkeypatch):
    # `infdiff.metrics.swd` the attribute is the function (re-exported); fetch the module itself.
    mod = importlib.import_module("infdiff.metrics.swd")
    x = np.random.default_rng(7).uniform(0, 255, (5, 3, 64, 64)).astype(np.float32)
    pyr = laplacian_pyramid(x, 3)
    for lvl in range(3):
        np.testing.assert_allclose(mod._pyramid_level(x, lvl, 3), pyr[lvl], atol=1e-4)
    # Chunked pyramids (one image at a time) give bit-identical descriptors: positions do not depend on batching.
    full = mod._set_descriptors(x, 1, 3, 8, 7, seed=0)
    monkeypatch.setattr(mod, "_CHUNK_PIXELS", 1)
    np.testing.assert_array_equal(mod._set_descriptors(x, 1, 3, 8, 7, seed=0), full)
