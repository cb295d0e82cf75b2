"""Paper figures as PDFs: native-size images, blank cells, titles and captions, intervals, determinism."""

import re

import numpy as np
import pytest

from infdiff.report.figures import curves_figure, ema, image_grid_figure, save_pdf


def _img(res: int, seed: int = 0) -> np.ndarray:
    """uint8 [3, res, res] noise: compresses badly, so its size in the PDF is really its pixel count."""
    return np.random.default_rng(seed).integers(0, 256, (3, res, res), dtype=np.uint8)


def _words(s: str) -> str:
    return " ".join(s.split())  # wrapping only moves line breaks


def _only(folder, name):
    """The PDF exists, is a PDF, and no temp file is left beside it."""
    assert sorted(p.name for p in folder.iterdir()) == [name]
    data = (folder / name).read_bytes()
    assert data.startswith(b"%PDF")
    return data


def _texts(fig) -> list[str]:
    return [_words(fig.get_suptitle())] + [_words(t.get_text()) for t in fig.texts]


CAPTION = ("Each row is one seed sampled at every resolution by the same model, so rows show how one sample "
           "refines with resolution; images are embedded at their native pixel size (λ, ∞, ᾱ, ×).")


def test_image_grid_native_size_blank_cells_and_texts(tmp_path):
    out = tmp_path / "figs" / "fig02.pdf"  # parent does not exist yet
    cells = [[_img(32), _img(64), _img(1024)],
             [_img(32, 1), None, _img(16, 1)],
             [_img(8, 2)]]  # a short row: padded with blank cells
    fig = image_grid_figure(cells, out, title="One model at 32-1024 px", caption=CAPTION,
                            row_labels=["seed 0", "seed 1", "data (exact)\nsecond line"],
                            col_labels=["32 px", "64 px", "1024 px (16×)"])
    data = _only(out.parent, "fig02.pdf")
    # the 1024 px cell is embedded at its native size, as are the small ones
    assert b"/Width 1024" in data and b"/Height 1024" in data
    # one image XObject per non-blank cell (none for the blanks), each at its cell's pixel size
    assert len(re.findall(rb"/Subtype\s*/Image", data)) == 6
    sizes = re.findall(rb"/Width\s+(\d+)\s*/Height\s+(\d+)", data)
    assert sorted(int(w) for w, h in sizes if w == h) == [8, 16, 32, 32, 64, 1024]
    # blank cells get no axes; image cells have no ticks and all share one displayed size
    assert len(fig.axes) == 6
    sizes = set()
    for ax in fig.axes:
        assert len(ax.get_images()) == 1 and ax.get_images()[0].get_interpolation() == "none"
        assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0
        pos = ax.get_position()
        sizes.add((round(pos.width * fig.get_figwidth(), 6), round(pos.height * fig.get_figheight(), 6)))
    assert sizes == {(1.3, 1.3)}
    texts = _texts(fig)
    assert texts[0] == "One model at 32-1024 px"
    assert _words(CAPTION) in texts
    for label in ("seed 0", "seed 1", "data (exact) second line", "32 px", "64 px", "1024 px (16×)"):
        assert label in texts
    # the caption is wrapped to at most ~100 characters a line
    caption = next(t for t in fig.texts if _words(t.get_text()) == _words(CAPTION)).get_text()
    assert "\n" in caption and max(len(line) for line in caption.split("\n")) <= 100


def test_image_grid_group_gaps_and_labels_outside_cells(tmp_path):
    fig = image_grid_figure([[_img(16, i) for i in range(4)]], tmp_path / "sr.pdf", title="Super-resolution",
                            col_labels=["input", "bicubic", "ours", "truth"], col_group_gaps=[1, 3],
                            row_labels=["a rather long row label that has to wrap onto more lines"])
    _only(tmp_path, "sr.pdf")
    x0 = sorted(ax.get_position().x0 * fig.get_figwidth() for ax in fig.axes)
    x1 = sorted(ax.get_position().x1 * fig.get_figwidth() for ax in fig.axes)
    gaps = [x0[i + 1] - x1[i] for i in range(3)]
    assert gaps[0] > gaps[1] and gaps[2] > gaps[1] and gaps[0] == pytest.approx(gaps[2])
    # the row label ends left of the first image (labels never cover images)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    label = next(t for t in fig.texts if t.get_text().startswith("a rather"))
    assert "\n" in label.get_text()
    assert label.get_window_extent(r).x1 < fig.axes[0].get_window_extent(r).x0
    assert label.get_window_extent(r).x0 >= 0


def test_image_grid_errors_write_nothing(tmp_path):
    out = tmp_path / "x.pdf"
    with pytest.raises(ValueError, match="row labels"):
        image_grid_figure([[_img(8)]], out, title="t", row_labels=["a", "b"])
    with pytest.raises(ValueError, match="column labels"):
        image_grid_figure([[_img(8)]], out, title="t", col_labels=["a", "b"])
    with pytest.raises(ValueError, match=r"cell \(0, 1\).*dtype float32"):
        image_grid_figure([[_img(8), np.zeros((3, 8, 8), np.float32)]], out, title="t")
    with pytest.raises(ValueError, match=r"shape \(8, 8, 3\)"):
        image_grid_figure([[np.zeros((8, 8, 3), np.uint8)]], out, title="t")
    with pytest.raises(ValueError, match="col_group_gaps"):
        image_grid_figure([[_img(8), _img(8)]], out, title="t", col_group_gaps=[2])
    with pytest.raises(ValueError, match="at least one cell"):
        image_grid_figure([], out, title="t")
    assert list(tmp_path.iterdir()) == []


def _errorbar_segments(ax):
    """[(x, y_low_end, y_high_end)] of every error bar drawn in ``ax``."""
    from matplotlib.container import ErrorbarContainer

    segs = []
    for cont in ax.containers:
        if isinstance(cont, ErrorbarContainer):
            for coll in cont.lines[2]:
                segs += [(s[0][0], min(s[0][1], s[1][1]), max(s[0][1], s[1][1])) for s in coll.get_segments()]
    return sorted(segs)


def test_curves_intervals_bands_and_log_axes(tmp_path):
    steps = np.array([4.0, 8.0, 16.0, 32.0])
    y = np.array([5.0, 4.0, 3.0, 2.0])
    lo = np.array([4.5, 4.2, 2.5, np.nan])  # at 8 steps the interval lies above the value; none at 32
    hi = np.array([5.5, 4.6, 3.4, np.nan])
    t = np.arange(1.0, 101.0)
    loss = 1.0 / t
    panels = [
        {"title": "SWD against steps", "xlabel": "sampling steps", "ylabel": "SWD", "xscale": "log",
         "yscale": "linear", "xticks": [4, 8, 16, 32],
         "lines": [{"label": "32 px", "x": steps, "y": y, "ylow": lo, "yhigh": hi, "style": "-o"}]},
        {"title": "loss", "xlabel": "training step", "ylabel": "training loss", "xscale": "linear", "yscale": "log",
         "lines": [{"label": "logged", "x": t, "y": loss, "style": "-", "alpha": 0.3},
                   {"label": "EMA", "x": t, "y": ema(loss), "ylow": loss * 0.9, "yhigh": loss * 1.1, "style": "-"}]},
        {"xlabel": "x", "ylabel": "y", "lines": [{"label": "", "x": [1, 2], "y": [1, 2]}]},
    ]
    out = tmp_path / "fig07.pdf"
    fig = curves_figure(panels, out, title="Steps vs quality", caption=CAPTION, ncols=2)
    _only(tmp_path, "fig07.pdf")
    assert len(fig.axes) == 3  # the fourth slot of the 2 x 2 grid is removed, not left empty
    a, b, c = fig.axes
    assert (a.get_xscale(), a.get_yscale(), b.get_xscale(), b.get_yscale()) == ("log", "linear", "linear", "log")
    assert list(a.get_xticks()) == [4, 8, 16, 32]
    assert [lbl.get_text() for lbl in a.get_xticklabels()] == ["4", "8", "16", "32"]  # plain numbers on log axis
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    # asymmetric error bars; the one whose interval misses the value is clipped to zero length below
    segs = _errorbar_segments(a)
    assert len(segs) == 3  # no bar where the interval is NaN
    assert segs[0] == pytest.approx((4.0, 4.5, 5.5))
    assert segs[1] == pytest.approx((8.0, 4.0, 4.6))
    assert segs[2] == pytest.approx((16.0, 2.5, 3.4))
    # more than 30 points: a shaded band instead of error bars
    assert not _errorbar_segments(b) and len(b.collections) == 1
    # legends where some line has a label, none otherwise
    assert a.get_legend() is not None and b.get_legend() is not None and c.get_legend() is None
    assert [t.get_text() for t in b.get_legend().get_texts()] == ["logged", "EMA"]
    texts = _texts(fig)
    assert texts[0] == "Steps vs quality" and _words(CAPTION) in texts


def test_curves_errors(tmp_path):
    out = tmp_path / "c.pdf"
    line = {"label": "a", "x": [1, 2], "y": [1, 2]}
    with pytest.raises(ValueError, match="no ylabel"):
        curves_figure([{"xlabel": "x", "lines": [line]}], out, title="t")
    with pytest.raises(ValueError, match="xscale"):
        curves_figure([{"xlabel": "x", "ylabel": "y", "xscale": "symlog", "lines": [line]}], out, title="t")
    with pytest.raises(ValueError, match="x has 2 points, y 3"):
        curves_figure([{"xlabel": "x", "ylabel": "y", "lines": [{"x": [1, 2], "y": [1, 2, 3]}]}], out, title="t")
    with pytest.raises(ValueError, match="at least one panel"):
        curves_figure([], out, title="t")
    assert list(tmp_path.iterdir()) == []


def test_same_figure_gives_same_bytes(tmp_path):
    cells = [[_img(64), None], [_img(16), _img(32)]]
    for name in ("a.pdf", "b.pdf"):
        image_grid_figure(cells, tmp_path / name, title="T", caption=CAPTION, row_labels=["r0", "r1"],
                          col_labels=["c0", "c1"])
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()
    assert b"CreationDate" not in (tmp_path / "a.pdf").read_bytes()
    panel = {"xlabel": "x", "ylabel": "y", "yscale": "log", "lines": [{"label": "l", "x": [1, 2, 3], "y": [3, 2, 1]}]}
    for name in ("c.pdf", "d.pdf"):
        curves_figure([panel], tmp_path / name, title="T", caption="c")
    assert (tmp_path / "c.pdf").read_bytes() == (tmp_path / "d.pdf").read_bytes()


def test_save_pdf_is_atomic_and_shared(tmp_path):
    from matplotlib.figure import Figure

    import infdiff.report.history_plot as history_plot

    assert history_plot.save_pdf is save_pdf  # one atomic PDF writer, used by the history plot too
    fig = Figure()
    fig.text(0.5, 0.5, "x")
    out = tmp_path / "deep" / "er" / "f.pdf"
    save_pdf(fig, out)
    data = _only(out.parent, "f.pdf")
    assert b"/FontFile2" in data  # TrueType (pdf.fonttype 42) embedded, not Type 3

    def fail(f, *args, **kwargs):
        # write part of a file, then die: the temp file must go and the old PDF stay whole
        f.write(b"%PDF-half")
        raise RuntimeError("killed")

    fig.savefig = fail
    with pytest.raises(RuntimeError, match="killed"):
        save_pdf(fig, out)
    assert _only(out.parent, "f.pdf") == data


def test_ema():
    np.testing.assert_allclose(ema(np.full(200, 3.5)), 3.5, rtol=1e-12)  # bias correction: no ramp from 0
    step = np.r_[np.zeros(50), np.ones(500)]
    e = ema(step, decay=0.9)
    assert e[0] == 0.0 and np.all(np.diff(e[50:]) >= 0) and 0 < e[55] < 1
    assert e[-1] == pytest.approx(1.0, abs=1e-12)
    # a NaN loss is skipped (NaN out, the average goes on) instead of poisoning the rest of the curve
    g = ema([1.0, np.nan, 1.0, 1.0])
    assert np.isnan(g[1]) and np.allclose(g[[0, 2, 3]], 1.0)
    assert ema([], 0.5).shape == (0,)
    assert ema([2.0, 4.0], decay=0.0).tolist() == [2.0, 4.0]
    with pytest.raises(ValueError, match="decay"):
        ema([1.0], decay=1.0)
