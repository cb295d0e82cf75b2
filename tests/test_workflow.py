"""Micro end-to-end DAG: `snakemake table1` on a tiny config produces the promised table, and a
second invocation has nothing to do."""

import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from infdiff.config import deep_merge
from infdiff.report.tables import TABLE_COLUMNS
from tests.conftest import REPO, TINY

pytestmark = pytest.mark.slow


def _snakemake(workdir, *args):
    # targets first: --configfile takes several values and would swallow them
    cmd = ["snakemake", *args, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", "--configfile", str(workdir / "micro.yaml")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("dag")
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    micro = deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), TINY)
    micro["runs"]["infdiff"]["train"]["steps"] = 3
    (work / "micro.yaml").write_text(yaml.safe_dump(micro))
    out = _snakemake(work, "table1")
    assert out.returncode == 0, out.stderr[-4000:]
    return work


def test_table1_has_promised_columns_and_rows(micro_run):
    df = pd.read_csv(micro_run / "results/tables/table1.csv")
    assert list(df.columns) == TABLE_COLUMNS
    measured = df[df.source == "measured"]
    assert set(measured.method) >= {"∞-Diff", "pure Gaussian noise", "real vs real (floor)",
                                    "MLP pixel diffusion (fair)", "MLP pixel diffusion (as described)",
                                    "simple diffusion U-ViT",
                                    # a grid model's row above its training resolution is labelled
                                    "simple diffusion U-ViT, resized from 16 px"}
    for run in ("infdiff", "mlp_pixel", "simple_diffusion"):
        assert set(measured[measured.run == run].resolution) == {16, 32}
    # every trained row states its (equal) image budget
    trained = measured[measured.run.isin(["infdiff", "mlp_pixel", "simple_diffusion"])]
    assert trained.note.str.contains(r"3 training steps \(12 images\)").all()
    assert (measured.value > 0).all() and measured.value.notna().all()
    assert (df.source == "reported").any()
    for ext in ("md", "tex"):
        assert (micro_run / f"results/tables/table1.{ext}").stat().st_size > 0


def test_every_rule_logged_and_results_have_provenance(micro_run):
    import json
    logs = list((micro_run / "results/logs").rglob("*.log"))
    assert {p.parent.name for p in logs} >= {"prepare_data", "train", "sample", "evaluate", "table"}
    for run in ("infdiff", "mlp_pixel", "simple_diffusion", "mlp_pixel_as_described"):
        assert (micro_run / f"results/samples/{run}/16px-3steps/grid.png").stat().st_size > 0
    rec = json.loads(next((micro_run / "results/metrics/infdiff").glob("swd-16px-*.json")).read_text())
    for key in ("metric", "value", "n_samples", "seed_range", "steps", "resolution", "run", "provenance"):
        assert key in rec
    assert "config_sha256" in rec["provenance"]


def test_second_invocation_does_nothing(micro_run):
    out = _snakemake(micro_run, "table1", "--dry-run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Nothing to be done" in out.stdout + out.stderr


@pytest.mark.parametrize("patch, message", [
    ({"runs": {"infdiff": {"ratoi": 0.5}}}, "ratoi"),                                   # misspelt key
    ({"runs": {"infdiff": {"ratio": 1.5}}}, "ratio"),                                   # outside (0, 1]
    ({"datasets": {"ffhq": {"kind": "folder", "path": "/nonexistent/ffhq"}},
      "runs": {"infdiff": {"dataset": "ffhq"}}}, "/nonexistent/ffhq does not exist"),   # missing data
])
def test_bad_input_stops_before_any_job(tmp_path, patch, message):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    bad = deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), patch)
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(bad))
    out = _snakemake(tmp_path, "table1")
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()


def test_seeds_and_speedup_tables(tmp_path):
    """A table with `seeds:` trains each row per seed and merges them; Table 3's speed-up job runs."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    micro = deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), TINY)
    micro["runs"]["infdiff"]["train"]["steps"] = 2
    micro["tables"]["table2"] = {"rows": [{"run": "infdiff", "resolutions": [16]}], "seeds": [0, 1],
                                 "floor": False, "noise": False}
    micro["tables"]["table3"] = {"rows": [{"run": "infdiff", "resolutions": [16]}], "floor": False,
                                 "noise": False, "reported": False,
                                 "speedup": {"run": "infdiff", "ratios": [1.0, 0.5], "repeats": 2, "warmup": 0}}
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(micro))
    out = _snakemake(tmp_path, "table2", "table3")
    assert out.returncode == 0, out.stderr[-4000:]
    t2 = pd.read_csv(tmp_path / "results/tables/table2.csv")
    merged = t2[t2.source == "measured"]
    assert list(merged.run) == ["infdiff"] and "mean of 2 seeds (0, 1)" in merged.note.iloc[0]
    assert (tmp_path / "results/runs/infdiff-seed1/checkpoint.pt").exists()
    t3 = pd.read_csv(tmp_path / "results/tables/table3.csv")
    speed = t3[t3.metric == "train_speedup"]
    assert len(speed) == 2 and speed.value.iloc[0] == 1.0
