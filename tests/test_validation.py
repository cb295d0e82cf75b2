"""Validation loss (fixed draws), the best EMA checkpoint, early stopping, and SIGTERM (pre-emption)."""

import json
import os
import signal

import pytest
import torch

import infdiff.train as train_module
from infdiff.distributed import World
from infdiff.io import load_checkpoint
from infdiff.loader import PreparedImages
from infdiff.methods import build_method
from infdiff.train import PREEMPTED_EXIT, train
from infdiff.validation import validation_loss


def _records(path, key):
    return [r for r in map(json.loads, path.read_text().splitlines()) if key in r]


def _validating(cfg, every=1, n=8, patience=None):
    cfg["train"]["validation"].update(every=every, n=n, batch_size=4, timesteps=3, patience=patience)
    return cfg


def test_validation_loss_repeats_exactly_and_depends_on_the_weights(tiny_cfg, tiny_data):
    torch.manual_seed(0)
    method = build_method(tiny_cfg)
    images = PreparedImages(tiny_data[:8])
    vcfg = {"n": 8, "batch_size": 4, "timesteps": 3, "seed": 0}
    a, b = (validation_loss(method, images, vcfg, "fp32", World()) for _ in range(2))
    assert a == b                     # same weights, same number: the draws are fixed
    other = validation_loss(method, images, {**vcfg, "seed": 1}, "fp32", World())
    assert other != a                 # ... and they are the seed's draws
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert validation_loss(method, images, vcfg, "fp32", World()) != a
    assert method.fixed_timesteps(3).tolist() == [0, method.diffusion.num_timesteps // 2, method.diffusion.num_timesteps - 1]
    with pytest.raises(ValueError, match="val split holds 8"):
        validation_loss(method, images, {**vcfg, "n": 9}, "fp32", World())


def test_best_checkpoint_holds_the_ema_of_the_lowest_validation_loss(tmp_path, tiny_cfg, tiny_data, monkeypatch):
    # a validation curve with its minimum inside the run (a real one may simply decrease for 6 steps)
    real, calls = train_module.validation_loss, []

    def bumpy(*a, **k):
        calls.append(1)
        return real(*a, **k) + (0.0 if len(calls) == 3 else 1.0)

    monkeypatch.setattr(train_module, "validation_loss", bumpy)
    cfg = _validating(tiny_cfg)
    train(cfg, tiny_data, tmp_path / "run", progress=False, val_data=tiny_data[:8])
    vals = _records(tmp_path / "run" / "stats.jsonl", "val_loss")
    assert [r["step"] for r in vals] == list(range(0, cfg["train"]["steps"] + 1))   # from the initial weights
    best_step = min(vals, key=lambda r: r["val_loss"])["step"]
    assert best_step == 2
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["best"]["step"] == best_step and ckpt["best"]["val_loss"] == min(r["val_loss"] for r in vals)
    # the same run stopped at the best step ends with exactly those EMA weights
    short = json.loads(json.dumps(cfg))
    short["train"]["steps"] = best_step
    train(short, tiny_data, tmp_path / "short", progress=False, val_data=tiny_data[:8])
    ema = load_checkpoint(tmp_path / "short" / "checkpoint.pt")["ema"]
    for k, v in ema.items():
        assert torch.equal(ckpt["best"]["ema"][k], v), k
    assert json.loads((tmp_path / "run" / "config.json").read_text())["validation"]["best_step"] == best_step


def test_patience_stops_early(tmp_path, tiny_cfg, tiny_data, monkeypatch):
    losses = iter([3.0, 2.0, 2.5, 2.1, 1.0, 0.5, 0.4])  # steps 0, 1, ...: best at step 1, then 2 worse ones
    monkeypatch.setattr(train_module, "validation_loss", lambda *a, **k: next(losses))
    cfg = _validating(tiny_cfg, patience=2)
    out = train(cfg, tiny_data, tmp_path, progress=False, val_data=tiny_data[:8])
    assert out["step"] == 3 and out["validation"]["stopped_early"] and out["validation"]["best_step"] == 1
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_validation_needs_the_val_split(tmp_path, tiny_cfg, tiny_data):
    with pytest.raises(ValueError, match="needs the val split"):
        train(_validating(tiny_cfg), tiny_data, tmp_path, progress=False)


def test_sigterm_writes_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, tiny_cfg, tiny_data, monkeypatch):
    tiny_cfg["train"]["checkpoint_every"] = 100     # no regular checkpoint before the end
    full = tmp_path / "full"
    train(tiny_cfg, tiny_data, full, progress=False)
    real, calls = train_module.ema_update, []

    def ema_then_sigterm(*a, **k):         # the scheduler pre-empts the job during step 2
        real(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_module, "ema_update", ema_then_sigterm)
    with pytest.raises(SystemExit) as stopped:
        train(tiny_cfg, tiny_data, tmp_path / "killed", progress=False)
    assert stopped.value.code == PREEMPTED_EXIT
    (latest,) = (tmp_path / "killed" / "state").glob("*/latest.pt")
    # the flag is read in the next step's reduction (every process agrees on the step it stops at)
    assert load_checkpoint(latest)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL      # the handler is removed afterwards
    monkeypatch.setattr(train_module, "ema_update", real)
    train(tiny_cfg, tiny_data, tmp_path / "killed", progress=False)
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_best_weights_are_what_load_method_and_the_table_use(tmp_path, tiny_cfg, tiny_data):
    from infdiff.io import checkpoint_weights, load_method
    from infdiff.report.rows import _budget_note

    plain = json.loads(json.dumps(tiny_cfg))
    train(_validating(tiny_cfg, every=3), tiny_data, tmp_path / "v", progress=False, val_data=tiny_data[:8])
    ckpt = load_checkpoint(tmp_path / "v" / "checkpoint.pt")
    method, _ = load_method(tmp_path / "v" / "checkpoint.pt", weights="best")
    for k, v in method.state_dict().items():
        assert torch.equal(v, ckpt["best"]["ema"][k]), k
    _, info = checkpoint_weights(ckpt, "best")
    assert info == {"weights": "best", "trained_steps": 6, "step": ckpt["best"]["step"],
                    "val_loss": ckpt["best"]["val_loss"]}
    note = _budget_note({"train_steps": 6, "train_images": 24, "weights": info})
    assert f"best EMA weights by validation loss: step {info['step']} of 6" in note
    train(plain, tiny_data, tmp_path / "plain", progress=False)       # no validation: no best weights
    with pytest.raises(ValueError, match="trained without validation"):
        load_method(tmp_path / "plain" / "checkpoint.pt", weights="best")


def test_an_untrained_run_has_best_weights_its_initial_ones(tmp_path, tiny_cfg, tiny_data):
    cfg = _validating(tiny_cfg)
    cfg["train"]["steps"] = 0
    train(cfg, tiny_data, tmp_path, progress=False, val_data=tiny_data[:8])
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["best"]["step"] == 0
    for k, v in ckpt["model"].items():
        assert torch.equal(ckpt["best"]["ema"][k], v), k
