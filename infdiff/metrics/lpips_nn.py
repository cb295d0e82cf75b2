"""Nearest training neighbours of samples under LPIPS (AlexNet) or pixel L2: the memorisation check.

The paper shows, next to its samples, the training images closest to each sample under LPIPS (Zhang et
al. 2018): a model that copies its data shows near-duplicates there. Searching 50k training images per
sample with a network is expensive, so the search has two stages:

1. **Prefilter.** A cheap pixel-space embedding (images in [-1, 1] area-downsampled to ``embed_res`` px
   and flattened) picks, per sample, the ``prefilter`` training images nearest in L2. Training images
   are streamed in chunks with a running top-``prefilter``, so nothing of size ``[N, M, ...]`` is held.
   ``prefilter >= M`` skips this stage (exhaustive search).
2. **Exact ranking.** The candidates are ranked by the exact distance: LPIPS, or the per-pixel mean
   squared difference of the full-resolution images in [-1, 1] (``"l2"``). Sample features are computed
   once per chunk of samples and each candidate's features once per chunk, not once per pair.

LPIPS runs on images in [-1, 1] (its convention) bilinearly upsampled to at least 64 px: AlexNet's first
layers (11x11 conv stride 4, two 3x3 max-pools stride 2) shrink a 16 px image to nothing before the
third feature level, and 64 px is the patch size LPIPS was calibrated on (its 2AFC data set). Larger
images are used at their own resolution.

Weights: the linear calibration layers ship inside the ``lpips`` wheel; the AlexNet trunk is read from
the torchvision state dict configured as ``metrics.weights.alexnet`` (never downloaded).
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from infdiff.data import to_float
from infdiff.io import save_png, savez
from infdiff.metrics.weights import weights_path
from infdiff.provenance import canonical_json

__all__ = ["load_lpips", "lpips_features", "lpips_from_features", "nearest_neighbours", "save_neighbours",
           "LPIPS_MIN_RES"]

# Smallest side LPIPS is evaluated at (see the module docstring).
LPIPS_MIN_RES = 64
DISTANCES = ("lpips", "l2")


# ----------------------------------------------------------------------------------------------------
# LPIPS network
# ----------------------------------------------------------------------------------------------------


def load_lpips(weights: dict | None, device: str | torch.device = "cpu"):
    """LPIPS v0.1 (AlexNet trunk, calibrated linear layers) with the trunk read from a local file.

    Args:
        weights: the config's ``metrics.weights`` mapping; ``weights["alexnet"]`` is a torchvision AlexNet
            state dict (keys ``features.<i>.weight/bias``; ``classifier.*`` keys are ignored).
        device: where the network lives.
    Returns:
        ``lpips.LPIPS`` in eval mode with ``requires_grad`` off; ``net(x, y)`` takes [-1, 1] images.
    Raises:
        MissingWeightsError: the file is not configured or absent (checked before anything is built).
        ValueError: the file is not an AlexNet ``features`` state dict.
    """
    path = weights_path("alexnet", weights)
    try:
        # weights_only: a state dict is plain tensors; never unpickle arbitrary objects (docs/architecture.md, "Style and safety").
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors of many kinds; one clear message
        raise ValueError(f"metrics.weights.alexnet: cannot read {path} as a torchvision state dict "
                         f"({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"metrics.weights.alexnet: {path} holds a {type(state).__name__}, not a state dict")
    trunk = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}

    import lpips  # imported here: it pulls in torchvision, which the L2 search does not need

    with warnings.catch_warnings():
        # pnet_rand=True makes lpips call torchvision's alexnet(pretrained=False): a random trunk, no
        # download, but torchvision warns that `pretrained=` is deprecated. pretrained=True only loads
        # the linear layers from the wheel (lpips/weights/v0.1/alex.pth). verbose=False: no prints.
        warnings.simplefilter("ignore", UserWarning)
        net = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)

    # lpips splits torchvision's `features` Sequential into slice1..slice5 (features 0-1, 2-4, 5-7, 8-9,
    # 10-11) and keeps each layer's index as its name, so "slice2.3.weight" is torchvision's
    # "features.3.weight" (lpips/pretrained_networks.py, class alexnet).
    target = net.net.state_dict()
    expected = {name.split(".", 1)[1]: name for name in target}
    missing = sorted(set(expected) - set(trunk))
    unexpected = sorted(set(trunk) - set(expected))
    wrong = sorted(k for k in set(expected) & set(trunk) if trunk[k].shape != target[expected[k]].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"metrics.weights.alexnet: {path} is not a torchvision AlexNet state dict: "
            f"missing {_names(missing)}, unexpected {_names(unexpected)}, wrong shape {_names(wrong)}")
    net.net.load_state_dict({expected[k]: trunk[k] for k in expected}, strict=True)
    net.eval().requires_grad_(False)
    return net.to(device)


def _names(keys: list[str]) -> list[str]:
    """torchvision's names of trunk keys ("3.weight" -> "features.3.weight") for error messages."""
    return [f"features.{k}" for k in keys]


def _check_lpips(net) -> None:
    """lpips_features / lpips_from_features reproduce LPIPS.forward for the configuration load_lpips makes."""
    config = tuple(getattr(net, a, None) for a in ("version", "lpips", "spatial"))
    if config != ("0.1", True, False):
        raise ValueError("lpips_net must be an lpips.LPIPS with version 0.1, lpips=True, spatial=False "
                         "(use load_lpips)")


def lpips_features(net, x: Tensor) -> list[Tensor]:
    """Unit-normalised AlexNet features of images ``x`` [B, 3, H, W] in [-1, 1]: [B, C_l, H_l, W_l] per level l.

    The first half of ``LPIPS.forward`` (v0.1: scaling layer, trunk, channel-wise unit norm), split off
    so that each image's features are computed once and compared with many others.
    """
    import lpips

    return [lpips.normalize_tensor(f) for f in net.net(net.scaling_layer(x))]


def lpips_from_features(net, f0: list[Tensor], f1: list[Tensor]) -> Tensor:
    """LPIPS distance [B] between paired features: sum over levels of the spatial mean of w_l . (f0 - f1)^2."""
    return sum(net.lins[l]((a - b) ** 2).mean(dim=(1, 2, 3)) for l, (a, b) in enumerate(zip(f0, f1)))


# ----------------------------------------------------------------------------------------------------
# Nearest-neighbour search
# ----------------------------------------------------------------------------------------------------


def _float_images(u8: np.ndarray, device: torch.device) -> Tensor:
    """uint8 [B, 3, R, R] numpy -> float32 [-1, 1] on ``device`` (moved as uint8: 4x less to copy)."""
    # np.array copies: a batch of a read-only memory map (a prepared store) cannot back a torch tensor
    return to_float(torch.from_numpy(np.array(u8, copy=True, order="C")).to(device))


def _embed(u8: np.ndarray, embed_res: int, device: torch.device) -> Tensor:
    """Prefilter embedding: uint8 [B, 3, R, R] -> float32 [B, 3 r^2], area-downsampled to r <= embed_res."""
    x = _float_images(u8, device)
    if x.shape[-1] > embed_res:
        x = F.interpolate(x, size=(embed_res, embed_res), mode="area")
    return x.flatten(1)


def _prefilter(samples: np.ndarray, train: np.ndarray, P: int, embed_res: int, batch_size: int,
               device: torch.device, progress: bool) -> np.ndarray:
    """Indices int64 [N, P] of the P training images nearest to each sample in the embedding."""
    from tqdm.auto import tqdm

    es = torch.cat([_embed(samples[s:s + batch_size], embed_res, device)
                    for s in range(0, len(samples), batch_size)])
    best_d = torch.full((len(samples), 0), float("inf"), device=device)
    best_i = torch.zeros((len(samples), 0), dtype=torch.int64, device=device)
    for t in tqdm(range(0, len(train), batch_size), desc="lpips_nn prefilter", disable=not progress,
                  leave=False):
        et = _embed(train[t:t + batch_size], embed_res, device)
        # Without the matmul trick each distance is computed from its own pair only, so the result does
        # not depend on how the training set is chunked.
        d = torch.cdist(es, et, compute_mode="donot_use_mm_for_euclid_dist")
        idx = torch.arange(t, t + len(et), device=device).expand(len(es), -1)
        d, idx = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
        keep = d.topk(min(P, d.shape[1]), dim=1, largest=False).indices
        best_d, best_i = d.gather(1, keep), idx.gather(1, keep)
    return best_i.cpu().numpy()


Features = list[Tensor]  # one [B, ...] tensor per level (a single level for pixel L2)


def _exact_distance(distance: str, lpips_net, device: torch.device
                    ) -> tuple[Callable[[np.ndarray], Features], Callable[[Features, Features], Tensor]]:
    """(features of uint8 images, distance [B] of paired features) for the exact ranking stage."""
    if distance == "l2":
        def feats(u8):
            return [_float_images(u8, device)]

        def dist(f0, f1):
            return ((f0[0] - f1[0]) ** 2).flatten(1).mean(dim=1)
        return feats, dist

    _check_lpips(lpips_net)

    def feats(u8):
        x = _float_images(u8, device)
        if x.shape[-1] < LPIPS_MIN_RES:
            x = F.interpolate(x, size=(LPIPS_MIN_RES, LPIPS_MIN_RES), mode="bilinear", align_corners=False)
        return lpips_features(lpips_net, x)

    return feats, lambda f0, f1: lpips_from_features(lpips_net, f0, f1)


@torch.no_grad()
def nearest_neighbours(samples: np.ndarray, train: np.ndarray, k: int = 5, distance: str = "lpips",
                       lpips_net=None, prefilter: int = 64, embed_res: int = 16, batch_size: int = 64,
                       device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """The ``k`` nearest training images of each sample.

    Args:
        samples: uint8 [N, 3, R, R].
        train: uint8 [M, 3, R, R] (same resolution), M >= k.
        k: neighbours per sample.
        distance: "lpips" (needs ``lpips_net`` from :func:`load_lpips`) or "l2" (per-pixel mean squared
            difference in [-1, 1]).
        prefilter: candidates per sample from the pixel-embedding stage (at least k; >= M = exhaustive).
        embed_res: side of the prefilter embedding.
        batch_size: images per network batch, training images per chunk and pairs per distance batch;
            changes memory and speed, not the result.
        device: torch device; progress: tqdm bars.
    Returns:
        dict(indices int64 [N, k] into ``train``, distances float64 [N, k] ascending (ties by index),
        distance str, prefilter int = candidates actually ranked per sample (M means exhaustive)).
    """
    from tqdm.auto import tqdm

    if distance not in DISTANCES:
        raise ValueError(f"unknown distance '{distance}' (known: {', '.join(DISTANCES)})")
    if distance == "lpips" and lpips_net is None:
        raise ValueError("distance='lpips' needs lpips_net (infdiff.metrics.lpips_nn.load_lpips)")
    for name, a in (("samples", samples), ("train", train)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"{name} must be a uint8 numpy array [N, 3, R, R], got "
                             f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
    if samples.shape[1:] != train.shape[1:]:
        raise ValueError(f"samples {samples.shape[1:]} and train {train.shape[1:]} differ in image shape")
    N, M = len(samples), len(train)
    if not 1 <= k <= M:
        raise ValueError(f"k={k} must be between 1 and the number of training images ({M})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    P = min(max(int(prefilter), k), M)
    if P < M:
        cand = _prefilter(samples, train, P, embed_res, batch_size, device, progress)
    else:
        cand = np.broadcast_to(np.arange(M, dtype=np.int64), (N, M))

    feats, dist = _exact_distance(distance, lpips_net, device)
    D = np.full((N, P), np.inf)
    for s in tqdm(range(0, N, batch_size), desc=f"lpips_nn {distance}", disable=not progress, leave=False):
        fs = feats(samples[s:s + batch_size])
        c = cand[s:s + batch_size]
        # Each distinct candidate of this chunk of samples goes through the network once.
        U = np.unique(c)
        for u in range(0, len(U), batch_size):
            Uc = U[u:u + batch_size]
            ft = feats(train[Uc])
            pos = np.searchsorted(Uc, c).clip(max=len(Uc) - 1)
            rows, slots = np.nonzero(Uc[pos] == c)
            for p in range(0, len(rows), batch_size):
                r, j = rows[p:p + batch_size], slots[p:p + batch_size]
                ri = torch.from_numpy(r).to(device)
                ti = torch.from_numpy(pos[r, j]).to(device)
                d = dist([f[ri] for f in fs], [f[ti] for f in ft])
                D[s + r, j] = d.double().cpu().numpy()
    # Ascending distance, ties broken by the smaller training index: the result is unique.
    order = np.lexsort((cand, D), axis=1)[:, :k]
    return {
        "indices": np.take_along_axis(cand, order, 1).astype(np.int64),
        "distances": np.take_along_axis(D, order, 1).astype(np.float64),
        "distance": distance,
        "prefilter": int(P),
    }


# ----------------------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------------------


def neighbour_grid(samples: np.ndarray, neighbours: np.ndarray, pad: int = 2, sep: int = 2) -> np.ndarray:
    """uint8 picture [H, W, 3]: one row per sample, the sample, a black ``sep``-px bar, then its neighbours.

    Args:
        samples: uint8 [N, 3, R, R]; neighbours: uint8 [N, k, 3, R, R].
    """
    from infdiff.sample import image_grid

    N, k = neighbours.shape[:2]
    tiles = np.concatenate([samples[:, None], neighbours], axis=1).reshape(N * (k + 1), *samples.shape[1:])
    grid = image_grid(tiles, nrow=k + 1, pad=pad)
    # The bar goes in the middle of the white gap after the first column.
    x = pad + samples.shape[-1] + pad // 2
    bar = np.zeros((grid.shape[0], sep, 3), np.uint8)
    return np.concatenate([grid[:, :x], bar, grid[:, x:]], axis=1)


def save_neighbours(npz_path: str | os.PathLike, png_path: str | os.PathLike | None, samples: np.ndarray,
                    train: np.ndarray, result: dict, meta: dict) -> None:
    """Write the search result as .npz and as a PNG grid, each atomically (:mod:`infdiff.io`).

    The npz holds indices [N, k], distances [N, k], distance (str), prefilter, samples [N, 3, R, R],
    neighbours [N, k, 3, R, R] (the training images themselves, so the figure needs no training set) and
    meta (canonical JSON string).
    """
    indices = np.asarray(result["indices"], dtype=np.int64)
    neighbours = train[indices]
    savez(npz_path, indices=indices, distances=np.asarray(result["distances"], np.float64),
          distance=np.array(str(result["distance"])), prefilter=np.int64(result["prefilter"]),
          samples=samples, neighbours=neighbours, meta=np.array(canonical_json(meta)))
    if png_path is not None:
        save_png(png_path, neighbour_grid(samples, neighbours))
