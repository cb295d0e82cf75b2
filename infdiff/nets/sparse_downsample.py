"""The `sparse_downsample` ablation: a purely sparse U-Net in place of the grid level (Sec. 4.2, Table 2).

Sec. 4.2 names "two main approaches to downsampling: (1) selecting a subset of coordinates ... (2)
interpolating points to a regularly spaced grid". ∞-Diff uses (2) (:mod:`infdiff.nets.interp` + the grid
U-Net); Table 2 ablates it with (1), "performed by randomly subsampling coordinates; we observed similar
with equidistant subsampling". :class:`SparseDownsampleMiddle` is that alternative with the same contract
as the grid path of :class:`~infdiff.nets.infdiff_net.InfDiffNet`: features at the points in, features
at the same points out.

Hierarchy, levels l = 0..L with L = log2(train_res / grid_res) (at least 1), level 0 = the input points:

    down, l = 1..L:  choose N_l lattice cells of R_l = R / 2^l from level l-1's points (below), pool
                     their features, `blocks_per_level` SparseResBlocks on the R_l lattice, keep a skip
    mid:             `blocks_per_level` blocks at level L
    up,   l = L..1:  merge(cat[u, skip_l]) (pointwise linear), blocks at level l, then inverse-distance
                     k-NN (k = 3, continuous coordinates) from the level-l points to level l-1's points

Subset selection ("draw until N_l distinct cells"). Every point of level l-1 gets a distinct priority
rank; points are drawn in rank order and snapped to their cell of the coarser lattice R_l until N_l
distinct cells are hit. The level-l point set is those cells, i.e. a subset of level l-1's points (their
first drawn representatives) with coordinates snapped to R_l; the drawn points that land in an already
hit cell are duplicates and are merged by averaging (``pool="mean"``; ``pool="first"`` keeps only the
representative). Drawing a fixed number of *cells* (rather than a fixed fraction of points whose
distinct cells vary per image) keeps every level a rectangular ``[B, N_l]`` set of distinct cells, so
:class:`SparseGeometry` applies unchanged, with no padding. A coarse cell holds at most 4 fine cells, so
at least ceil(N_{l-1} / 4) cells are occupied and ``N_l = min(round(keep * N_{l-1}), ceil(N_{l-1} / 4))``
can always be reached: ``keep > 1/4`` is capped at 1/4 per level. At the default keep = 1/4 the sampled
fraction of the lattice stays what it was at level 0 (1/4 in training, 1 on the full grid).

Priorities (``subsample``):
* ``"random"``: a uniform random order of the points (a uniform subset without replacement).
* ``"equidistant"``: stratified order along the bit-reversed Morton (Z-order) code of the point's cell
  on the R_{l-1} lattice, XOR-ed with a random digital shift. Bit reversal puts the finest Morton bits
  first, so on the full lattice the first quarter of the order is one of the four sub-lattices of
  spacing 2 (exactly equidistant), and on a random subset the order is a low-discrepancy sweep.

Randomness: in eval mode priorities come from a ``torch.Generator`` seeded by a fixed seed per level and
are a function of the lattice cell only, so sampling is deterministic and image i never depends on the
batch; in training mode they come from the global (CPU) torch RNG, which the trainer checkpoints, so an
exact resume stays exact.

Resolution: the lattice of level l is R_l = R / 2^l at any R (R must be divisible by 2^L), and the
kernel there is ``kernel_size_at(k, R_l, train_res / 2^l)`` taps -- the same tap count as level 0,
covering twice the continuous extent per level -- so lengths stay in continuous units (docs/architecture.md, "Tensors and coordinates").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from infdiff.nets.blocks import SparseResBlock, pointwise
from infdiff.sparse import BACKENDS, SparseGeometry, kernel_size_at

__all__ = ["SUBSETS", "POOLS", "SparseDownsampleMiddle", "subset_ranks", "Level", "num_cells", "build_level",
           "pool_points", "knn_up_stencil", "unpool_points"]

SUBSETS = ("random", "equidistant")
POOLS = ("mean", "first")
# Fixed seed of the eval-mode subsets (offset by the level): the ablation's sampling is deterministic.
EVAL_SEED = 0x5D0


# ----------------------------------------------------------------------------------------------------
# Priorities
# ----------------------------------------------------------------------------------------------------
def _bit_reversed_morton(row: Tensor, col: Tensor, bits: int) -> Tensor:
    """Bit-reversed Z-order code of (row, col) with ``bits`` bits per axis (int64, same shape)."""
    code = torch.zeros_like(row)
    for b in range(bits):
        # Morton bit 2b is col's bit b, bit 2b+1 is row's; reversed over 2*bits bits, they land at
        # 2*bits-1-2b and 2*bits-2-2b: the finest bits become the most significant.
        code |= ((col >> b) & 1) << (2 * bits - 1 - 2 * b)
        code |= ((row >> b) & 1) << (2 * bits - 2 - 2 * b)
    return code


def subset_ranks(idx: Tensor, R: int, subset: str, generator: torch.Generator | None) -> Tensor:
    """Distinct priority ranks of the points (0 = drawn first).

    Args:
        idx: [B, N] distinct cell indices on the R x R lattice.
        subset: "random" or "equidistant" (module docstring).
        generator: seeded CPU generator (eval mode: the priorities are a function of the lattice cell,
            identical for every image), or None (training: one independent draw per image from the
            global torch RNG).
    Returns:
        [B, N] int64, a permutation of 0..N-1 per row.
    """
    B, N = idx.shape
    dev = idx.device
    if subset == "random":
        if generator is not None:
            # One random priority per lattice cell, shared by the batch: batch-independent by design.
            key = torch.randperm(R * R, generator=generator).to(dev)[idx]
        else:
            key = torch.rand(B, N).to(dev)
    elif subset == "equidistant":
        bits = max(1, math.ceil(math.log2(R)))
        # Random digital shift: XOR-ing the coordinates' bits with a fixed word is a bijection of the
        # lattice, so the keys stay distinct and the stratification is kept (one shift per image).
        shape = (1, 1) if generator is not None else (B, 1)
        rs, cs = torch.randint(0, 2 ** bits, (2, *shape), generator=generator).to(dev)
        row, col = torch.div(idx, R, rounding_mode="floor"), idx % R
        key = _bit_reversed_morton(row ^ rs, col ^ cs, bits)
    else:
        raise ValueError(f"unknown subset '{subset}' (known: {', '.join(SUBSETS)})")
    # Keys -> ranks (stable: float ties in training resolve by point order), so thresholds are exact.
    order = key.argsort(dim=1, stable=True)
    return torch.empty_like(order).scatter_(1, order, torch.arange(N, device=dev).expand(B, N))


# ----------------------------------------------------------------------------------------------------
# One level: selection, pooling (down) and k-NN unpooling (up)
# ----------------------------------------------------------------------------------------------------
class Level:
    """Level l of the hierarchy, built from the point set of level l-1.

    Attributes:
        idx: [B, N_l] int64 distinct, ascending cell indices on the R_l x R_l lattice.
        R: R_l. parent: [B, N_prev] position (0..N_l-1) of each level-(l-1) point's cell, -1 if the cell
        was not chosen. drawn: [B, N_prev] bool, the points pooled into the level (duplicates included).
        geom: SparseGeometry of the level (set by the caller, who knows the kernel size).
    """

    def __init__(self, idx: Tensor, R: int, parent: Tensor, drawn: Tensor):
        self.idx, self.R, self.parent, self.drawn = idx, R, parent, drawn
        self.geom: SparseGeometry | None = None
        self._stencil = None


def num_cells(n_prev: int, keep: float) -> int:
    """N_l: ``round(keep * N_{l-1})`` capped at ceil(N_{l-1} / 4), the fewest cells N_{l-1} points occupy."""
    return max(1, min(round(keep * n_prev), -(-n_prev // 4)))


def build_level(idx: Tensor, R: int, keep: float, ranks: Tensor, pool: str = "mean") -> Level:
    """Choose the level-l cells from level l-1's points ``idx [B, N]`` on the R x R lattice (R even).

    Points are drawn in ``ranks`` order and snapped to the R/2 lattice until N_l distinct cells are hit;
    the threshold rank tau_b is the N_l-th smallest first-hit rank of the cells of image b.
    """
    if R % 2:
        raise ValueError(f"cannot halve an odd lattice (R = {R})")
    B, N = idx.shape
    dev = idx.device
    Rl = R // 2
    n_l = num_cells(N, keep)
    row, col = torch.div(idx, R, rounding_mode="floor"), idx % R
    cell = torch.div(row, 2, rounding_mode="floor") * Rl + torch.div(col, 2, rounding_mode="floor")
    # First-hit rank of every coarse cell (N = never hit): drawing in rank order reaches the cells in
    # the order of these values.
    first = torch.full((B, Rl * Rl), N, dtype=torch.int64, device=dev)
    first.scatter_reduce_(1, cell, ranks, reduce="amin")
    tau = first.kthvalue(n_l, dim=1).values.unsqueeze(1)                     # [B, 1]
    chosen = first <= tau                        # exactly n_l per row: first-hit ranks are distinct
    idx_l = chosen.nonzero()[:, 1].view(B, n_l)  # row-major nonzero: ascending per row
    pos = torch.full((B, Rl * Rl), -1, dtype=torch.int64, device=dev)
    pos.scatter_(1, idx_l, torch.arange(n_l, device=dev).expand(B, n_l))
    parent = pos.gather(1, cell)
    if pool == "mean":
        drawn = ranks <= tau       # every point drawn before the n_l-th new cell (its cell is chosen)
    elif pool == "first":
        drawn = (ranks == first.gather(1, cell)) & (parent >= 0)
    else:
        raise ValueError(f"unknown pool '{pool}' (known: {', '.join(POOLS)})")
    return Level(idx_l, Rl, parent, drawn)


def pool_points(v: Tensor, level: Level) -> Tensor:
    """Average the drawn level-(l-1) features per chosen cell: v [B, N_prev, C] -> [B, N_l, C]."""
    B, N, C = v.shape
    n_l = level.idx.shape[1]
    b, n = level.drawn.nonzero(as_tuple=True)
    tgt = b * n_l + level.parent[b, n]
    # Averages in float32 (also under autocast): duplicates of a cell must not lose bits to bf16.
    x = v.float().reshape(B * N, C).index_select(0, b * N + n)
    out = x.new_zeros(B * n_l, C).index_add(0, tgt, x)
    cnt = torch.bincount(tgt, minlength=B * n_l).clamp_min(1).to(out.dtype).unsqueeze(1)
    return (out / cnt).view(B, n_l, C).to(v.dtype)


BIG = 2 ** 31 - 1   # "no neighbour" distance (int32)


def _offset_table(H: float, P: int, device):
    """Coarse-cell offsets within H cells of a fine point, per parity of the fine point, by distance.

    A fine pixel (row, col) of the 2 R_l lattice lies a quarter cell from its coarse cell's centre, at
    ((2 (row % 2) - 1) / 4, (2 (col % 2) - 1) / 4) cells. Distances are kept in quarter-cell units, so
    they are exact integers and ties are exact.
    Returns off, d2: [4, W] (parity p = 2 (row % 2) + col % 2): flat offsets dy * P + dx in a map of
    row length P, and squared distances (int32, BIG = padding beyond the disc).
    """
    Hc = int(math.floor(H + 0.25))   # every cell within H of a point a quarter cell off-centre
    d = torch.arange(-Hc, Hc + 1, device=device)
    dy, dx = d.view(-1, 1).expand(-1, d.numel()).reshape(-1), d.repeat(d.numel())
    offs, d2s = [], []
    for p in range(4):
        ty, tx = 2 * (p // 2) - 1, 2 * (p % 2) - 1
        d2 = (4 * dy - ty) ** 2 + (4 * dx - tx) ** 2
        d2 = torch.where(d2 <= 16 * H * H, d2, BIG)                           # keep the disc only
        d2, order = d2.sort(stable=True)
        offs.append((dy * P + dx)[order])
        d2s.append(d2)
    W = int(max((d2 < BIG).sum() for d2 in d2s))
    return torch.stack(offs)[:, :W], torch.stack(d2s)[:, :W].to(torch.int32)


def knn_up_stencil(idx_l: Tensor, R_l: int, idx_prev: Tensor, k: int = 3):
    """k nearest level-l cells (continuous coordinates) of every level-(l-1) point, inverse squared
    distance weights, ties at the k-th distance all kept (so the stencil is symmetric and deterministic;
    it equals :func:`infdiff.nets.interp.knn_stencil` read at the points, see the tests).

    Args:
        idx_l: [B, N_l] cells of the R_l lattice; idx_prev: [B, N_prev] points of the 2 R_l lattice.
    Returns:
        src [B, N_prev, M] int64 positions in idx_l (N_l = padding), w [B, N_prev, M] float32 summing
        to 1 over M. Memory O(B N_prev W) with W ~ pi H^2 the search window, never O(N_prev N_l); only
        the points are searched (knn_stencil would search every node of the 2 R_l grid).
    """
    B, n_l = idx_l.shape
    N = idx_prev.shape[1]
    dev = idx_l.device
    k = max(1, min(k, n_l))
    imap = torch.full((B, R_l * R_l), n_l, dtype=torch.int64, device=dev)
    imap.scatter_(1, idx_l, torch.arange(n_l, device=dev).expand(B, n_l))
    R_prev = 2 * R_l
    row, col = torch.div(idx_prev, R_prev, rounding_mode="floor").view(-1), (idx_prev % R_prev).view(-1)
    par = 2 * (row % 2) + col % 2
    cr, cc = torch.div(row, 2, rounding_mode="floor"), torch.div(col, 2, rounding_mode="floor")
    b = torch.arange(B, device=dev).repeat_interleave(N)
    src = torch.full((B * N, k), n_l, dtype=torch.int64, device=dev)
    d2 = torch.ones(B * N, k, dtype=torch.int32, device=dev)
    todo = torch.arange(B * N, device=dev)
    # Start with a disc expected to hold ~2k cells at this density; redo only the points whose k-th
    # neighbour is not provably inside (every cell closer than H is in the disc), doubling H.
    H = max(1.5, math.sqrt(2 * k * R_l * R_l / (math.pi * n_l)))
    while todo.numel():
        # Pad the map by the window half-width, so every lookup is in bounds without a test.
        Hc = int(math.floor(H + 0.25))
        P = R_l + 2 * Hc
        pmap = imap.new_full((B, P, P), n_l)
        pmap[:, Hc:Hc + R_l, Hc:Hc + R_l] = imap.view(B, R_l, R_l)
        off, dd = _offset_table(H, P, dev)
        p = par[todo]
        centre = b[todo] * (P * P) + (cr[todo] + Hc) * P + (cc[todo] + Hc)
        pid = pmap.view(-1)[centre[:, None] + off[p]]                          # [I, W]
        dd = dd[p].masked_fill_(pid == n_l, BIG)
        kth = dd.kthvalue(k, dim=1, keepdim=True).values
        sel = (dd <= kth) & (dd < BIG)                     # the k nearest plus ties at the k-th distance
        M = int(sel.sum(1).max())
        if M > src.shape[1]:
            src = torch.cat([src, src.new_full((B * N, M - src.shape[1]), n_l)], 1)
            d2 = torch.cat([d2, d2.new_ones(B * N, M - d2.shape[1])], 1)
        # Compact the selected cells to the front (window order = distance order); slot M = dropped.
        Ms = src.shape[1]
        slot = torch.where(sel, sel.cumsum(1) - 1, Ms)
        src[todo] = src.new_full((todo.numel(), Ms + 1), n_l).scatter_(1, slot, pid)[:, :Ms]
        d2[todo] = d2.new_ones(todo.numel(), Ms + 1).scatter_(1, slot, dd)[:, :Ms]
        done = (kth.squeeze(1) <= 16 * H * H) | (H >= 2 * R_l)
        todo, H = todo[~done], 2 * H
    # Weights 1 / d^2: the quarter-cell unit cancels in the normalisation (never d = 0: a fine point
    # is always a quarter cell off every coarse centre).
    w = torch.where(src < n_l, 1.0 / d2.double(), 0.0)
    w = (w / w.sum(1, keepdim=True)).float()
    return src.view(B, N, -1), w.view(B, N, -1)


def unpool_points(u: Tensor, level: Level, idx_prev: Tensor, R_prev: int, k: int = 3) -> Tensor:
    """Inverse-distance k-NN interpolation from the level-l points to level l-1's points.

    Args:
        u: [B, N_l, C] at ``level.idx`` (cell centres of the R_l lattice, continuous coordinates).
        idx_prev: [B, N_prev] level l-1 points on the R_prev = 2 R_l lattice.
    Returns:
        [B, N_prev, C]. Weights sum to 1, so a constant field stays constant.
    """
    B, n_l, C = u.shape
    if R_prev != 2 * level.R:
        raise ValueError(f"level lattice {level.R} is not half of {R_prev}")
    if level._stencil is None:       # built once per level and forward (it depends on the points only)
        level._stencil = knn_up_stencil(level.idx, level.R, idx_prev, k)
    src, w = level._stencil
    x = torch.cat([u.float(), u.new_zeros(B, 1, C, dtype=torch.float32)], dim=1)   # row n_l = padding
    out = None
    for m in range(src.shape[-1]):
        # One gather per neighbour slot: memory O(B N_prev C), never [B, N_prev, M, C] (65k points at 256 px).
        y = x.gather(1, src[..., m:m + 1].expand(-1, -1, C)) * w[..., m:m + 1]
        out = y if out is None else out + y
    return out.to(u.dtype)


# ----------------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------------
class SparseDownsampleMiddle(nn.Module):
    """Sparse U-Net hierarchy replacing points -> grid -> grid U-Net -> points (Table 2 ablation).

    Args:
        channels: C; time_dim: size of temb; kernel_size: k at train_res (the same k taps at every level,
            on that level's lattice); train_res: R_train.
        grid_res: sets the depth L = log2(train_res / grid_res) (>= 1), the level whose lattice matches
            the grid U-Net's grid at R_train.
        blocks_per_level: SparseResBlocks per level on the way down, in the middle and on the way up.
        mlp_ratio, backend: as :class:`SparseResBlock`.
        keep: fraction of level l-1's points drawn for level l (capped at 1/4, module docstring).
        subsample: "random" | "equidistant"; pool: "mean" (average duplicates) | "first" (representative).
        knn: neighbours of the up-sampling interpolation (paper: 3).
    """

    def __init__(self, channels, time_dim, kernel_size=7, train_res=32, grid_res=16, blocks_per_level=1,
                 mlp_ratio=2, keep=0.25, subsample="random", backend="auto", pool="mean", knn=3):
        super().__init__()
        if subsample not in SUBSETS:
            raise ValueError(f"unknown subsample '{subsample}' (known: {', '.join(SUBSETS)})")
        if pool not in POOLS:
            raise ValueError(f"unknown pool '{pool}' (known: {', '.join(POOLS)})")
        if backend not in BACKENDS:
            raise ValueError(f"unknown sparse backend '{backend}' (known: {', '.join(BACKENDS)})")
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        self.kernel_size, self.train_res, self.keep = kernel_size, train_res, keep
        self.subsample, self.pool, self.knn = subsample, pool, knn
        self.levels = max(1, round(math.log2(train_res / grid_res)))

        def blocks():
            return nn.ModuleList([SparseResBlock(channels, kernel_size, time_dim, mlp_ratio, backend)
                                  for _ in range(blocks_per_level)])

        self.down = nn.ModuleList([blocks() for _ in range(self.levels)])
        self.mid = blocks()
        # Skip merge as in InfDiffNet / U-Nets: concatenation then a pointwise linear back to C.
        self.merge = nn.ModuleList([nn.Linear(2 * channels, channels) for _ in range(self.levels)])
        self.up = nn.ModuleList([blocks() for _ in range(self.levels)])

    def hierarchy(self, idx: Tensor, R: int) -> list[Level]:
        """Levels 1..L for the points ``idx [B, N]`` at resolution R (subsets drawn as the mode says)."""
        if R % 2 ** self.levels:
            raise ValueError(f"resolution {R} is not divisible by 2^{self.levels} (sparse_downsample levels)")
        # All levels use the tap count of level 0: k * R_l / (train_res / 2^l) == k * R / train_res, so
        # the kernel's continuous extent doubles per level exactly as a grid U-Net's receptive field.
        k = kernel_size_at(self.kernel_size, R, self.train_res)
        out = []
        for l in range(1, self.levels + 1):
            gen = None if self.training else torch.Generator().manual_seed(EVAL_SEED + l)
            ranks = subset_ranks(idx, R, self.subsample, gen)
            level = build_level(idx, R, self.keep, ranks, self.pool)
            level.geom = SparseGeometry(level.idx, level.R, k)
            out.append(level)
            idx, R = level.idx, level.R
        return out

    def forward(self, v: Tensor, idx: Tensor, R: int, temb: Tensor) -> Tensor:
        """v [B, N, C] at ``idx [B, N]`` on the R x R grid, temb [B, time_dim] -> [B, N, C]."""
        levels = self.hierarchy(idx, R)
        skips = []
        for level, blks in zip(levels, self.down):
            v = pool_points(v, level)
            for blk in blks:
                v = blk(v, level.geom, temb)
            skips.append(v)
        for blk in self.mid:
            v = blk(v, levels[-1].geom, temb)
        for l in reversed(range(self.levels)):
            level, merge = levels[l], self.merge[l]
            v = pointwise(lambda a, b: merge(torch.cat([a, b], dim=-1)), v, skips[l])
            for blk in self.up[l]:
                v = blk(v, level.geom, temb)
            idx_prev, R_prev = (levels[l - 1].idx, levels[l - 1].R) if l else (idx, R)
            v = unpool_points(v, level, idx_prev, R_prev, self.knn)
        return v
