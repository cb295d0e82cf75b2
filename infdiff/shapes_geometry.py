"""Exact pixel-area integrals of simple planar shapes (the geometry behind ``infdiff.data.ShapesDataset``).

A procedural image is a function on [0, 1]^2; its rendering at resolution R is the *average* of that
function over each pixel square, so that area-pooling a rendering at 2R gives the rendering at R.
For a shape S and the pixel Q = [j, j+1] x [i, i+1] (pixel units: x = column, y = row) this module
computes, exactly and vectorised over every pixel of the shape's bounding box,

    a  = |S ∩ Q|                          coverage (the pixel's area is 1)
    mx = ∫_{S∩Q} (x - (j + 1/2)) dA       first moments about the pixel centre
    my = ∫_{S∩Q} (y - (i + 1/2)) dA

The first moments are needed because the background under a shape is a linear gradient bg(p):
∫_{S∩Q} bg = bg(centre) * a + grad(bg) . (mx, my); with them a shape over the gradient is rendered as the
exact pixel average of the continuous picture rather than an approximation of it.

Discs use closed-form antiderivatives (the area under sqrt(r^2 - x^2)) evaluated on the grid of pixel
corners and combined by inclusion-exclusion; polygons (any simple polygon, here rotated squares and
triangles) use Green's theorem edge by edge, with the integrand clamped to the pixel row so that every
edge contributes a piecewise-polynomial integral that Simpson's rule evaluates exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Simpson weights on [0, 1] (endpoint, midpoint, endpoint): exact for polynomials of degree <= 3.
_SIMPSON = np.array([1.0, 4.0, 1.0]) / 6.0
# Upper bound on the elements of one [E, rows, cols, 3, 3] polygon work array (~32 MB of float64);
# larger bounding boxes (e.g. at 1024 px) are processed in row chunks to bound memory.
_MAX_POLY_ELEMS = 4_000_000


def pixel_box(bbox: tuple[float, float, float, float], R: int) -> tuple[int, int, int, int] | None:
    """Pixel rows/columns [i0, i1) x [j0, j1) touched by a bounding box given in unit coordinates.

    bbox = (xmin, ymin, xmax, ymax) in [0, 1] units (may extend past the image); returns None when the
    box misses the image. Restricting all work to this box is what makes rendering cheap.
    """
    xmin, ymin, xmax, ymax = bbox
    j0, j1 = max(0, int(np.floor(xmin * R))), min(R, int(np.ceil(xmax * R)))
    i0, i1 = max(0, int(np.floor(ymin * R))), min(R, int(np.ceil(ymax * R)))
    if j0 >= j1 or i0 >= i1:
        return None
    return i0, i1, j0, j1


# ---------------------------------------------------------------------------------------------- discs
def _sqrt_pos(v: np.ndarray) -> np.ndarray:
    # Rounding can push r^2 - x^2 slightly below 0 at x = r; the true value is 0 there.
    return np.sqrt(np.maximum(v, 0.0))


def _quarter_area(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """|{0 <= X <= x, 0 <= Y <= y, X^2 + Y^2 <= r^2}| for 0 <= x, y <= r (same shapes as x, y).

    Left of xc (where the circle crosses Y = y) the slice is the full height y; right of it the slice is
    sqrt(r^2 - X^2), whose antiderivative is P(X) = (X sqrt(r^2 - X^2) + r^2 asin(X / r)) / 2.
    """
    xc = np.minimum(x, _sqrt_pos(r * r - y * y))

    def P(X):
        return 0.5 * (X * _sqrt_pos(r * r - X * X) + r * r * np.arcsin(np.clip(X / r, -1.0, 1.0)))

    return xc * y + P(x) - P(xc)


def _quarter_xmoment(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """∫∫ X over the same quarter-disc region as `_quarter_area` (0 <= x, y <= r).

    ∫_0^xc X y dX = y xc^2 / 2 and ∫_xc^x X sqrt(r^2 - X^2) dX = [(r^2 - xc^2)^1.5 - (r^2 - x^2)^1.5] / 3.
    """
    xc = np.minimum(x, _sqrt_pos(r * r - y * y))
    return 0.5 * y * xc * xc + (_sqrt_pos(r * r - xc * xc) ** 3 - _sqrt_pos(r * r - x * x) ** 3) / 3.0


def _rect_sum(F: np.ndarray) -> np.ndarray:
    """Inclusion-exclusion of an antiderivative on the [H+1, W+1] corner grid -> per-pixel [H, W]."""
    return F[1:, 1:] - F[1:, :-1] - F[:-1, 1:] + F[:-1, :-1]


def disc_moments(cx: float, cy: float, r: float, i0: int, i1: int, j0: int, j1: int):
    """(a, mx, my), each [i1 - i0, j1 - j0] float64, of the disc |p - c| <= r; everything in pixel units.

    F(x, y) = ∫_0^x ∫_0^y 1_disc (signed integrals, disc centred at the origin) is odd in x and in y, so it
    follows from the quarter-disc formula by signs; the x-moment antiderivative is even in x and odd in y.
    The pixel integrals are then F(x1, y1) - F(x0, y1) - F(x1, y0) + F(x0, y0) on the corner grid.
    """
    H, W = i1 - i0, j1 - j0
    if r <= 0.0:
        z = np.zeros((H, W))
        return z, z.copy(), z.copy()
    # Corner coordinates relative to the centre: working centred keeps the values O(r^3), so the
    # inclusion-exclusion loses at most ~1e-9 of a pixel even at 1024 px.
    X = (np.arange(j0, j1 + 1) - cx)[None, :]
    Y = (np.arange(i0, i1 + 1) - cy)[:, None]
    ax, ay = np.minimum(np.abs(X), r), np.minimum(np.abs(Y), r)   # beyond r the integrals saturate
    sx, sy = np.sign(X), np.sign(Y)
    a = _rect_sum(sx * sy * _quarter_area(ax, ay, r))
    Mx = _rect_sum(sy * _quarter_xmoment(ax, ay, r))           # ∫ (x - cx), about the disc centre
    My = _rect_sum(sx * _quarter_xmoment(ay, ax, r))           # by the x <-> y symmetry of the disc
    # Move the moments from the disc centre to each pixel centre: ∫ (x - px) = ∫ (x - cx) - (px - cx) a.
    px = (np.arange(j0, j1) + 0.5 - cx)[None, :]
    py = (np.arange(i0, i1) + 0.5 - cy)[:, None]
    return a, Mx - px * a, My - py * a


# -------------------------------------------------------------------------------------------- polygons
def polygon_moments(verts: np.ndarray, i0: int, i1: int, j0: int, j1: int):
    """(a, mx, my), each [i1 - i0, j1 - j0] float64, of a simple polygon with vertices verts [V, 2] (x, y), px.

    Green's theorem by vertical slices: a slice of S at abscissa X meets the pixel row [i, i+1] in a length
    clamp(hi - i) - clamp(lo - i), clamp = clip to [0, 1], where hi/lo are the upper/lower boundary. With
    the boundary oriented counter-clockwise the upper edges run right-to-left, hence
        a = - sum_edges ∫_edge clamp(Y(X) - i) dX     (X clipped to the pixel column [j, j+1]),
    and likewise mx with the integrand (X - j - 1/2) clamp(.), my with q(clamp(.)), q(c) = c^2/2 - c/2.
    Along an edge Y is linear in X, so splitting each clipped edge where Y - i crosses 0 and 1 leaves
    pieces on which every integrand is a polynomial of degree <= 2: Simpson's rule is exact on them.
    """
    v = np.asarray(verts, dtype=np.float64)
    # Orientation matters for the sign of Green's formula; the shoelace sum tells it.
    if np.sum(v[:, 0] * np.roll(v[:, 1], -1) - np.roll(v[:, 0], -1) * v[:, 1]) < 0:
        v = v[::-1]
    xa, ya = v[:, 0], v[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    cols = np.arange(j0, j1, dtype=np.float64)[None, :]
    # Clip every edge to every pixel column: [E, W]. The edge parameter t of the clipped end points is
    # a fraction in [0, 1], so Y(t) stays accurate even for near-vertical edges.
    Xa = np.clip(xa[:, None], cols, cols + 1.0)
    Xb = np.clip(xb[:, None], cols, cols + 1.0)
    dxe = (xb - xa)[:, None]
    vertical = dxe == 0.0            # vertical edges have dX = 0 and contribute nothing
    safe = np.where(vertical, 1.0, dxe)
    Ya = ya[:, None] + np.where(vertical, 0.0, (Xa - xa[:, None]) / safe) * (yb - ya)[:, None]
    Yb = ya[:, None] + np.where(vertical, 0.0, (Xb - xa[:, None]) / safe) * (yb - ya)[:, None]
    dX = Xb - Xa                                       # signed width of the clipped edge, [E, W]
    xoff = Xa - (cols + 0.5)                           # start abscissa relative to the pixel centre

    H, W, E = i1 - i0, j1 - j0, len(v)
    out = np.zeros((3, H, W))
    chunk = max(1, _MAX_POLY_ELEMS // max(1, E * W * 9))
    for r0 in range(0, H, chunk):
        rows = np.arange(i0 + r0, min(i1, i0 + r0 + chunk), dtype=np.float64)[None, :, None]
        out[:, r0:r0 + rows.shape[1]] = _edge_integrals(Ya[:, None] - rows, Yb[:, None] - rows,
                                                        dX[:, None], xoff[:, None])
    return out[0], out[1], out[2]


def _edge_integrals(ua, ub, dX, xoff):
    """Sum over edges of the clamped slice integrals; ua, ub [E, h, W] are Y - row at the clipped ends.

    Returns [3, h, W]: (a, mx, my) of this row chunk.
    """
    d = ub - ua
    flat = d == 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        # Edge parameters where the clamp switches regime (u = 0 and u = 1); a flat edge has none.
        s0 = np.where(flat, 0.0, np.clip(-ua / d, 0.0, 1.0))
        s1 = np.where(flat, 0.0, np.clip((1.0 - ua) / d, 0.0, 1.0))
    lo, hi = np.minimum(s0, s1), np.maximum(s0, s1)
    zeros, ones = np.zeros_like(lo), np.ones_like(lo)
    ta = np.stack([zeros, lo, hi], axis=-1)            # piece starts [E, h, W, 3]
    tb = np.stack([lo, hi, ones], axis=-1)             # piece ends
    # Simpson nodes per piece: [E, h, W, 3 pieces, 3 nodes]
    t = np.stack([ta, 0.5 * (ta + tb), tb], axis=-1)
    wts = (tb - ta)[..., None] * _SIMPSON
    c = np.clip(ua[..., None, None] + t * d[..., None, None], 0.0, 1.0)
    x = xoff[..., None, None] + t * dX[..., None, None]
    I0 = np.sum(wts * c, axis=(-1, -2))
    I1 = np.sum(wts * x * c, axis=(-1, -2))
    I2 = np.sum(wts * (0.5 * c * c - 0.5 * c), axis=(-1, -2))
    # The minus sign is Green's orientation (see polygon_moments); dX converts dt into dX.
    return -np.stack([np.sum(dX * I0, 0), np.sum(dX * I1, 0), np.sum(dX * I2, 0)])


# ----------------------------------------------------------------------------------------- shape types
@dataclass(frozen=True)
class Disc:
    """Filled disc, centre (cx, cy) and radius r in unit coordinates ([0, 1]^2, x = column direction)."""
    cx: float
    cy: float
    r: float

    def bbox(self):
        return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)

    def contains(self, x, y):
        """Point membership (for tests / supersampling); x, y arrays of any broadcastable shape."""
        return (np.asarray(x) - self.cx) ** 2 + (np.asarray(y) - self.cy) ** 2 <= self.r ** 2

    def moments(self, R: int, i0: int, i1: int, j0: int, j1: int):
        """(a, mx, my) [i1 - i0, j1 - j0] at resolution R, moments in pixel units."""
        return disc_moments(self.cx * R, self.cy * R, self.r * R, i0, i1, j0, j1)


@dataclass(frozen=True)
class Ring:
    """Annulus r_in <= |p - c| <= r_out (unit coordinates): outer disc minus inner disc, linearly."""
    cx: float
    cy: float
    r_out: float
    r_in: float

    def bbox(self):
        return (self.cx - self.r_out, self.cy - self.r_out, self.cx + self.r_out, self.cy + self.r_out)

    def contains(self, x, y):
        d2 = (np.asarray(x) - self.cx) ** 2 + (np.asarray(y) - self.cy) ** 2
        return (d2 <= self.r_out ** 2) & (d2 >= self.r_in ** 2)

    def moments(self, R: int, i0: int, i1: int, j0: int, j1: int):
        outer = disc_moments(self.cx * R, self.cy * R, self.r_out * R, i0, i1, j0, j1)
        inner = disc_moments(self.cx * R, self.cy * R, self.r_in * R, i0, i1, j0, j1)
        # Area and moments are integrals, hence additive over the set difference.
        return tuple(o - n for o, n in zip(outer, inner))


@dataclass(frozen=True)
class Polygon:
    """Simple polygon (rotated square, triangle) with vertices [V, 2] as (x, y) in unit coordinates."""
    verts: tuple

    def bbox(self):
        v = np.asarray(self.verts)
        return (*v.min(0), *v.max(0))

    def contains(self, x, y):
        """Membership for a *convex* polygon: on the inner side of every edge (either orientation)."""
        v = np.asarray(self.verts, dtype=np.float64)
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        cross = [(b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])
                 for a, b in zip(v, np.roll(v, -1, axis=0))]
        cross = np.stack(cross)
        return np.all(cross >= 0, axis=0) | np.all(cross <= 0, axis=0)

    def moments(self, R: int, i0: int, i1: int, j0: int, j1: int):
        return polygon_moments(np.asarray(self.verts, dtype=np.float64) * R, i0, i1, j0, j1)

    def area(self) -> float:
        """Exact area in unit coordinates (shoelace), for tests."""
        v = np.asarray(self.verts, dtype=np.float64)
        return 0.5 * abs(np.sum(v[:, 0] * np.roll(v[:, 1], -1) - np.roll(v[:, 0], -1) * v[:, 1]))
