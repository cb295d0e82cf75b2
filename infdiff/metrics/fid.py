"""FID, FID_CLIP and KID through clean-fid, offline, against cached reference statistics (docs/architecture.md, "Metrics").

The paper reports FID_CLIP (Kynkäänniemi et al. 2023): the Fréchet distance between Gaussians fitted to
CLIP ViT-B/32 image embeddings of samples and of real images; Inception FID and KID are computed the same
way with clean-fid's "clean" mode Inception-V3. The numbers must be clean-fid's, so this module keeps
clean-fid's pipeline (per-image PIL resize without quantisation, feature maths in
``cleanfid.fid``) and only replaces what cannot run offline: clean-fid downloads its networks (and, for
CLIP, imports OpenAI's ``clip`` package), so the networks are read here from configured local files and
handed to clean-fid's ``custom_feat_extractor`` contract.

Images are uint8 numpy arrays ``[N, 3, R, R]`` (samples.npz "images", or a prepared store's memory map).
Features are float64 ``[N, D]``.

Reference statistics of real data (mu, sigma and the features themselves, which KID needs) are saved
once per :func:`reference_stats_key`: a hash of everything that shapes them (dataset entry, split and
its definition, resolution, image count, extractor, preprocessing, sha256 of the weight file), so that a
change of any of them makes a new file instead of silently reusing a stale one. :func:`features` reads
its images batch by batch, so a memory-mapped prepared store (``infdiff.data.load_prepared``) is never
loaded whole.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

# weights.py sets HF_HUB_OFFLINE before anything here imports open_clip (it must come first).
from infdiff.metrics.weights import MissingWeightsError, weights_path
from infdiff.io import savez
# what names a statistics file, torch-free so that Snakemake can compute it while reading the workflow
from infdiff.metrics.stats_key import (DEFAULT_CLIP_ARCH, EXTRACTOR_OF, INCEPTION_SIZE, clip_config, clip_preprocessing,
                                       configured_stats_key, extractor_preprocessing, file_sha256,
                                       reference_stats_key)
from infdiff.provenance import canonical_json

__all__ = [
    "EXTRACTOR_OF", "DEFAULT_CLIP_ARCH", "FeatureExtractor", "MissingWeightsError", "load_extractor",
    "extractor_preprocessing", "features", "gaussian_stats", "frechet_distance", "kid", "save_reference_stats",
    "load_reference_stats", "reference_stats_key", "configured_stats_key", "file_sha256", "score",
]


class FeatureExtractor:
    """A feature network in clean-fid's two-part contract.

    Attributes:
        name: extractor name ("inception" or "clip_vit_b_32", see :data:`EXTRACTOR_OF`).
        dim: feature dimension D.
        resize: ``(img: np.ndarray [H, W, 3] uint8) -> np.ndarray [S, S, 3]`` (clean-fid's
            ``custom_fn_resize``); float32 (Inception, not quantised) or uint8 (CLIP).
        preprocessing: JSON-able description of resize, normalisation and architecture (cache keys).
        weights_file: path of the weight file the network was read from.
        device: torch device the network runs on.

    Calling it, ``extractor(x)`` with ``x: [B, 3, S, S]`` float in [0, 255], returns features ``[B, D]``
    (float32 tensor on ``device``) without building a graph: clean-fid's ``custom_feat_extractor``.
    """

    def __init__(self, name: str, dim: int, forward: Callable[[torch.Tensor], torch.Tensor],
                 resize: Callable[[np.ndarray], np.ndarray], preprocessing: dict, weights_file: str,
                 device: str | torch.device = "cpu") -> None:
        self.name = name
        self.dim = int(dim)
        self.resize = resize
        self.preprocessing = preprocessing
        self.weights_file = str(weights_file)
        self.device = torch.device(device)
        self._forward = forward

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self._forward(x.to(self.device, torch.float32))
        return z.reshape(z.shape[0], -1).float()


# ----------------------------------------------------------------------------------------------------
# Loading the networks (local files only)
# ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_torchscript():
    """Silence torch's notices about TorchScript files: they are the format these weights ship in
    (clean-fid's Inception, OpenAI's CLIP), so the deprecation/dispatch notes carry no information."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.(load|script)` is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*looks like a TorchScript archive.*")
        yield


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``<archive>/constants.pkl``, which plain
    ``torch.save`` files never have; the same test as torch.serialization._is_torchscript_zip)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in z.namelist())


def _load_inception(path: Path, device: str | torch.device) -> FeatureExtractor:
    """clean-fid's InceptionV3W in "clean" mode, from a local TorchScript file."""
    from cleanfid.resize import build_resizer

    with _quiet_torchscript():
        base = torch.jit.load(str(path), map_location=device).eval()
    if not hasattr(base, "layers"):
        raise ValueError(f"{path}: not clean-fid's Inception TorchScript (inception-2015-12-05.pt): the module "
                         "has no 'layers' submodule")
    layers = base.layers

    def forward(x: torch.Tensor) -> torch.Tensor:
        # InceptionV3W.forward with resize_inside=False: the caller has resized to 299 already; the
        # network wants [-1, 1] and its `layers` end at the 2048-d pool3 features.
        if tuple(x.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            raise ValueError(f"Inception input must be resized to {INCEPTION_SIZE}x{INCEPTION_SIZE}, got "
                             f"{tuple(x.shape)}")
        return layers.forward((x - 128) / 128)

    # D is whatever the file's network produces (2048 for the real one); one probe image finds it.
    with torch.no_grad():
        dim = forward(torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, device=device)).reshape(1, -1).shape[1]
    return FeatureExtractor("inception", dim, forward, build_resizer("clean"),
                            extractor_preprocessing("inception"), str(path), device)


def _load_clip(path: Path, device: str | torch.device, clip_arch: str) -> FeatureExtractor:
    """CLIP image encoder through open_clip from a local file (OpenAI's TorchScript or a state dict)."""
    import open_clip
    from PIL import Image
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    cfg = clip_config(open_clip, clip_arch)
    if not cfg.get("quick_gelu", False):
        warnings.warn(f"metrics.clip_arch '{clip_arch}' uses nn.GELU, but OpenAI's CLIP weights were trained "
                      f"with QuickGELU: use '{DEFAULT_CLIP_ARCH}' for OpenAI's ViT-B-32.pt", stacklevel=3)
    # OpenAI's ViT-B-32.pt is a TorchScript archive: open_clip's load_state_dict reads it through
    # torch.load, which refuses TorchScript when weights_only=True (torch >= 2.6) and otherwise
    # dispatches to torch.jit.load (no arbitrary pickle); plain state dicts keep weights_only=True.
    with _quiet_torchscript():
        model, _, _ = open_clip.create_model_and_transforms(
            clip_arch, pretrained=str(path), device=device, weights_only=not _is_torchscript(path))
    model.eval()
    pp = model.visual.preprocess_cfg
    preprocessing = clip_preprocessing(clip_arch, bool(cfg.get("quick_gelu", False)), pp["size"], pp["mean"],
                                        pp["std"], pp["interpolation"], pp["resize_mode"])
    if preprocessing != extractor_preprocessing("clip_vit_b_32", clip_arch):
        # The static description feeds the reference-statistics cache key; it must describe this model.
        raise RuntimeError(f"open_clip's preprocessing for {clip_arch} ({pp}) differs from the one "
                           "infdiff.metrics.fid.extractor_preprocessing describes; update it")
    if pp["resize_mode"] != "shortest":
        raise ValueError(f"{clip_arch}: resize mode {pp['resize_mode']!r} is not clean-fid's (shortest side)")
    size = preprocessing["resize"]["size"][0]
    resize_t = Resize(size, interpolation=InterpolationMode(pp["interpolation"]))
    crop = CenterCrop(size)

    def resize(img: np.ndarray) -> np.ndarray:
        # cleanfid/clip_features.py img_preprocess_clip (not imported: it imports OpenAI's `clip`),
        # with the model's own input size: shorter side to `size`, centre crop, uint8.
        x = Image.fromarray(np.asarray(img).astype(np.uint8)).convert("RGB")
        return np.asarray(crop(resize_t(x))).clip(0, 255).astype(np.uint8)

    mean = torch.tensor(pp["mean"], dtype=torch.float32, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(pp["std"], dtype=torch.float32, device=device).reshape(1, 3, 1, 1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        # clean-fid's CLIP_fx: [0, 255] -> [0, 1] -> CLIP normalisation -> projected image embedding.
        return model.encode_image((x / 255.0 - mean) / std)

    dim = getattr(model.visual, "output_dim", None) or cfg["embed_dim"]
    return FeatureExtractor("clip_vit_b_32", dim, forward, resize, preprocessing, str(path), device)


def load_extractor(name: str, weights: dict | None, device: str | torch.device = "cpu",
                   clip_arch: str = DEFAULT_CLIP_ARCH) -> FeatureExtractor:
    """Load feature extractor ``name`` ("inception" | "clip_vit_b_32") from its configured local file.

    Args:
        name: extractor name (a value of :data:`EXTRACTOR_OF`).
        weights: the config's ``metrics.weights`` mapping (key -> path).
        device: torch device to run on.
        clip_arch: open_clip architecture of the CLIP weights (``metrics.clip_arch``).

    Raises:
        MissingWeightsError: the weight file is not configured or absent (before anything is built).
    """
    if name not in ("inception", "clip_vit_b_32"):
        raise ValueError(f"unknown feature extractor '{name}' (known: inception, clip_vit_b_32)")
    # First: a missing file must stop the run before minutes of imports and model building.
    path = weights_path(name, weights)
    if name == "inception":
        return _load_inception(path, device)
    return _load_clip(path, device, clip_arch)


# ----------------------------------------------------------------------------------------------------
# Features and the distances
# ----------------------------------------------------------------------------------------------------


def _to_float32(img: np.ndarray) -> np.ndarray:
    """A resized [S, S, 3] image as [3, S, S] float32 in [0, 255], exactly as clean-fid's ResizeDataset:
    uint8 goes through ToTensor() * 255, i.e. /255 then *255 in float32 (not always the identity in
    floating point, and clean-fid's numbers include that rounding; IEEE float32 division and product
    round the same in numpy as in torch); float images are taken as they are."""
    x = img.transpose(2, 0, 1)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255) * np.float32(255)
    return x.astype(np.float32)


def features(images: np.ndarray, extractor: FeatureExtractor, batch_size: int = 64,
             device: str | torch.device = "cpu", progress: bool = False) -> np.ndarray:
    """Features of images: ``[N, 3, R, R]`` uint8 -> ``[N, D]`` float64.

    Each image is resized on its own by ``extractor.resize`` (HWC uint8 in, as clean-fid's ResizeDataset),
    then batches of ``batch_size`` go through the network; results do not depend on the batch size
    beyond floating-point reassociation.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, 3, R, R], got {images.dtype} {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = [np.zeros((0, extractor.dim))]
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, disable=not progress, leave=False, desc=f"{extractor.name} features"):
        # numpy stacks: torch's multi-threaded copy is ~10x slower on a busy 2-core machine.
        batch = torch.from_numpy(np.stack([_to_float32(extractor.resize(img.transpose(1, 2, 0)))
                                           for img in images[s:s + batch_size]]))
        out.append(extractor(batch.to(device)).cpu().numpy().astype(np.float64))
    return np.concatenate(out)


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, np.cov rowvar=False as clean-fid) of ``[N, D]``."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"need features [N >= 2, D] for a covariance, got shape {feats.shape}")
    return feats.mean(axis=0), np.atleast_2d(np.cov(feats, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), by clean-fid:

        d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

    computed by ``cleanfid.fid.frechet_distance`` (scipy sqrtm; eps on the diagonals if the product is
    singular), because the paper's numbers come from clean-fid.
    """
    from cleanfid.fid import frechet_distance as _cleanfid_fd

    said = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(said):
        # clean-fid passes sqrtm(disp=False), deprecated in scipy 1.17 (removed in 1.18): a note for
        # clean-fid, not for our users.
        warnings.filterwarnings("ignore", message=r".*`disp` argument is deprecated.*", category=DeprecationWarning)
        value = _cleanfid_fd(np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64),
                             np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64))
    # clean-fid prints when it regularises a singular product; the library never prints, so warn.
    if said.getvalue().strip():
        warnings.warn(f"clean-fid: {said.getvalue().strip()}", RuntimeWarning, stacklevel=2)
    return float(value)


def kid(feats1: np.ndarray, feats2: np.ndarray, seed: int = 0, num_subsets: int = 100,
        max_subset_size: int = 1000) -> float:
    """Kernel Inception Distance: clean-fid's unbiased MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3,
    averaged over ``num_subsets`` random subsets of size m = min(N1, N2, max_subset_size).

    Per subset pair X (from feats2), Y (from feats1):
        MMD_u^2 = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2.

    Deterministic: subsets come from a private ``np.random.RandomState(seed)``, the same stream clean-fid's
    ``kernel_distance`` draws from the global RNG after ``np.random.seed(seed)`` (so the value equals
    clean-fid's for that seed), and the global numpy RNG state is never touched.
    """
    f1 = np.asarray(feats1, dtype=np.float64)
    f2 = np.asarray(feats2, dtype=np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"kid needs two [N, D] feature sets with the same D, got {f1.shape} and {f2.shape}")
    d = f1.shape[1]
    m = min(len(f1), len(f2), int(max_subset_size))
    if m < 2:
        raise ValueError(f"kid needs subsets of at least 2 images, got m = {m} (sets of {len(f1)} and {len(f2)})")
    rng = np.random.RandomState(seed)
    t = 0.0
    for _ in range(int(num_subsets)):
        # Draw order as in clean-fid (X from the second set first) so the streams line up.
        x = f2[rng.choice(len(f2), m, replace=False)]
        y = f1[rng.choice(len(f1), m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


# ----------------------------------------------------------------------------------------------------
# Reference statistics files and their cache keys
# ----------------------------------------------------------------------------------------------------


def save_reference_stats(path: str | os.PathLike, feats: np.ndarray, meta: dict) -> None:
    """Write reference statistics of features ``[N, D]`` to ``path`` (.npz) atomically.

    Stores mu ``[D]`` and sigma ``[D, D]`` (float64, from the full-precision features), the features
    (float32: KID needs them, and they are the bulk of the file) and ``meta`` as a JSON string.
    """
    feats = np.asarray(feats, dtype=np.float64)
    mu, sigma = gaussian_stats(feats)
    arrays = {"mu": mu, "sigma": sigma, "feats": feats.astype(np.float32), "meta": np.array(canonical_json(meta))}
    # a killed job leaves the old file or the new one, never a half-written .npz a later run would trust
    savez(path, **arrays)


def load_reference_stats(path: str | os.PathLike) -> dict:
    """Read a file written by :func:`save_reference_stats`: dict(mu [D], sigma [D, D], feats [N, D], meta)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"mu", "sigma", "feats", "meta"} - set(z.files)
            if missing:
                raise ValueError(f"missing arrays {sorted(missing)}")
            return {"mu": z["mu"], "sigma": z["sigma"], "feats": z["feats"], "meta": json.loads(str(z["meta"]))}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a reference-statistics file ({e}); delete it to have it recomputed") from e


# ----------------------------------------------------------------------------------------------------
# Scoring samples
# ----------------------------------------------------------------------------------------------------


def score(metric: str, images_u8: np.ndarray, ref: dict, extractor: FeatureExtractor, settings: dict,
          device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Score samples ``[N, 3, R, R]`` uint8 against reference statistics (from :func:`load_reference_stats`).

    fid / fid_clip: Fréchet distance of the samples' Gaussian to (ref mu, ref sigma); kid: :func:`kid`
    of ref feats vs sample features (clean-fid's argument order). ``settings`` is the config's
    ``evaluate.<metric>`` section as the schema fills it: min_samples, batch_size; for kid also subsets,
    subset_size and seed.

    Returns dict(value, n_samples, n_ref, settings) where settings are the effective ones.
    """
    if metric not in EXTRACTOR_OF:
        raise ValueError(f"unknown feature metric '{metric}' (known: {', '.join(EXTRACTOR_OF)})")
    if extractor.name != EXTRACTOR_OF[metric]:
        raise ValueError(f"{metric} needs the {EXTRACTOR_OF[metric]} extractor, got {extractor.name}")
    n = len(images_u8)
    # Two samples is the least a covariance (or an unbiased MMD) can be estimated from.
    min_samples = max(int(settings["min_samples"]), 2)
    if n < min_samples:
        raise ValueError(f"{metric}: {n} samples is fewer than evaluate.{metric}.min_samples = {min_samples}; "
                         f"sample more images or lower evaluate.{metric}.min_samples")
    _check_reference(metric, ref, extractor)
    batch_size = int(settings["batch_size"])
    used: dict[str, Any] = {"extractor": extractor.name, "preprocessing": extractor.preprocessing,
                            "weights_file": extractor.weights_file, "batch_size": batch_size,
                            "min_samples": min_samples}
    feats = features(images_u8, extractor, batch_size=batch_size, device=device, progress=progress)
    if metric == "kid":
        used.update(subsets=int(settings["subsets"]), subset_size=int(settings["subset_size"]),
                    seed=int(settings["seed"]))
        value = kid(ref["feats"], feats, seed=used["seed"], num_subsets=used["subsets"],
                    max_subset_size=used["subset_size"])
    else:
        mu, sigma = gaussian_stats(feats)
        value = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
    return {"value": float(value), "n_samples": int(n), "n_ref": int(len(ref["feats"])), "settings": used}


def _check_reference(metric: str, ref: dict, extractor: FeatureExtractor) -> None:
    """Refuse reference statistics made by another network or preprocessing (a stale or misnamed file)."""
    dim = np.asarray(ref["mu"]).shape[-1]
    if dim != extractor.dim:
        raise ValueError(f"{metric}: reference statistics have {dim}-d features, the {extractor.name} extractor "
                         f"gives {extractor.dim}-d")
    meta = ref.get("meta") or {}
    for key, ours in (("extractor", extractor.name), ("preprocessing", extractor.preprocessing)):
        if key in meta and canonical_json(meta[key]) != canonical_json(ours):
            raise ValueError(f"{metric}: reference statistics were made with {key} {meta[key]!r}, not "
                             f"{ours!r}; recompute them")
