"""Micro end-to-end DAG: `snakemake table1` on a tiny config produces the promised table, and a
second invocation has nothing to do."""

import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from infdiff.config import deep_merge
from infdiff.report.tables import TABLE_COLUMNS
from tests.conftest import REPO, TINY
from tests.standins import save_inception

# End-to-end DAG runs (minutes): `pytest -m slow`, which CI runs after the default `pytest` (README, "Quickstart").
# That bad input stops the workflow before any job is in tests/test_workflow_inputs.py (default run).
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
    # FID through the real code path (reference_stats rule, cached statistics, clean-fid) with a tiny
    # random stand-in for the Inception file; 3 features so that 4 images give a full-rank covariance
    save_inception(work / "inception-standin.pt", dim=3)
    micro["metrics"] = {"weights": {"inception": str(work / "inception-standin.pt")}}
    micro["tables"]["table1"]["metrics"] = ["swd", "fid", "consistency"]
    micro["figures"] = {  # every figure at micro sizes (only `figures` reads these; table1 does not)
        "resolutions": {"seeds": 2, "resolutions": [16, 32]},
        "processes": {"resolution": 16, "timesteps": [0, 500, 999]},
        "samples": {"n": 3, "resolutions": [16, 32]}, "comparison": {"n": 2, "resolutions": [16, 32]},
        "steps": {"steps": [2, 3], "resolutions": [16]},
        "superres": {"low": 8, "high": 32, "n": 2, "t_start": 100},
        "reconstruction": {"n": 2, "factors": [1, 2], "t_encodes": [None, 500]},
        "inpainting": {"resolution": 16, "n": 2, "t_starts": [200, 350]}, "nearest": {"n": 2, "k": 2}}
    (work / "micro.yaml").write_text(yaml.safe_dump(micro))
    out = _snakemake(work, "table1")
    assert out.returncode == 0, out.stderr[-4000:]
    return work


def test_table1_has_promised_columns_and_rows(micro_run):
    df = pd.read_csv(micro_run / "results/tables/table1.csv")
    assert list(df.columns) == TABLE_COLUMNS
    measured = df[df.source == "measured"]
    assert set(measured.method) >= {"∞-Diff", "pure Gaussian noise", "real vs real (floor)",
                                    "per-pixel MLP diffusion", "per-pixel MLP diffusion (as described variant)",
                                    "simple diffusion U-ViT",
                                    # a grid model's row above its training resolution is labelled
                                    "simple diffusion U-ViT, resized from 16 px"}
    for run in ("infdiff", "mlp_pixel", "simple_diffusion"):
        assert set(measured[measured.run == run].resolution) == {16, 32}
    # every trained row states its (equal) image budget
    trained = measured[measured.run.isin(["infdiff", "mlp_pixel", "simple_diffusion"])]
    assert trained.note.str.contains(r"3 training steps \(12 images\)").all()
    # the paper's framework: its own row, the same stage-1 budget, stage 2 stated beside it
    ae = measured[measured.run == "infdiff_ae"]
    assert set(ae.resolution) == {16, 32} and (ae.method == "∞-Diff (autoencoder framework)").all()
    assert ae.note.str.contains(r"3 training steps \(12 images\).*stage 2 \(latent DDPM\): 5 steps").all()
    # every measured cell has a number, except consistency where it has none (test_consistency_in_table1)
    valued = measured[measured.metric != "consistency"]
    assert (valued.value > 0).all() and valued.value.notna().all()
    assert (df.source == "reported").any()
    for ext in ("md", "tex"):
        assert (micro_run / f"results/tables/table1.{ext}").stat().st_size > 0


def test_grid_model_rows_above_its_resolution_resize_its_own_set(micro_run):
    """The U-ViT's 32 px set is its 16 px set's first seeds, resized (sampled once, not twice): the job
    names the set it resized, and its images are that set's, resized."""
    import numpy as np
    import torch

    from infdiff.data import to_uint8
    from infdiff.sample import resize_images

    (big,) = (micro_run / "results/samples/simple_diffusion").glob("32px-*/samples.npz")
    (small,) = (micro_run / "results/samples/simple_diffusion").glob("16px-*/samples.npz")
    with np.load(big) as z, np.load(small) as s:
        meta = json.loads(str(z["meta"]))
        n = len(z["seeds"])
        assert meta["resized_from"] == 16 and meta["resized_set"].endswith(small.relative_to(micro_run).as_posix())
        assert np.array_equal(z["seeds"], s["seeds"][:n])
        x = torch.from_numpy(s["images"][:n]).float() / 127.5 - 1
        assert np.array_equal(z["images"], to_uint8(resize_images(x, 32)))


def test_consistency_in_table1(micro_run):
    """Consistency has a value for the rows of methods that sample any resolution above the training
    resolution (16 px here), an empty cell elsewhere, and its JSONs are made only where it has a value."""
    df = pd.read_csv(micro_run / "results/tables/table1.csv")
    c = df[(df.source == "measured") & (df.metric == "consistency")]
    above = c[c.run.isin(["infdiff", "infdiff_ae", "mlp_pixel"]) & (c.resolution == 32)]
    assert len(above) == 3 and above.value.between(0, 100).all() and (above.ci_low <= above.ci_high).all()
    empty = c.drop(above.index)
    assert set(empty.run) == {"infdiff", "infdiff_ae", "mlp_pixel", "simple_diffusion", "mlp_pixel_as_described",
                              "infdiff_untrained"} and empty.value.isna().all()
    assert set(zip(empty.run, empty.resolution)) >= {("infdiff", 16), ("simple_diffusion", 32)}
    made = sorted(p.relative_to(micro_run / "results/metrics").as_posix()
                  for p in (micro_run / "results/metrics").rglob("consistency-*.json"))
    assert made == ["infdiff/consistency-32px-3steps.json", "infdiff_ae/consistency-32px-3steps.json",
                    "mlp_pixel/consistency-32px-3steps.json"]
    rec = json.loads((micro_run / "results/metrics/infdiff/consistency-32px-3steps.json").read_text())
    assert rec["ref_file"] == "results/samples/infdiff/16px-3steps/samples.npz" and rec["n_ref"] == 4
    assert "config_sha256" in rec["provenance"]
    history = [json.loads(x) for x in (micro_run / "results/history.jsonl").read_text().splitlines()]
    assert any(h["metric"] == "consistency" and h["run"] == "infdiff" for h in history)


def test_every_rule_logged_and_results_have_provenance(micro_run):
    import json
    logs = list((micro_run / "results/logs").rglob("*.log"))
    assert {p.parent.name for p in logs} >= {"prepare_data", "train", "sample", "evaluate", "evaluate_consistency",
                                              "table"}
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


def test_fid_uses_cached_reference_statistics(micro_run):
    """FID rows exist for every method and resolution, scored against statistics whose file name carries
    the cache key; the statistics are computed once per dataset and resolution."""
    df = pd.read_csv(micro_run / "results/tables/table1.csv")
    fid = df[(df.source == "measured") & (df.metric == "fid")]
    assert set(fid.run) >= {"infdiff", "mlp_pixel", "simple_diffusion", "_noise", "_floor"}
    assert (fid.value >= 0).all()
    stats = sorted((micro_run / "results/reference_stats").glob("*.npz"))
    assert [p.name.rsplit("-", 1)[0] for p in stats] == ["shapes-ref-16px-inception", "shapes-ref-32px-inception"]
    rec = json.loads((micro_run / "results/metrics/infdiff/fid-16px-3steps.json").read_text())
    assert rec["ref_file"] == str(stats[0].relative_to(micro_run)) and rec["settings"]["extractor"] == "inception"


def test_history_records_every_evaluation_and_is_plotted(micro_run):
    lines = (micro_run / "results/history.jsonl").read_text().splitlines()
    metric_files = list((micro_run / "results/metrics").rglob("*.json"))
    assert len(lines) >= len(metric_files)  # re-evaluations append; nothing is ever rewritten
    rec = json.loads(lines[0])
    for key in ("metric", "value", "ci_low", "ci_high", "run", "resolution", "steps", "n_samples",
                "config_sha256", "git_commit", "git_dirty", "versions", "device", "time"):
        assert key in rec
    out = _snakemake(micro_run, "figures")
    assert out.returncode == 0, out.stderr[-3000:]
    figures = {p.name for p in (micro_run / "results/figures").glob("*.pdf")}
    assert figures == {"fig02-resolutions.pdf", "fig03-processes.pdf", "fig05-samples.pdf", "fig06-comparison.pdf",
                       "fig07-steps.pdf", "fig08-superres.pdf", "fig09-inpainting.pdf", "fig13-nearest.pdf",
                       "training.pdf", "history.pdf", "reconstruction.pdf"}
    for name in figures:
        assert (micro_run / "results/figures" / name).read_bytes()[:4] == b"%PDF"
    # the index lists every figure made, and says that none was left out
    index = (micro_run / "results/figures/index.md").read_text()
    assert all(f"`{name}`" in index for name in figures) and "## Left out (0)" in index
    logs = {p.name for p in (micro_run / "results/logs/figures").glob("*.log")}
    assert logs >= {n.replace(".pdf", ".log") for n in figures}
    # Fig. 2's consistency panel: the 32 px column against the 16 px training resolution
    assert "32 px: consistency" in (micro_run / "results/logs/figures/fig02-resolutions.log").read_text()
    # without AlexNet weights the nearest-neighbour figure uses pixel L2 and says so
    assert "distance: pixel L2" in (micro_run / "results/logs/figures/fig13-nearest.log").read_text()
    # Figs. 8 and 9 and the reconstructions use the autoencoder run (figures.autoencoder_run)
    sr = json.loads((micro_run / "results/metrics/infdiff_ae/superres-8to32px.json").read_text())
    assert set(sr["mean"]) == {"bicubic", "sdedit", "z", "z+ddim"} and sr["framework"] == "autoencoder"
    rec = json.loads((micro_run / "results/metrics/infdiff_ae/reconstruction.json").read_text())
    assert {(r["resolution"], r["t_encode"], r["decode_from"]) for r in rec["results"]} == {
        (R, t, how) for R in (16, 32) for t in (999, 500) for how in ("ddim", "fresh")}
    assert "hole MSE to the original" in (micro_run / "results/logs/figures/fig09-inpainting.log").read_text()


def _report_items(html):
    """{file name: item} of a Snakemake 9 HTML report (the `results` object it embeds for its viewer)."""
    found = re.search(r"var results = (\{.*?\});\n", html, flags=re.S)
    assert found, "no `var results = {...}` in the report: has Snakemake's report format changed?"
    return {item["name"]: item for item in json.loads(found.group(1)).values()}


def test_report_shows_every_table_and_figure_with_provenance(micro_run):
    """`snakemake table1 figures --report`: one self-contained page with every table and figure of the micro
    DAG, each captioned and filed under Tables or Figures, and the commit of every measured row shown."""
    if not (micro_run / "results/figures/index.md").exists():  # run on its own: make what the report shows
        out = _snakemake(micro_run, "figures")
        assert out.returncode == 0, out.stderr[-3000:]
    report = micro_run / "results/report.html"
    out = _snakemake(micro_run, "table1", "figures", "--report", str(report))
    assert out.returncode == 0, out.stderr[-3000:]
    html = report.read_text(encoding="utf-8")
    items = _report_items(html)
    figures = {p.name for p in (micro_run / "results/figures").glob("*.pdf")}
    assert len(figures) == 11 and set(items) == figures | {"index.md", "table1.csv"}
    for name, item in items.items():
        assert item["caption"].strip(), f"{name} has no caption"
        assert item["data_uri"].startswith(f"data:{item['mime_type']};"), f"{name} is not embedded in the page"
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", html, flags=re.S).group(1))
    assert set(categories) == {"Tables", "Figures"} and set(categories["Tables"]) == {"table1"}
    # provenance: the table's caption shows every row, with the commit of each measured one, and its sources
    table = pd.read_csv(micro_run / "results/tables/table1.csv")
    caption = items["table1.csv"]["caption"]
    assert caption.count("<tr") == len(table) + 1
    assert all(commit in caption for commit in table[table.source == "measured"].commit.unique())
    assert "results/metrics/infdiff/swd-16px-3steps.json" in caption
    assert "results/runs/infdiff_ae/checkpoint.pt" in items["fig08-superres.pdf"]["caption"]
    assert "none: this config makes every figure" in items["index.md"]["caption"]


def test_figure_without_its_metric_weights_is_left_out(micro_run):
    """fig07 on FID_CLIP without the CLIP file: not in the DAG, everything else still is, nothing is printed
    while the workflow is read, and results/figures/index.md names the figure with the reason."""
    micro = yaml.safe_load((micro_run / "micro.yaml").read_text())
    micro["figures"]["steps"]["metric"] = "fid_clip"
    (micro_run / "micro-clip.yaml").write_text(yaml.safe_dump(micro))
    cmd = ["snakemake", "figures", "-n", "--forceall", "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(micro_run), "--cores", "2", "--configfile", str(micro_run / "micro-clip.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "fig_steps" not in text and "fig_superres" in text and "figures_index" in text
    assert "left out" not in text
    # only the index is (re)made: every other figure of this config is already there
    cmd = [c for c in cmd if c not in ("-n", "--forceall")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    index = (micro_run / "results/figures/index.md").read_text()
    assert "## Made (10)" in index and "`fig08-superres.pdf`" in index and "## Left out (1)" in index
    assert "- `fig07-steps.pdf`: its metric fid_clip needs metrics.weights.clip_vit_b_32" in index


def _accept(workdir):
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "infdiff", "regress", "--accept"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)


def test_regress_needs_a_reference_passes_on_equal_values_and_names_a_regression(micro_run):
    out = _snakemake(micro_run, "regress")
    assert out.returncode != 0 and "no reference file results/reference/default.csv" in out.stdout + out.stderr
    assert (micro_run / "results/tables/regress.md").exists()  # the report is written either way
    acc = _accept(micro_run)
    assert acc.returncode == 0, acc.stderr
    ref_path = micro_run / "results/reference/default.csv"
    out = _snakemake(micro_run, "regress")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "regression check passed" in out.stdout + out.stderr
    # inject a regression: pretend the accepted ∞-Diff SWD at 16 px was 1.5x better than what we have now
    ref = pd.read_csv(ref_path)
    hit = (ref.run == "infdiff") & (ref.metric == "swd") & (ref.resolution == 16)
    ref.loc[hit, "value"] = ref.loc[hit, "value"] / 1.5
    ref.to_csv(ref_path, index=False)
    out = _snakemake(micro_run, "regress")
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "regression check failed" in text and "swd" in text and "infdiff" in text
    report = pd.read_csv(micro_run / "results/tables/regress.csv")
    assert list(report[report.verdict == "worse"].run) == ["infdiff"]
