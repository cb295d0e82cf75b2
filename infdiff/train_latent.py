"""Stage 2 of the diffusion-autoencoder framework: encode the training set, fit the latent DDPM.

``train_latent(stage1_checkpoint, cfg, data, out_dir)``:

1. refuses a stage-1 checkpoint written under another config (its ``config_sha256`` must be this run's);
2. encodes every training image with the stage-1 **EMA** encoder in eval mode (dropout off, unlike the
   official code), image i reading the coordinate subset of seed ``encode_seed + i``, so the latents do
   not depend on the batch size;
3. normalises the latents per dimension by their mean and std (stored in the latent checkpoint);
4. trains :class:`~infdiff.latent.LatentDDPM` with AdamW (DiffAE / official: lr 1e-4, betas (0.9, 0.99),
   weight decay 0.04, batch 256), an EMA that starts as a copy of the model, and a tqdm bar;
5. writes ``latent.pt`` (model, EMA, normalisation, the stage-1 sha) and ``latent_stats.jsonl``.

Stage 2 is short (about a minute in the embedded default) and fully seeded, so a killed job simply
starts again from its first step and ends with the same weights; it keeps no resumable state.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from infdiff.config import ConfigError
from infdiff.io import load_checkpoint, load_method, pick_device, save_checkpoint, write_text
from infdiff.latent import build_latent
from infdiff.optim import adam, ema_update
from infdiff.provenance import config_sha256, provenance

__all__ = ["train_latent", "encode_dataset"]


def encode_dataset(method, data: np.ndarray, seed: int, batch_size: int, progress: bool = True) -> torch.Tensor:
    """z [N, z_dim] of uint8 images [N, 3, R, R]; image i uses encoder seed ``seed + i``."""
    n = len(data)
    out = []
    for start in tqdm(range(0, n, batch_size), desc="encode", disable=not progress, dynamic_ncols=True,
                      mininterval=0.1 if sys.stderr.isatty() else 15):
        # a copy of the batch: ``data`` may be a read-only memory map (infdiff.data.load_prepared)
        x0 = torch.from_numpy(np.array(data[start:start + batch_size])).float() / 127.5 - 1.0
        out.append(method.encode(x0, list(range(seed + start, seed + start + len(x0)))).cpu())
    return torch.cat(out)


def _require_stage1(stage1: dict, sha: str, where: str) -> None:
    if stage1.get("config_sha256") != sha:
        raise ConfigError(f"stage-1 checkpoint {where} was trained under another config (sha "
                          f"{str(stage1.get('config_sha256'))[:16]}, this run's is {sha[:16]}): train stage 1 "
                          "again for this config (rule train) before stage 2")


def train_latent(stage1_checkpoint: str | Path, cfg: dict, data: np.ndarray, out_dir: str | Path,
                 device: str = "auto", progress: bool = True, weights: str = "last") -> dict:
    """Train the latent DDPM of autoencoder run ``cfg`` from its stage-1 checkpoint on ``data`` (uint8).

    Writes ``out_dir/latent.pt`` and ``out_dir/latent_stats.jsonl``; returns a summary (steps, losses,
    encode and train wall times). ``weights``: the stage-1 EMA weights that encode ("last" or "best" by
    validation loss, as sample.checkpoint); the latent model only pairs with those.
    """
    if cfg["framework"] != "autoencoder":
        raise ConfigError(f"run '{cfg.get('name', '')}' has framework '{cfg['framework']}': stage 2 is for "
                          "framework: autoencoder")
    out_dir = Path(out_dir)
    dev = pick_device(device)
    sha = config_sha256(cfg)
    stage1 = load_checkpoint(stage1_checkpoint)
    _require_stage1(stage1, sha, str(stage1_checkpoint))
    lcfg = cfg["autoencoder"]["latent"]

    # --- 1. encode the training set with the EMA encoder (eval mode, seeded subsets)
    method, _ = load_method(stage1_checkpoint, dev, weights=weights)
    t0 = time.time()
    z = encode_dataset(method, data, lcfg["encode_seed"], lcfg["encode_batch_size"], progress)
    encode_wall = time.time() - t0
    del method

    # --- 2. normalise, build (seeded), EMA as a copy, AdamW
    torch.manual_seed(int(cfg["seed"]) + 2)
    model = build_latent(cfg).to(dev)
    model.fit_normalisation(z.to(dev))
    z_n = model.normalise(z.to(dev))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = adam(model.parameters(), lr=lcfg["lr"], betas=lcfg["betas"], weight_decay=lcfg["weight_decay"])
    gen = torch.Generator().manual_seed(int(cfg["seed"]) + 3)

    # --- 3. train
    stats, window = [], []
    t1 = time.time()
    bar = tqdm(range(lcfg["steps"]), desc=f"latent {cfg.get('name', '')}", disable=not progress,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 15)
    log_every = cfg["train"]["log_every"]
    for step in bar:
        model.train()
        batch = torch.randint(0, len(z_n), (lcfg["batch_size"],), generator=gen).to(dev)
        loss = model.training_loss(z_n[batch], gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite latent loss ({loss.item()}) at step {step + 1}; lower "
                                     "autoencoder.latent.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, min(lcfg["ema_decay"], (2 + step) / (11 + step)))
        window.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == lcfg["steps"]:
            stats.append({"step": step + 1, "loss": float(np.mean(window))})
            bar.set_postfix(loss=f"{stats[-1]['loss']:.4f}")
            window = []
    bar.close()
    train_wall = time.time() - t1

    summary = {"n_latents": int(len(z)), "z_dim": int(z.shape[1]), "steps": int(lcfg["steps"]),
               "final_loss": stats[-1]["loss"] if stats else float("nan"),
               "encode_wall_time": encode_wall, "train_wall_time": train_wall,
               "z_mean_abs_mean": float(model.z_mean.abs().mean()), "z_std_mean": float(model.z_std.mean())}
    save_checkpoint(out_dir / "latent.pt", {
        "model": model.state_dict(), "ema": ema.state_dict(), "step": int(lcfg["steps"]),
        "config_json": json.dumps(cfg, sort_keys=True),
        "config_sha256": sha, "stage1_config_sha256": stage1["config_sha256"],
        "stage1_weights": weights, "summary": summary,
        "provenance": provenance(cfg, seeds=[cfg["seed"]], wall_time=encode_wall + train_wall, device=str(dev))})
    write_text(out_dir / "latent_stats.jsonl", "".join(json.dumps(r) + "\n" for r in stats))
    return summary
