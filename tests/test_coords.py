"""Tests for infdiff.coords: point subsets, the (x, y) coordinate convention, gather/scatter."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from infdiff import coords as C


@pytest.mark.parametrize("bad", [0, 0.0, -0.25, -1, 1.0000001, 2, float("nan"), float("inf"), "abc", None, True])
def test_check_ratio_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got"):
        C.check_ratio(bad)


@pytest.mark.parametrize("good", [1, 1.0, 0.5, 0.25, 1e-6, "0.125"])
def test_check_ratio_accepts_good_values(good):
    assert C.check_ratio(good) == float(good)


def test_num_points():
    assert C.num_points(32, 1.0) == 1024
    assert C.num_points(32, 0.25) == 256
    assert C.num_points(7, 0.5) == round(24.5)  # Python rounding, documented formula
    assert C.num_points(4, 1e-6) == 1           # never empty
    with pytest.raises(ValueError):
        C.num_points(32, 0)


def test_full_grid():
    idx = C.full_grid(3, 5)
    assert idx.shape == (3, 25) and idx.dtype == torch.int64
    assert torch.equal(idx[2], torch.arange(25))


@pytest.mark.parametrize("R,ratio", [(8, 0.25), (16, 0.5), (13, 0.3), (32, 0.125), (4, 1.0)])
def test_uniform_subset_distinct_sorted_right_size(R, ratio):
    g = torch.Generator().manual_seed(0)
    idx = C.uniform_subset(6, R, ratio, g)
    N = C.num_points(R, ratio)
    assert idx.shape == (6, N) and idx.dtype == torch.int64
    for row in idx:
        assert len(torch.unique(row)) == N                 # no duplicates
        assert torch.all(row[1:] > row[:-1])               # strictly ascending
        assert row.min() >= 0 and row.max() < R * R


def test_uniform_subset_deterministic_and_rows_differ():
    a = C.uniform_subset(4, 16, 0.25, torch.Generator().manual_seed(123))
    b = C.uniform_subset(4, 16, 0.25, torch.Generator().manual_seed(123))
    c = C.uniform_subset(4, 16, 0.25, torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # independent rows


def test_uniform_subset_is_uniform():
    # Every pixel should be included with probability ratio; 4000 subsets of 16 out of 64 pixels give
    # counts ~ Binomial(4000, 0.25): mean 1000, std ~27. A biased sampler (e.g. always the first pixels,
    # or a sort-before-choose bug) fails by hundreds.
    g = torch.Generator().manual_seed(1)
    idx = C.uniform_subset(4000, 8, 0.25, g)
    counts = torch.bincount(idx.flatten(), minlength=64).double()
    assert (counts - 1000).abs().max() < 150


def test_qmc_subset_distinct_sorted_and_more_even_than_random():
    R, ratio = 32, 0.25
    N = C.num_points(R, ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's Sobol balance warnings are irrelevant here
        for engine in ("halton", "sobol"):
            idx = C.qmc_subset(3, R, ratio, torch.Generator().manual_seed(0), engine=engine)
            assert idx.shape == (3, N)
            for row in idx:
                assert len(torch.unique(row)) == N and torch.all(row[1:] > row[:-1])
        a = C.qmc_subset(2, R, ratio, torch.Generator().manual_seed(5))
        b = C.qmc_subset(2, R, ratio, torch.Generator().manual_seed(5))
        assert torch.equal(a, b)
        # Low discrepancy: points per 8x8-pixel cell (16 cells, 16 points expected each) vary less than
        # for random subsets (whose count std is ~3.5).
        def cell_std(idx):
            row, col = idx // R, idx % R
            cell = (row // 8) * 4 + col // 8
            return torch.stack([torch.bincount(c, minlength=16).double().std() for c in cell]).mean()
        q = C.qmc_subset(20, R, ratio, torch.Generator().manual_seed(2))
        u = C.uniform_subset(20, R, ratio, torch.Generator().manual_seed(2))
        assert cell_std(q) < 0.6 * cell_std(u)
        assert torch.equal(C.qmc_subset(2, 8, 1.0, torch.Generator()), C.full_grid(2, 8))
        with pytest.raises(ValueError, match="unknown QMC engine"):
            C.qmc_subset(1, 8, 0.5, torch.Generator(), engine="lattice")


def test_idx_to_coords_pixel_centres_xy_order():
    R = 4
    idx = torch.tensor([[0, 1, 4, 15]])
    xy = C.idx_to_coords(idx, R)
    assert xy.dtype == torch.float32 and xy.shape == (1, 4, 2)
    expected = torch.tensor([[[0.125, 0.125],     # row 0, col 0
                              [0.375, 0.125],     # idx 1: col 1 -> x moves, y stays
                              [0.125, 0.375],     # idx 4: row 1 -> y moves
                              [0.875, 0.875]]])
    assert torch.equal(xy, expected)


def test_coords_agree_with_grid_sample():
    # The convention exists for F.grid_sample: 2 * coords - 1 with align_corners=False must read
    # exactly the gathered pixel values (a swapped (row, col) order or corner alignment would not).
    torch.manual_seed(0)
    R = 9
    x = torch.randn(2, 3, R, R)
    idx = C.uniform_subset(2, R, 0.4, torch.Generator().manual_seed(3))
    grid = (2 * C.idx_to_coords(idx, R) - 1).unsqueeze(1)          # [B, 1, N, 2]
    sampled = F.grid_sample(x, grid, mode="bilinear", align_corners=False)[:, :, 0].transpose(1, 2)
    assert torch.allclose(sampled, C.gather_points(x, idx), atol=1e-6)


def test_gather_scatter_round_trip():
    torch.manual_seed(0)
    B, Ch, R = 3, 5, 11
    x = torch.randn(B, Ch, R, R)
    idx = C.uniform_subset(B, R, 0.3, torch.Generator().manual_seed(0))
    f = C.gather_points(x, idx)
    assert f.shape == (B, idx.shape[1], Ch)
    # Gather reads the right pixel: idx = row * R + col.
    b, n = 1, 7
    p = int(idx[b, n])
    assert torch.equal(f[b, n], x[b, :, p // R, p % R])
    grid, mask = C.scatter_points(f, idx, R)
    assert grid.shape == (B, Ch, R, R) and mask.shape == (B, 1, R, R)
    assert torch.equal(grid, x * mask)
    assert torch.equal(mask.sum(dim=(1, 2, 3)), torch.full((B,), float(idx.shape[1])))
    assert torch.equal(C.gather_points(grid, idx), f)
    # Full grid: scatter(gather(x)) is x itself.
    full = C.full_grid(B, R)
    g2, m2 = C.scatter_points(C.gather_points(x, full), full, R)
    assert torch.equal(g2, x) and bool((m2 == 1).all())


def test_uniform_subset_device_argument():
    idx = C.uniform_subset(2, 8, 0.5, torch.Generator().manual_seed(0), device="cpu")
    assert idx.device.type == "cpu"
    assert math.isclose(idx.shape[1] / 64, 0.5)
