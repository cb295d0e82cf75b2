"""Shared fixtures: a tiny run config (same code path as the embedded default, seconds on a CPU)."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from infdiff.config import deep_merge, prepare_config, run_config

REPO = Path(__file__).resolve().parents[1]

# Shrinks every size of the embedded default; nothing else changes (same keys, same code path).
TINY = {
    "datasets": {"shapes": {"train_size": 64}},
    "runs": {"infdiff": {
        "resolution": 16,
        "model": {"channels": 8, "sparse_blocks": 1, "grid_res": 8, "unet_channels": 8,
                  "unet_mults": [1, 2], "attn_res": [4], "time_dim": 16},
        "train": {"steps": 6, "batch_size": 4, "warmup": 2, "checkpoint_every": 3, "log_every": 1},
    }},
    "sample": {"steps": 3, "batch_size": 4, "n_samples": [{"resolution": 16, "n": 4}, {"resolution": 32, "n": 4}]},
    "evaluate": {"swd": {"min_res": 8, "patches_per_image": 16, "directions": 32}},
    "tables": {"table1": {"rows": [{"run": "infdiff", "resolutions": [16, 32]},
                                   {"run": "infdiff_untrained", "resolutions": [16]}]}},
}


def tiny_config(extra: dict | None = None) -> dict:
    """The embedded default config.yaml with TINY (and ``extra``) merged over it, resolved + validated."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    return prepare_config(deep_merge(deep_merge(base, TINY), extra or {}))


@pytest.fixture
def tiny_cfg() -> dict:
    return run_config(tiny_config(), "infdiff")


@pytest.fixture
def tiny_data(tiny_cfg) -> np.ndarray:
    """uint8 [64, 3, 16, 16] procedural training images."""
    from infdiff.data import ShapesDataset, split_seeds, to_uint8

    ds = ShapesDataset()
    return to_uint8(ds.render_batch(split_seeds("train", 64), tiny_cfg["resolution"]))
