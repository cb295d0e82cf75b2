"""Datasets: a procedural infinite-resolution image family, real image files, and the prepared stores.

∞-Diff models images as functions on [0, 1]^2 and samples them at any resolution, so the embedded default
uses data that *is* such a function: `ShapesDataset`. Image i is drawn from the integer seed i alone (a
numpy Generator seeded with it): a linear colour gradient between two random colours along a random
direction, then `min_shapes..max_shapes` primitives (disc, ring, rotated square, triangle) with random
colour, position, size and angle, composited in order. Rendering at resolution R gives every pixel the
*average* of that function over the pixel's square (exact anti-aliasing, `infdiff.shapes_geometry`),
so the rendering at R equals the 2x2 area-pooled rendering at 2R: ground truth exists at every
resolution (e.g. 1024 px) from the same seed.

Compositing. Each shape is put "over" the current pixel, pixel <- pixel (1 - a) + colour a with the exact
coverage a, plus the exact first-moment term for the linear background under it (see `_composite`).
A single shape per pixel is therefore exact; where the edges of two shapes fall in the same pixel the
"over" rule treats their coverages as uncorrelated, an approximation (the pooled-vs-direct mismatch is
confined to those pixels).

Splits (`infdiff.splits`): "train", "val" (validation loss), "ref" (reference set for metrics) and "ref2"
(a second, disjoint reference set: real-vs-real metric floor); disjoint seed ranges of procedural data,
fixed fractions of the *sorted* name list of real data; "full" is all four (real data only).

Real data (CelebA-HQ, FFHQ as folders or .zip, LSUN Church as its LMDB) is read by `infdiff.sources`.
`prepare` writes one split of either kind at one resolution to a prepared store: an uncompressed .npy
(uint8 [N, 3, R, R]) written chunk by chunk, plus a JSON report beside it (counts, skipped files
with their errors, source, index range, name-list hash). `load_prepared` gives it back as a read-only
memory map, so no split is ever held in memory. `to_float` / `to_uint8` convert between uint8 and the
library's float32 [-1, 1].
"""
from __future__ import annotations

import hashlib
import itertools
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from .io import atomic_path, write_json
from .sources import SOURCE_KINDS, ImageSource, decode_chunk
from .shapes_geometry import Disc, Polygon, Ring, pixel_box
from .splits import FOLDER_SPLITS, FULL_PARTS, FULL_SPLIT, SPLITS, folder_splits, split_seeds  # noqa: F401

if TYPE_CHECKING:
    import torch

KINDS = ("disc", "ring", "square", "triangle")
# Every shape consumes this many uniforms whatever its kind, so the generator stream (and hence every
# later shape of the image) does not depend on which kinds are enabled.
_UNIFORMS_PER_SHAPE = 10
# Ring thickness: a random fraction of the outer radius, but never thinner than 1/16 of the image side
# (2 px at the 32 px training resolution) so rings stay recognisable there.
_RING_FRACTION = (0.3, 0.55)
_MIN_RING_THICKNESS = 1.0 / 16.0



# ------------------------------------------------------------------------------ procedural dataset
class ShapesDataset:
    """Procedural infinite-resolution images: gradient background + random anti-aliased primitives.

    Sizes are in continuous units (fractions of the image side): `size` is the diameter of discs and
    rings, 0.8 x size the side of squares, 0.6 x size the circumradius of (near-equilateral) triangles,
    which gives the kinds comparable areas. Centres are drawn so a shape of diameter `size` lies inside.
    """

    def __init__(self, min_shapes: int = 1, max_shapes: int = 3, min_size: float = 0.15,
                 max_size: float = 0.4, kinds: Sequence[str] = KINDS):
        if not 0 <= min_shapes <= max_shapes:
            raise ValueError(f"need 0 <= min_shapes <= max_shapes, got {min_shapes}, {max_shapes}")
        if not 0 < min_size <= max_size <= 1:
            raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in KINDS]
        if not kinds or bad:
            raise ValueError(f"kinds must be a non-empty subset of {list(KINDS)}, got {list(kinds)}")
        self.min_shapes, self.max_shapes = int(min_shapes), int(max_shapes)
        self.min_size, self.max_size = float(min_size), float(max_size)
        self.kinds = kinds

    @classmethod
    def from_config(cls, cfg: dict) -> "ShapesDataset":
        """Build from a dataset config dict; keys that are not constructor arguments (kind, path,
        train_size, ...) belong to the workflow and are ignored here."""
        keys = ("min_shapes", "max_shapes", "min_size", "max_size", "kinds")
        return cls(**{k: cfg[k] for k in keys if cfg.get(k) is not None})

    def config(self) -> dict:
        return {"kind": "shapes", "min_shapes": self.min_shapes, "max_shapes": self.max_shapes,
                "min_size": self.min_size, "max_size": self.max_size, "kinds": list(self.kinds)}

    def describe(self, seed: int) -> dict:
        """The continuous image of `seed`: {"background": (angle, c0 [3], c1 [3]), "shapes": [(shape, colour [3])]}.

        Only a Generator seeded with `seed` is used, so image i never depends on other images.
        """
        rng = np.random.default_rng(int(seed))
        angle = rng.uniform(0.0, 2 * np.pi)
        c0, c1 = rng.random(3), rng.random(3)
        n = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        shapes = []
        for _ in range(n):
            u = rng.random(_UNIFORMS_PER_SHAPE)
            kind = self.kinds[min(int(u[0] * len(self.kinds)), len(self.kinds) - 1)]
            shapes.append((self._make_shape(kind, u), u[1:4].copy()))
        return {"background": (angle, c0, c1), "shapes": shapes}

    def _make_shape(self, kind: str, u: np.ndarray):
        """Map the shape's uniforms u [10] to its geometry (u[0] kind and u[1:4] colour are used by the caller)."""
        size = self.min_size + u[4] * (self.max_size - self.min_size)
        # Keep a shape of diameter `size` inside the image (polygon corners may poke out slightly).
        cx = 0.5 * size + u[5] * (1.0 - size)
        cy = 0.5 * size + u[6] * (1.0 - size)
        theta = 2 * np.pi * u[7]
        r = 0.5 * size
        if kind == "disc":
            return Disc(cx, cy, r)
        if kind == "ring":
            thick = max(r * (_RING_FRACTION[0] + u[8] * (_RING_FRACTION[1] - _RING_FRACTION[0])),
                        _MIN_RING_THICKNESS)
            # Very small rings would otherwise become discs of negative inner radius.
            return Ring(cx, cy, r, max(r - thick, 0.0))
        if kind == "square":
            h = 0.4 * size * np.sqrt(2.0)          # half-diagonal of a square of side 0.8 size
            ang = theta + np.pi / 2 * np.arange(4)
        else:  # triangle: near-equilateral, vertex angles jittered by up to +-15 degrees
            h = 0.6 * size
            jitter = np.deg2rad(15.0) * (2 * np.array([u[8], u[9], 0.5]) - 1)
            ang = theta + 2 * np.pi / 3 * np.arange(3) + jitter
        verts = np.stack([cx + h * np.cos(ang), cy + h * np.sin(ang)], axis=1)
        return Polygon(tuple(map(tuple, verts)))

    def render(self, seed: int, R: int) -> np.ndarray:
        """Image `seed` at resolution R: [3, R, R] float32 in [-1, 1] (pixel = area average)."""
        if int(R) < 1:
            raise ValueError(f"resolution must be >= 1, got {R}")
        return _render(self.describe(seed), int(R))

    def render_batch(self, seeds: Sequence[int], R: int, progress: bool = False) -> np.ndarray:
        """[len(seeds), 3, R, R] float32 in [-1, 1]; row i depends on seeds[i] only."""
        out = np.empty((len(seeds), 3, int(R), int(R)), dtype=np.float32)
        for k, s in enumerate(tqdm(seeds, disable=not progress, leave=False, desc=f"render {R}px")):
            out[k] = self.render(s, R)
        return out


def _render(spec: dict, R: int) -> np.ndarray:
    """Rasterise a `describe` result at resolution R -> [3, R, R] float32 in [-1, 1]."""
    angle, c0, c1 = spec["background"]
    d = np.array([np.cos(angle), np.sin(angle)])
    # s(p) = (p - 1/2) . d / L + 1/2 with L = |dx| + |dy| spans [0, 1] exactly over the unit square, so the
    # gradient needs no clamping and stays linear: its pixel average is its value at the pixel centre.
    L = abs(d[0]) + abs(d[1])
    centres = (np.arange(R) + 0.5) / R - 0.5
    s = (centres[None, :] * d[0] + centres[:, None] * d[1]) / L + 0.5          # [R, R], rows = y
    img = c0[:, None, None] + (c1 - c0)[:, None, None] * s[None]
    # Gradient of s per pixel unit, for the first-moment correction of shapes over the background.
    grad = d / (L * R)
    # w: weight of the (still visible) linear background in each pixel, for the moment term.
    w = np.ones((R, R))
    for shape, colour in spec["shapes"]:
        box = pixel_box(shape.bbox(), R)
        if box is not None:
            _composite(img, w, shape, colour, c1 - c0, grad, R, box)
    return (2.0 * np.clip(img, 0.0, 1.0) - 1.0).astype(np.float32)


def _composite(img, w, shape, colour, dc, grad, R, box):
    """Put one shape over img [3, R, R] (in place) inside its pixel box.

    With coverage a and first moments m = (mx, my) of S ∩ pixel about the pixel centre, the exact pixel
    average of "background, then shape on top" is bg(centre) (1 - a) - grad(bg) . m + colour a, because
    ∫_{S∩Q} bg = bg(centre) a + grad(bg) . m for the linear background. Over earlier shapes the layer
    below is no longer linear; the "over" rule img (1 - a) + colour a is then the approximation, and the
    moment term is kept only for the background share w (exact when w is 0 or 1).
    """
    i0, i1, j0, j1 = box
    a, mx, my = shape.moments(R, i0, i1, j0, j1)
    a = np.clip(a, 0.0, 1.0)        # rounding can leave coverage a hair outside [0, 1]
    sub = img[:, i0:i1, j0:j1]
    ww = w[i0:i1, j0:j1]
    gm = ww * (grad[0] * mx + grad[1] * my)               # [h, w], grad(s) . m on the visible background
    sub *= 1.0 - a
    sub += colour[:, None, None] * a - dc[:, None, None] * gm
    ww *= 1.0 - a


# --------------------------------------------------------------------------------- prepared stores
DATASET_KINDS = ("shapes", *SOURCE_KINDS)
# Images per task of the decode/render pool (and per progress-bar update); the store does not depend on it.
_CHUNK = 64
# A seeded subset (n smaller than the split) spreads a small sample over the whole split: file order
# often follows identity or class. The seed is fixed, so every machine prepares the same images.
_SUBSET_SEED = 0


def report_path(store) -> Path:
    """The JSON report beside a prepared store: ``.../{split}.npy`` -> ``.../{split}.json``."""
    return Path(store).with_suffix(".json")


def prepare(dataset_cfg: dict, split: str, R: int, n: int | None, out_path, workers: int = 1,
            progress: bool = False) -> dict:
    """Render/decode `n` images of `split` at resolution R into the prepared store `out_path`; returns its report.

    The store is an uncompressed .npy holding uint8 [N, 3, R, R] (header by `open_memmap`), written
    chunk by chunk (the split is never held in memory) into a temporary file beside `out_path` and then
    moved into place (`infdiff.io.atomic_path`); the report, a JSON dict, is written after it to
    `report_path(out_path)`. Resizing (centre crop, antialiased LANCZOS) happens here, once.

    dataset_cfg: a validated ``datasets`` entry. kind "shapes": seeds of `SPLITS[split]`, n required.
    kind "folder" (a folder or .zip) or "lmdb": the split's range of the sorted name list
    (`FOLDER_SPLITS`); n=None takes all of it, a smaller n a seeded subset (`_SUBSET_SEED`) kept in
    sorted order. Files that cannot be read or decoded are skipped and listed in the report with their
    error, so N = counts.written = counts.selected - counts.skipped.
    workers: processes decoding (rendering) chunks of `_CHUNK` images; chunks are written in list
    order, so the store is the same for any number of workers.

    Report: kind, split, resolution, n (= N), shape, dtype, counts {listed (names in the split's
    range), selected, written, skipped}, skipped [{name, error}], source ({kind, path} or the generator
    config), index_range, fractions and num_files (file data), files_sha256 (sha256 of the selected
    sorted names, one per line), subset_seed, seed_range (procedural), wall_time.
    """
    kind, R = dataset_cfg["kind"], int(R)
    if split == FULL_SPLIT:
        raise ValueError(f"{FULL_SPLIT!r} is not a prepared split: it is the stores {', '.join(FULL_PARTS)} "
                         "read one after another (prepare those)")
    t0 = time.time()
    meta: dict = {"kind": kind, "split": split, "resolution": R}
    if kind == "shapes":
        if n is None:
            raise ValueError("n (number of images) is required for the procedural 'shapes' dataset: its "
                             "splits are infinite")
        spec = ShapesDataset.from_config(dataset_cfg)
        items = split_seeds(split, n)
        start = SPLITS[split][0]
        meta.update(source=spec.config(), dataset=spec.config(), seed_range=[start, start + int(n)])
        listed = len(items)
    elif kind in SOURCE_KINDS:
        if not dataset_cfg.get("path"):
            raise ValueError(f"dataset kind {kind!r} needs a 'path' (a folder or .zip of images, or an LMDB)")
        spec = ImageSource(kind, str(dataset_cfg["path"]))
        if split not in FOLDER_SPLITS:
            raise ValueError(f"unknown split {split!r}; known splits: {sorted(FOLDER_SPLITS)}")
        names = spec.names()
        start, stop = folder_splits(len(names))[split]
        items = _subset(names[start:stop], n, split, spec.path, len(names))
        listed = stop - start
        meta.update(source={"kind": kind, "path": spec.path}, path=spec.path, num_files=len(names),
                    index_range=[start, stop], fractions=list(FOLDER_SPLITS[split]))
    else:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {list(DATASET_KINDS)}")
    item_names = [str(i) for i in items]
    meta["files_sha256"] = hashlib.sha256("\n".join(item_names).encode()).hexdigest()
    meta["subset_seed"] = _SUBSET_SEED if len(items) < listed else None
    skipped = _write_store(out_path, spec, items, R, workers, f"prepare {split} {R}px", progress)
    written = len(items) - len(skipped)
    meta.update(n=written, shape=[written, 3, R, R], dtype="uint8", skipped=skipped,
                counts={"listed": listed, "selected": len(items), "written": written, "skipped": len(skipped)},
                wall_time=time.time() - t0)
    write_json(report_path(out_path), meta)
    return meta


def _subset(names: list[str], n: int | None, split: str, path: str, total: int) -> list[str]:
    """All of a split's sorted names (n None) or a seeded sorted subset of n of them."""
    if not names:
        a, b = FOLDER_SPLITS[split]
        raise ValueError(f"split {split!r} of {path} is empty: the fractions [{a}, {b}) of its {total} "
                         f"images hold none; the dataset needs more images")
    if n is None or int(n) == len(names):
        return names
    if not 0 < int(n) <= len(names):
        raise ValueError(f"asked for {n} images but split {split!r} of {path} holds {len(names)} (lower "
                         f"datasets.<name>.{split}_size, or set it to null for the whole split)")
    idx = np.sort(np.random.default_rng(_SUBSET_SEED).choice(len(names), int(n), replace=False))
    return [names[i] for i in idx]


def _chunk_images(spec, items, R: int) -> tuple[np.ndarray, list[dict]]:
    """Worker task: (uint8 [k, 3, R, R], skipped [{name, error}]) of one chunk of seeds or names."""
    if isinstance(spec, ShapesDataset):
        return to_uint8(spec.render_batch(items, R)), []
    return decode_chunk(spec, items, R)


def _in_order(spec, chunks: list, R: int, workers: int) -> Iterator[tuple[np.ndarray, list[dict]]]:
    """`_chunk_images` of each chunk, in chunk order; with workers > 1 from a process pool that runs
    at most 2 x workers chunks ahead of the writer (bounded memory)."""
    workers = min(int(workers), len(chunks))
    if workers <= 1:
        for c in chunks:
            yield _chunk_images(spec, c, R)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as ex:
        todo = iter(chunks)
        pending = deque(ex.submit(_chunk_images, spec, c, R) for c in itertools.islice(todo, 2 * workers))
        while pending:
            done = pending.popleft().result()
            pending.extend(ex.submit(_chunk_images, spec, c, R) for c in itertools.islice(todo, 1))
            yield done


def _write_store(out_path, spec, items, R: int, workers: int, desc: str, progress: bool) -> list[dict]:
    """Write the .npy store of `items` (seeds or names) atomically; returns the skipped [{name, error}]."""
    from numpy.lib.format import open_memmap

    chunks = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    skipped: list[dict] = []
    written = 0
    bar = tqdm(total=len(items), disable=not progress, desc=desc, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 15)
    with atomic_path(out_path) as tmp:
        # open_memmap writes the .npy header and sizes the file for every selected image; the rows then go
        # in with plain sequential writes, so this process holds one chunk at a time (the written pages
        # of a memory map would count as its resident memory, up to the whole split)
        header = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), 3, R, R))
        offset = header.offset
        del header
        with open(tmp, "r+b") as f:
            f.seek(offset)
            for u8, errors in _in_order(spec, chunks, R, workers):
                f.write(np.ascontiguousarray(u8, dtype=np.uint8).tobytes())
                written += len(u8)
                skipped += errors
                bar.update(len(u8) + len(errors))
        if written == 0:
            raise ValueError(f"none of the {len(items)} images for {out_path} could be read; first errors: "
                             + "; ".join(s["error"] for s in skipped[:3]))
        if written < len(items):
            _shrink_npy(tmp, written)
    bar.close()
    return skipped


def _shrink_npy(path, n: int) -> None:
    """Keep the first n rows of the .npy at `path`, in place: rewrite its header, truncate the file.

    numpy pads every .npy header so that the length of the first axis can change without changing the
    header's size (numpy.lib.format, GROWTH_AXIS_MAX_DIGITS); that is checked here, not assumed.
    """
    fmt = np.lib.format
    with open(path, "r+b") as f:
        version = fmt.read_magic(f)
        read, write = ((fmt.read_array_header_1_0, fmt.write_array_header_1_0) if version == (1, 0) else
                       (fmt.read_array_header_2_0, fmt.write_array_header_2_0))
        shape, fortran, dtype = read(f)
        data_start = f.tell()
        f.seek(0)
        write(f, {"descr": fmt.dtype_to_descr(dtype), "fortran_order": fortran, "shape": (n, *shape[1:])})
        if f.tell() != data_start:
            raise RuntimeError(f"{path}: the .npy header changed size when its first axis shrank")
        f.truncate(data_start + n * int(np.prod(shape[1:])) * dtype.itemsize)


def load_prepared(path, with_meta: bool = False):
    """A prepared store as a read-only memory map, uint8 [N, 3, R, R] (and its report dict if with_meta).

    Nothing is read until it is indexed: a batch `images[i:j]` (or fancy-indexed rows) reads those rows
    from disk, so a split of any size costs no memory. The report (`report_path`) must be there and
    agree with the store's shape.
    """
    p = Path(path)
    how = "create it with infdiff.data.prepare / `python -m infdiff prepare` (the workflow: rule prepare_data)"
    if not p.is_file():
        raise FileNotFoundError(f"prepared data not found: {p} ({how})")
    r = report_path(p)
    if not r.is_file():
        raise FileNotFoundError(f"prepared data {p} has no report {r} (it was not made by prepare, or prepare "
                                f"was interrupted): {how}")
    try:
        images = np.load(p, mmap_mode="r", allow_pickle=False)
        meta = json.loads(r.read_text(encoding="utf-8"))
    except Exception as e:                 # ValueError (bad header, truncated), OSError, JSONDecodeError, ...
        raise ValueError(f"cannot read prepared data {p} (corrupt or not made by prepare): "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(images, np.memmap) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{p}: expected a .npy of uint8 images [N, 3, R, R], got {got}")
    if list(images.shape) != meta.get("shape"):
        raise ValueError(f"{p} holds {list(images.shape)} but its report {r} says {meta.get('shape')}: they "
                         "come from different runs of prepare; prepare the split again")
    return (images, meta) if with_meta else images


# -------------------------------------------------------------------------------------- conversions
def to_float(u8) -> torch.Tensor:
    """uint8 ndarray/tensor [N, 3, R, R] -> float32 torch tensor in [-1, 1] (x / 127.5 - 1), same device."""
    import torch  # here, not at the top: preparing data (a job of its own) never needs torch

    if isinstance(u8, np.ndarray) and not u8.flags.writeable:
        u8 = np.array(u8)              # a read-only memory map (`load_prepared`): torch wants writable memory
    t = torch.as_tensor(u8)
    if t.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {t.dtype}")
    return t.to(torch.float32) / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
    """float tensor/ndarray in [-1, 1] -> uint8 ndarray (rounded, clipped; NaN -> 0)."""
    torch = sys.modules.get("torch")     # x can only be a tensor if torch is imported
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    v = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=-1.0)
    return np.clip(np.rint((v + 1.0) * 127.5), 0, 255).astype(np.uint8)
