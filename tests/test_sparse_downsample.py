"""The `sparse_downsample` ablation's sparse U-Net (infdiff/nets/sparse_downsample.py, Table 2)."""

import pytest
import torch

from infdiff.coords import full_grid, uniform_subset
from infdiff.nets.interp import knn_stencil
from infdiff.nets.sparse_downsample import (SparseDownsampleMiddle, build_level, knn_up_stencil, num_cells,
                                            pool_points, subset_ranks, unpool_points)

C, TD = 8, 16


def _middle(**kw):
    torch.manual_seed(0)
    m = SparseDownsampleMiddle(C, TD, kernel_size=7, train_res=32, grid_res=kw.pop("grid_res", 16), **kw)
    # The modulated LayerNorms start as plain LayerNorms (zero-initialised projections); give them a
    # time dependence so that the tests also see the conditioning.
    for p in m.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.1)
    return m


def _inputs(B, R, ratio, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = full_grid(B, R) if ratio == 1 else uniform_subset(B, R, ratio, g)
    v = torch.randn(B, idx.shape[1], C, generator=g)
    temb = torch.randn(B, TD, generator=g)
    return v, idx, temb


@pytest.mark.parametrize("R,ratio", [(32, 0.25), (32, 1.0), (64, 0.25), (64, 1.0)])
def test_shapes(R, ratio):
    m = _middle().eval()
    v, idx, temb = _inputs(2, R, ratio)
    with torch.no_grad():
        out = m(v, idx, R, temb)
    assert out.shape == v.shape and torch.isfinite(out).all()


def test_two_levels_and_equidistant_shapes():
    m = _middle(grid_res=8, subsample="equidistant", pool="first").eval()
    assert m.levels == 2
    v, idx, temb = _inputs(3, 32, 0.25)
    with torch.no_grad():
        assert m(v, idx, 32, temb).shape == v.shape


def test_gradients_reach_all_parameters():
    m = _middle(grid_res=8).train()
    v, idx, temb = _inputs(4, 32, 0.25)
    v.requires_grad_(True)
    m(v, idx, 32, temb).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert v.grad.abs().sum() > 0


@pytest.mark.parametrize("subset", ["random", "equidistant"])
def test_eval_deterministic_and_batch_independent(subset):
    m = _middle(grid_res=8, subsample=subset).eval()
    v, idx, temb = _inputs(4, 32, 0.25)
    with torch.no_grad():
        full = m(v, idx, 32, temb)
        again = m(v, idx, 32, temb)
        alone = m(v[2:3], idx[2:3], 32, temb[2:3])
        pair = m(v[1:3], idx[1:3], 32, temb[1:3])
    assert torch.equal(full, again)
    torch.testing.assert_close(alone[0], full[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pair[1], full[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("subset", ["random", "equidistant"])
def test_train_mode_draws_new_subsets(subset):
    m = _middle(subsample=subset).train()
    _, idx, _ = _inputs(2, 32, 0.25)
    torch.manual_seed(1)
    a = m.hierarchy(idx, 32)[0].idx
    b = m.hierarchy(idx, 32)[0].idx
    assert not torch.equal(a, b)
    torch.manual_seed(1)  # the global RNG (checkpointed by the trainer) reproduces them: exact resume
    assert torch.equal(m.hierarchy(idx, 32)[0].idx, a)
    m.eval()
    assert torch.equal(m.hierarchy(idx, 32)[0].idx, m.hierarchy(idx, 32)[0].idx)


@pytest.mark.parametrize("ratio", [0.25, 1.0])
@pytest.mark.parametrize("pool", ["mean", "first"])
def test_levels_are_distinct_snapped_subsets(ratio, pool):
    _, idx, _ = _inputs(3, 32, ratio)
    N = idx.shape[1]
    ranks = subset_ranks(idx, 32, "random", None)
    assert torch.equal(ranks.sort(1).values, torch.arange(N).expand(3, N))
    lv = build_level(idx, 32, 0.25, ranks, pool)
    n_l = num_cells(N, 0.25)
    assert lv.idx.shape == (3, n_l) and lv.R == 16
    for b in range(3):
        cells = lv.idx[b]
        assert cells.unique().numel() == n_l and (cells >= 0).all() and (cells < 256).all()
        # every chosen cell is the snapped cell of at least one drawn point of the finer level
        r, c = idx[b] // 32, idx[b] % 32
        snapped = (r // 2) * 16 + c // 2
        d = lv.drawn[b]
        assert set(snapped[d].tolist()) == set(cells.tolist())
        assert torch.equal(cells[lv.parent[b, d]], snapped[d])
        if pool == "first":
            assert int(d.sum()) == n_l


def test_equidistant_full_grid_is_a_regular_sublattice():
    idx = full_grid(1, 32)
    ranks = subset_ranks(idx, 32, "equidistant", torch.Generator().manual_seed(0))
    first = idx[0][ranks[0] < 256]
    r, c = first // 32, first % 32
    # the first quarter of the bit-reversed Z-order is one of the 4 spacing-2 sub-lattices
    assert (r % 2 == r[0] % 2).all() and (c % 2 == c[0] % 2).all()


@pytest.mark.parametrize("ratio", [0.25, 1.0])
def test_pool_unpool_keep_constants_and_interpolate(ratio):
    _, idx, _ = _inputs(2, 32, ratio)
    lv = build_level(idx, 32, 0.25, subset_ranks(idx, 32, "random", None))
    const = torch.full((2, idx.shape[1], C), 0.7)
    pooled = pool_points(const, lv)
    torch.testing.assert_close(pooled, torch.full_like(pooled, 0.7))
    back = unpool_points(pooled, lv, idx, 32)
    torch.testing.assert_close(back, const)
    # pooling averages the drawn points of each cell: a field linear in the pixel index pools to the
    # mean of the drawn indices
    lin = idx.float().unsqueeze(-1)
    p = pool_points(lin, lv)[0, :, 0]
    for j in range(0, lv.idx.shape[1], 7):
        sel = lv.drawn[0] & (lv.parent[0] == j)
        assert abs(float(p[j]) - float(idx[0][sel].float().mean())) < 1e-4
    # the up-sampling is the 3-NN inverse-distance average: a point sitting in a chosen cell on the full
    # grid sees that cell (distance 1/4 cell) and its two side neighbours (distance sqrt(10)/4)
    if ratio == 1.0:
        u = torch.zeros(2, lv.idx.shape[1], 1)
        u[0, 0] = 1.0                                    # cell 0 (top-left corner)
        out = unpool_points(u, lv, idx, 32)[0, :, 0]
        w_own, w_side = 1 / (1 / 8), 1 / (10 / 16)
        torch.testing.assert_close(out[33], torch.tensor(w_own / (w_own + 2 * w_side)))
        assert out[10 * 32 + 10] == 0     # far from cell 0: outside every 3-NN stencil of it


def test_other_resolutions_and_errors():
    m = _middle().eval()
    for R in (16, 48, 128):
        v, idx, temb = _inputs(1, R, 0.25)
        with torch.no_grad():
            assert m(v, idx, R, temb).shape == v.shape
    # the level-1 kernel at 64 px has the tap count of level 0 (k * R / train_res, odd): 15
    assert m.hierarchy(_inputs(1, 64, 0.25)[1], 64)[0].geom.k == 15
    v, idx, temb = _inputs(1, 15, 0.25)
    with pytest.raises(ValueError, match="divisible"):
        m(v, idx, 15, temb)
    with pytest.raises(ValueError, match="subsample"):
        SparseDownsampleMiddle(C, TD, subsample="fps")


@pytest.mark.parametrize("ratio_l,ratio_prev", [(0.25, 0.25), (0.05, 1.0), (1.0, 1.0)])
def test_up_stencil_equals_interp_knn(ratio_l, ratio_prev):
    """The point-wise k-NN search equals interp.knn_stencil (all nodes of the fine grid) read at the points."""
    g = torch.Generator().manual_seed(3)
    B, Rl = 3, 16
    il = full_grid(B, Rl) if ratio_l == 1 else uniform_subset(B, Rl, ratio_l, g)
    ip = full_grid(B, 2 * Rl) if ratio_prev == 1 else uniform_subset(B, 2 * Rl, ratio_prev, g)
    n_l = il.shape[1]

    def dense(src, w):
        D = torch.zeros(B, ip.shape[1], n_l + 1)
        return D.scatter_add_(2, src, w)[..., :n_l]

    s0, w0 = knn_stencil(il, Rl, 2 * Rl, 3)
    gg = ip.unsqueeze(-1).expand(-1, -1, s0.shape[-1])
    torch.testing.assert_close(dense(*knn_up_stencil(il, Rl, ip, 3)), dense(s0.gather(1, gg), w0.gather(1, gg)))
