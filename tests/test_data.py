"""Tests of infdiff.data (procedural dataset, seed splits, prepare of procedural data) and infdiff.shapes_geometry;
real image files and the prepared store itself: tests/test_datastore.py.

The central property: a procedural image is one function on [0, 1]^2 and a rendering is its exact pixel
average, so 2x2 (or k x k) area pooling of a fine rendering reproduces the coarse rendering.
"""
import json
import warnings

import numpy as np
import pytest
import torch

from infdiff import data
from infdiff.data import ShapesDataset, load_prepared, prepare, split_seeds, to_float, to_uint8
from infdiff.shapes_geometry import Disc, Polygon, Ring


def pool(x: np.ndarray, k: int) -> np.ndarray:
    """Area-pool [..., R*k, R*k] -> [..., R, R] by k x k means (in float64)."""
    *lead, H, W = x.shape
    return x.astype(np.float64).reshape(*lead, H // k, k, W // k, k).mean(axis=(-3, -1))


# ------------------------------------------------------------------------------ procedural dataset
def test_render_deterministic_per_seed_and_batch_independent():
    ds = ShapesDataset()
    a, b = ds.render(7, 32), ds.render(7, 32)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, ds.render(8, 32))
    # Row i of a batch depends on seeds[i] only (not on its neighbours in the batch).
    batch = ds.render_batch([3, 7, 11], 32)
    assert np.array_equal(batch[1], a)
    assert np.array_equal(ShapesDataset().render_batch([7], 32)[0], a)


def test_value_range_shape_dtype():
    # 24 px: a resolution that is not a power of two must work as well (continuous units throughout).
    x = ShapesDataset().render_batch(range(50), 24)
    assert x.shape == (50, 3, 24, 24) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x.std() > 0.2          # not degenerate: colours cover the range


@pytest.mark.parametrize("kind", ["disc", "ring", "square", "triangle"])
def test_area_pooling_exact_single_shape(kind):
    # One shape over the linear gradient is rendered exactly (coverage + first moments), so pooling is
    # exact to float32 rounding; an "over" composite without the moment term would miss by ~1e-2.
    ds = ShapesDataset(min_shapes=1, max_shapes=1, kinds=(kind,))
    for seed in range(3):
        fine, coarse = ds.render(seed, 256), ds.render(seed, 32)
        assert np.abs(pool(fine, 8) - coarse).max() < 2e-6
        assert np.abs(pool(ds.render(seed, 42), 2) - ds.render(seed, 21)).max() < 2e-6


def test_area_pooling_1024_to_32():
    ds = ShapesDataset(min_shapes=1, max_shapes=1)
    for seed in (0, 1, 2):
        assert np.abs(pool(ds.render(seed, 1024), 32) - ds.render(seed, 32)).max() < 2e-6
    # Background only: the linear gradient's pixel average is its centre value.
    bg = ShapesDataset(min_shapes=0, max_shapes=0)
    assert np.abs(pool(bg.render(5, 1024), 32) - bg.render(5, 32)).max() < 2e-6


def test_area_pooling_multi_shape_within_tolerance():
    # Overlapping edges within one pixel use the "over" approximation: mismatches must stay rare and small.
    ds = ShapesDataset()
    seeds = range(30)
    diff = np.abs(pool(ds.render_batch(seeds, 64), 2) - ds.render_batch(seeds, 32))
    assert diff.mean() < 1e-3
    assert np.mean(diff > 1e-4) < 0.01
    # Images whose shapes never share a pixel are exact.
    exact = [s for s in seeds if len(ds.describe(s)["shapes"]) == 1]
    assert exact and diff[exact].max() < 2e-6


GEOMETRIES = [
    Disc(0.43, 0.51, 0.3),
    Disc(0.52, 0.48, 0.04),                                    # whole disc inside few pixels
    Ring(0.5, 0.47, 0.3, 0.12),
    Polygon(((0.2, 0.3), (0.8, 0.25), (0.5, 0.9))),            # counter-clockwise
    Polygon(((0.3, 0.1), (0.9, 0.4), (0.6, 0.95), (0.1, 0.6))[::-1]),   # clockwise quadrilateral
]


@pytest.mark.parametrize("shape", GEOMETRIES, ids=lambda s: type(s).__name__)
def test_coverage_and_moments_vs_supersampling(shape):
    # Coarse pixels (R = 8) so that pixels contain curved arcs and polygon corners, not just straight
    # edges; the midpoint grid's own error is ~ (edge length in the pixel) / n, hence the tolerances.
    R, n = 8, 1000
    a, mx, my = shape.moments(R, 0, R, 0, R)
    g = (np.arange(n) + 0.5) / n                               # n x n midpoint supersampling grid
    partial = np.argwhere((a > 0.05) & (a < 0.95))
    full = np.argwhere(a > 0.999)
    pixels = [tuple(p) for p in partial[:: max(1, len(partial) // 5)]] + [tuple(p) for p in full[:1]]
    assert len(pixels) >= 3
    for i, j in pixels:
        X, Y = np.meshgrid(j + g, i + g)                       # pixel units
        inside = shape.contains(X / R, Y / R)
        assert abs(inside.mean() - a[i, j]) < 2e-3
        assert abs(((X - j - 0.5) * inside).mean() - mx[i, j]) < 1e-3
        assert abs(((Y - i - 0.5) * inside).mean() - my[i, j]) < 1e-3


@pytest.mark.parametrize("shape", GEOMETRIES, ids=lambda s: type(s).__name__)
def test_total_area_and_centroid_exact(shape):
    # Summed over all pixels, coverage is the exact area and the moments give the exact centroid.
    R = 16
    a, mx, my = shape.moments(R, 0, R, 0, R)
    # Pixel centres in pixel units: mx is about the pixel centre, so add centre * a to get ∫ x dA.
    cols, rows = np.meshgrid(np.arange(R) + 0.5, np.arange(R) + 0.5)
    if isinstance(shape, Polygon):
        area, centroid = shape.area(), np.asarray(shape.verts).mean(0) if len(shape.verts) == 3 else None
    elif isinstance(shape, Ring):
        area, centroid = np.pi * (shape.r_out ** 2 - shape.r_in ** 2), np.array([shape.cx, shape.cy])
    else:
        area, centroid = np.pi * shape.r ** 2, np.array([shape.cx, shape.cy])
    assert abs(a.sum() / R ** 2 - area) < 1e-12
    if centroid is not None:
        cx = (mx + cols * a).sum() / a.sum() / R
        cy = (my + rows * a).sum() / a.sum() / R
        assert np.allclose([cx, cy], centroid, atol=1e-12)


def test_shape_parameters_recognisable():
    # Thin rings and tiny shapes would be unrecognisable at the 32 px training resolution.
    ds = ShapesDataset(min_size=0.15, max_size=0.4)
    counts = set()
    for seed in range(300):
        spec = ds.describe(seed)
        counts.add(len(spec["shapes"]))
        for shape, colour in spec["shapes"]:
            assert colour.shape == (3,) and 0 <= colour.min() and colour.max() <= 1
            if isinstance(shape, Ring):
                assert shape.r_out - shape.r_in >= 1 / 16 - 1e-12 and shape.r_in >= 0
                assert 0.075 - 1e-12 <= shape.r_out <= 0.2 + 1e-12
            if isinstance(shape, Disc):
                assert 0.075 - 1e-12 <= shape.r <= 0.2 + 1e-12
    assert counts == {1, 2, 3}


def test_constructor_validation():
    with pytest.raises(ValueError, match="min_shapes"):
        ShapesDataset(min_shapes=3, max_shapes=1)
    with pytest.raises(ValueError, match="min_size"):
        ShapesDataset(min_size=0.5, max_size=0.2)
    with pytest.raises(ValueError, match="disc"):
        ShapesDataset(kinds=("hexagon",))


def test_splits_disjoint_and_errors():
    sets = {s: set(split_seeds(s, 1000).tolist()) for s in ("train", "val", "ref", "ref2")}
    assert all(len(v) == 1000 for v in sets.values())
    names = sorted(sets)
    assert all(not (sets[a] & sets[b]) for a in names for b in names if a < b)
    ranges = sorted(data.SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    assert data.SPLITS["val"] == (3 * 10**7, 4 * 10**7)
    with pytest.raises(ValueError, match="ref2"):
        split_seeds("test", 10)
    with pytest.raises(ValueError, match="holds"):
        split_seeds("ref", 10**8)


# -------------------------------------------------------------------------------- prepare / convert
def test_prepare_shapes_atomic_and_loadable(tmp_path):
    cfg = {"kind": "shapes", "min_shapes": 1, "max_shapes": 3, "min_size": 0.15, "max_size": 0.4,
           "path": None, "train_size": 20000}          # workflow keys are ignored
    out = tmp_path / "data" / "ref.npy"
    meta = prepare(cfg, "ref", 16, 12, out)
    # the store and its report, no temp files left
    assert sorted(p.name for p in out.parent.iterdir()) == ["ref.json", "ref.npy"]
    x, m = load_prepared(out, with_meta=True)
    assert isinstance(x, np.memmap) and not x.flags.writeable
    assert x.dtype == np.uint8 and x.shape == (12, 3, 16, 16)
    assert m == json.loads(json.dumps(meta)) and m["seed_range"] == [10**7, 10**7 + 12]
    assert m["counts"] == {"listed": 12, "selected": 12, "written": 12, "skipped": 0} and m["skipped"] == []
    assert m["source"] == ShapesDataset().config()
    expected = to_uint8(ShapesDataset().render_batch(split_seeds("ref", 12), 16))
    assert np.array_equal(x, expected)
    # the validation split: its own seeds, and the same images from any number of rendering processes
    v1, v2 = prepare(cfg, "val", 8, 70, tmp_path / "v1.npy"), prepare(cfg, "val", 8, 70, tmp_path / "v2.npy", workers=2)
    assert v1["seed_range"] == [3 * 10**7, 3 * 10**7 + 70] and v1["files_sha256"] == v2["files_sha256"]
    assert np.array_equal(load_prepared(tmp_path / "v1.npy"), load_prepared(tmp_path / "v2.npy"))
    with pytest.raises(ValueError, match="required"):
        prepare(cfg, "train", 8, None, tmp_path / "x.npy")
    with pytest.raises(ValueError, match="not a prepared split"):
        prepare(cfg, "full", 8, 4, tmp_path / "x.npy")
    with pytest.raises(ValueError, match="lmdb"):
        prepare({"kind": "hdf5"}, "train", 8, 4, tmp_path / "x.npy")


def test_to_float_reads_a_memory_map(tmp_path):
    prepare({"kind": "shapes"}, "ref", 8, 3, tmp_path / "ref.npy")
    x = load_prepared(tmp_path / "ref.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # torch warns about non-writable arrays
        f = to_float(x[:2])
    assert f.shape == (2, 3, 8, 8) and np.array_equal(to_uint8(f), x[:2])


def test_to_float_to_uint8_roundtrip():
    # Every uint8 value must survive the round trip (rounding, not truncation, in to_uint8).
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16).repeat(3, axis=1)
    f = to_float(u8)
    assert f.dtype == torch.float32 and f.min() == -1 and f.max() == 1
    assert np.array_equal(to_uint8(f), u8)                      # tensor input
    assert np.array_equal(to_uint8(f.numpy()), u8)              # ndarray input
    assert np.array_equal(to_uint8(np.array([-3.0, 3.0, np.nan, 0.0])), [0, 255, 0, 128])
    assert np.array_equal(to_float(torch.from_numpy(u8)), f)
    with pytest.raises(TypeError):
        to_float(u8.astype(np.float32))
