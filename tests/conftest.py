"""Shared fixtures: a tiny run config (same code path as the embedded default, seconds on a CPU)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from infdiff.config import deep_merge, prepare_config, run_config, section_defaults

REPO = Path(__file__).resolve().parents[1]

# Shrinks every size of the embedded default; nothing else changes (same keys, same code path).
TINY = {
    "datasets": {"shapes": {"train_size": 64}},
    "runs": {"infdiff": {
        # The same arithmetic on every CPU kind (config.yaml's `auto` is bf16 on some, fp32 on others);
        # bf16 paths have their own tests (test_precision.py, test_nets.py, test_mlp_pixel.py, ...).
        "precision": "fp32",
        "resolution": 16,
        "model": {"channels": 8, "sparse_blocks": 1, "grid_res": 8, "unet_channels": 8,
                  "unet_mults": [1, 2], "attn_res": [4], "time_dim": 16},
        "train": {"steps": 6, "batch_size": 4, "warmup": 2, "checkpoint_every": 3, "log_every": 1},
    },
        "mlp_pixel": {"mlp_pixel": {"width": 16, "depth": 1, "time_dim": 16}},
        "mlp_pixel_as_described": {"diffusion": {"timesteps": 3}},
        "infdiff_ae": {"autoencoder": {"z_dim": 8, "latent": {"hidden": 16, "layers": 2, "time_dim": 8, "steps": 5,
                                                              "batch_size": 8, "timesteps": 20, "sample_steps": 5}}},
        "simple_diffusion": {"simple_diffusion": {"channels": [8, 16], "blocks": 1, "transformer_width": 16,
                                                  "transformer_depth": 1, "heads": 2}},
    },
    "sample": {"steps": 3, "batch_size": 4, "n_samples": [{"resolution": 16, "n": 4}, {"resolution": 32, "n": 4}]},
    "evaluate": {"swd": {"min_res": 8, "patches_per_image": 16, "directions": 32}},
    "tables": {"table1": {"rows": [{"run": "infdiff", "resolutions": [16, 32]},
                                   {"run": "infdiff_ae", "resolutions": [16, 32]},
                                   {"run": "mlp_pixel", "resolutions": [16, 32]},
                                   {"run": "simple_diffusion", "resolutions": [16, 32]},
                                   {"run": "mlp_pixel_as_described", "resolutions": [16]},
                                   {"run": "infdiff_untrained", "resolutions": [16]}]}},
}


def net_kwargs(**over) -> dict:
    """InfDiffNet arguments: the schema's `model` defaults (their one home) at R_train 32, then ``over``."""
    return {"in_channels": 3, "train_res": 32, **section_defaults("model"), **over}


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


@pytest.fixture
def single_thread():
    """Tests of thousands of tiny (4 x 4) operations: intra-op threads only add synchronisation
    (10x slower on a busy 2-core machine), so run them single-threaded and restore the setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def explicit_T(m, R: int) -> torch.Tensor:
    """The mollifier T as an explicit [R^2, R^2] matrix, built by applying it to basis images."""
    basis = torch.eye(R * R, dtype=torch.float64).reshape(R * R, 1, R, R)
    return m(basis).reshape(R * R, R * R).T
