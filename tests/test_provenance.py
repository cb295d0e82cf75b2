"""Tests of provenance records and config hashing (infdiff.provenance; its JSON files: tests/test_io.py)."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from infdiff import provenance as prov
from infdiff.provenance import _git_info, config_sha256, provenance, summarise_seeds


def test_config_sha_stable_under_key_order_and_sensitive_to_values():
    a = {"model": {"channels": 32, "mults": [1, 2, 2]}, "lr": 2e-4, "name": "x"}
    b = {"name": "x", "lr": 2e-4, "model": {"mults": [1, 2, 2], "channels": 32}}
    assert config_sha256(a) == config_sha256(b)
    assert len(config_sha256(a)) == 64
    c = {**b, "model": {"mults": [1, 2, 2], "channels": 33}}
    assert config_sha256(c) != config_sha256(a)
    # List order is meaningful (it is data, not a mapping).
    assert config_sha256({"m": [2, 1]}) != config_sha256({"m": [1, 2]})


def test_config_sha_handles_non_json_types():
    from pathlib import Path

    cfg = {"n": np.int64(3), "x": np.float32(0.5), "p": Path("/a/b"), "arr": np.arange(3), "obj": object}
    h = config_sha256(cfg)
    # numpy values hash like their Python counterparts.
    assert config_sha256({"n": np.int64(3)}) == config_sha256({"n": 3})
    assert config_sha256({"arr": np.arange(3)}) == config_sha256({"arr": [0, 1, 2]})
    assert h == config_sha256(dict(reversed(list(cfg.items()))))


def test_git_info_outside_a_checkout_is_unknown(tmp_path):
    assert _git_info(tmp_path) == {"commit": "unknown", "dirty": None}
    assert _git_info(tmp_path / "does-not-exist") == {"commit": "unknown", "dirty": None}


def test_git_info_without_git_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `git` on PATH
    assert _git_info(prov.PACKAGE_DIR) == {"commit": "unknown", "dirty": None}
    out = provenance({"a": 1})
    assert out["git_commit"] == "unknown" and out["git_dirty"] is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_info_reads_commit_and_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    assert _git_info(tmp_path)["commit"] == "unknown"  # no commit yet
    (tmp_path / "f.txt").write_text("1")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    info = _git_info(tmp_path)
    assert len(info["commit"]) == 40 and info["dirty"] is False
    (tmp_path / "f.txt").write_text("2")
    assert _git_info(tmp_path)["dirty"] is True


def test_provenance_fields():
    out = provenance(config={"a": 1}, seeds=list(range(100, 110)), wall_time=3, device="cpu")
    for key in ("git_commit", "git_dirty", "config_sha256", "versions", "device", "seeds", "wall_time_s",
                "hostname", "timestamp_utc"):
        assert key in out
    assert out["config_sha256"] == config_sha256({"a": 1})
    assert out["versions"]["numpy"] == np.__version__ and out["versions"]["python"]
    assert out["device"] == "cpu" and out["wall_time_s"] == 3.0
    assert out["seeds"]["first"] == 100 and out["seeds"]["count"] == 10 and out["seeds"]["contiguous"]
    assert out["timestamp_utc"].endswith("+00:00")
    json.dumps(out)  # JSON-serialisable as is


def test_summarise_seeds():
    assert summarise_seeds(None) is None and summarise_seeds(7) == 7
    s = summarise_seeds(np.array([5, 3, 9]))
    assert (s["first"], s["last"], s["count"], s["contiguous"]) == (5, 9, 3, False)
    assert summarise_seeds(range(3))["sha256"] == summarise_seeds([0, 1, 2])["sha256"]


def test_provenance_names_the_sparse_backends_that_ran(monkeypatch):
    """``sparse_backends``: what the sparse operators ran in this process, absent where none ran (asking what
    "auto" would pick would import torch's compiler: seconds in every job, for a guess)."""
    import torch

    from infdiff import sparse

    monkeypatch.setattr(sparse, "_USED", set())
    assert "sparse_backends" not in provenance(device="cpu")
    geom = sparse.SparseGeometry(torch.randperm(64)[:20][None], 8, 3)
    v, w = torch.randn(1, 20, 4), torch.randn(4, 3, 3)
    sparse.sparse_depthwise_conv(v, geom, w, backend="torch")
    assert provenance(device="cpu")["sparse_backends"] == ["torch"]
    sparse.sparse_depthwise_conv(v, geom, w, backend="dense")
    sparse.sparse_conv(v, geom, torch.randn(2, 4, 3, 3), backend="compiled")   # runs the "torch" path
    assert provenance(device="cpu")["sparse_backends"] == ["dense", "torch"]
