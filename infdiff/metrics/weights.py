"""Pretrained weight files of the paper metrics: where they come from, where they go, one clear error.

The harness never downloads weights (the machines it is tested on have no internet, and a download
inside a cluster job hangs or races). Each network is read from a local file named by a config key
``metrics.weights.<key>``; a metric whose file is absent stops the run *before* any sampling, with a
message that names the key, the file expected and where to get it.

========================  =============================  ==========================================
key                       used by                        file
========================  =============================  ==========================================
``inception``             ``fid``, ``kid`` (clean-fid)   ``inception-2015-12-05.pt`` (TorchScript)
``clip_vit_b_32``         ``fid_clip``                   OpenAI CLIP ViT-B/32 (``ViT-B-32.pt``)
``alexnet``               ``lpips_nn`` (LPIPS trunk)     ``alexnet-owt-7be5be79.pth`` (torchvision)
========================  =============================  ==========================================
"""

from __future__ import annotations

import os
from pathlib import Path

# Networks must never be fetched from the internet by accident: open_clip / huggingface_hub try the
# hub first and hang for ~46 s offline (environment measurements) before failing. Set before any import
# of open_clip anywhere in the process (this module is imported by every metric that loads weights).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")

# key -> (expected file name, where to download it, what reads it)
WEIGHT_FILES: dict[str, tuple[str, str, str]] = {
    "inception": (
        "inception-2015-12-05.pt",
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
        "clean-fid's 'clean' mode Inception-V3 (FID, KID)",
    ),
    "clip_vit_b_32": (
        "ViT-B-32.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "40d3657591fc0cef6ad7e0cb8b0c3bfe58ef05bf5a1e53f2d6fb52ce7c3e2ca5/ViT-B-32.pt",
        "OpenAI CLIP ViT-B/32 image encoder (FID_CLIP, Kynkäänniemi et al. 2023)",
    ),
    "alexnet": (
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "torchvision AlexNet, the LPIPS trunk (lpips_nn)",
    ),
}

# Which weight file each metric needs (weights-free metrics are absent).
METRIC_WEIGHTS: dict[str, str] = {"fid": "inception", "kid": "inception", "fid_clip": "clip_vit_b_32",
                                  "lpips_nn": "alexnet"}


class MissingWeightsError(FileNotFoundError):
    """A configured metric's weight file is not where the config says."""


def weights_path(key: str, weights: dict | None) -> Path:
    """The configured path of weight file ``key`` (``metrics.weights.<key>``); raises if it is absent.

    Args:
        key: one of :data:`WEIGHT_FILES`.
        weights: the config's ``metrics.weights`` mapping (key -> path).
    """
    if key not in WEIGHT_FILES:
        raise KeyError(f"unknown weight file '{key}' (known: {', '.join(WEIGHT_FILES)})")
    name, url, what = WEIGHT_FILES[key]
    configured = (weights or {}).get(key)
    if not configured:
        raise MissingWeightsError(
            f"metrics.weights.{key} is not set: {what} needs the file {name}. Download it on a machine "
            f"with internet from {url}, copy it here (e.g. to weights/{name}) and set metrics.weights.{key} "
            f"to its path.")
    path = Path(configured).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"metrics.weights.{key}: {path} does not exist. {what} needs the file {name}: download it on a "
            f"machine with internet from {url} and put it at {path} (or point metrics.weights.{key} at "
            f"your copy). This tool never downloads weights.")
    return path


def require_metric_weights(metrics: list[str] | set[str], weights: dict | None) -> None:
    """Check every weight file that ``metrics`` need, before any job runs; raise on the first missing one."""
    for metric in sorted(set(metrics)):
        if metric in METRIC_WEIGHTS:
            weights_path(METRIC_WEIGHTS[metric], weights)
