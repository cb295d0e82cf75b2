"""Generic training loop for any :class:`~infdiff.methods.base.Method` (docs/architecture.md, "The library").

What a researcher relies on here:

* **Seeds for everything, per step.** Initialisation uses ``torch.manual_seed(seed)``. Every draw of
  step s (batch indices, flips, timesteps, noise, coordinates, dropout) comes from generators seeded by
  (seed, s, chunk) (``infdiff.loader``), so a run killed at any point and restarted continues exactly as
  if it had never stopped (tested: resume equals uninterrupted training, weight for weight), and the
  DataLoader's workers may read ahead.
* **Chunks and processes.** The global batch is split into ``batch_size / micro_batch_size`` chunks
  whose gradients are averaged; under ``torchrun`` each process takes every world-th chunk and
  DistributedDataParallel averages across processes. The weights depend on the chunk size, not on the
  number of processes (tested with gloo: 2 processes == 1 process).
* **EMA as a copy of the model** at step 0 (the official code initialised it from a fresh network).
* **Validation and the best EMA weights.** With ``train.validation.every > 0`` the EMA model's loss on the
  val split (fixed seeds and timesteps, ``infdiff.validation``) is recorded in ``stats.jsonl``; the best
  EMA weights are kept (``state/<sha>/best.pt``, and under ``"best"`` in the final checkpoint) and
  ``patience`` evaluations without improvement stop the run early.
* **Atomic, resumable checkpoints** in ``<run>/state/<config sha>/latest.pt`` every ``checkpoint_every``
  steps and on SIGTERM (then the process exits with status 143 and a re-run resumes: a pre-empted
  cluster job); the final ``<run>/checkpoint.pt`` appears only when training finished. Checkpoints hold
  only tensors and plain types and load with ``weights_only=True``.
* ``stats.jsonl`` (step, loss, images/s, lr, grad norm; validation records); a tqdm bar; a NaN/inf loss
  stops the run with an error naming the step.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from infdiff.config import ConfigError
from infdiff.distributed import World, leave, world_from_env
from infdiff.io import load_checkpoint, save_checkpoint, write_json, write_text
from infdiff.loader import STREAM_DROPOUT, STREAM_LOSS, PreparedImages, StepBatches, step_loader, step_generator, step_seed
from infdiff.methods import build_method
from infdiff.methods.base import Method
from infdiff.optim import adam, ema_update
from infdiff.precision import autocast, resolve_precision
from infdiff.provenance import config_sha256, provenance
from infdiff.validation import validation_loss

# Exit status of a run stopped by SIGTERM after writing its checkpoint (128 + SIGTERM, as a shell reports it).
PREEMPTED_EXIT = 128 + signal.SIGTERM


class _Loss(nn.Module):
    """The method's training loss as ``forward``, which is what DistributedDataParallel wraps."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.method.training_loss(x0, generator)


def _truncate_stats(path: Path, step: int) -> None:
    """Keep only records up to ``step``: the lines written after the last checkpoint are replayed."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in keep))


def chunking(tcfg: dict, world: World) -> tuple[int, int, list[int]]:
    """(micro-batch size, chunks per step, this process's chunks) of the train config; checked."""
    B = int(tcfg["batch_size"])
    micro = int(tcfg["micro_batch_size"] or B)
    if B % micro:
        raise ConfigError(f"train.batch_size {B} is not a multiple of train.micro_batch_size {micro}")
    chunks = B // micro
    if chunks % world.size:
        raise ConfigError(f"{world.size} processes (GPUs) cannot share {chunks} chunk(s) of a step evenly: set "
                          f"train.micro_batch_size so that batch_size / micro_batch_size = {chunks} becomes a "
                          f"multiple of {world.size} (e.g. {B // world.size}); the weights depend on the chunk "
                          f"size, never on the number of processes")
    return micro, chunks, list(range(world.rank, chunks, world.size))


class _Preemption:
    """Remembers a SIGTERM (the scheduler pre-empting the job) until the loop reaches a step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:              # not the main thread (e.g. called from a worker thread): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(cfg: dict, data, out_dir: str | Path, device: str = "auto", progress: bool = True,
          stop_after: int | None = None, val_data=None) -> dict:
    """Train the method of run config ``cfg`` on ``data`` into ``out_dir``.

    ``data``/``val_data``: a prepared split (path of a ``.npy`` store, read through a memmap) or a uint8
    array [N, 3, R, R]. ``val_data`` is needed when ``train.validation.every > 0``.

    Writes ``out_dir/checkpoint.pt``, ``stats.jsonl`` and ``config.json`` when finished, and keeps a
    resumable ``out_dir/state/<config sha>/latest.pt``. ``stop_after`` ends the call after that many steps
    without finishing (it simulates a kill in tests). Run under ``torchrun`` it trains data-parallel (the
    main process writes the files). Returns a summary dict (steps, final loss, wall time, validation).
    """
    world = world_from_env(device)
    try:
        with _Preemption() as preemption:
            return _train(cfg, data, Path(out_dir), world, progress, stop_after, val_data, preemption)
    finally:
        leave(world)


def _train(cfg, data, out_dir: Path, world: World, progress, stop_after, val_data, preemption) -> dict:
    dev = world.device
    tcfg, vcfg = cfg["train"], cfg["train"]["validation"]
    R = int(cfg["resolution"])
    images = PreparedImages(data)
    if images.shape[2:] != (R, R):
        raise ValueError(f"training data has shape {images.shape}, expected [N, 3, {R}, {R}]")
    validate_every = int(vcfg["every"])
    val_images = None
    if validate_every:
        if val_data is None:
            raise ValueError("train.validation.every > 0 needs the val split (val_data): prepare it, or set "
                             "train.validation.every: 0")
        val_images = PreparedImages(val_data)
    micro, n_chunks, my_chunks = chunking(tcfg, world)
    seed = int(cfg["seed"])
    sha = config_sha256(cfg)
    # Resumable state is kept per config: a run re-done under a changed config (which is why the
    # workflow re-runs it) starts fresh instead of resuming, or tripping over, another config's state.
    state_dir = out_dir / "state" / sha[:16]
    if world.is_main:
        state_dir.mkdir(parents=True, exist_ok=True)

    # --- build (seeded), EMA as an exact copy, optimiser
    torch.manual_seed(seed)
    model = build_method(cfg).to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = adam(model.parameters(), lr=tcfg["lr"], betas=tcfg["betas"])
    step = 0
    best = {"loss": math.inf, "step": None, "bad_evals": 0}

    latest, best_path = state_dir / "latest.pt", state_dir / "best.pt"
    stats_path = state_dir / "stats.jsonl"
    if latest.exists():
        ckpt = load_checkpoint(latest)
        if ckpt.get("config_sha256") != sha:
            raise ConfigError(f"resume checkpoint {latest} was written by a different config "
                              f"(sha {ckpt.get('config_sha256')} != {sha}); delete {state_dir} to start over")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        best.update(ckpt.get("validation") or {})
        if world.is_main:
            _truncate_stats(stats_path, step)
    elif stats_path.exists() and world.is_main:
        stats_path.unlink()  # stats of a run that never reached its first checkpoint
    world.barrier()          # every process has read the state before the main one writes it again

    def checkpoint(at: int) -> dict:
        return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "step": at, "validation": dict(best), "config_json": json.dumps(cfg, sort_keys=True),
                "config_sha256": sha}

    def save_latest(at: int) -> None:
        if world.is_main:
            save_checkpoint(latest, checkpoint(at))

    def log(record: dict) -> None:
        if world.is_main:
            with open(stats_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    # bf16 autocast for the network where the hardware has it (infdiff/precision.py); same for every method.
    precision = resolve_precision(cfg["precision"], dev)

    def validate(at: int) -> float:
        """Score the EMA weights on the val split; keep them when they are the best so far."""
        v = validation_loss(ema, val_images, vcfg, precision, world)
        if v < best["loss"]:
            best.update(loss=v, step=at, bad_evals=0)
            if world.is_main:
                # a full checkpoint (python -m infdiff sample reads it as it is), with its loss
                save_checkpoint(best_path, {**checkpoint(at), "val_loss": v})
        else:
            best["bad_evals"] += 1
        log({"step": at, "val_loss": v, "best_val_loss": best["loss"], "best_step": best["step"]})
        return v

    if step == 0:
        # the curve starts at the initial weights, and even a 0-step run has best weights to sample
        if validate_every and best["step"] is None:
            validate(0)
        save_latest(0)

    loss_fn = _Loss(model)
    if world.distributed:
        loss_fn = nn.parallel.DistributedDataParallel(loss_fn, device_ids=[dev.index] if dev.type == "cuda" else None)
    total = int(tcfg["steps"])
    sampler = StepBatches(len(images), tcfg["batch_size"], micro, my_chunks, seed, step, total)
    batches = iter(step_loader(images, sampler, tcfg["num_workers"], dev))
    t_start = time.time()
    window_loss, window_n, window_t = 0.0, 0, time.time()
    stopped_early = False
    # In a log file (not a terminal) refresh rarely so logs stay readable.
    bar = tqdm(total=total, initial=step, desc=f"train {cfg.get('name', '')}",
               disable=not progress or not world.is_main, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 15)
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
        batch = next(batches)                                   # uint8 [len(my_chunks) * micro, 3, R, R]
        opt.zero_grad(set_to_none=True)
        local_loss = 0.0
        for j, c in enumerate(my_chunks):
            gen = step_generator(seed, STREAM_LOSS, step, c)
            torch.manual_seed(step_seed(seed, STREAM_DROPOUT, step, c))   # dropout masks of this chunk
            x0 = batch[j * micro:(j + 1) * micro].to(dev, non_blocking=True).float() / 127.5 - 1.0
            if tcfg["hflip"]:
                flip = (torch.rand(micro, generator=gen) < 0.5).to(dev)
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            # gradients are averaged over processes only after the last chunk of this process
            last = j == len(my_chunks) - 1
            sync = loss_fn.no_sync() if world.distributed and not last else contextlib.nullcontext()
            with sync:
                with autocast(precision, dev):
                    loss = loss_fn(x0, gen)
                (loss / len(my_chunks)).backward()
            local_loss += loss.item()
        # one reduction per step: the loss sum (NaN anywhere stops every process) and the SIGTERM flag
        loss_sum, stop_flag = world.all_sum([local_loss, float(preemption.requested)])
        step_loss = loss_sum / n_chunks
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"non-finite loss ({step_loss}) at step {step + 1} of run "
                                     f"'{cfg.get('name', '')}'; lower train.lr or check the data")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
        opt.step()
        step += 1
        steps_this_call += 1
        # EMA warm-up: early on the average would be dominated by the random initialisation.
        ema_update(ema, model, min(tcfg["ema_decay"], (1 + step) / (10 + step)))

        window_loss += step_loss
        window_n += 1
        bar.update(1)
        if step % tcfg["log_every"] == 0 or step == total:
            now = time.time()
            record = {"step": step, "loss": window_loss / window_n, "lr": lr, "grad_norm": float(grad_norm),
                      "images_per_s": window_n * tcfg["batch_size"] / max(now - window_t, 1e-9)}
            log(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            window_loss, window_n, window_t = 0.0, 0, now
        if validate_every and (step % validate_every == 0 or step == total):
            v = validate(step)
            bar.set_postfix(loss=f"{step_loss:.4f}", val=f"{v:.4f}")
            patience = vcfg["patience"]
            if patience is not None and best["bad_evals"] >= int(patience):
                stopped_early = True
                save_latest(step)
                break
        if step % tcfg["checkpoint_every"] == 0 or step == total:
            save_latest(step)
        if stop_flag:
            save_latest(step)
            bar.close()
            print(f"SIGTERM: checkpoint of step {step} written to {latest}; exiting with status "
                  f"{PREEMPTED_EXIT} (run again to resume)", file=sys.stderr, flush=True)
            raise SystemExit(PREEMPTED_EXIT)
    bar.close()

    # --- finished: publish the declared outputs (the state folder stays for inspection)
    wall = time.time() - t_start
    validation = None
    if validate_every:
        validation = {"best_step": best["step"], "best_val_loss": best["loss"], "stopped_early": stopped_early,
                      "evaluated_every": validate_every, "n": int(vcfg["n"]), "timesteps": int(vcfg["timesteps"])}
    if world.is_main:
        final = checkpoint(step)
        if validate_every:
            kept = load_checkpoint(best_path)
            final["best"] = {"ema": kept["ema"], "step": kept["step"], "val_loss": kept["val_loss"]}
        save_checkpoint(out_dir / "checkpoint.pt", final)
        write_text(out_dir / "stats.jsonl", stats_path.read_text() if stats_path.exists() else "")
        write_json(out_dir / "config.json",
                   {"config": cfg, "provenance": provenance(cfg, seeds=[cfg["seed"]], wall_time=wall,
                                                            device=str(dev), precision=precision),
                    "n_params": sum(p.numel() for p in model.parameters()), "steps": step,
                    "processes": world.size, "validation": validation})
    world.barrier()
    losses = [r["loss"] for r in _records(out_dir / "stats.jsonl") if "loss" in r] if world.is_main else []
    return {"step": step, "finished": True, "wall_time": wall, "final_loss": losses[-1] if losses else math.nan,
            "validation": validation}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
