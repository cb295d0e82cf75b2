"""Per-table sample counts: a row scores the first n samples of its run's one sample set (seeds first_seed ...),
which holds the most any row scores; the metric file of a part names it, the whole set's keeps its path."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from infdiff.config import ConfigError, row_sample_count, sample_set_size
from tests.conftest import REPO, TINY, tiny_config

ROWS = [{"run": "infdiff", "resolutions": [16, 32]}, {"run": "mlp_pixel", "resolutions": [16]}]


def _counts(extra):
    return tiny_config({"tables": {"table1": {"rows": ROWS}, **extra}})


def test_rows_score_the_tables_count_and_sets_hold_the_most_any_row_scores():
    cfg = _counts({})                                   # no counts given: sample.n_samples (4 at 16 and 32 px)
    assert [row_sample_count(cfg, "table1", r, 16) for r in ROWS] == [4, 4]
    assert sample_set_size(cfg, "infdiff", 16) == 4
    cfg = _counts({"table2": {"n_samples": 3, "same_image_budget": False, "rows": [{"run": "infdiff", "resolutions": [16]},
                                                        {"run": "ablation_base", "resolutions": [16], "n_samples": 2}]}})
    t2 = cfg["tables"]["table2"]["rows"]
    assert row_sample_count(cfg, "table2", t2[0], 16) == 3 and row_sample_count(cfg, "table2", t2[1], 16) == 2
    assert sample_set_size(cfg, "infdiff", 16) == 4      # table1 scores 4 of it, table2 its first 3
    assert sample_set_size(cfg, "ablation_base", 16) == 2    # only a 2-sample row: 2 drawn, not 4
    assert sample_set_size(cfg, "infdiff_ae", 16) == 4   # in no row: sample.n_samples
    cfg = _counts({"table2": {"n_samples": 9, "rows": [{"run": "infdiff", "resolutions": [16]}]}})
    assert sample_set_size(cfg, "infdiff", 16) == 9      # more than sample.n_samples: drawn once, 9


def test_min_samples_is_checked_against_the_count_a_row_scores():
    with pytest.raises(ConfigError, match=r"tables.table2.rows\[ablation_base\]: swd needs at least evaluate.swd"
                                          r".min_samples = 3 samples, but it scores \[2\] at \[16\] px"):
        tiny_config({"evaluate": {"swd": {"min_samples": 3}},
                     "tables": {"table2": {"rows": [{"run": "ablation_base", "resolutions": [16], "n_samples": 2}]}}})


def test_scoring_the_first_n_equals_scoring_a_set_of_n(tmp_path):
    """evaluate_files(first=n) keeps the n lowest seeds wherever they sit in the file: the same number and seeds
    as a file that holds exactly them; n_drawn says how many the set held; the table note says so."""
    from infdiff.evaluate import evaluate_files
    from infdiff.report.rows import metric_row

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 3, 16, 16), dtype=np.uint8)
    seeds = np.array([105, 100, 108, 101, 109, 103, 102, 104, 107, 106])
    np.savez(tmp_path / "all.npz", images=images, seeds=seeds, meta=json.dumps({}))
    low = np.sort(np.argsort(seeds)[:6])
    np.savez(tmp_path / "six.npz", images=images[low], seeds=seeds[low], meta=json.dumps({}))
    np.savez(tmp_path / "ref.npz", images=rng.integers(0, 256, size=(8, 3, 16, 16), dtype=np.uint8))
    settings = {"swd": {"seed": 0, "min_res": 8, "patches_per_image": 8, "directions": 16, "n_boot": 0,
                        "min_samples": 2}}
    kw = dict(settings=settings, run="r", run_cfg=None, resolution=16, steps=3)
    part = evaluate_files("swd", tmp_path / "all.npz", tmp_path / "ref.npz", tmp_path / "part.json", first=6, **kw)
    six = evaluate_files("swd", tmp_path / "six.npz", tmp_path / "ref.npz", tmp_path / "six.json", **kw)
    whole = evaluate_files("swd", tmp_path / "all.npz", tmp_path / "ref.npz", tmp_path / "all.json", **kw)
    assert part["value"] == pytest.approx(six["value"], rel=1e-12) and whole["value"] != pytest.approx(part["value"])
    assert part["n_samples"] == 6 and part["n_drawn"] == 10 and part["seed_range"] == [100, 105]
    assert six["n_drawn"] is None and whole["n_drawn"] is None
    assert metric_row("table3", tmp_path / "part.json")["note"].startswith("first 6 of 10 samples")
    assert metric_row("table1", tmp_path / "all.json")["note"] == ""    # swd: the count is in the N column only
    fid = {**json.loads((tmp_path / "all.json").read_text()), "metric": "fid_clip"}
    (tmp_path / "fid.json").write_text(json.dumps(fid))
    assert metric_row("table1", tmp_path / "fid.json")["note"] == "10 samples"   # FID's bias depends on it
    with pytest.raises(ValueError, match="holds 10 samples; cannot score the first 11"):
        evaluate_files("swd", tmp_path / "all.npz", tmp_path / "ref.npz", tmp_path / "x.json", first=11, **kw)


def test_dag_scores_parts_under_their_own_path_and_keeps_whole_set_paths(tmp_path):
    """`snakemake -n`: a table of 3 samples per row scores the first 3 of a run's 4-sample set
    ("...-first3.json"), a run only that table scores draws 3 and keeps the plain path."""
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    micro = {**TINY, "tables": {"table1": {"rows": [{"run": "infdiff", "resolutions": [16]}]},
                                "table2": {"n_samples": 3, "same_image_budget": False, "rows": [{"run": "infdiff", "resolutions": [16]},
                                                                    {"run": "ablation_base", "resolutions": [16]}]},
                                "table3": {"rows": []}}}
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(micro))
    cmd = ["snakemake", "table1", "table2", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "1", "--configfile", str(tmp_path / "micro.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "results/metrics/infdiff/swd-16px-3steps.json" in text            # table1: the whole 4-sample set
    assert "results/metrics/infdiff/swd-16px-3steps-first3.json" in text     # table2: its first 3
    assert "results/metrics/ablation_base/swd-16px-3steps.json" in text      # a 3-sample set, scored whole
    assert "ablation_base/swd-16px-3steps-first" not in text
    assert text.count("rule sample:") == 2                                   # one set per run, never two
