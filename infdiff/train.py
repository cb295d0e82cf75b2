"""Generic training loop for any :class:`~infdiff.methods.base.Method` (docs/architecture.md, "The library").

What a researcher relies on here:

* **Seeds for everything.** Initialisation uses ``torch.manual_seed(seed)``; batches, timesteps, noise
  and coordinates come from one CPU ``torch.Generator`` (seed + 1); dropout uses the global RNG.
  All three states are checkpointed, so a run killed at any point and restarted continues exactly as
  if it had never stopped (tested: resume equals uninterrupted training, weight for weight).
* **EMA as a copy of the model** at step 0 (the official code initialised it from a fresh network).
* **Atomic, resumable checkpoints** in ``<run>/state/<config sha>/latest.pt`` every ``checkpoint_every`` steps;
  the final ``<run>/checkpoint.pt`` appears only when training finished. Checkpoints hold only tensors
  and plain types and load with ``weights_only=True``.
* ``stats.jsonl`` (step, loss, images/s, lr, grad norm); a tqdm bar; a NaN/inf loss stops the run
  with an error naming the step.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from infdiff.config import ConfigError
from infdiff.io import load_checkpoint, pick_device, save_checkpoint, write_json, write_text
from infdiff.methods import build_method
from infdiff.methods.base import Method
from infdiff.precision import autocast, resolve_precision
from infdiff.provenance import config_sha256, provenance


@torch.no_grad()
def ema_update(ema: Method, model: Method, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def _rng_state(generator: torch.Generator) -> dict:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(generator: torch.Generator, state: dict) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_stats(path: Path, step: int) -> None:
    """Keep only records up to ``step``: the lines written after the last checkpoint are replayed."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in keep))


def train(cfg: dict, data: np.ndarray, out_dir: str | Path, device: str = "auto",
          progress: bool = True, stop_after: int | None = None) -> dict:
    """Train the method of run config ``cfg`` on ``data`` (uint8 [N, 3, R, R]) into ``out_dir``.

    Writes ``out_dir/checkpoint.pt``, ``stats.jsonl`` and ``config.json`` when finished, and keeps a
    resumable ``out_dir/state/<config sha>/latest.pt``. ``stop_after`` ends the call after that many steps without
    finishing (it simulates a kill in tests). Returns a summary dict (steps, final loss, wall time).
    """
    out_dir = Path(out_dir)
    dev = pick_device(device)
    tcfg = cfg["train"]
    R = int(cfg["resolution"])
    if data.ndim != 4 or data.shape[1] != 3 or data.shape[2] != R or data.shape[3] != R:
        raise ValueError(f"training data has shape {tuple(data.shape)}, expected [N, 3, {R}, {R}]")
    sha = config_sha256(cfg)
    # Resumable state is kept per config: a run re-done under a changed config (which is why the
    # workflow re-runs it) starts fresh instead of resuming, or tripping over, another config's state.
    state_dir = out_dir / "state" / sha[:16]
    state_dir.mkdir(parents=True, exist_ok=True)

    # --- build (seeded), EMA as an exact copy, optimiser
    torch.manual_seed(int(cfg["seed"]))
    model = build_method(cfg).to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg["lr"])
    gen = torch.Generator().manual_seed(int(cfg["seed"]) + 1)
    step = 0

    latest = state_dir / "latest.pt"
    stats_path = state_dir / "stats.jsonl"
    if latest.exists():
        ckpt = load_checkpoint(latest)
        if ckpt.get("config_sha256") != sha:
            raise ConfigError(f"resume checkpoint {latest} was written by a different config "
                              f"(sha {ckpt.get('config_sha256')} != {sha}); delete {state_dir} to start over")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(gen, ckpt["rng"])
        step = int(ckpt["step"])
        _truncate_stats(stats_path, step)
    elif stats_path.exists():
        stats_path.unlink()  # stats of a run that never reached its first checkpoint

    def checkpoint(at: int) -> dict:
        return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "step": at, "rng": _rng_state(gen), "config_json": json.dumps(cfg, sort_keys=True),
                "config_sha256": sha}

    if step == 0:
        save_checkpoint(latest, checkpoint(0))

    images = torch.from_numpy(np.ascontiguousarray(data))  # uint8, indexed per step
    # bf16 autocast for the network where the hardware has it (infdiff/precision.py); same for every method.
    precision = resolve_precision(cfg["precision"], dev)
    total = int(tcfg["steps"])
    t_start = time.time()
    window_loss, window_n, window_t = 0.0, 0, time.time()
    # In a log file (not a terminal) refresh rarely so logs stay readable.
    bar = tqdm(total=total, initial=step, desc=f"train {cfg.get('name', '')}", disable=not progress,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 15)
    steps_this_call = 0
    while step < total:
        if stop_after is not None and steps_this_call >= stop_after:
            bar.close()
            return {"step": step, "finished": False}
        model.train()
        # Learning rate: linear warm-up (Adam with a large lr diverges in the first steps otherwise).
        lr = tcfg["lr"] * min(1.0, (step + 1) / max(1, tcfg["warmup"]))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = torch.randint(0, images.shape[0], (tcfg["batch_size"],), generator=gen)
        x0 = images[batch].to(dev).float() / 127.5 - 1.0
        if tcfg["hflip"]:
            flip = torch.rand(x0.shape[0], generator=gen).to(dev) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        with autocast(precision, dev):
            loss = model.training_loss(x0, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss ({loss.item()}) at step {step + 1} of run "
                                     f"'{cfg.get('name', '')}'; lower train.lr or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
        opt.step()
        step += 1
        steps_this_call += 1
        # EMA warm-up: early on the average would be dominated by the random initialisation.
        ema_update(ema, model, min(tcfg["ema_decay"], (1 + step) / (10 + step)))

        window_loss += loss.item()
        window_n += 1
        bar.update(1)
        if step % tcfg["log_every"] == 0 or step == total:
            now = time.time()
            record = {"step": step, "loss": window_loss / window_n, "lr": lr,
                      "grad_norm": float(grad_norm),
                      "images_per_s": window_n * tcfg["batch_size"] / max(now - window_t, 1e-9)}
            with open(stats_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            window_loss, window_n, window_t = 0.0, 0, now
        if step % tcfg["checkpoint_every"] == 0 or step == total:
            save_checkpoint(latest, checkpoint(step))
    bar.close()

    # --- finished: publish the declared outputs (the state folder stays for inspection)
    final = checkpoint(step)
    save_checkpoint(out_dir / "checkpoint.pt", final)
    stats = stats_path.read_text() if stats_path.exists() else ""
    write_text(out_dir / "stats.jsonl", stats)
    wall = time.time() - t_start
    write_json(out_dir / "config.json",
               {"config": cfg, "provenance": provenance(cfg, seeds=[cfg["seed"]], wall_time=wall,
                                                        device=str(dev), precision=precision),
                "n_params": sum(p.numel() for p in model.parameters())})
    last = [json.loads(line) for line in stats.splitlines() if line.strip()]
    return {"step": step, "finished": True, "wall_time": wall,
            "final_loss": last[-1]["loss"] if last else math.nan}
