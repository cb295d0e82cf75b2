"""Datasets: a procedural infinite-resolution image family, local image folders, and prepared .npz files.

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

Splits. Procedural splits are disjoint seed ranges (`SPLITS`): "train", "ref" (reference set for
metrics) and "ref2" (a second, disjoint reference set: real-vs-real metric floor). Real-data splits
(`FOLDER_SPLITS`) are fixed fractions of the *sorted* file list.

Real data (CelebA-HQ, FFHQ, LSUN Church from local files): `load_image_folder` reads a folder (recursive)
or a .zip of png/jpg/jpeg/webp, centre-crops to a square and resizes with PIL's antialiased LANCZOS.
`prepare` writes either kind to an .npz (uint8 [N, 3, R, R] + JSON meta) atomically (`infdiff.io.savez`);
`load_prepared` reads it back. `to_float` / `to_uint8` convert between uint8 and the library's float32 [-1, 1].
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .io import savez
from .shapes_geometry import Disc, Polygon, Ring, pixel_box

KINDS = ("disc", "ring", "square", "triangle")
# Every shape consumes this many uniforms whatever its kind, so the generator stream (and hence every
# later shape of the image) does not depend on which kinds are enabled.
_UNIFORMS_PER_SHAPE = 10
# Ring thickness: a random fraction of the outer radius, but never thinner than 1/16 of the image side
# (2 px at the 32 px training resolution) so rings stay recognisable there.
_RING_FRACTION = (0.3, 0.55)
_MIN_RING_THICKNESS = 1.0 / 16.0

# Disjoint seed ranges [start, stop) of the procedural splits.
SPLITS = {"train": (0, 10**7), "ref": (10**7, 2 * 10**7), "ref2": (2 * 10**7, 3 * 10**7)}


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


def split_seeds(split: str, n: int) -> np.ndarray:
    """First n seeds (int64 [n]) of a procedural split's seed range (`SPLITS`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {sorted(SPLITS)}")
    start, stop = SPLITS[split]
    if not 0 <= int(n) <= stop - start:
        raise ValueError(f"split {split!r} holds {stop - start} seeds, asked for {n}")
    return np.arange(start, start + int(n), dtype=np.int64)


# ---------------------------------------------------------------------------------- real image data
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# Real-data splits as [start, stop) fractions of the sorted file list: the last 20% is held out, in two
# disjoint halves, so "ref" and "ref2" never overlap each other or the training images.
FOLDER_SPLITS = {"train": (0.0, 0.8), "ref": (0.8, 0.9), "ref2": (0.9, 1.0)}


def folder_splits(num_files: int) -> dict[str, tuple[int, int]]:
    """Index ranges [start, stop) into the sorted file list for each split (see `FOLDER_SPLITS`)."""
    return {k: (int(np.floor(a * num_files)), int(np.floor(b * num_files)))
            for k, (a, b) in FOLDER_SPLITS.items()}


def list_images(path) -> list[str]:
    """Sorted image names under `path`: a folder (recursive, relative POSIX paths) or a .zip (member names).

    Sorting relative names makes the order, hence the splits, independent of where the data is mounted.
    macOS metadata ("__MACOSX/", "._*") is skipped; it is not an image.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"image data not found: {p}. Put the dataset there as a folder of images "
            f"({'/'.join(IMAGE_EXTENSIONS)}, searched recursively) or as a .zip of such images.")
    if p.is_dir():
        names = [q.relative_to(p).as_posix() for q in p.rglob("*") if q.is_file()]
    elif zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    else:
        raise ValueError(f"{p} is neither a folder nor a .zip archive of images")
    names = sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)
                   and not n.startswith("__MACOSX/") and not n.rsplit("/", 1)[-1].startswith("._"))
    if not names:
        raise ValueError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found in {p}")
    return names


def _decode(data, name: str, R: int) -> np.ndarray:
    """Bytes or path of one image -> centre-cropped, resized uint8 [3, R, R]; ValueError naming the file."""
    from PIL import Image
    try:
        with Image.open(data) as im:
            im.load()                      # decode now, so truncated/corrupt data fails here, by name
            im = im.convert("RGB")
    except Exception as e:                 # PIL raises OSError, SyntaxError, struct.error, ... for bad files
        raise ValueError(f"cannot read image {name}: {type(e).__name__}: {e}") from e
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != R:
        # LANCZOS on the PIL image widens its support when downscaling, i.e. it is antialiased.
        im = im.resize((R, R), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _load_names(src: str, names: Sequence[str], R: int, progress: bool = False) -> np.ndarray:
    """Decode `names` from folder or zip `src` -> uint8 [len(names), 3, R, R] (also a worker task)."""
    out = np.empty((len(names), 3, R, R), dtype=np.uint8)
    bar = tqdm(names, disable=not progress, leave=False, desc=f"load {R}px")
    if Path(src).is_dir():
        for k, n in enumerate(bar):
            out[k] = _decode(str(Path(src) / n), str(Path(src) / n), R)
    else:
        with zipfile.ZipFile(src) as zf:
            for k, n in enumerate(bar):
                out[k] = _decode(io.BytesIO(zf.read(n)), f"{n} (in {src})", R)
    return out


def select_images(path, n: int | None = None, seed: int | None = 0, split: str | None = None) -> list[str]:
    """The sorted image names `load_image_folder` would read (same arguments), without decoding them."""
    names = list_images(path)
    if split is not None:
        if split not in FOLDER_SPLITS:
            raise ValueError(f"unknown split {split!r}; known splits: {sorted(FOLDER_SPLITS)}")
        start, stop = folder_splits(len(names))[split]
        names = names[start:stop]
    if n is not None:
        if not 0 < int(n) <= len(names):
            where = f"split {split!r} of {path}" if split else str(path)
            raise ValueError(f"asked for {n} images but {where} holds {len(names)}")
        if int(n) < len(names):
            # A seeded subset spreads a small sample over the whole folder (file order often follows
            # identity or class); seed=None takes the first n instead. Either way sorted -> deterministic.
            idx = (np.arange(int(n)) if seed is None else
                   np.sort(np.random.default_rng(int(seed)).choice(len(names), int(n), replace=False)))
            names = [names[i] for i in idx]
    return names


def load_image_folder(path, R: int, n: int | None = None, seed: int | None = 0, split: str | None = None,
                      workers: int = 1, progress: bool = False) -> np.ndarray:
    """Real images as uint8 [N, 3, R, R]: centre-cropped to a square, resized to R (antialiased LANCZOS).

    path: folder (searched recursively) or .zip of png/jpg/jpeg/webp. split: restrict to a `FOLDER_SPLITS`
    range of the sorted list first. n: number of images (all if None), a seeded sorted subset (see
    `select_images`). workers > 1 decodes in that many processes (same result, in the same order).
    Errors: FileNotFoundError for a missing path, ValueError for no images / an unreadable image (named).
    """
    R = int(R)
    names = select_images(path, n=n, seed=seed, split=split)
    src = str(path)
    if workers <= 1 or len(names) < 2 * workers:
        return _load_names(src, names, R, progress)
    from concurrent.futures import ProcessPoolExecutor
    # Contiguous chunks keep the output in list order; each worker opens the zip itself.
    chunks = [list(c) for c in np.array_split(np.array(names, dtype=object), 4 * workers) if len(c)]
    with ProcessPoolExecutor(max_workers=workers) as ex:
        parts = list(tqdm(ex.map(_load_names, [src] * len(chunks), chunks, [R] * len(chunks)),
                          total=len(chunks), disable=not progress, leave=False, desc=f"load {R}px"))
    return np.concatenate(parts)


# ------------------------------------------------------------------------------- prepared .npz files
DATASET_KINDS = ("shapes", "folder")


def prepare(dataset_cfg: dict, split: str, R: int, n: int | None, out_path, progress: bool = False) -> dict:
    """Render/load `n` images of `split` at resolution R into the .npz `out_path`; returns its meta.

    dataset_cfg: a validated ``datasets`` entry: {"kind": "shapes", min_shapes, max_shapes, min_size,
    max_size} (seeds from `SPLITS`) or {"kind": "folder", "path": ...} (files from `FOLDER_SPLITS`,
    shuffled with the fixed seed 0 so every machine gets the same split; n=None takes the whole split). The file holds `images` uint8 [N, 3, R, R] and `meta` (a JSON string); it is
    written to a temporary file in the same directory and moved into place, so readers never see a
    partial file.
    """
    kind = dataset_cfg["kind"]
    R = int(R)
    meta = {"kind": kind, "split": split, "R": R}
    if kind == "shapes":
        if n is None:
            raise ValueError("n (number of images) is required for the procedural 'shapes' dataset")
        ds = ShapesDataset.from_config(dataset_cfg)
        seeds = split_seeds(split, n)
        images = to_uint8(ds.render_batch(seeds, R, progress=progress))
        start = SPLITS[split][0]
        meta.update(n=int(n), seed_range=[start, start + int(n)], dataset=ds.config())
    elif kind == "folder":
        path = dataset_cfg["path"]
        if not path:
            raise ValueError("dataset kind 'folder' needs a 'path' (a folder or .zip of images)")
        seed = 0
        names = select_images(path, n=n, seed=seed, split=split)
        images = load_image_folder(path, R, n=n, seed=seed, split=split, progress=progress)
        total = len(list_images(path))
        meta.update(n=len(names), path=str(path), num_files=total, seed=seed,
                    index_range=list(folder_splits(total)[split]),
                    files_sha256=hashlib.sha256("\n".join(names).encode()).hexdigest())
    else:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {list(DATASET_KINDS)}")
    savez(out_path, images=images, meta=np.array(json.dumps(meta, sort_keys=True)))
    return meta


def load_prepared(path, with_meta: bool = False):
    """uint8 [N, 3, R, R] from a `prepare` output (and its meta dict if with_meta)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prepared data not found: {p} (create it with infdiff.data.prepare / "
                                f"`python -m infdiff prepare`)")
    try:
        with np.load(p, allow_pickle=False) as z:
            images = z["images"]
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    except Exception as e:                 # zipfile.BadZipFile, KeyError, ValueError, EOFError, ...
        raise ValueError(f"cannot read prepared data {p} (corrupt or not made by prepare): {e}") from e
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{p}: expected uint8 images [N, 3, R, R], got {images.dtype} {images.shape}")
    return (images, meta) if with_meta else images


# -------------------------------------------------------------------------------------- conversions
def to_float(u8) -> torch.Tensor:
    """uint8 ndarray/tensor [N, 3, R, R] -> float32 torch tensor in [-1, 1] (x / 127.5 - 1), same device."""
    t = torch.as_tensor(u8)
    if t.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {t.dtype}")
    return t.to(torch.float32) / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
    """float tensor/ndarray in [-1, 1] -> uint8 ndarray (rounded, clipped; NaN -> 0)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    v = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=-1.0)
    return np.clip(np.rint((v + 1.0) * 127.5), 0, 255).astype(np.uint8)
