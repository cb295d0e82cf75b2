"""Resolution consistency (discretisation invariance) as a number, in dB (docs/architecture.md, "Metrics").

A model that samples at any resolution should draw the *same picture* for a seed at every resolution,
only at finer detail (the noise of a seed is resolution-consistent, :mod:`infdiff.noise`). The test is
the one an integral makes: the k x sample of a seed, averaged over its k x k pixel blocks (area
downsampling, which is what rendering the same continuous image at the coarser grid does), should equal
the seed's sample at the training resolution. Per seed,

    consistency = PSNR(area_downsample(x_kR, k), x_R)   [dB, higher is better]

with the PSNR convention of :func:`infdiff.metrics.pixel.psnr`: images as floats in [-1, 1] (``u8 / 127.5
- 1``, peak-to-peak L = 2), MSE over channels and pixels of one image, which is the same number as on the
uint8 values with L = 255. The value of a sample set is the mean over seeds with a 95% bootstrap interval
over seeds (seeds resampled with replacement, seeded).

**Cap.** An image that equals its reference has PSNR +inf, which would make every mean and interval
containing it infinite. Each per-seed PSNR is therefore capped at ``max_db`` (the schema's default is
100 dB, an MSE of 1e-10 L^2): a capped seed is identical at the training resolution up to rounding far
below one uint8 level. Real samples of the embedded default's model sit tens of dB below the cap.

Seeds are matched, never positions: the sets at two resolutions may hold different numbers of samples
(``sample.n_samples``), so only the seeds present in both count, in sorted order (the result does not
depend on the order of either file).
"""

from __future__ import annotations

import numpy as np

__all__ = ["area_downsample", "match_seeds", "consistency_psnr", "consistency"]


def area_downsample(images: np.ndarray, k: int) -> np.ndarray:
    """Mean over non-overlapping ``k x k`` pixel blocks, computed exactly.

    Args:
        images: ``[N, C, H, W]`` uint8 (or integer) images; H and W divisible by k.
        k: integer factor >= 1.
    Returns:
        float64 ``[N, C, H / k, W / k]`` in uint8 units (0..255). The block sums are integers and the
        division by ``k**2`` is exact for the power-of-two factors used here, so a block whose pixels average
        to an integer gives exactly that integer.
    """
    a = np.asarray(images)
    if a.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"area_downsample expects uint8 images, got {a.dtype}")
    k = int(k)
    n, c, h, w = a.shape
    if k < 1 or h % k or w % k:
        raise ValueError(f"{h} x {w} px images cannot be averaged over {k} x {k} blocks")
    blocks = a.astype(np.int64).reshape(n, c, h // k, k, w // k, k).sum(axis=(3, 5))
    return blocks / float(k * k)


def match_seeds(seeds_a, seeds_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds present in both sets, sorted, with their positions in each: ``(seeds [M], ia [M], ib [M])``.

    Raises:
        ValueError: a set repeats a seed, or no seed is in both sets (nothing to compare).
    """
    a, b = (np.asarray(s).astype(np.int64).ravel() for s in (seeds_a, seeds_b))
    for name, s in (("first", a), ("second", b)):
        if len(np.unique(s)) != len(s):
            raise ValueError(f"the {name} sample set repeats seeds: images cannot be matched by seed")
    common, ia, ib = np.intersect1d(a, b, assume_unique=True, return_indices=True)
    if not len(common):
        raise ValueError(f"no seed is in both sample sets (seeds {a.min() if len(a) else None}..{a.max() if len(a) else None} "
                         f"and {b.min() if len(b) else None}..{b.max() if len(b) else None}): consistency compares "
                         "each seed with itself; sample both resolutions from the same sample.first_seed")
    return common, ia, ib


def consistency_psnr(high, high_seeds, low, low_seeds, max_db: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed PSNR of the high-resolution samples, area-downsampled, against the low-resolution ones.

    Args:
        high: uint8 ``[N, 3, kR, kR]`` samples of a model at k times the resolution of ``low``.
        high_seeds: ``[N]`` their seeds.
        low: uint8 ``[M, 3, R, R]`` samples of the same model at its training resolution R.
        low_seeds: ``[M]`` their seeds.
        max_db: cap of each PSNR (identical images would give +inf), see the module docstring.
    Returns:
        ``(seeds [K], psnr [K])``: the K seeds in both sets, sorted, and float64 PSNR in dB, at most max_db.
    Raises:
        ValueError: not two uint8 image batches, a resolution that is not an integer multiple k >= 2 of the
            other, seeds that cannot be matched (see :func:`match_seeds`).
    """
    from infdiff.metrics.pixel import psnr

    hi, lo = np.asarray(high), np.asarray(low)
    for name, a in (("high", hi), ("low", lo)):
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"{name}-resolution samples must be uint8 [N, C, R, R], got {a.dtype} {a.shape}")
    if len(hi) != len(np.ravel(high_seeds)) or len(lo) != len(np.ravel(low_seeds)):
        raise ValueError(f"{len(hi)} and {len(lo)} images but {len(np.ravel(high_seeds))} and "
                         f"{len(np.ravel(low_seeds))} seeds")
    R_hi, R_lo = hi.shape[-1], lo.shape[-1]
    if R_hi % R_lo or R_hi // R_lo < 2:
        raise ValueError(f"{R_hi} px is not an integer multiple k >= 2 of the training resolution {R_lo} px: "
                         "consistency area-downsamples a k x sample by k")
    if hi.shape[1] != lo.shape[1]:
        raise ValueError(f"{hi.shape[1]} and {lo.shape[1]} channels")
    seeds, ih, il = match_seeds(high_seeds, low_seeds)
    pooled = area_downsample(hi[ih], R_hi // R_lo)
    # Both in [-1, 1] by the same arithmetic, so a block mean equal to the uint8 value gives the same float.
    values = psnr(pooled / 127.5 - 1.0, lo[il].astype(np.float64) / 127.5 - 1.0)
    return seeds, np.minimum(values, float(max_db))


def consistency(high, high_seeds, low, low_seeds, *, seed: int, n_boot: int, max_db: float,
                alpha: float = 0.05) -> dict:
    """Mean per-seed consistency PSNR with a ``1 - alpha`` bootstrap interval over seeds.

    Args:
        high, high_seeds, low, low_seeds, max_db: as in :func:`consistency_psnr`.
        seed: seed of the bootstrap resampling.
        n_boot: bootstrap replicates; 0 gives no interval (NaN bounds).
        alpha: 1 - confidence level (0.05: a 95% interval).
    Returns:
        The record shape of :func:`infdiff.evaluate.compute_metric`: ``{"value": mean dB, "levels": {},
        "ci_low", "ci_high" (percentile interval of the replicate means), "n_boot", "n_ref": K matched
        seeds, "settings"}``, plus ``"seeds"`` ``[K]`` int and ``"psnr"`` ``[K]`` float64 (per seed, sorted).
    """
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    seeds, values = consistency_psnr(high, high_seeds, low, low_seeds, max_db)
    n_boot = int(n_boot)
    lo = hi = float("nan")
    if n_boot:
        index = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
        lo, hi = (float(q) for q in np.quantile(values[index].mean(axis=1), [alpha / 2, 1 - alpha / 2]))
    return {"value": float(values.mean()), "levels": {}, "ci_low": lo, "ci_high": hi, "n_boot": n_boot,
            "n_ref": int(len(seeds)),
            "settings": {"seed": int(seed), "n_boot": n_boot, "max_db": float(max_db), "alpha": float(alpha),
                         "factor": int(np.asarray(high).shape[-1] // np.asarray(low).shape[-1]),
                         "peak_to_peak": 2.0, "downsampling": "area (mean over k x k blocks)"},
            "seeds": seeds.astype(np.int64), "psnr": values}
