"""Multi-scale sliced Wasserstein distance (SWD) of Karras et al. 2018 (Progressive GAN, App. D).

Follows ``metrics/sliced_wasserstein.py`` of the reference implementation step by step:

1. Laplacian pyramid with the 5-tap binomial filter ``[1, 4, 6, 4, 1] / 16`` (separable), mirror
   padding (scipy ``mode="mirror"`` == torch ``"reflect"``: ``d c b | a b c d | c b a``), downsampling by 2.
   Levels run from the full resolution ``R`` down to ``min_res``; every level but the coarsest is a
   Laplacian (band-pass) level, the coarsest is the Gaussian (low-pass) level, exactly as the reference.
2. Per level, ``patches_per_image`` random ``7 x 7 x 3`` patches per image (fully inside the image, as the
   reference's ``randint(H, S - H)`` centres), flattened in (channel, row, col) order to 147-d descriptors.
3. Each *set's* descriptors are normalised per channel: subtract the set mean, divide by the set std.
4. Sliced Wasserstein: ``directions`` random unit directions, drawn in repeats of 128 (4 x 128 = 512 by
   default); project, sort, mean absolute difference of the sorted projections; averaged; times 1e3.

Intentional, documented differences from the reference (none changes the value for equal-size sets):

* Scale. The reference feeds uint8 images as float32 in [0, 255]. Float inputs in [-1, 1] are mapped to
  that range and *rounded* to integers, i.e. quantised exactly as writing them to uint8 would (the
  reference pipeline converts fakes to uint8 before the metric), so ``swd(u8) == swd(u8 / 127.5 - 1)``.
  Because of step 3, any global affine intensity change is cancelled anyway; scale only matters through
  rounding.
* Randomness. The reference draws from numpy's global RNG; here every random draw comes from a
  ``numpy.random.default_rng`` seeded by ``(seed, level, purpose)``, so results are deterministic, do not
  depend on batching, and both sets get the *same* patch positions (identical sets give exactly 0 and
  ``swd(a, b) == swd(b, a)`` exactly when the sets have the same size).
* Unequal set sizes. The reference asserts equal sizes. Here the 1-D Wasserstein-1 distance between the
  two empirical distributions is computed exactly through their quantile functions (merging the
  breakpoints ``i / n`` and ``j / m``); for ``n == m`` this is the reference's
  ``mean(|sort(A w) - sort(B w)|)``. No descriptor is thrown away.
* Memory/speed. Everything runs in numpy on the CPU (several times faster than torch's CPU kernels for
  these shapes). The pyramid is computed chunk-wise and level by level (recomputed per level, which is
  cheap) so that only one level's descriptors of both sets are held at once.
* A set whose channel is constant has std 0; the reference would produce NaN, here std 0 is replaced by 1.

:func:`swd_bootstrap` adds a 95% bootstrap interval over the generated images (reference set fixed).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Sequence

import numpy as np

__all__ = [
    "swd",
    "swd_bootstrap",
    "sliced_wasserstein",
    "random_directions",
    "pyramid_resolutions",
    "pyr_down",
    "pyr_up",
    "laplacian_pyramid",
    "reconstruct_laplacian_pyramid",
    "extract_patches",
    "normalise_descriptors",
    "to_pixel_range",
    "kernels_used",
]

# Binomial 5-tap filter; its outer product / 256 is the reference's `gaussian_filter` (cv2.pyrDown kernel).
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0
# The reference projects with 4 repeats of 128 directions; we keep the 128-direction chunks, which also
# bounds the memory of the [128, n_descriptors] projection matrices.
DIRS_PER_REPEAT = 128
# Pixels per chunk when building pyramids (about 64 MB of float32 per chunk array).
_CHUNK_PIXELS = 1 << 24


# ----------------------------------------------------------------------------------------------------
# Input conversion and pyramid (numpy on CPU: several times faster than torch's CPU kernels here)
# ----------------------------------------------------------------------------------------------------


def to_pixel_range(x) -> np.ndarray:
    """Convert images to float32 in the reference's [0, 255] pixel range.

    Args:
        x: ``[N, 3, R, R]`` numpy array or torch tensor (any device); an integer dtype (uint8) is taken
            as 0..255 values, a float dtype as [-1, 1].
    Returns:
        float32 numpy array ``[N, 3, R, R]`` with integer values in [0, 255].
    """
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"images must be uint8 or float in [-1, 1], got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        # Quantise like a uint8 export of the samples (see module docstring): swd(u8) == swd(to_float(u8)).
        return np.clip(np.rint((x.astype(np.float32) + 1.0) * 127.5), 0.0, 255.0)
    return x.astype(np.float32)


def pyramid_resolutions(R: int, min_res: int = 16) -> list[int]:
    """Resolutions of the pyramid levels, finest first: ``[R, R/2, ..., >= min_res]`` (reference's list)."""
    if min_res < 1 or R < min_res:
        raise ValueError(f"resolution {R} is below min_res={min_res}; SWD needs R >= min_res")
    out = []
    res = R
    while res >= min_res:
        out.append(res)
        # Odd sizes would make pyr_up(pyr_down(x)) mismatch x in shape, so the pyramid needs exact halving.
        if res % 2 and res // 2 >= min_res:
            raise ValueError(f"resolution {R} cannot be halved exactly down to min_res={min_res}")
        res //= 2
    return out


def _blur(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Separable 5-tap binomial blur with mirror padding. x ``[..., H, W]`` float32 -> same shape."""
    # `gain` multiplies the 2-D kernel; split it evenly over the two 1-D passes.
    w = _BINOMIAL * np.float32(gain**0.5)
    H, W = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2)
    # numpy "reflect" excludes the edge pixel (d c b | a b c d | c b a), i.e. scipy.ndimage's "mirror"
    # mode used by the reference. Five shifted, weighted slices per axis implement the separable filter.
    xp = np.pad(x, pad + [(0, 0), (2, 2)], mode="reflect")
    y = w[0] * xp[..., 0:W]
    for k in range(1, 5):
        y += w[k] * xp[..., k : k + W]
    yp = np.pad(y, pad + [(2, 2), (0, 0)], mode="reflect")
    out = w[0] * yp[..., 0:H, :]
    for k in range(1, 5):
        out += w[k] * yp[..., k : k + H, :]
    return out


def pyr_down(x: np.ndarray) -> np.ndarray:
    """Blur then keep even pixels (cv2.pyrDown / the reference). ``[N, C, H, W] -> [N, C, H/2, W/2]``."""
    return np.ascontiguousarray(_blur(np.asarray(x, dtype=np.float32))[..., ::2, ::2])


def pyr_up(x: np.ndarray) -> np.ndarray:
    """Zero-insertion upsampling then blur with 4x gain (cv2.pyrUp). ``[N, C, H, W] -> [N, C, 2H, 2W]``."""
    x = np.asarray(x, dtype=np.float32)
    up = np.zeros(x.shape[:-2] + (2 * x.shape[-2], 2 * x.shape[-1]), dtype=np.float32)
    up[..., ::2, ::2] = x
    # Gain 4 compensates the 3 zeros inserted per pixel, so constants are preserved.
    return _blur(up, gain=4.0)


def laplacian_pyramid(x: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """Laplacian pyramid, finest first; the last entry is the Gaussian (low-pass) level.

    Args:
        x: ``[N, C, R, R]``.
        num_levels: number of levels L; level l has shape ``[N, C, R / 2**l, R / 2**l]``.
    """
    pyr = [np.asarray(x, dtype=np.float32)]
    for _ in range(1, num_levels):
        pyr.append(pyr_down(pyr[-1]))
        # Band-pass: what the coarser level cannot explain (reference's generate_laplacian_pyramid).
        pyr[-2] = pyr[-2] - pyr_up(pyr[-1])
    return pyr


def reconstruct_laplacian_pyramid(pyr: Sequence[np.ndarray]) -> np.ndarray:
    """Inverse of :func:`laplacian_pyramid` (exact up to float rounding). Returns ``[N, C, R, R]``."""
    x = pyr[-1]
    for level in list(pyr[-2::-1]):
        x = pyr_up(x) + level
    return x


def _pyramid_level(x: np.ndarray, level: int, num_levels: int) -> np.ndarray:
    """Only level ``level`` of :func:`laplacian_pyramid`, computing no deeper than needed."""
    g = np.asarray(x, dtype=np.float32)
    for _ in range(level):
        g = pyr_down(g)
    if level == num_levels - 1:
        return g  # the coarsest level is the Gaussian level
    return g - pyr_up(pyr_down(g))


# ----------------------------------------------------------------------------------------------------
# Descriptors
# ----------------------------------------------------------------------------------------------------


def extract_patches(level: np.ndarray, rows: np.ndarray, cols: np.ndarray, patch_size: int) -> np.ndarray:
    """Gather square patches as flat descriptors.

    Args:
        level: ``[n, C, S, S]`` one pyramid level of n images.
        rows, cols: ``[n, P]`` integer top-left corners, in ``[0, S - patch_size]``.
    Returns:
        ``[n * P, C * patch_size**2]`` float32, flattened in (channel, row, col) order like the reference.
    """
    n, C, S, _ = level.shape
    d = np.arange(patch_size)
    img = np.arange(n)[:, None, None, None, None]  # [n, 1, 1, 1, 1]
    ch = np.arange(C)[None, None, :, None, None]  # [1, 1, C, 1, 1]
    r = (rows[:, :, None, None] + d[None, None, :, None])[:, :, None]  # [n, P, 1, p, 1]
    c = (cols[:, :, None, None] + d[None, None, None, :])[:, :, None]  # [n, P, 1, 1, p]
    # Broadcast fancy indexing -> [n, P, C, p, p]: the reference's (neighbourhood, channel, h, w) order.
    return level[img, ch, r, c].reshape(n * rows.shape[1], C * patch_size * patch_size)


def normalise_descriptors(desc: np.ndarray, channels: int = 3) -> np.ndarray:
    """Per-set, per-channel standardisation (reference's ``finalize_descriptors``).

    Args:
        desc: ``[M, channels * p * p]`` descriptors of ONE set.
    Returns:
        same shape, float32; each channel has mean 0 and (population) std 1 over all M patches and pixels.
    """
    M = desc.shape[0]
    v = desc.reshape(M, channels, -1)
    # Statistics in float64: sums over millions of patches would lose digits in float32.
    mean = v.mean(axis=(0, 2), keepdims=True, dtype=np.float64)
    std = v.std(axis=(0, 2), keepdims=True, dtype=np.float64)
    # A constant channel (std 0) would give NaN in the reference; it carries no information, keep it at 0.
    std = np.where(std > 0, std, 1.0)
    return ((v - mean.astype(np.float32)) / std.astype(np.float32)).reshape(M, -1)


def _patch_corners(n_images: int, P: int, S: int, patch_size: int, seed: int, level: int) -> np.ndarray:
    """Top-left corners ``[n_images, P, 2]`` (row, col) from a generator seeded by (seed, level)."""
    rng = np.random.default_rng([seed, level, 0])
    # Same bounds as the reference's randint(H, S - H) centres: the patch always lies inside the image.
    return rng.integers(0, S - patch_size + 1, size=(n_images, P, 2))


def _set_descriptors(
    x: np.ndarray, level: int, num_levels: int, patches_per_image: int, patch_size: int, seed: int
) -> np.ndarray:
    """Normalised descriptors ``[N * P, 3 * p * p]`` of one image set ``x [N, 3, R, R]`` at one level."""
    N, C, R, _ = x.shape
    S = R >> level
    corners = _patch_corners(N, patches_per_image, S, patch_size, seed, level)
    chunk = max(1, _CHUNK_PIXELS // (C * R * R))
    out = []
    for i in range(0, N, chunk):
        # Chunking only bounds memory: positions were drawn for all images up front.
        lv = _pyramid_level(x[i : i + chunk], level, num_levels)
        c = corners[i : i + chunk]
        out.append(extract_patches(lv, c[..., 0], c[..., 1], patch_size))
    return normalise_descriptors(np.concatenate(out, 0), C)


# ----------------------------------------------------------------------------------------------------
# Sliced Wasserstein core
# ----------------------------------------------------------------------------------------------------


def random_directions(dim: int, directions: int = 512, seed: int | Sequence[int] = 0) -> np.ndarray:
    """Random unit directions ``[dim, directions]`` float32, drawn in repeats of 128 as the reference.

    ``seed`` may be an int or a sequence of ints (fed to ``numpy.random.default_rng``).
    """
    if directions < 1:
        raise ValueError(f"directions must be >= 1, got {directions}")
    rng = np.random.default_rng(seed)
    blocks = []
    for k0 in range(0, directions, DIRS_PER_REPEAT):
        k = min(DIRS_PER_REPEAT, directions - k0)
        w = rng.standard_normal((dim, k))
        # Normalise each column: a uniform direction on the unit sphere (the Gaussian is isotropic).
        blocks.append(w / np.sqrt(np.sum(w * w, axis=0, keepdims=True)))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _quantile_pairing(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair the quantile functions of two empirical distributions of sizes n and m.

    On (0, 1] the quantile function of n sorted samples steps at i / n. Merging both sets of breakpoints
    (in integer units of 1 / (n m), so there are no float ties) gives intervals on which both are
    constant, hence ``W1 = sum_k weight_k |a_sorted[ia_k] - b_sorted[ib_k]|`` exactly.
    Returns (ia [K], ib [K], weight [K] float64 summing to 1), K <= n + m - 1.
    """
    u = np.union1d(np.arange(1, n + 1, dtype=np.int64) * m, np.arange(1, m + 1, dtype=np.int64) * n)
    ia = (u + m - 1) // m - 1  # ceil(u / m) - 1: A's sample whose quantile interval contains (u_prev, u]
    ib = (u + n - 1) // n - 1
    weight = np.diff(np.concatenate([[0], u])) / float(n * m)
    return ia, ib, weight


def sliced_wasserstein(A: np.ndarray, B: np.ndarray, dirs: np.ndarray) -> float:
    """Sliced Wasserstein-1 distance between point sets, averaged over the given directions.

    Args:
        A: ``[n, D]``, B: ``[m, D]`` descriptors (n and m may differ).
        dirs: ``[D, K]`` unit directions.
    Returns:
        ``mean_k W1(A w_k, B w_k)`` as a float. For n == m this is the reference's
        ``mean(|sort(A w) - sort(B w)|)`` (the mean over 4 repeats of 128 equals the mean over all 512).
    """
    A = np.asarray(A, dtype=np.float32)
    B = np.asarray(B, dtype=np.float32)
    dirs = np.asarray(dirs, dtype=np.float32)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1] or dirs.ndim != 2 or dirs.shape[0] != A.shape[1]:
        raise ValueError(f"shape mismatch: A {A.shape}, B {B.shape}, dirs {dirs.shape}")
    n, m = A.shape[0], B.shape[0]
    if n != m:
        ia, ib, w = _quantile_pairing(n, m)
    total = 0.0
    K = dirs.shape[1]
    for k0 in range(0, K, DIRS_PER_REPEAT):
        dT = dirs[:, k0 : k0 + DIRS_PER_REPEAT].T
        # Projections laid out [k, n] so that each direction's sort runs over contiguous memory.
        pa = np.sort(dT @ A.T, axis=1)
        pb = np.sort(dT @ B.T, axis=1)
        if n == m:
            per_dir = np.abs(pa - pb).mean(axis=1, dtype=np.float64)
        else:
            per_dir = (np.abs(pa[:, ia] - pb[:, ib]) * w).sum(axis=1)
        total += float(per_dir.sum())
    return total / K


# ----------------------------------------------------------------------------------------------------
# Public metric
# ----------------------------------------------------------------------------------------------------


def _check_images(x: np.ndarray, name: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise ValueError(f"{name} must be [N, 3, R, R] images, got shape {x.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} holds no images")


def _prepare(a, b, min_res: int, patches_per_image: int, patch_size: int):
    """Validated inputs of :func:`swd`: (a ``[N_a, 3, R, R]``, b ``[N_b, 3, R, R]`` float32 0..255, levels)."""
    xa, xb = to_pixel_range(a), to_pixel_range(b)
    _check_images(xa, "a")
    _check_images(xb, "b")
    if xa.shape[2] != xb.shape[2]:
        raise ValueError(f"a and b differ in resolution: {xa.shape[2]} vs {xb.shape[2]}")
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be a positive odd integer, got {patch_size}")
    if patches_per_image < 1:
        raise ValueError(f"patches_per_image must be >= 1, got {patches_per_image}")
    res_list = pyramid_resolutions(xa.shape[2], min_res)
    if patch_size > res_list[-1]:
        raise ValueError(f"patch_size {patch_size} does not fit the coarsest level ({res_list[-1]} px)")
    return xa, xb, res_list


def _levels(xa, xb, res_list, seed, patches_per_image, patch_size, directions):
    """Yield ``(res, da [N_a * P, D], db [N_b * P, D], dirs [D, directions])`` per level, finest first.

    Shared by :func:`swd` and :func:`swd_bootstrap` so that both see bit-identical descriptors.
    """
    L = len(res_list)
    for lvl, res in enumerate(res_list):
        # One level at a time keeps only this level's descriptors of both sets in memory.
        da = _set_descriptors(xa, lvl, L, patches_per_image, patch_size, seed)
        db = _set_descriptors(xb, lvl, L, patches_per_image, patch_size, seed)
        dirs = random_directions(da.shape[1], directions, seed=[seed, lvl, 1])
        yield int(res), da, db, dirs
        del da, db


def swd(
    a,
    b,
    seed: int = 0,
    min_res: int = 16,
    patches_per_image: int = 128,
    patch_size: int = 7,
    directions: int = 512,
) -> dict:
    """Multi-scale sliced Wasserstein distance x 1e3 (Karras et al. 2018) between two image sets.

    Args:
        a, b: ``[N_a, 3, R, R]`` and ``[N_b, 3, R, R]`` numpy arrays or torch tensors, uint8 (0..255) or
            float in [-1, 1]; N_a may differ from N_b. Always computed with numpy on the CPU.
        seed: seeds patch positions and projection directions (same seed -> same value).
        min_res: coarsest pyramid level (levels R, R/2, ... >= min_res).
        patches_per_image: random patches per image and level (reference: 128).
        patch_size: odd patch side (reference: 7), must fit in the coarsest level.
        directions: random projection directions (reference: 4 x 128 = 512).
    Returns:
        ``{"levels": {res: swd_x1e3}, "avg": mean over levels}``, resolutions as ints (finest first),
        values as floats.
    """
    xa, xb, res_list = _prepare(a, b, min_res, patches_per_image, patch_size)
    levels: dict[int, float] = {}
    for res, da, db, dirs in _levels(xa, xb, res_list, seed, patches_per_image, patch_size, directions):
        levels[res] = sliced_wasserstein(da, db, dirs) * 1e3
    return {"levels": levels, "avg": float(np.mean(list(levels.values())))}


# ----------------------------------------------------------------------------------------------------
# Bootstrap interval over the generated images
# ----------------------------------------------------------------------------------------------------

# Entropy tag of the resampling stream: distinct from the (seed, level, purpose) streams of positions and
# directions, so asking for an interval never changes the point estimate.
_BOOT_STREAM = 0x626F6F74  # "boot"
# Bytes of the partial projections held at once (all tasks of a chunk of directions); bounds memory for
# large sample sets by processing the directions in chunks.
_BOOT_BYTES = 1 << 28
# Bytes of one task's arrays (a few directions' partial projections, one replicate's projections and the
# sorted reference projections). A task runs *every* replicate over its directions, so these arrays stay in
# the CPU's cache across replicates instead of being streamed from memory once per replicate.
_TASK_BYTES = 1 << 22


def _default_workers() -> int:
    """CPUs this process may use, at most 4 (the replicates are memory-bound; more gain little)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


# The level being bootstrapped. A module global so that forked workers inherit it copy-on-write (hundreds
# of MB that pickling would copy per task); set only while a level is processed.
_STATE: dict = {}


_USED: set[str] = set()


def kernels_used() -> list[str]:
    """Which implementation ran the bootstrap's per-replicate passes in this process: "c" (the C kernels of
    ``csrc/swd_bootstrap.c``) or "numpy" (no C compiler); recorded in provenance as ``swd_kernels``."""
    return sorted(_USED)


@functools.cache
def _c_kernel() -> ctypes.CDLL | None:
    """The bootstrap's C passes (:mod:`infdiff.c_kernels`), or None where no C compiler is found."""
    from infdiff.c_kernels import c_available, load_c

    if not c_available()[0]:
        return None
    lib = load_c("swd_bootstrap")
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.swd_fill.argtypes = [ptr, i64, i64, i64, i64, ptr, i64, i64, ptr, ptr]
    lib.swd_fill.restype = None
    lib.swd_reduce.argtypes = [ptr, i64, i64, ptr, ptr, i64, ptr, ptr]
    lib.swd_reduce.restype = ctypes.c_double
    return lib


def _direction_task(k0: int, k1: int) -> np.ndarray:
    """``[B]``: for every resample r, the sum over the chunk's directions ``k0:k1`` of W1 (see
    :func:`_bootstrap_level`)."""
    st = _STATE
    Q, pb, index, C, nP, M = st["Q"][:, k0:k1], st["pb"][k0:k1], st["index"], st["channels"], st["nP"], st["M"]
    k = Q.shape[1]
    # The mean shift of resample r is a per-direction constant, so it commutes with sorting: added after.
    shift = (-(st["mu"] * st["inv_s"]) @ st["S"][:, k0:k1]).astype(np.float32)  # [B, k]
    inv_s32 = st["inv_s32"]
    out = np.empty(index.shape[0], np.float64)
    lib = st["kernel"]
    if lib is not None:
        # C: the rescaled projections of the resample's images gathered in one pass, numpy's SIMD sort, then
        # shift, difference, |.| and sum in one pass (csrc/swd_bootstrap.c).
        n, P = Q.shape[2], Q.shape[3]
        g = np.empty((k, nP), np.float32)
        q0 = st["Q"].ctypes.data + k0 * n * P * 4
        chan_stride, m = st["Q"].shape[1] * n * P, pb.shape[1]
        ia = st.get("ia")
        ia_p, wq_p = (None, None) if ia is None else (ia.ctypes.data, st["wq"].ctypes.data)
        # Row r of each C-contiguous [B, ...] array: its base address plus r rows (no per-call ctypes views).
        ix0, inv0, sh0, g_p, pb_p = (index.ctypes.data, inv_s32.ctypes.data, shift.ctypes.data, g.ctypes.data,
                                     pb.ctypes.data)
        for r in range(index.shape[0]):
            lib.swd_fill(q0, C, chan_stride, n * P, k, ix0 + r * n * 8, n, P, inv0 + r * C * 4, g_p)
            g.sort(axis=1)
            out[r] = lib.swd_reduce(g_p, k, nP, sh0 + r * k * 4, pb_p, m, ia_p, wq_p)
        return out if nP != M else out / nP
    proj = np.empty(Q.shape[1:], np.float32)  # [k, n, P]
    # The channel blocks as rows of one [C, k * n * P] matrix (a view: each block is contiguous), so that
    # the rescaled projections sum_c Q_c / s_c are one BLAS product per replicate: one pass over Q instead
    # of 2C - 1 (3.3x faster at 16 directions x 256 images x 128 patches, README "Performance").
    Qm, proj_flat = Q.reshape(C, -1), proj.reshape(-1)
    for r, ix in enumerate(index):
        np.matmul(inv_s32[r], Qm, out=proj_flat)
        g = np.take(proj, ix, axis=1, mode="clip").reshape(k, nP)  # whole images: blocks of P
        g.sort(axis=1)
        g += shift[r][:, None]
        if nP != M:
            # np.take and multiply-then-sum: far faster than fancy indexing and a BLAS matvec at these shapes.
            g = np.take(g, st["ia"], axis=1)
            g -= pb
            np.abs(g, out=g)
            g *= st["wq"]
            out[r] = g.sum(axis=1).sum(dtype=np.float64)
        else:
            g -= pb
            np.abs(g, out=g)
            out[r] = g.sum(axis=1).sum(dtype=np.float64) / nP
    return out


def _map_tasks(tasks: list[tuple[int, int]], workers: int) -> list[np.ndarray]:
    """:func:`_direction_task` of each ``(k0, k1)``, in order, on ``workers`` forked processes or in-process.

    Threads would not help: numpy's SIMD float32 sort, the bulk of the work, holds the GIL. Processes
    are forked (Linux only, where fork is the safe default) so that they share ``_STATE`` without copies;
    a task's value does not depend on which process computes it, so results are identical.
    """
    if workers > 1 and len(tasks) > 1 and sys.platform.startswith("linux"):
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(min(workers, len(tasks))) as pool:
            return pool.starmap(_direction_task, tasks)
    return [_direction_task(k0, k1) for k0, k1 in tasks]


def _bootstrap_level(da: np.ndarray, db: np.ndarray, dirs: np.ndarray, index: np.ndarray,
                     channels: int = 3, workers: int = 1) -> np.ndarray:
    """One level's SWD x 1e3 for every bootstrap resample of set a's images (b fixed).

    Resample r is the set of images ``index[r]`` of a, each image with its own patches (a duplicated
    image contributes its patches twice). The statistic is recomputed exactly, *including* the per-set
    normalisation: descriptors are affine in the resample's channel mean mu_c and std s_c, so with the
    per-channel partial projections ``Q_c = da[:, c] . w[c]`` (computed once) and ``S_c = sum(w[c])``,
    ``proj_r = sum_c Q_c / s_c - sum_c mu_c S_c / s_c``. Normalising the already (full-set) normalised
    ``da`` again equals normalising the raw descriptors, because both steps are affine per channel.
    Per replicate only the rescaling, a block gather, a sort and the comparison remain. The directions
    are split into tasks of a few each (:data:`_TASK_BYTES`), each running every replicate; their sums
    are added in direction order, so the result does not depend on ``workers``.

    Args:
        da: ``[n * P, C * p * p]`` normalised descriptors of a, image-major (image i owns rows
            ``i * P : (i + 1) * P``, as :func:`extract_patches` lays them out).
        db: ``[M, C * p * p]`` normalised descriptors of b.
        dirs: ``[C * p * p, K]`` unit directions.
        index: ``[B, n]`` image indices of the B resamples (each of size n).
    Returns:
        ``[B]`` float64, the level's value for each resample (x 1e3, like :func:`swd`).
    """
    B, n = index.shape
    nP, D = da.shape
    P, pp, K, M = nP // n, D // channels, dirs.shape[1], db.shape[0]
    # Per-image sums of values and squares per channel (float64: they are summed again per resample).
    v = da.reshape(n, P, channels, pp)
    s1 = v.sum(axis=(1, 3), dtype=np.float64)  # [n, C]
    s2 = np.einsum("ipcj,ipcj->ic", v, v, dtype=np.float64)  # [n, C]
    counts = np.stack([np.bincount(ix, minlength=n) for ix in index]).astype(np.float64)  # [B, n]
    N = float(nP * pp)
    mu = counts @ s1 / N  # [B, C] resample's channel means
    s = np.sqrt(np.maximum(counts @ s2 / N - mu * mu, 0.0))
    inv_s = 1.0 / np.where(s > 0, s, 1.0)  # constant channel: same rule as normalise_descriptors
    lib = _c_kernel()
    _USED.add("numpy" if lib is None else "c")
    state = {"index": np.ascontiguousarray(index, dtype=np.int64), "mu": mu, "inv_s": inv_s,
             "inv_s32": np.ascontiguousarray(inv_s, dtype=np.float32), "nP": nP, "M": M, "channels": channels,
             "kernel": lib}
    K_pairs = nP
    if nP != M:
        # Resamples keep a's size, so the quantile pairing (see sliced_wasserstein) is the same for all.
        ia, ib, wq = _quantile_pairing(nP, M)
        state.update(ia=ia, wq=wq.astype(np.float32))
        K_pairs = len(ia)
    # Channel blocks of da, contiguous, so that each partial projection is one matmul.
    dac = [np.ascontiguousarray(da.reshape(nP, channels, pp)[:, c]) for c in range(channels)]
    # Chunk and task sizes depend on the data only, never on `workers`: the float summation order (hence
    # every bit of the result) is then the same for any number of workers.
    k_chunk = int(max(1, min(K, _BOOT_BYTES // (4 * (channels * nP + K_pairs)))))
    k_task = int(max(1, min(k_chunk, _TASK_BYTES // (4 * ((channels + 3) * nP + 2 * K_pairs)))))
    total = np.zeros(B, np.float64)
    try:
        for k0 in range(0, K, k_chunk):
            d = dirs[:, k0 : k0 + k_chunk]
            k = d.shape[1]
            dc = d.reshape(channels, pp, k)
            # Computed here, before the workers fork (numpy's BLAS threads would spin in forked workers).
            Q = np.empty((channels, k, n, P), np.float32)  # [C, k, n, P]: an image's block is contiguous
            for c in range(channels):
                np.matmul(dc[c].T, dac[c].T, out=Q[c].reshape(k, nP))
            pb = np.sort(d.T @ db.T, axis=1)  # [k, M], b is fixed: sorted once
            if nP != M:
                pb = np.ascontiguousarray(pb[:, ib])
            _STATE.update(state, Q=Q, pb=pb, S=dc.sum(axis=1, dtype=np.float64))  # S: [C, k]
            for part in _map_tasks([(j, min(k, j + k_task)) for j in range(0, k, k_task)], workers):
                total += part  # direction order
            del Q, pb
    finally:
        _STATE.clear()
    return total / K * 1e3


def swd_bootstrap(
    a,
    b,
    seed: int = 0,
    n_boot: int = 200,
    alpha: float = 0.05,
    min_res: int = 16,
    patches_per_image: int = 128,
    patch_size: int = 7,
    directions: int = 512,
    workers: int | None = None,
    interval: str = "centred",
) -> dict:
    """:func:`swd` with a ``1 - alpha`` bootstrap interval over the generated images ``a``.

    Each replicate draws ``N_a`` images of ``a`` with replacement (seeded by ``seed``) and recomputes the
    whole statistic on them -- every level, per-set normalisation included -- against the *fixed*
    reference set ``b``. Only ``a`` is resampled on purpose: the question a table answers is "how much
    would this number move with another batch of samples from the same model?", and the reference set is
    shared by every row it is compared across. An image is resampled together with its patches (the
    patch positions belong to the measurement), and one resample serves all levels, so the interval is
    that of the level average. Descriptors and projections are computed once per level; a replicate only
    rescales, gathers per-image blocks and sorts (see :func:`_bootstrap_level`).

    The interval is the percentile interval (``alpha / 2`` and ``1 - alpha / 2`` quantiles of the
    replicates). With ``interval="centred"`` (default) it is shifted by ``avg - median(replicates)`` so
    that it sits on the estimate: resampling with replacement duplicates images, which biases every
    replicate upwards (measured +10-30% for same-distribution sets), and the raw percentile interval then
    often excludes the estimate. The shift is returned as ``"shift"``; ``interval="percentile"`` gives
    the unshifted interval.

    Args:
        a, b, seed, min_res, patches_per_image, patch_size, directions: as in :func:`swd`.
        n_boot: bootstrap replicates; 0 gives no interval (NaN bounds) at the cost of :func:`swd` alone.
        alpha: 1 - confidence level (0.05: a 95% interval).
        workers: processes for the replicates (default: usable CPUs, at most 4; forked, Linux only);
            the results do not depend on it.
        interval: "centred" (default) or "percentile", see above.
    Returns:
        ``{"levels", "avg"}`` exactly as :func:`swd` returns them (same seed, same numbers), plus
        ``"ci_low"``, ``"ci_high"``, ``"shift"`` (floats, NaN when ``n_boot == 0``), ``"n_boot"``,
        ``"alpha"``, ``"interval"`` and ``"replicates"`` (``[n_boot]`` float64 level averages).
    """
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    if interval not in ("centred", "percentile"):
        raise ValueError(f"interval must be 'centred' or 'percentile', got {interval!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    workers = _default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n_boot = int(n_boot)
    xa, xb, res_list = _prepare(a, b, min_res, patches_per_image, patch_size)
    n = xa.shape[0]
    # Drawn up front for all replicates: replicate r is the same whatever n_boot or workers are.
    index = np.random.default_rng([seed, _BOOT_STREAM]).integers(0, n, size=(n_boot, n))
    levels: dict[int, float] = {}
    reps = np.zeros(n_boot, np.float64)
    for res, da, db, dirs in _levels(xa, xb, res_list, seed, patches_per_image, patch_size, directions):
        levels[res] = sliced_wasserstein(da, db, dirs) * 1e3  # the point estimate, exactly as swd()
        if n_boot:
            reps += _bootstrap_level(da, db, dirs, index, channels=xa.shape[1], workers=workers)
    reps /= len(res_list)
    avg = float(np.mean(list(levels.values())))
    lo = hi = shift = float("nan")
    if n_boot:
        lo, med, hi = (float(q) for q in np.quantile(reps, [alpha / 2, 0.5, 1 - alpha / 2]))
        if interval == "centred":
            # Resampling duplicates images, which makes a resample's patch distribution sparser and every
            # distance larger (about +10-30% near the real-vs-real floor): the raw percentile interval can
            # then miss the estimate. Its spread is what measures the noise, so move it onto the estimate.
            shift = avg - med
            lo, hi = lo + shift, hi + shift
    return {"levels": levels, "avg": avg, "ci_low": lo, "ci_high": hi, "n_boot": n_boot, "alpha": float(alpha),
            "interval": interval, "shift": shift, "replicates": reps}
