"""Real photographs for the rehearsal preset: crops of the colour photos inside scikit-image's wheel.

``workflow/presets/rehearsal.yaml`` runs the paper presets' structure (files on disk, an LMDB, the
autoencoder framework, DDIM, validation, FID/FID_CLIP through the real loading code) on 2 CPU cores in
minutes. Its data must be *real photographs that are already on the machine*: scikit-image ships nine
colour photos (``skimage.data``: astronaut, cat, coffee, rocket, a Hubble field, microscopy, a retina,
a stereo pair). ``write_photo_crops`` cuts ``n`` random square crops of random size out of them and writes
them as the raw datasets arrive: a folder of PNG/JPEG files (as CelebA-HQ and FFHQ) and an LMDB of
encoded images keyed by id (as LSUN Church is distributed). Crop i depends on (seed, i) only.

    python -m infdiff rehearsal-data --out data/rehearsal --n 640
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

# The colour photographs bundled in scikit-image's wheel (skimage.data loaders that need no download).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "stereo_motorcycle")


def photos() -> list[np.ndarray]:
    """The bundled colour photos as uint8 [H, W, 3] arrays (the stereo pair gives two)."""
    try:
        import skimage.data as data
    except ImportError as e:
        raise ImportError("the rehearsal data are crops of scikit-image's bundled photos: install the test "
                          "extra from the lock (pip install -c requirements/lock.txt -e \".[test]\")") from e
    out = []
    for name in PHOTOS:
        got = getattr(data, name)()
        for im in (got[:2] if name == "stereo_motorcycle" else (got,)):
            out.append(np.ascontiguousarray(im[..., :3]).astype(np.uint8))
    return out


def crop(images: list[np.ndarray], seed: int, i: int, min_side: int, max_side: int) -> np.ndarray:
    """Crop i: a random photo, a random side in [min_side, max_side] (<= the photo), a random place."""
    rng = np.random.default_rng([int(seed), int(i)])
    im = images[int(rng.integers(len(images)))]
    h, w = im.shape[:2]
    side = int(rng.integers(min_side, min(max_side, h, w) + 1))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    return im[y:y + side, x:x + side]


def encode(im: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    opts = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    Image.fromarray(im).save(buf, format=fmt, **opts)
    return buf.getvalue()


def write_photo_crops(out: str | Path, n: int = 640, seed: int = 0, min_side: int = 48,
                      max_side: int = 192) -> dict:
    """Write ``n`` crops as ``out/folder/<id>.{png,jpg}`` (alternating formats) and ``out/lmdb`` (key: id,
    value: lossless WebP bytes, as LSUN's encoded values; the PNG crops decode to the same pixels). Returns {"folder": path, "lmdb": path, "n": n}. Existing output is
    replaced, so the result depends on the arguments only."""
    import shutil

    import lmdb

    out = Path(out)
    folder, db = out / "folder", out / "lmdb"
    for p in (folder, db):
        if p.exists():
            shutil.rmtree(p)
    folder.mkdir(parents=True)
    images = photos()
    crops = [crop(images, seed, i, min_side, max_side) for i in range(int(n))]
    for i, c in enumerate(crops):
        fmt, ext = ("PNG", "png") if i % 2 == 0 else ("JPEG", "jpg")
        (folder / f"{i:05d}.{ext}").write_bytes(encode(c, fmt))
    size = sum(len(encode(c, "WEBP")) for c in crops[:16]) * (len(crops) // 16 + 1) * 4 + (1 << 20)
    env = lmdb.open(str(db), map_size=size, subdir=True)
    with env.begin(write=True) as txn:
        for i, c in enumerate(crops):
            txn.put(f"{i:05d}".encode(), encode(c, "WEBP"))
    env.close()
    return {"folder": str(folder), "lmdb": str(db), "n": int(n)}
