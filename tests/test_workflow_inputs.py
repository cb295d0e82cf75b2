"""Bad input stops `snakemake table1` while the workflow is read: the message names the problem and no job
(no results/ directory) has started. Seconds each, so in the default run (the DAG runs are in test_workflow.py)."""

import shutil

import pytest
import yaml

from infdiff.config import deep_merge
from tests.conftest import REPO
from tests.test_workflow import _snakemake


@pytest.mark.parametrize("patch, message", [
    ({"runs": {"infdiff": {"ratoi": 0.5}}}, "ratoi"),                                   # misspelt key
    ({"runs": {"infdiff": {"ratio": 1.5}}}, "ratio"),                                   # outside (0, 1]
    ({"datasets": {"ffhq": {"kind": "folder", "path": "/nonexistent/ffhq"}},
      "runs": {"infdiff": {"dataset": "ffhq"}}}, "/nonexistent/ffhq does not exist"),   # missing data
    ({"tables": {"table1": {"metrics": ["swd", "fid_clip"]}},                             # missing weights
      "metrics": {"weights": {"clip_vit_b_32": "/nonexistent/ViT-B-32.pt"}}},
     "metrics.weights.clip_vit_b_32: /nonexistent/ViT-B-32.pt does not exist"),
    ({"tables": {"table1": {"metrics": ["swd", "fid"]}}, "evaluate": {"fid": {"min_samples": 50000}}},
     "fid needs at least evaluate.fid.min_samples = 50000"),                             # too few samples
])
def test_bad_input_stops_before_any_job(tmp_path, patch, message):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    bad = deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), patch)
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(bad))
    out = _snakemake(tmp_path, "table1")
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()
