"""benchmarks/gpu_check.sh refuses without CUDA; gpu_report.py builds the README's GPU section from its JSON."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_report  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run for real")
def test_gpu_check_refuses_without_cuda(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "INFDIFF_GPU_CHECK_DEVICE"}
    out = tmp_path / "gpu.json"
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert "no CUDA device" in r.stderr and "INFDIFF_GPU_CHECK_DEVICE=cpu" in r.stderr
    assert not out.exists()


def _result(dry=False):
    return {"dry": dry, "status": {"smoke": 0, "precision": 124},
            "provenance": {"gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "torch": "2.x", "cuda": "13.0",
                           "commit": "0123456789abcdef", "dirty": False},
            "parts": {"smoke": {"config": "workflow/presets/rehearsal.yaml", "run": "infdiff", "resolution": 32,
                                "train_steps": 50, "ok": True,
                                "steps": [{"step": "train", "rc": 0, "seconds": 12.0, "peak_gib": 1.5}]},
                      "precision": {"partial": True, "rows": [
                          {"preset": "paper-ffhq128", "run": "infdiff", "resolution": 128, "batch": 64,
                           "precision": "fp32", "ms_median": 400.0, "peak_gib": 30.0, "achieved_tflops": 50.0},
                          {"preset": "paper-ffhq128", "run": "infdiff", "resolution": 128, "batch": 64,
                           "precision": "bf16", "ms_median": 200.0, "peak_gib": 20.0, "achieved_tflops": 100.0}]}}}


def test_report_is_built_from_the_json(tmp_path):
    md = gpu_report.report(_result())
    assert "NVIDIA H200" in md and "commit 0123456789" in md
    assert "| paper-ffhq128 | 128 | 64 | bf16 | 200.0 | 20.0 | 100.0 | 2.00x |" in md
    assert "partial" in md
    assert "### Sparse operator\n\nNot measured" in md            # a part without a result says so
    path = tmp_path / "dry.json"
    path.write_text(json.dumps(_result(dry=True)))
    assert gpu_report.main([str(path)]) == 2                      # a CPU dry run is not a GPU's numbers
    assert gpu_report.main([str(path), "--allow-dry", "--out", str(tmp_path / "s.md")]) == 0
