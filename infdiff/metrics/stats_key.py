"""What names a reference-statistics file: extractor preprocessing descriptions and cache keys (docs/architecture.md, "Metrics").

Snakemake computes these names while it builds the DAG, once per (dataset, split, resolution,
extractor); nothing here imports torch or loads a network, so reading the workflow stays cheap.
:func:`infdiff.metrics.fid.load_extractor` checks that a loaded network's actual preprocessing equals
:func:`extractor_preprocessing`'s description, so the key cannot lie. (The CLIP description asks
open_clip for its architecture config, which imports torch; only configs that score FID_CLIP pay that.)
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from infdiff.metrics import FEATURE_METRICS
from infdiff.metrics.weights import METRIC_WEIGHTS, weights_path
from infdiff.provenance import config_sha256

__all__ = ["EXTRACTOR_OF", "DEFAULT_CLIP_ARCH", "INCEPTION_SIZE", "extractor_preprocessing", "clip_config",
           "clip_preprocessing", "reference_stats_key", "configured_stats_key", "file_sha256"]

# Feature metric -> the extractor it embeds images with, which is also the key of its weight file (weights.py).
EXTRACTOR_OF = {m: METRIC_WEIGHTS[m] for m in FEATURE_METRICS}

# OpenAI's CLIP weights were trained with QuickGELU (x * sigmoid(1.702 x)). open_clip's plain "ViT-B-32"
# config builds nn.GELU; open_clip/pretrained.py marks the 'openai' tag quick_gelu=True and
# open_clip/factory.py only *warns* about a mismatch for pretrained tags -- for a local file path (our
# case) it checks nothing and would silently run OpenAI weights with the wrong activation. Hence the
# "-quickgelu" config (open_clip/model_configs/ViT-B-32-quickgelu.json: quick_gelu true).
DEFAULT_CLIP_ARCH = "ViT-B-32-quickgelu"

# clean-fid "clean" mode: Inception-V3 input size and the resize that gets there (cleanfid/resize.py).
INCEPTION_SIZE = 299


def extractor_preprocessing(name: str, clip_arch: str = DEFAULT_CLIP_ARCH) -> dict:
    """The ``preprocessing`` description of extractor ``name`` without loading its network.

    Snakemake computes reference-statistics file names (:func:`configured_stats_key`) while building
    the DAG, where loading a 350 MB network would be wasted; :func:`infdiff.metrics.fid.load_extractor`
    checks that the loaded network's actual preprocessing equals this description.
    """
    if name == "inception":
        return {
            "arch": "inception-v3 (clean-fid TorchScript, pool3 via module.layers)",
            # cleanfid.resize.build_resizer("clean"): PIL bicubic per channel in float mode, no quantise.
            "resize": {"library": "PIL", "filter": "bicubic", "size": [INCEPTION_SIZE, INCEPTION_SIZE],
                       "quantize": False},
            "normalise": "(x - 128) / 128",
        }
    if name == "clip_vit_b_32":
        import open_clip
        from open_clip.transform import PreprocessCfg

        cfg = clip_config(open_clip, clip_arch)
        # A local weight file gets open_clip's default preprocessing (factory.create_model starts from
        # PreprocessCfg() and only sets size = model.visual.image_size): OpenAI's mean/std, bicubic.
        pp = PreprocessCfg()
        return clip_preprocessing(clip_arch, bool(cfg.get("quick_gelu", False)), cfg["vision_cfg"]["image_size"],
                                  pp.mean, pp.std, pp.interpolation, pp.resize_mode)
    raise ValueError(f"unknown feature extractor '{name}' (known: {', '.join(sorted(set(EXTRACTOR_OF.values())))})")


def clip_config(open_clip: Any, clip_arch: str) -> dict:
    """open_clip's built-in config of ``clip_arch``; schema names (hf-hub:, local-dir:) are refused
    because resolving them may go to the network."""
    if ":" in clip_arch:
        raise ValueError(f"metrics.clip_arch '{clip_arch}': only built-in open_clip architecture names are "
                         "allowed (hf-hub:/local-dir: sources may download); put the weights in "
                         "metrics.weights.clip_vit_b_32 instead")
    cfg = open_clip.get_model_config(clip_arch)
    if cfg is None:
        raise ValueError(f"metrics.clip_arch '{clip_arch}' is not an open_clip architecture "
                         f"(e.g. {DEFAULT_CLIP_ARCH}; see open_clip.list_models())")
    return cfg


def clip_preprocessing(arch: str, quick_gelu: bool, size: Any, mean: Any, std: Any, interpolation: str,
                       resize_mode: str) -> dict:
    """The preprocessing description of a CLIP image tower (input ``size``, normalisation ``mean``/``std``,
    open_clip's ``interpolation`` and ``resize_mode``), the same for a config and for a loaded model."""
    if isinstance(size, (tuple, list)):
        # clean-fid's CLIP resize (shorter side + centre crop) is for square inputs only.
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"{arch}: only square CLIP input sizes are supported, got {size}")
        size = size[0]
    return {
        "arch": arch,
        "quick_gelu": quick_gelu,
        # clean-fid's img_preprocess_clip: PIL resize of the shorter side, centre crop, back to uint8.
        "resize": {"library": "PIL", "filter": interpolation, "mode": resize_mode,
                   "size": [int(size)] * 2, "quantize": True},
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "normalise": "(x / 255 - mean) / std",
        "embedding": "encode_image (not L2-normalised)",
    }


def reference_stats_key(dataset: dict, split: str, resolution: int, n: int | None, extractor: str,
                        preprocessing: dict, weights_sha256: str) -> str:
    """16 hex characters of the sha256 of the canonical JSON of everything that shapes reference stats.

    The split enters by name and by definition (its seed range or fractions of the sorted name list,
    :func:`infdiff.splits.split_definition`), so redefining a split changes the key too; ``full`` is
    all four splits of a file dataset.
    """
    from infdiff.splits import split_definition

    return config_sha256({
        "dataset": dataset, "split": split, "split_definition": split_definition(dataset["kind"], split),
        "resolution": int(resolution), "n": None if n is None else int(n),
        "extractor": extractor, "preprocessing": preprocessing, "weights_sha256": weights_sha256,
    })[:16]


def configured_stats_key(dataset: dict, split: str, resolution: int, n: int | None, extractor: str,
                         metrics: dict) -> str:
    """:func:`reference_stats_key` from the config's ``metrics`` section (weights + clip_arch), without
    loading the network (what the workflow needs to name a reference-statistics file)."""
    path = weights_path(extractor, metrics["weights"])
    preprocessing = extractor_preprocessing(extractor, metrics["clip_arch"])
    return reference_stats_key(dataset, split, resolution, n, extractor, preprocessing, file_sha256(path))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, streamed; cached while the file's (path, size, mtime) stay the same
    (the workflow asks for the same 350 MB weight file once per reference-statistics file name)."""
    p = Path(path).resolve()
    st = p.stat()
    return _file_sha256(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
