"""Data-parallel training: 2 processes (torchrun, gloo on CPU) give the weights of 1 process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infdiff.config import ConfigError
from infdiff.distributed import World
from infdiff.io import load_checkpoint
from infdiff.train import chunking, train

REPO = Path(__file__).resolve().parents[1]


def test_chunks_are_shared_out_by_rank_and_must_divide():
    tcfg = {"batch_size": 8, "micro_batch_size": 2}
    assert chunking(tcfg, World(0, 1)) == (2, 4, [0, 1, 2, 3])
    assert chunking(tcfg, World(1, 2)) == (2, 4, [1, 3])
    with pytest.raises(ConfigError, match="multiple of 3"):
        chunking(tcfg, World(0, 3))
    with pytest.raises(ConfigError, match="not a multiple"):
        chunking({"batch_size": 8, "micro_batch_size": 3}, World())


def test_two_processes_give_the_weights_of_one(tmp_path, tiny_cfg):
    from infdiff.data import prepare

    cfg = tiny_cfg
    cfg["train"].update(batch_size=8, micro_batch_size=4, steps=3, checkpoint_every=2, log_every=1)
    cfg["train"]["validation"].update(every=2, n=6, batch_size=4, timesteps=2)
    prepare(cfg["dataset"], "train", cfg["resolution"], 64, tmp_path / "train.npy", progress=False)
    prepare(cfg["dataset"], "val", cfg["resolution"], 8, tmp_path / "val.npy", progress=False)
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    train(cfg, tmp_path / "train.npy", tmp_path / "one", progress=False, val_data=tmp_path / "val.npy")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "infdiff",
           "train", "--run-config", str(tmp_path / "run.json"), "--data", str(tmp_path / "train.npy"),
           "--val-data", str(tmp_path / "val.npy"), "--out", str(tmp_path / "two"), "--device", "cpu", "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_checkpoint(tmp_path / "one" / "checkpoint.pt"), load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    for key in ("model", "ema"):
        for name, a in one[key].items():
            torch.testing.assert_close(two[key][name], a, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    records = [[json.loads(line) for line in (tmp_path / r / "stats.jsonl").read_text().splitlines()]
               for r in ("one", "two")]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]]
    for a, b in zip(*records):   # the step losses and the validation losses (sharded over the processes)
        for k in ("loss", "val_loss"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-5), (k, a["step"])
    assert json.loads((tmp_path / "two" / "config.json").read_text())["processes"] == 2
