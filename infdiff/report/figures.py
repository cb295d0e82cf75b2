"""Paper figures as PDFs: image grids (Figs. 2, 3, 5, 6, 8, 9, 13-15) and curves (Fig. 7, training loss, Fig. 2's consistency panel).

Every figure is one PDF with vector text and embedded rasters, written atomically by :func:`save_pdf`:

- image cells are drawn with ``imshow(interpolation="none")``, so the PDF embeds each image at its native
  pixel size (a 1024 px sample stays a 1024 x 1024 image XObject, however small it is displayed);
- a title (suptitle) on top and a caption (wrapped text, at most ~100 characters a line) below the axes;
- TrueType fonts (``pdf.fonttype`` 42: text stays editable) and no creation date, so that the same figure
  gives the same bytes every time (figures can be diffed and cached).

The functions build a :class:`matplotlib.figure.Figure` directly (no pyplot: no global backend switch, no
figure left open), save it and return it, so that callers and tests can inspect what was drawn.
matplotlib is imported inside the functions: importing this module (e.g. through
:mod:`infdiff.report.history_plot`) stays cheap for code that never draws.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["save_pdf", "image_grid_figure", "curves_figure", "consistency_panel", "ema"]

# Sizes in points (text) and inches (layout). Default matplotlib font (DejaVu Sans) everywhere.
_TITLE_PT = 11.0
_LABEL_PT = 8.0
_CAPTION_PT = 8.0
_LINE_SPACING = 1.3  # line height / font size, a little above matplotlib's 1.2 so that nothing overlaps
_CAPTION_CHARS = 100  # at most this many characters per caption line (readable line length)
_PAD_IN = 0.15  # outer margin
_CELL_GAP_IN = 0.04  # between image cells
_GROUP_GAP_IN = 0.22  # before a column listed in col_group_gaps ("input | bicubic | ours | truth")
_ROW_LABEL_MAX_IN = 1.8  # longer row labels wrap, so one long label cannot make the figure twice as wide
_MIN_GRID_FIG_IN = 4.0  # narrower figures would squeeze the caption into a column of a few words
_PANEL_W_IN, _PANEL_H_IN = 4.5, 3.2  # one curves panel, labels and ticks included
_PANEL_MARGIN_IN = (0.75, 0.2, 0.3, 0.5)  # left, right, top, bottom of a panel under an image grid
_BAND_MIN_POINTS = 30  # more points than this: an interval is a shaded band, not a forest of error bars

# Read at save time by the PDF backend (and by the image compositor at draw time).
_PDF_RC = {
    "pdf.fonttype": 42,  # TrueType: text stays text (searchable after decoding, editable in Illustrator)
    # Never merge several images into one raster: each image must keep its own native pixel grid.
    "image.composite_image": False,
}


def save_pdf(fig: Figure, path: str | os.PathLike) -> None:
    """Save ``fig`` as a PDF at ``path`` through :func:`infdiff.io.atomic_write` (parents created).

    A killed job therefore never leaves a half-written PDF under the final name (docs/architecture.md, "Style and safety"). The PDF has
    TrueType fonts and no creation date, so the same figure always gives the same bytes.
    """
    import matplotlib as mpl

    from infdiff.io import atomic_write

    with atomic_write(path) as f, mpl.rc_context(_PDF_RC):
        fig.savefig(f, format="pdf", metadata={"CreationDate": None})


# ---------------------------------------------------------------------------------------------------------
# Text measurement and wrapping. Layouts are computed in inches before anything is drawn, from the true
# advance widths of the default font, so labels never overlap the images whatever their length.


def _text_width_in(s: str, size_pt: float) -> float:
    """Width in inches of one line of plain text ``s`` set in the default font at ``size_pt``."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    if not s:
        return 0.0
    w, _, _ = TextToPath().get_text_width_height_descent(s, FontProperties(size=size_pt), ismath=False)
    return w / 72.0  # TextToPath works at 72 dpi: points


def _wrap(text: str, width_in: float, size_pt: float, max_chars: int | None = None) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width_in`` wide (and ``max_chars`` long).

    Explicit newlines are kept. A single word longer than the width stays whole on its own line (breaking
    inside a word, e.g. a path or a number, would be worse than overflowing a little).
    """
    lines: list[str] = []
    for para in text.split("\n"):
        words = para.split()
        if not words:
            lines.append("")
            continue
        line = words[0]
        for w in words[1:]:
            cand = f"{line} {w}"
            too_long = max_chars is not None and len(cand) > max_chars
            if too_long or _text_width_in(cand, size_pt) > width_in:
                lines.append(line)
                line = w
            else:
                line = cand
        lines.append(line)
    return lines


def _line_h_in(size_pt: float) -> float:
    return size_pt * _LINE_SPACING / 72.0


def _title_caption_lines(title: str, caption: str, fig_w_in: float) -> tuple[list[str], list[str]]:
    """Title and caption wrapped to the figure width (the caption also to ~100 characters a line)."""
    avail = fig_w_in - 2 * _PAD_IN
    t_lines = _wrap(title, avail, _TITLE_PT) if title else []
    c_lines = _wrap(caption, avail, _CAPTION_PT, max_chars=_CAPTION_CHARS) if caption else []
    return t_lines, c_lines


def _draw_title_caption(fig: Figure, t_lines: list[str], c_lines: list[str], fig_h_in: float,
                        caption_top_in: float) -> None:
    """Suptitle at the top, caption left-aligned with its first line ``caption_top_in`` below the top edge.

    ``parse_math=False``: titles and captions are plain text (a "$" in a caption is a dollar sign), and
    this is also how they were measured.
    """
    if t_lines:
        fig.suptitle("\n".join(t_lines), x=0.5, y=1 - _PAD_IN / fig_h_in, ha="center", va="top",
                     fontsize=_TITLE_PT, linespacing=_LINE_SPACING, parse_math=False)
    if c_lines:
        fig.text(_PAD_IN / fig.get_figwidth(), 1 - caption_top_in / fig_h_in, "\n".join(c_lines),
                 ha="left", va="top", fontsize=_CAPTION_PT, linespacing=_LINE_SPACING, parse_math=False)


# ---------------------------------------------------------------------------------------------------------
# Image grids


def _as_hwc(img, r: int, c: int) -> np.ndarray:
    """uint8 ``[3, H, W]`` (or ``[1, H, W]``, shown grey) -> ``[H, W, 3]`` for imshow; errors name the cell."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        # Floats would be read as [0, 1] by imshow; images here are uint8 (infdiff.data.to_uint8).
        raise ValueError(f"image cell ({r}, {c}) has dtype {a.dtype}; expected uint8 [3, H, W]")
    if a.ndim != 3 or a.shape[0] not in (1, 3) or min(a.shape[1:]) < 1:
        raise ValueError(f"image cell ({r}, {c}) has shape {a.shape}; expected uint8 [3, H, W]")
    if a.shape[0] == 1:
        a = np.repeat(a, 3, axis=0)
    return np.ascontiguousarray(a.transpose(1, 2, 0))


def image_grid_figure(
    cells: list[list[np.ndarray | None]],
    out_pdf: str | os.PathLike,
    title: str,
    caption: str = "",
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    cell_inches: float = 1.3,
    col_group_gaps: list[int] | None = None,
    panel: dict | None = None,
) -> Figure:
    """Draw rows x columns of images into ``out_pdf``; return the saved Figure.

    Args:
        cells: ``cells[r][c]`` a uint8 image ``[3, H, W]`` (any H, W per cell; ``[1, H, W]`` is shown grey)
            or None for a blank cell. Shorter rows are padded with blank cells.
        title: figure title (suptitle), wrapped to the figure width.
        caption: text below the grid, wrapped to at most ~100 characters a line.
        row_labels: one per row (may contain newlines, "" for none), set horizontally left of the row.
        col_labels: one per column, above the first row, wrapped to the column width.
        cell_inches: displayed side of every cell, whatever its pixel size (each image is embedded at
            its native pixel size: the PDF, not the page, holds the detail).
        col_group_gaps: indices ``c`` (0 < c < n_cols) of columns before which a wider gap separates
            groups of columns.
        panel: optional line plot drawn under the grid, above the caption: a panel dict as in
            :func:`curves_figure` (Fig. 2's resolution-consistency curve).

    Raises:
        ValueError: no cells, a label list of the wrong length, a gap index out of range, a cell that is
            not a uint8 ``[3, H, W]`` image, a panel :func:`curves_figure` would refuse (nothing is written then).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows = len(cells)
    n_cols = max((len(row) for row in cells), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("image_grid_figure needs at least one cell")
    if cell_inches <= 0:
        raise ValueError(f"cell_inches must be positive, got {cell_inches}")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"{len(row_labels)} row labels for {n_rows} rows")
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"{len(col_labels)} column labels for {n_cols} columns")
    gaps = set(col_group_gaps or [])
    if any(not 0 < g < n_cols for g in gaps):
        raise ValueError(f"col_group_gaps {sorted(gaps)}: each must lie in 1..{n_cols - 1} (a gap before that column)")
    # Check and convert every image first: a bad cell fails before anything is drawn or written.
    images = [[None if img is None else _as_hwc(img, r, c) for c, img in enumerate(row)]
              + [None] * (n_cols - len(row)) for r, row in enumerate(cells)]

    # Horizontal layout (inches): [pad | row labels | grid | pad], the grid centred if the title or
    # caption asks for a wider page than the grid does.
    lh = _line_h_in(_LABEL_PT)
    row_lines = [_wrap(lbl, _ROW_LABEL_MAX_IN, _LABEL_PT) if lbl else [] for lbl in (row_labels or [])]
    label_w = max((_text_width_in(s, _LABEL_PT) for ls in row_lines for s in ls), default=0.0)
    label_w = label_w + 0.08 if label_w else 0.0  # clearance between a label and its row
    col_x = np.zeros(n_cols)  # left edge of each column, from the grid's left edge
    for c in range(1, n_cols):
        col_x[c] = col_x[c - 1] + cell_inches + (_GROUP_GAP_IN if c in gaps else _CELL_GAP_IN)
    grid_w = float(col_x[-1]) + cell_inches
    fig_w = max(2 * _PAD_IN + label_w + grid_w, _MIN_GRID_FIG_IN)
    if panel is not None:
        fig_w = max(fig_w, 2 * _PAD_IN + _PANEL_W_IN)
    grid_left = _PAD_IN + label_w + (fig_w - 2 * _PAD_IN - label_w - grid_w) / 2

    # Vertical layout (inches from the top): [pad | title | column labels | grid | caption | pad].
    t_lines, c_lines = _title_caption_lines(title, caption, fig_w)
    col_lines = [_wrap(lbl, cell_inches + _CELL_GAP_IN, _LABEL_PT) if lbl else [] for lbl in (col_labels or [])]
    title_h = len(t_lines) * _line_h_in(_TITLE_PT) + (0.1 if t_lines else 0.0)
    col_h = max((len(ls) for ls in col_lines), default=0) * lh + (0.05 if col_labels else 0.0)
    grid_top = _PAD_IN + title_h + col_h
    grid_h = n_rows * cell_inches + (n_rows - 1) * _CELL_GAP_IN
    panel_top = grid_top + grid_h + 0.12
    panel_h = _PANEL_H_IN + 0.1 if panel is not None else 0.0
    caption_top = panel_top + panel_h + 0.12
    caption_h = len(c_lines) * _line_h_in(_CAPTION_PT)
    fig_h = caption_top + caption_h + _PAD_IN

    fig = Figure(figsize=(fig_w, fig_h))
    FigureCanvasAgg(fig)
    fx, fy = (lambda x: x / fig_w), (lambda y: 1 - y / fig_h)  # inches (from left / top) -> figure fraction
    for r in range(n_rows):
        top = grid_top + r * (cell_inches + _CELL_GAP_IN)
        for c in range(n_cols):
            img = images[r][c]
            if img is None:
                continue  # blank cell: no axes at all, so nothing (no frame either) is drawn there
            ax = fig.add_axes((fx(grid_left + col_x[c]), fy(top + cell_inches),
                               cell_inches / fig_w, cell_inches / fig_h))
            # "none": the vector backend embeds the array unresampled, at its native size.
            ax.imshow(img, interpolation="none")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        if row_lines and row_lines[r]:
            # Horizontal, right-aligned: long labels ("simple_diffusion, resized from 64 px") stay readable,
            # where rotated text would run past the cell's height.
            fig.text(fx(grid_left - 0.08), fy(top + cell_inches / 2), "\n".join(row_lines[r]), ha="right",
                     va="center", multialignment="right", fontsize=_LABEL_PT, linespacing=_LINE_SPACING,
                     parse_math=False)
    for c, ls in enumerate(col_lines):
        if ls:
            fig.text(fx(grid_left + col_x[c] + cell_inches / 2), fy(grid_top - 0.05), "\n".join(ls), ha="center",
                     va="bottom", multialignment="center", fontsize=_LABEL_PT, linespacing=_LINE_SPACING,
                     parse_math=False)
    if panel is not None:
        # As wide as the grid (at least one curves panel), centred under it; the margins hold the tick
        # labels, the axis labels, the panel title and the legend's border.
        w = min(max(grid_w, _PANEL_W_IN), fig_w - 2 * _PAD_IN)
        left = (fig_w - w) / 2 + _PANEL_MARGIN_IN[0]
        width = w - _PANEL_MARGIN_IN[0] - _PANEL_MARGIN_IN[1]
        height = _PANEL_H_IN - _PANEL_MARGIN_IN[2] - _PANEL_MARGIN_IN[3]
        ax = fig.add_axes((fx(left), fy(panel_top + _PANEL_MARGIN_IN[2] + height), width / fig_w, height / fig_h))
        _draw_panel(ax, panel, 0)
    _draw_title_caption(fig, t_lines, c_lines, fig_h, caption_top)
    save_pdf(fig, out_pdf)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Curves


def _interval_yerr(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Asymmetric error-bar lengths ``[2, N]``; clipped at 0 because a percentile (bootstrap) interval need
    not contain the point estimate, and matplotlib refuses negative lengths."""
    return np.stack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])


def _draw_panel(ax, panel: dict, k: int) -> None:
    """One curves panel (see :func:`curves_figure` for the keys); ``k`` names the panel in errors."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    name = f"panel {k} ({panel.get('title', '')!r})"
    for key in ("xlabel", "ylabel"):
        if not panel.get(key):
            raise ValueError(f"{name} has no {key}: every plot axis needs a label")
    scales = {}
    for key in ("xscale", "yscale"):
        scales[key] = panel.get(key) or "linear"
        if scales[key] not in ("linear", "log"):
            raise ValueError(f"{name}: {key} must be 'linear' or 'log', got {scales[key]!r}")
    any_label = False
    for j, line in enumerate(panel.get("lines", [])):
        x = np.asarray(line["x"], dtype=np.float64).ravel()
        y = np.asarray(line["y"], dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"{name}, line {j}: x has {x.size} points, y {y.size}")
        label = line.get("label") or ""
        any_label |= bool(label)
        alpha = float(line.get("alpha", 1.0))
        (h,) = ax.plot(x, y, line.get("style") or "-", label=label or None, alpha=alpha, markersize=4)
        lo_v, hi_v = line.get("ylow"), line.get("yhigh")
        if lo_v is None or hi_v is None:
            continue
        lo = np.asarray(lo_v, dtype=np.float64).ravel()
        hi = np.asarray(hi_v, dtype=np.float64).ravel()
        if lo.shape != y.shape or hi.shape != y.shape:
            raise ValueError(f"{name}, line {j}: ylow/yhigh must have the {y.size} points of y")
        # Points without an interval (NaN: the metric has none there) are drawn without one.
        has = np.isfinite(x) & np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
        if not has.any():
            continue
        colour = h.get_color()
        if x.size > _BAND_MIN_POINTS:
            ax.fill_between(x, np.where(has, lo, y), np.where(has, hi, y), where=has, color=colour,
                            alpha=0.25 * alpha, linewidth=0)
        else:
            ax.errorbar(x[has], y[has], yerr=_interval_yerr(y[has], lo[has], hi[has]), fmt="none",
                        ecolor=colour, alpha=alpha, capsize=3)
    ax.set_xscale(scales["xscale"])
    ax.set_yscale(scales["yscale"])
    if panel.get("xticks") is not None:
        ax.set_xticks(list(panel["xticks"]))
        # Plain numbers (8, 16, 32) rather than 2^3 on a log axis; minor ticks stay unlabelled.
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(panel["xlabel"])
    ax.set_ylabel(panel["ylabel"])
    if panel.get("title"):
        ax.set_title(panel["title"], fontsize="medium")
    ax.grid(True, alpha=0.3)
    if any_label:
        ax.legend(fontsize="small", loc="best")


def curves_figure(panels: list[dict], out_pdf: str | os.PathLike, title: str, caption: str = "",
                  ncols: int | None = None) -> Figure:
    """Draw line plots, one panel per dict, into ``out_pdf``; return the saved Figure.

    Each panel: ``{"title": str, "xlabel": str, "ylabel": str, "xscale": "linear"|"log", "yscale": ...,
    "xticks": list | None, "lines": [line, ...]}``; each line: ``{"label": str, "x": [N], "y": [N],
    "ylow": [N] | None, "yhigh": [N] | None, "style": "-o" | "-", "alpha": float (optional)}``.
    Intervals ``[ylow, yhigh]`` are asymmetric error bars (clipped at zero length where the interval does
    not contain the value; skipped where NaN) or, for lines of more than 30 points, a shaded band. A
    panel gets a legend when any of its lines has a label. Panels fill ``ncols`` columns (default: up to
    3) row by row.

    Raises:
        ValueError: no panels, a panel without an x or y label, an unknown scale, arrays of unequal
            length (nothing is written then).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("curves_figure needs at least one panel")
    ncols = min(len(panels), 3) if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig_w = ncols * _PANEL_W_IN
    t_lines, c_lines = _title_caption_lines(title, caption, fig_w)
    title_h = _PAD_IN + len(t_lines) * _line_h_in(_TITLE_PT) + (0.1 if t_lines else 0.0)
    caption_h = len(c_lines) * _line_h_in(_CAPTION_PT) + (0.1 + _PAD_IN if c_lines else 0.0)
    fig_h = title_h + nrows * _PANEL_H_IN + caption_h

    fig = Figure(figsize=(fig_w, fig_h))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for k, (ax, panel) in enumerate(zip(axes, panels)):
        _draw_panel(ax, panel, k)
    for ax in axes[len(panels):]:
        ax.remove()  # an incomplete last row: no empty frames
    # tight_layout inside the band between title and caption: it measures tick labels, axis labels and
    # panel titles, which depend on the data.
    fig.tight_layout(rect=(0, caption_h / fig_h, 1, 1 - title_h / fig_h), pad=0.4)
    _draw_title_caption(fig, t_lines, c_lines, fig_h, fig_h - caption_h + 0.1)
    save_pdf(fig, out_pdf)
    return fig


def consistency_panel(records: dict[int, dict], train_res: int, seeds: list[int]) -> dict:
    """Fig. 2's panel: resolution consistency against the resolution factor, per seed and mean.

    Args:
        records: ``{resolution: record}`` with each record from
            :func:`infdiff.metrics.consistency.consistency` at that resolution (``seeds``, ``psnr``, value and
            interval over every matched seed), resolutions being multiples ``k >= 2`` of ``train_res``.
        train_res: the training resolution R.
        seeds: the seeds drawn as one line each (the rows of the image grid); a seed missing at some
            resolution leaves a gap there.
    Returns:
        A panel dict for :func:`image_grid_figure` / :func:`curves_figure`: x = k = resolution / R on a log
        axis (ticks at each k), y = PSNR in dB; one line per seed and the mean over the matched seeds of
        each resolution with its 95% bootstrap interval (the Table 1 number, same function).
    """
    if not records:
        raise ValueError("consistency_panel needs at least one resolution above the training resolution")
    res = sorted(records)
    k = np.array([r / train_res for r in res], dtype=np.float64)
    lines = []
    for s in seeds:
        y = []
        for r in res:
            hit = np.flatnonzero(np.asarray(records[r]["seeds"]) == s)
            y.append(float(records[r]["psnr"][hit[0]]) if len(hit) else np.nan)
        lines.append({"label": f"seed {s}", "x": k, "y": np.array(y), "style": "-o", "alpha": 0.6})
    counts = "/".join(str(records[r]["n_ref"]) for r in res)

    def col(key):
        return np.array([np.nan if records[r][key] is None else records[r][key] for r in res], dtype=np.float64)

    lines.append({"label": f"mean over {counts} seeds, 95% interval", "x": k, "y": col("value"),
                  "ylow": col("ci_low"), "yhigh": col("ci_high"), "style": "-s"})
    return {"title": f"Resolution consistency with the {train_res} px sample of each seed",
            "xlabel": f"resolution factor k = R / {train_res} px (log scale)", "ylabel": "PSNR (dB, higher is better)",
            "xscale": "log", "yscale": "linear", "xticks": [int(v) for v in k], "lines": lines}


def ema(values, decay: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average of a 1-D series (Adam-style correction).

    ``m_t = decay m_(t-1) + (1 - decay) v_t`` from ``m = 0``, divided by ``1 - decay^n`` with ``n`` the
    number of values averaged so far, so the start is not pulled towards 0 (the first output equals the
    first value, and a constant series stays that constant). Non-finite values (a NaN or inf loss) are
    skipped: their output is NaN and the average carries on without them, instead of turning NaN for good.

    Args:
        values: ``[N]`` numbers.
        decay: in [0, 1); 0.98 averages over roughly the last 50 values.

    Returns:
        float64 ``[N]``.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema decay must lie in [0, 1), got {decay}")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"ema expects a 1-D series, got shape {v.shape}")
    out = np.full(v.shape, np.nan)
    m, n = 0.0, 0
    for i, x in enumerate(v):
        if not np.isfinite(x):
            continue
        m = decay * m + (1.0 - decay) * x
        n += 1
        out[i] = m / (1.0 - decay**n)
    return out
