"""Pixel grids and coordinate subsets at any resolution.

∞-Diff (Sec. 3.1, 4.1) trains on a random subset of the pixels of each image: a function is discretised
by the coordinates it is evaluated at, and a Monte-Carlo estimate of the loss only needs some of them.
This module owns that discretisation:

* a point set is an index tensor ``idx [B, N]`` (int64) into the row-major flattened ``R x R`` grid,
  ``idx = row * R + col``;
* its continuous coordinates are the pixel centres ``coords [B, N, 2]`` in **(x, y) order**,
  ``x = (col + 0.5) / R`` and ``y = (row + 0.5) / R``, so that ``F.grid_sample(img, 2 * coords - 1,
  align_corners=False)`` reads exactly the pixel ``idx`` (tested);
* features at the points are ``[B, N, C]``; ``gather_points`` / ``scatter_points`` move between the
  dense image ``[B, C, R, R]`` and that point layout.

Subsets never hold a pixel twice: a duplicated point would be counted twice by the sparse operator's
Monte-Carlo integral (Eq. 20) and would silently change the sampling ratio.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

__all__ = ["COORDS", "check_coords", "check_ratio", "num_points", "full_grid", "uniform_subset", "qmc_subset",
           "draw_subset", "idx_to_coords", "gather_points", "scatter_points"]

#: how training coordinates are drawn (config key ``coords``)
COORDS = ("uniform", "qmc")


def check_coords(coords: str) -> str:
    """Validate a ``coords`` setting ("uniform" or "qmc") and return it."""
    if coords not in COORDS:
        raise ValueError(f"unknown coords '{coords}' (known: {', '.join(COORDS)})")
    return coords


def check_ratio(ratio: float) -> float:
    """Validate a sampling ratio r (fraction of the R x R pixels kept) and return it as a float.

    Raises ``ValueError("ratio must be in (0, 1], got ...")`` for 0, negatives, values above 1, NaN,
    infinities and non-numbers; a bad ratio from a config should fail here, not deep inside a forward.
    """
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}") from None
    # `not (0 < r <= 1)` is also True for NaN, which compares False with everything.
    if isinstance(ratio, bool) or not (0.0 < r <= 1.0):
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return r


def num_points(R: int, ratio: float) -> int:
    """Number of points N kept at resolution R: ``max(1, round(ratio * R * R))``."""
    r = check_ratio(ratio)
    if R < 1:
        raise ValueError(f"resolution must be >= 1, got {R}")
    return max(1, int(round(r * R * R)))


def full_grid(B: int, R: int, device=None) -> Tensor:
    """All pixels, in raster order: idx [B, R*R] = 0 .. R*R-1 for every row."""
    return torch.arange(R * R, dtype=torch.int64, device=device).unsqueeze(0).repeat(B, 1)


def uniform_subset(B: int, R: int, ratio: float, generator: torch.Generator, device=None) -> Tensor:
    """Uniformly random pixel subsets without replacement.

    Args:
        B: batch size (one independent subset per row).
        R: grid resolution.
        ratio: fraction of pixels kept, in (0, 1].
        generator: CPU ``torch.Generator``; the subsets are a pure function of its state, so the same
            state gives the same points on every device.
        device: where the result lives.
    Returns:
        idx [B, N] int64, N = num_points(R, ratio); distinct and sorted ascending in each row (sorting
        makes gathers memory-friendly and the result independent of the draw order).
    """
    N = num_points(R, ratio)
    if N == R * R:
        # Ratio 1 (or rounding up to it): every pixel, no randomness consumed beyond this point.
        return full_grid(B, R, device=device)
    # A random permutation per row is the simplest exact "choose N of R^2 without replacement".
    rows = [torch.randperm(R * R, generator=generator)[:N] for _ in range(B)]
    idx = torch.stack(rows).sort(dim=1).values
    return idx.to(device)


def qmc_subset(B: int, R: int, ratio: float, generator: torch.Generator, device=None,
               engine: str = "halton") -> Tensor:
    """Quasi-Monte-Carlo pixel subsets without duplicates (the ``coords: qmc`` ablation).

    A scrambled Halton (or Sobol) sequence in [0, 1]^2 is mapped to the pixel it falls in; the sequence
    is continued past pixels it already hit until N distinct pixels are found (the official code floors
    the points and keeps duplicates, which biases the Monte-Carlo integral). Each row uses its own
    scramble seed drawn from ``generator``.

    Returns:
        idx [B, N] int64, distinct and sorted ascending per row, N = num_points(R, ratio).
    """
    from scipy.stats import qmc  # local import: only this ablation needs scipy

    N = num_points(R, ratio)
    if N == R * R:
        return full_grid(B, R, device=device)
    engines = {"halton": qmc.Halton, "sobol": qmc.Sobol}
    if engine not in engines:
        raise ValueError(f"unknown QMC engine '{engine}' (known: {', '.join(engines)})")
    seeds = torch.randint(0, 2**31 - 1, (B,), generator=generator).tolist()
    rows = []
    for s in seeds:
        eng = engines[engine](d=2, scramble=True, seed=int(s))
        hits = np.empty(0, dtype=np.int64)
        first = hits
        # Bounded work: low-discrepancy sequences cover the grid evenly, but the last free pixels of a
        # near-full subset can take long to hit; after 8 R^2 draws fall back to random free pixels.
        while len(first) < N and len(hits) < 8 * R * R:
            n = 2 ** max(4, math.ceil(math.log2(2 * (N - len(first)))))  # powers of 2 suit Sobol
            with warnings.catch_warnings():
                # Sobol warns when the running total is not a power of 2; continuing the sequence past
                # already-hit pixels is exactly what we want, so the balance warning does not apply.
                warnings.simplefilter("ignore", UserWarning)
                pts = eng.random(n)
            # pts[:, 0] is x (column), pts[:, 1] is y (row): the same (x, y) convention as coords.
            col = np.clip((pts[:, 0] * R).astype(np.int64), 0, R - 1)
            row = np.clip((pts[:, 1] * R).astype(np.int64), 0, R - 1)
            hits = np.concatenate([hits, row * R + col])
            # Distinct pixels in the order the sequence first reached them (keeps its low discrepancy).
            _, at = np.unique(hits, return_index=True)
            first = hits[np.sort(at)]
        idx = torch.from_numpy(first[:N].copy())
        if len(idx) < N:
            free = torch.ones(R * R, dtype=torch.bool)
            free[idx] = False
            free_idx = free.nonzero().squeeze(1)
            extra = free_idx[torch.randperm(len(free_idx), generator=generator)[: N - len(idx)]]
            idx = torch.cat([idx, extra])
        rows.append(idx.sort().values)
    return torch.stack(rows).to(device)


def draw_subset(coords: str, B: int, R: int, ratio: float, generator: torch.Generator, device=None) -> Tensor:
    """[B, N] pixel subsets drawn the way ``coords`` names: uniform random (paper default) or a scrambled
    low-discrepancy set (Table 2 ablation); both without duplicates."""
    subset = uniform_subset if check_coords(coords) == "uniform" else qmc_subset
    return subset(B, R, ratio, generator, device=device)


def idx_to_coords(idx: Tensor, R: int) -> Tensor:
    """Pixel indices to continuous pixel-centre coordinates.

    Args:
        idx: [B, N] int64 into the row-major R x R grid.
    Returns:
        coords [B, N, 2] float32 in (0, 1), (x, y) order: x = (col + 0.5) / R, y = (row + 0.5) / R.
    """
    row = torch.div(idx, R, rounding_mode="floor")
    col = idx - row * R
    # Pixel centres, not corners: the continuous function is sampled at the middle of each cell, which
    # is what grid_sample(align_corners=False) assumes and what keeps coordinates consistent across R.
    return torch.stack([(col.float() + 0.5) / R, (row.float() + 0.5) / R], dim=-1)


def gather_points(x: Tensor, idx: Tensor) -> Tensor:
    """Read images at a point set.

    Args:
        x: [B, C, R, R] images.
        idx: [B, N] int64 pixel indices.
    Returns:
        [B, N, C] point features.
    """
    B, C = x.shape[:2]
    flat = x.reshape(B, C, -1)
    return flat.gather(2, idx.unsqueeze(1).expand(B, C, idx.shape[1])).transpose(1, 2)


def scatter_points(f: Tensor, idx: Tensor, R: int) -> tuple[Tensor, Tensor]:
    """Write point features back onto the dense grid.

    Args:
        f: [B, N, C] point features.
        idx: [B, N] int64 pixel indices (distinct per row).
        R: grid resolution.
    Returns:
        grid [B, C, R, R] (zeros where no point was sampled) and mask [B, 1, R, R] (1.0 where sampled,
        in f's dtype), so that ``grid`` / ``mask`` based operators can renormalise by the sampled fraction.
    """
    B, N, C = f.shape
    grid = f.new_zeros(B, C, R * R)
    grid.scatter_(2, idx.unsqueeze(1).expand(B, C, N), f.transpose(1, 2))
    mask = f.new_zeros(B, 1, R * R)
    mask.scatter_(2, idx.unsqueeze(1), 1.0)
    return grid.view(B, C, R, R), mask.view(B, 1, R, R)
