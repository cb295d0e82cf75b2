"""Generic sampling at any resolution from a trained run, and the files people and metrics read.

``samples.npz`` holds uint8 images [N, 3, R, R] plus the seeds that made them (the metrics read it);
``grid.png`` is the same images as one picture for people. Image i of a run is determined by its seed
alone (per-sample noise streams), so a sample set can be extended or re-batched without changing the
images already drawn.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from infdiff.data import to_uint8
from infdiff.io import load_method, pick_device, save_png, savez_compressed
from infdiff.noise import batch_white_noise
from infdiff.precision import autocast, resolve_precision


# Pixels per sampling batch: 16 images at 256 px; 4 at 512 px, 1 at 1024 px (activations grow with R^2).
MAX_BATCH_PIXELS = 16 * 256 * 256


@dataclass
class Samples:
    """Images drawn from a checkpoint and how they were made.

    images: uint8 [N, 3, R, R]. resized_from: the resolution they were sampled at when the method cannot
    sample at R natively (a grid model: sampled at R_train and resized, see :func:`resize_images`), else
    None. precision: the network arithmetic actually used ("bf16" or "fp32").
    """

    images: np.ndarray
    resized_from: int | None
    precision: str


def resize_images(x: Tensor, resolution: int) -> Tensor:
    """Antialiased bicubic resize of images [B, C, r, r] in [-1, 1] to [B, C, R, R] (clamped to [-1, 1]).

    Used only for methods that cannot sample at R (simple diffusion's U-ViT): their rows at other
    resolutions are this resize of their training-resolution samples, and are labelled as such.
    """
    y = F.interpolate(x.float(), size=(resolution, resolution), mode="bicubic", antialias=True,
                      align_corners=False)
    return y.clamp(-1, 1)


def sample_checkpoint(checkpoint: str | Path, resolution: int, seeds: Sequence[int], steps: int,
                      sampler: str = "ddim", eta: float = 0.0, batch_size: int = 32,
                      device: str = "auto", progress: bool = True, max_pixels: int = MAX_BATCH_PIXELS,
                      latent: str | Path | None = None, weights: str = "last") -> Samples:
    """EMA weights of ``checkpoint`` in eval mode -> :class:`Samples` at ``resolution``.

    Methods that sample at any R (∞-Diff, the MLP) are sampled at R directly; the others at their
    training resolution, then resized with :func:`resize_images`. The network runs in the run's
    ``precision`` (:mod:`infdiff.precision`). A batch holds at most ``max_pixels`` pixels (at least one
    image), so memory stays bounded at 1024 px; images depend on their seeds only, not on the batching.
    An autoencoder run needs its stage-2 ``latent`` checkpoint: each seed's z is drawn from it.
    ``weights``: "last" or "best" EMA weights (:func:`infdiff.io.checkpoint_weights`).
    """
    dev = pick_device(device)
    method, cfg = load_method(checkpoint, dev, latent=latent, weights=weights)
    precision = resolve_precision(cfg["precision"], dev)
    native = method.spec.any_resolution or resolution == method.train_res
    R = resolution if native else int(cfg["resolution"])
    batch_size = max(1, min(batch_size, max_pixels // (R * R)))
    images = []
    seeds = list(seeds)
    # tqdm over batches; the sampler's own per-step bar stays off to keep logs readable.
    from tqdm.auto import tqdm
    for start in tqdm(range(0, len(seeds), batch_size), desc=f"sample {resolution}px",
                      disable=not progress, dynamic_ncols=True,
                      mininterval=0.1 if sys.stderr.isatty() else 15):
        with autocast(precision, dev):
            x = method.sample(seeds[start:start + batch_size], R, steps, progress=False,
                              sampler=sampler, eta=eta)
        if not native:
            x = resize_images(x, resolution)
        images.append(to_uint8(x))
    return Samples(np.concatenate(images), None if native else R, precision)


def resize_sample_set(path: str | Path, resolution: int, seeds: Sequence[int]) -> Samples:
    """The images of ``seeds`` from a sample set drawn at another resolution (a ``samples.npz`` of
    :func:`save_samples`), resized to ``resolution`` by :func:`resize_images`: a grid model's rows above its
    training resolution, made from the set it already drew there instead of sampling the same seeds again.

    The set's uint8 images are mapped back to [-1, 1] (the inverse of ``to_uint8``) before the resize, so a
    pixel may differ by up to two levels from resizing the sampler's float output (the bicubic's overshoot
    carries the input's rounding). Seeds missing from the set are
    an error. Returns :class:`Samples` with ``resized_from`` the set's resolution and its precision.
    """
    with np.load(path) as z:
        images, have, meta = z["images"], z["seeds"], json.loads(str(z["meta"]))
    pos = {int(s): i for i, s in enumerate(have)}
    missing = [int(s) for s in seeds if int(s) not in pos]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} of the seeds to resize (first: {missing[0]}); "
                         "sample them at its resolution first")
    x = torch.from_numpy(images[[pos[int(s)] for s in seeds]]).float() / 127.5 - 1.0    # [N, 3, r, r]
    out = [to_uint8(resize_images(x[i:i + 64], resolution)) for i in range(0, len(x), 64)]
    precision = meta.get("provenance", {}).get("precision")
    if precision is None:
        raise ValueError(f"{path} does not record the precision it was sampled in (meta.provenance.precision)")
    return Samples(np.concatenate(out), int(images.shape[-1]), precision)


def noise_images(seeds: Sequence[int], resolution: int) -> np.ndarray:
    """Pure Gaussian noise clipped to [-1, 1] as uint8 [N, 3, R, R]: the top of every quality scale."""
    return to_uint8(batch_white_noise(list(seeds), resolution, channels=3).clamp(-1, 1))


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 [N, 3, R, R] -> one uint8 picture [H, W, 3] with ``pad`` white pixels between tiles."""
    n, c, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    canvas = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y:y + h, x:x + w] = img.transpose(1, 2, 0)
    return canvas


def save_samples(images: np.ndarray, seeds: Sequence[int], npz_path: str | Path,
                 png_path: str | Path | None = None, max_grid: int = 64, meta: dict | None = None) -> None:
    """Write samples.npz (images, seeds, meta as JSON) and a PNG grid, both atomically (:mod:`infdiff.io`)."""
    savez_compressed(npz_path, images=images, seeds=np.asarray(list(seeds), dtype=np.int64),
                     meta=np.asarray(json.dumps(meta or {}, sort_keys=True, default=str)))
    if png_path is not None:
        save_png(png_path, image_grid(images[:max_grid]))


def load_samples(path: str | Path) -> np.ndarray:
    """uint8 images [N, 3, R, R] of a samples.npz; a missing or corrupt file is a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"samples file {path} does not exist; run the sample step first")
    try:
        with np.load(path) as z:
            return z["images"]
    except Exception as e:
        raise RuntimeError(f"samples file {path} is corrupt ({type(e).__name__}: {e}); delete it and "
                           "sample again") from e


def timed(fn, *args, **kwargs):
    """(result, wall seconds) of fn(*args, **kwargs); wall time goes into every result's provenance."""
    t0 = time.time()
    out = fn(*args, **kwargs)
    return out, time.time() - t0

