"""Moving features between the irregular point set and the fixed G x G grid of the U-Net (Sec. 4.2).

Points -> grid ("downsampling by interpolation", the hybrid of Sec. 4.2):

* ``"knn"`` (paper default, PointNet++ style): each grid node (cell centre ``(i + 0.5) / G``) averages
  its k nearest points with inverse squared distance weights. Ties at the k-th distance are all kept,
  so the stencil is deterministic and symmetric: at 32 px a 16 x 16 node sits between 4 equidistant
  pixels, and picking 3 of them (by index order) gave the calibration prototype a regular 2 px speckle.
  Points lie on the R x R pixel grid, so the search only looks at a window of pixels around each node
  (grown until it provably holds the k nearest): memory O(B G^2 W^2) at any R, never O(G^2 N).
* ``"gaussian"``: normalised Gaussian-weighted average of all points within 3h of the node,
  ``exp(-d^2 / (2 h^2))`` with h = one grid cell (1/G) in continuous units. The weights are separable,
  so it is two small matrix products on the scattered grid (plus the same for the mask): exact, and
  consistent across resolutions (a Riemann sum of a fixed continuous average).

Grid -> points: bilinear ``F.grid_sample`` at ``2 * coords - 1`` with (x, y) order and
``align_corners=False`` (cell centres at ``(i + 0.5) / G``). The official code passed [0, 1] "ij"
coordinates, which reads a quarter of the grid with swapped axes; tests/test_nets.py checks that a grid
holding the function x reads back x. Points beyond the outermost cell centres are clamped to the border
(``padding_mode="border"``) instead of being blended with zeros.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from infdiff.coords import idx_to_coords

__all__ = ["INTERP_MODES", "knn_stencil", "points_to_grid", "grid_to_points", "grid_to_coords"]

INTERP_MODES = ("knn", "gaussian")


# ----------------------------------------------------------------------------------------------------
# k nearest neighbours on a pixel lattice
# ----------------------------------------------------------------------------------------------------
def _window_table(R: int, G: int, H: float, device):
    """Batch-independent search windows: for every node, the pixels closer than H pixels, by distance.

    Returns d2 [G*G, W] float32 squared distances in continuous units, ascending (inf = padding or
    outside the image), and pix [G*G, W] int64 flat pixel indices (-1 = padding / outside).
    """
    # Node centres in pixel-index units (pixel j has its centre at j): (i + 0.5) R / G - 0.5.
    c = (torch.arange(G, device=device, dtype=torch.float64) + 0.5) * R / G - 0.5
    Hc = math.ceil(H)
    p = torch.floor(c).long()[:, None] + torch.arange(-Hc, Hc + 2, device=device)   # [G, 2Hc+2]
    inb = (p >= 0) & (p < R)
    d1 = (p - c[:, None]) ** 2                                                     # pixels^2
    d2 = (d1[:, None, :, None] + d1[None, :, None, :]).reshape(G * G, -1)
    ok = (inb[:, None, :, None] & inb[None, :, None, :]).reshape(G * G, -1) & (d2 < H * H)
    pix = (p[:, None, :, None] * R + p[None, :, None, :]).reshape(G * G, -1)
    d2 = d2.masked_fill(~ok, math.inf)
    # Stable sort: equal distances keep a fixed (row-major) order, so results are deterministic; the
    # disc |d| < H holds at most ~pi H^2 pixels, the rest of the square is dropped.
    d2, order = d2.sort(dim=1, stable=True)
    W = max(1, int((d2 < math.inf).sum(1).max()))
    pix = pix.gather(1, order[:, :W]).masked_fill(d2[:, :W] == math.inf, -1)
    return (d2[:, :W] / (R * R)).float(), pix


def _nearest(imap: Tensor, b: Tensor, node: Tensor, table, R: int, M: int):
    """The M nearest sampled pixels of each item (image b, node) within its window.

    Returns d2 [I, M] ascending (inf = none) and pid [I, M] point indices (-1 = none).
    """
    d2w, pixw = table[0].index_select(0, node), table[1].index_select(0, node)   # [I, W]
    look = b[:, None] * (R * R) + pixw.clamp_min(0)
    pid = imap.view(-1).index_select(0, look.view(-1)).view_as(look).masked_fill_(pixw < 0, -1)
    valid = pid >= 0
    # Windows are sorted by distance, so the first M sampled pixels are the M nearest: their rank among
    # the valid ones is their output slot (slot M collects everything else and is dropped).
    rank = valid.cumsum(1, dtype=torch.int32)
    take = valid & (rank <= M)
    slot = torch.where(take, rank - 1, M).long()
    I = b.shape[0]
    d2 = torch.full((I, M + 1), math.inf, device=imap.device)
    d2.scatter_(1, slot, d2w.masked_fill(~take, math.inf))
    out = torch.full((I, M + 1), -1, dtype=torch.int64, device=imap.device)
    out.scatter_(1, slot, pid.masked_fill(~take, -1))
    return d2[:, :M], out[:, :M]


def knn_stencil(idx: Tensor, R: int, G: int, k: int = 3, eps: float = 1e-12):
    """Inverse-distance k-NN stencil from the points to the centres of a G x G grid.

    Args:
        idx: [B, N] int64 pixel indices on the R x R grid.
        R, G: point-grid and target-grid resolutions; k: number of neighbours (ties at the k-th
            distance are all included, up to M = k + 8 points).
        eps: added to squared distances (continuous units) so a point exactly on a node dominates.
    Returns:
        src [B, G*G, M] int64 point indices (N = padding), w [B, G*G, M] float32 weights summing to 1
        over the last dim (0 on padding). Nodes are row-major (i = row, j = col).
    """
    B, N = idx.shape
    dev = idx.device
    k = max(1, min(k, N))
    # Room for ties at the k-th distance: on a pixel lattice a ring of equal distance near a node holds
    # 4 or 8 pixels, so k + 8 slots keep every tie in practice; rarer larger ties are cut in the fixed
    # (stable-sorted) window order, which is still deterministic.
    M = k + 8
    imap = torch.full((B, R * R), -1, dtype=torch.int64, device=dev)
    imap.scatter_(1, idx, torch.arange(N, device=dev).expand(B, N))
    b = torch.arange(B, device=dev).repeat_interleave(G * G)
    node = torch.arange(G * G, device=dev).repeat(B)
    # Start with a disc expected to hold ~2k points at this density; redo only the few nodes whose k-th
    # neighbour is not provably inside their disc (every pixel closer than H pixels is inside).
    H = max(1.5, math.sqrt(2 * k / (math.pi * N / (R * R))))
    d2, pid = _nearest(imap, b, node, _window_table(R, G, H, dev), R, M)
    todo = torch.arange(B * G * G, device=dev)
    while H < 2 * R:
        bad = ~(d2[todo, k - 1] < (H / R) ** 2)
        if not bool(bad.any()):
            break
        todo, H = todo[bad], 2 * H
        d2[todo], pid[todo] = _nearest(imap, b[todo], node[todo], _window_table(R, G, H, dev), R, M)
    # Keep every point within the k-th distance (ties included, relative tolerance for rounding).
    sel = d2 <= d2[:, k - 1:k] * (1 + 1e-5)
    w = torch.where(sel, 1.0 / (d2 + eps), torch.zeros_like(d2))
    w = w / w.sum(-1, keepdim=True)
    src = torch.where(sel, pid, N)
    return src.view(B, G * G, M), w.view(B, G * G, M)


def _knn_to_grid(v: Tensor, idx: Tensor, R: int, G: int, k: int) -> Tensor:
    B, N, C = v.shape
    src, w = knn_stencil(idx, R, G, k)                                        # [B, G*G, M]
    # Apply the stencil as one sparse [B*G*G, B*N] CSR matrix: its backward is a transposed sparse
    # product, where a gather-based version would need a slow scatter-add (index_add_) on CPU.
    off = (torch.arange(B, device=v.device) * N).view(B, 1, 1)
    cols = torch.where(src < N, src + off, B * N).view(B * G * G, -1)
    cols, perm = cols.sort(dim=1)                                              # CSR: sorted columns
    vals = w.view(B * G * G, -1).gather(1, perm).to(v.dtype)
    keep = cols < B * N
    crow = F.pad(keep.sum(1).cumsum(0), (1, 0))
    with warnings.catch_warnings():
        # torch flags CSR as "beta" on first use; the matmul used here is stable and tested.
        warnings.simplefilter("ignore")
        S = torch.sparse_csr_tensor(crow, cols[keep], vals[keep], size=(B * G * G, B * N),
                                    check_invariants=False)
    out = (S @ v.reshape(B * N, C)).view(B, G * G, C)
    return out.transpose(1, 2).reshape(B, C, G, G)


# ----------------------------------------------------------------------------------------------------
# Normalised Gaussian average (continuous units)
# ----------------------------------------------------------------------------------------------------
def _gauss_matrix(R: int, G: int, device, dtype, width: float = 3.0) -> Tensor:
    """A [G, R]: exp(-(x_node - x_pixel)^2 / (2 h^2)) with h = 1/G, zero beyond width * h."""
    xn = (torch.arange(G, device=device, dtype=torch.float64) + 0.5) / G
    xp = (torch.arange(R, device=device, dtype=torch.float64) + 0.5) / R
    d = (xn[:, None] - xp[None, :]) * G                                       # in units of h
    A = torch.exp(-0.5 * d ** 2) * (d.abs() <= width)
    return A.to(dtype)


def _gaussian_to_grid(v: Tensor, idx: Tensor, R: int, G: int) -> Tensor:
    B, N, C = v.shape
    A = _gauss_matrix(R, G, v.device, v.dtype)                                # [G, R]
    # The Gaussian weights are separable, so sum_points w(node, p) f(p) = A @ grid @ A^T on the grid
    # holding the points (zeros elsewhere), and the normaliser is the same product of the mask.
    if N == R * R and torch.equal(idx, torch.arange(N, device=idx.device).expand(B, N)):
        # Full grid in raster order (sampling): no scatter, and the mask is all ones. The point-major
        # features are contracted in place, rows first: one [G, R] x [R, R C] product per image, then the
        # small [G, R, C] result along x (no transposed copy of the grid, and no batched product with a
        # broadcast A, which ran ~10x slower at 1024 px; the same sums, bit-identical).
        a = A.sum(1)
        den = (a[:, None] * a[None, :]).expand(B, 1, G, G)
        num = torch.stack([torch.matmul(A, (A @ v[b].reshape(R, R * C)).view(G, R, C)).permute(2, 0, 1)
                           for b in range(B)])                               # [B, C, G(y), G(x)]
    else:
        grid = v.new_zeros(B, R * R, C).scatter(1, idx.unsqueeze(-1).expand(B, N, C), v)
        grid = grid.transpose(1, 2).reshape(B * C, R, R)
        mask = v.new_zeros(B, R * R).scatter_(1, idx, 1.0).view(B, R, R)
        den = (A @ mask @ A.t()).view(B, 1, G, G)
        num = (A @ grid @ A.t()).view(B, C, G, G)
    # den > 0 whenever a point lies within 3 cells of the node; otherwise the node reads 0.
    return num / den.clamp_min(1e-12)


def points_to_grid(v: Tensor, idx: Tensor, R: int, G: int, mode: str = "knn", knn: int = 3) -> Tensor:
    """Interpolate point features onto the centres of a G x G grid.

    Args:
        v: [B, N, C] features at points ``idx [B, N]`` of the R x R grid.
        mode: "knn" (inverse squared distance over the ``knn`` nearest, ties kept) or "gaussian".
    Returns:
        [B, C, G, G].
    """
    if mode not in INTERP_MODES:
        raise ValueError(f"unknown interpolation '{mode}' (known: {', '.join(INTERP_MODES)})")
    # Weighted averages in at least float32 (also under autocast): the normalisation of thousands of
    # weights per node at sampling resolutions is where bf16 would lose consistency across R.
    work = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
    with torch.autocast(v.device.type, enabled=False):
        x = v.to(work)
        out = _knn_to_grid(x, idx, R, G, knn) if mode == "knn" else _gaussian_to_grid(x, idx, R, G)
    return out.to(v.dtype)


# ----------------------------------------------------------------------------------------------------
# Grid -> points
# ----------------------------------------------------------------------------------------------------
def grid_to_coords(g: Tensor, coords: Tensor) -> Tensor:
    """Bilinear read of a grid at continuous coordinates.

    Args:
        g: [B, C, G, G] values at cell centres (i + 0.5) / G.
        coords: [B, N, 2] in [0, 1]^2, (x, y) order.
    Returns:
        [B, N, C].
    """
    # grid_sample wants (x, y) in [-1, 1]; with align_corners=False, -1 and 1 are the outer cell edges,
    # so 2 * coords - 1 maps the continuous domain [0, 1]^2 exactly onto the grid's extent.
    grid = (2 * coords.to(g.dtype) - 1).unsqueeze(1)                          # [B, 1, N, 2]
    out = F.grid_sample(g, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.squeeze(2).transpose(1, 2)


def grid_to_points(g: Tensor, idx: Tensor, R: int) -> Tensor:
    """Bilinear read of a grid [B, C, G, G] at the pixel centres ``idx [B, N]`` of an R x R grid -> [B, N, C].

    On the full grid in raster order (sampling) the read is a bilinear resize to R x R: the same source
    coordinates (i + 0.5) G / R - 0.5, clamped to the outer centres like ``padding_mode="border"``, computed
    separably and on every core with no coordinate tensor (1024 px, 32 channels, one image: 37 -> 21 ms on
    2 cores of the AMX Xeon; at 256 px, 16 images, equal: grid_sample runs images in parallel). Equal to
    the per-point read up to the rounding of its float32 coordinates. The result is a [B, N, C] view
    of channel-major storage either way.
    """
    B, N = idx.shape
    if N == R * R and torch.equal(idx, torch.arange(N, device=idx.device).expand(B, N)):
        return F.interpolate(g, size=(R, R), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    return grid_to_coords(g, idx_to_coords(idx, R))
