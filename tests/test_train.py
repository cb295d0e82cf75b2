"""Training loop: EMA copy, exact resume after a kill, NaN guard, safe checkpoints."""

import json

import numpy as np
import pytest
import torch

from infdiff.config import ConfigError
from infdiff.io import load_checkpoint, load_method
from infdiff.train import train


def _weights(path):
    ckpt = load_checkpoint(path)
    return ckpt["model"], ckpt["ema"]


def test_resume_after_kill_equals_uninterrupted(tmp_path, tiny_cfg, tiny_data):
    # Uninterrupted: 6 steps. Interrupted: killed after 4 steps (last checkpoint at 3), then re-run.
    full = train(tiny_cfg, tiny_data, tmp_path / "full", progress=False)
    assert full["finished"] and full["step"] == 6
    part = train(tiny_cfg, tiny_data, tmp_path / "killed", progress=False, stop_after=4)
    assert not part["finished"]
    assert not (tmp_path / "killed" / "checkpoint.pt").exists()  # no final output before the end
    (latest,) = (tmp_path / "killed" / "state").glob("*/latest.pt")
    assert load_checkpoint(latest)["step"] == 3
    train(tiny_cfg, tiny_data, tmp_path / "killed", progress=False)
    (m1, e1), (m2, e2) = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(tmp_path / "killed" / "checkpoint.pt")
    for a, b in ((m1, m2), (e1, e2)):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # stats are replayed, not duplicated: one record per step
    steps = [json.loads(l)["step"] for l in (tmp_path / "killed" / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_untrained_run_ema_is_copy_of_model(tmp_path, tiny_cfg, tiny_data):
    tiny_cfg["train"]["steps"] = 0
    train(tiny_cfg, tiny_data, tmp_path, progress=False)
    model, ema = _weights(tmp_path / "checkpoint.pt")
    for k in model:
        assert torch.equal(model[k], ema[k]), k
    method, cfg = load_method(tmp_path / "checkpoint.pt")
    assert not method.training and cfg["name"] == "infdiff"


def test_nan_loss_names_the_step(tmp_path, tiny_cfg, tiny_data, monkeypatch):
    from infdiff.methods.infdiff import InfDiff

    real = InfDiff.training_loss
    calls = []

    def diverging(self, x0, generator):  # a loss that blows up at the second step
        calls.append(1)
        loss = real(self, x0, generator)
        return loss * float("inf") if len(calls) == 2 else loss

    monkeypatch.setattr(InfDiff, "training_loss", diverging)
    with pytest.raises(FloatingPointError, match="step 2"):
        train(tiny_cfg, tiny_data, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_corrupt_checkpoint_is_clear_error(tmp_path, tiny_cfg, tiny_data):
    from infdiff.provenance import config_sha256

    bad = tmp_path / "state" / config_sha256(tiny_cfg)[:16] / "latest.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="latest.pt is corrupt"):
        train(tiny_cfg, tiny_data, tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_changed_config_starts_fresh_and_foreign_state_is_refused(tmp_path, tiny_cfg, tiny_data):
    import shutil

    train(tiny_cfg, tiny_data, tmp_path, progress=False, stop_after=3)
    (old,) = (tmp_path / "state").iterdir()
    other = dict(tiny_cfg, train=dict(tiny_cfg["train"], lr=0.5))
    # a changed config never resumes the other config's state: it trains from step 0 in its own folder
    assert train(other, tiny_data, tmp_path, progress=False)["step"] == 6
    assert len(list((tmp_path / "state").iterdir())) == 2
    # a state file copied under the wrong config's folder is detected by its recorded config hash
    new = next(p for p in (tmp_path / "state").iterdir() if p != old)
    shutil.copy(old / "latest.pt", new / "latest.pt")
    with pytest.raises(ConfigError, match="different config"):
        train(other, tiny_data, tmp_path, progress=False)


def test_wrong_data_shape(tmp_path, tiny_cfg, tiny_data):
    with pytest.raises(ValueError, match="expected"):
        train(tiny_cfg, tiny_data[:, :, :8, :8], tmp_path, progress=False)


def test_grid_baseline_rows_above_training_resolution_are_resized(tmp_path, tiny_data):
    """simple diffusion samples only at R_train; sample_checkpoint resizes and says so (tables label it)."""
    from infdiff.config import run_config
    from infdiff.sample import resize_images, sample_checkpoint
    from tests.conftest import tiny_config

    cfg = run_config(tiny_config({"runs": {"infdiff": {"train": {"steps": 1}}}}), "simple_diffusion")
    train(cfg, tiny_data, tmp_path, progress=False)
    seeds = [5, 6]
    native = sample_checkpoint(tmp_path / "checkpoint.pt", 16, seeds, 2, sampler="ddpm", progress=False)
    bigger = sample_checkpoint(tmp_path / "checkpoint.pt", 32, seeds, 2, sampler="ddpm", progress=False)
    assert native.resized_from is None and bigger.resized_from == 16
    assert bigger.images.shape == (2, 3, 32, 32) and native.precision in ("fp32", "bf16")
    # the 32 px rows are exactly the antialiased resize of the same seeds' 16 px samples
    x16 = torch.from_numpy(native.images).float() / 127.5 - 1
    expect = ((resize_images(x16, 32) + 1) * 127.5).round()
    assert (torch.from_numpy(bigger.images).float() - expect).abs().max() <= 2  # uint8 rounding of the input



def test_resizing_a_saved_set_is_the_resize_of_its_seeds(tmp_path, tiny_data):
    """The workflow's rows of a grid model above R_train resize the set it drew at R_train (no second
    sampling of the same seeds): each requested seed's saved image, resized, in the requested order; within
    two levels of resizing the sampler's float output; a seed the set lacks is an error."""
    from infdiff.config import run_config
    from infdiff.data import to_uint8
    from infdiff.sample import resize_images, resize_sample_set, sample_checkpoint, save_samples
    from tests.conftest import tiny_config

    cfg = run_config(tiny_config({"runs": {"infdiff": {"train": {"steps": 1}}}}), "simple_diffusion")
    train(cfg, tiny_data, tmp_path, progress=False)
    seeds = [5, 6, 7]
    native = sample_checkpoint(tmp_path / "checkpoint.pt", 16, seeds, 2, sampler="ddpm", progress=False)
    saved = tmp_path / "samples.npz"
    save_samples(native.images, seeds, saved, meta={"provenance": {"precision": native.precision}})
    got = resize_sample_set(saved, 32, [7, 5])
    assert got.resized_from == 16 and got.precision == native.precision
    x16 = torch.from_numpy(native.images[[2, 0]]).float() / 127.5 - 1
    assert np.array_equal(got.images, to_uint8(resize_images(x16, 32)))
    drawn = sample_checkpoint(tmp_path / "checkpoint.pt", 32, [7, 5], 2, sampler="ddpm", progress=False)
    assert np.abs(got.images.astype(int) - drawn.images.astype(int)).max() <= 2
    with pytest.raises(ValueError, match="lacks 1 of the seeds"):
        resize_sample_set(saved, 32, [5, 8])
