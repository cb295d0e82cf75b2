"""Resolution consistency: closed forms of the PSNR, seed matching, errors, the metric JSON, the table's empty
cells, the regression direction, the config checks and Fig. 2's panel (infdiff.metrics.consistency)."""

import json
import math

import numpy as np
import pytest

from infdiff.methods import METHODS
from infdiff.metrics.consistency import area_downsample, consistency, consistency_psnr, match_seeds

CAP = 100.0
# a method that samples only at its training resolution (from the spec table, not by name)
GRID_METHOD = next(name for name, spec in METHODS.items() if not spec.any_resolution)


def _replicate(low: np.ndarray, k: int) -> np.ndarray:
    """Each pixel as a k x k block: the high-resolution image whose block means are exactly ``low``."""
    return np.repeat(np.repeat(low, k, axis=2), k, axis=3)


def _low(n=5, R=4, seed=0) -> np.ndarray:
    # values away from 0 and 255, so that the perturbations below never clip (_u8 checks it)
    return np.random.default_rng(seed).integers(30, 220, (n, 3, R, R)).astype(np.uint8)


def _u8(x: np.ndarray) -> np.ndarray:
    """int array -> uint8, refusing values that would wrap (a wrapped pixel would break the closed forms)."""
    assert x.min() >= 0 and x.max() <= 255
    return x.astype(np.uint8)


def _zero_mean_blocks(n, R, k, amplitude, seed=1) -> np.ndarray:
    """int ``[n, 3, kR, kR]``: +-amplitude checkerboards of random sign per block, so every k x k block sums to 0."""
    checker = np.where((np.arange(k)[:, None] + np.arange(k)[None, :]) % 2 == 0, 1, -1)  # k even: zero sum
    sign = np.random.default_rng(seed).choice([-1, 1], size=(n, 3, R, R))
    return amplitude * np.kron(sign, checker)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_block_mean_preserving_perturbation_gives_exactly_the_cap(k):
    """high = replicated low + a perturbation of zero mean in every k x k block: the area-downsampled image
    is low exactly, so the PSNR is +inf, reported as the cap (and as +inf without one)."""
    low = _low()
    high = _u8(_replicate(low, k).astype(np.int64) + _zero_mean_blocks(5, 4, k, amplitude=17))
    assert not np.array_equal(high, _replicate(low, k))  # the pixels do differ, the block means do not
    np.testing.assert_array_equal(area_downsample(high, k), low.astype(np.float64))
    seeds = np.arange(5)
    _, db = consistency_psnr(high, seeds, low, seeds, max_db=CAP)
    assert np.all(db == CAP)
    _, uncapped = consistency_psnr(high, seeds, low, seeds, max_db=math.inf)
    assert np.all(np.isposinf(uncapped))
    rec = consistency(high, seeds, low, seeds, seed=0, n_boot=20, max_db=CAP)
    assert rec["value"] == CAP and rec["ci_low"] == CAP and rec["ci_high"] == CAP


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("d", [1, 3, 20])
def test_constant_offset_gives_the_closed_form(k, d):
    """A k x sample that is the low one plus d uint8 levels everywhere: PSNR = 10 log10(255^2 / d^2), also with
    a block-mean-preserving perturbation on top; the mean over seeds of per-seed offsets is the mean of
    the closed forms."""
    low = _low()
    seeds = np.arange(5)
    high = _u8(_replicate(low, k).astype(np.int64) + d + _zero_mean_blocks(5, 4, k, amplitude=9))
    _, db = consistency_psnr(high, seeds, low, seeds, max_db=CAP)
    np.testing.assert_allclose(db, 10 * np.log10(255.0**2 / d**2), rtol=0, atol=1e-9)
    # per-seed offsets 1..5: the value is the mean of the five closed forms
    offsets = np.arange(1, 6)[:, None, None, None]
    high = _u8(_replicate(low, k).astype(np.int64) + offsets)
    rec = consistency(high, seeds, low, seeds, seed=0, n_boot=0, max_db=CAP)
    assert rec["value"] == pytest.approx(np.mean(10 * np.log10(255.0**2 / np.arange(1, 6) ** 2)), abs=1e-9)
    assert math.isnan(rec["ci_low"]) and math.isnan(rec["ci_high"]) and rec["n_boot"] == 0


def test_seeds_are_matched_by_intersection_and_order_does_not_matter():
    """Counts differ per resolution: only the seeds present at both count, whatever order the files hold."""
    low = _low(n=6)
    low_seeds = np.arange(100, 106)
    offsets = np.array([1, 2, 3, 4, 5, 6])[:, None, None, None]
    high_all = _u8(_replicate(low, 2).astype(np.int64) + offsets)
    keep = [4, 1, 5, 0]                                   # a different count, out of order, plus an extra seed
    high = np.concatenate([high_all[keep], high_all[:1]])
    high_seeds = np.concatenate([low_seeds[keep], [999]])  # seed 999 was never drawn at the low resolution
    rec = consistency(high, high_seeds, low, low_seeds, seed=3, n_boot=50, max_db=CAP)
    assert rec["n_ref"] == 4 and rec["seeds"].tolist() == [100, 101, 104, 105]
    np.testing.assert_allclose(rec["psnr"], 10 * np.log10(255.0**2 / np.array([1, 2, 5, 6]) ** 2), atol=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(3):
        p, q = rng.permutation(len(high)), rng.permutation(len(low))
        other = consistency(high[p], high_seeds[p], low[q], low_seeds[q], seed=3, n_boot=50, max_db=CAP)
        for key in ("value", "ci_low", "ci_high", "n_ref"):
            assert other[key] == rec[key]
        np.testing.assert_array_equal(other["psnr"], rec["psnr"])
    assert rec["ci_low"] <= rec["value"] <= rec["ci_high"]  # the bootstrap of a mean brackets it here


def test_errors_name_the_problem():
    low = _low(n=2, R=8)
    seeds = np.arange(2)
    with pytest.raises(ValueError, match="not an integer multiple"):
        consistency_psnr(np.zeros((2, 3, 12, 12), np.uint8), seeds, low, seeds, max_db=CAP)  # 1.5x
    with pytest.raises(ValueError, match="not an integer multiple"):
        consistency_psnr(low, seeds, low, seeds, max_db=CAP)  # the training resolution itself (k = 1)
    with pytest.raises(ValueError, match="not an integer multiple"):
        consistency_psnr(low[:, :, :4, :4].copy(), seeds, low, seeds, max_db=CAP)  # below it
    with pytest.raises(ValueError, match="no seed is in both"):
        consistency_psnr(_replicate(low, 2), seeds + 10, low, seeds, max_db=CAP)
    with pytest.raises(ValueError, match="repeats seeds"):
        match_seeds([1, 1], [1, 2])
    with pytest.raises(ValueError, match="uint8"):
        consistency_psnr(_replicate(low, 2).astype(np.float32), seeds, low, seeds, max_db=CAP)


# ------------------------------------------------------------------------------------------ the metric JSON
def _save(path, images, seeds, **meta):
    from infdiff.sample import save_samples

    save_samples(images, seeds, path, meta={"resolution": images.shape[-1], **meta})
    return path


def test_metric_json_has_provenance_and_goes_into_the_history(tmp_path, tiny_cfg):
    from infdiff.config import config_defaults
    from infdiff.evaluate import evaluate_files
    from infdiff.history import read_history

    settings = {"consistency": {**config_defaults()["evaluate"]["consistency"], "n_boot": 10}}
    low = _low(n=4, R=16)
    low_path = _save(tmp_path / "16.npz", low, np.arange(7, 11))
    # 4 samples at 32 px, of which seeds 7, 8, 9 were drawn at 16 px too (99 was not)
    high_path = _save(tmp_path / "32.npz", _u8(_replicate(low, 2).astype(int) + 2), [7, 8, 9, 99])
    out, history = tmp_path / "m" / "consistency-32px-3steps.json", tmp_path / "history.jsonl"
    rec = evaluate_files("consistency", high_path, low_path, out, settings, run="infdiff", run_cfg=tiny_cfg,
                         resolution=32, steps=3, history=history)
    assert json.loads(out.read_text()) == json.loads(json.dumps(rec))
    assert rec["value"] == pytest.approx(10 * np.log10(255.0**2 / 4), abs=1e-9)
    assert rec["n_samples"] == rec["n_ref"] == 3 and rec["seed_range"] == [7, 9]
    assert rec["train_resolution"] == 16 and rec["ref_file"] == str(low_path) and len(rec["per_seed"]) == 3
    assert {"config_sha256", "git_commit", "git_dirty", "versions", "device"} <= set(rec["provenance"])
    assert rec["settings"]["max_db"] == CAP and rec["settings"]["factor"] == 2
    (line,) = read_history(history)
    assert line["metric"] == "consistency" and line["value"] == rec["value"] and line["resolution"] == 32
    # samples resized from the training resolution say nothing about the model: refused
    resized = _save(tmp_path / "r.npz", _replicate(low, 2), np.arange(7, 11), resized_from=16)
    with pytest.raises(ValueError, match="resized from 16 px"):
        evaluate_files("consistency", resized, low_path, tmp_path / "x.json", settings, run="infdiff",
                       run_cfg=tiny_cfg, resolution=32, steps=3)
    with pytest.raises(ValueError, match="samples only at its training resolution"):
        evaluate_files("consistency", high_path, low_path, tmp_path / "x.json", settings, run="u",
                       run_cfg={**tiny_cfg, "method": GRID_METHOD}, resolution=32, steps=3)
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------------------------------ table and regress
def _record(path, metric, run, method, res, value, train_res=16, resized_from=None, ci=(None, None)):
    rec = {"metric": metric, "value": value, "ci_low": ci[0], "ci_high": ci[1], "kind": "samples", "run": run,
           "method": method, "dataset": "shapes", "resolution": res, "steps": 3, "n_samples": 4, "n_ref": 4,
           "train_resolution": train_res, "resized_from": resized_from, "train_steps": 3, "train_images": 12,
           "provenance": {"git_commit": "a" * 40, "git_dirty": False}}
    path.write_text(json.dumps(rec))
    return path


def test_table_shows_an_empty_consistency_cell_where_there_is_no_value(tmp_path):
    """At the training resolution and for a method sampling only there: an empty cell with the reason in its
    note, never a number, in the CSV, the Markdown and the LaTeX; the best consistency row is the highest."""
    from infdiff.report.rows import table_from_metrics
    from infdiff.report.tables import format_value, not_significant, read_table, to_markdown, write_table

    paths = [_record(tmp_path / "1.json", "swd", "inf", "infdiff", 16, 50.0),
             _record(tmp_path / "2.json", "swd", "inf", "infdiff", 32, 60.0),
             _record(tmp_path / "3.json", "consistency", "inf", "infdiff", 32, 31.5, ci=(31.0, 32.0)),
             _record(tmp_path / "4.json", "consistency", "mlp", "mlp_pixel", 32, 20.0, ci=(19.0, 21.0)),
             _record(tmp_path / "8.json", "consistency", "inf2", "infdiff", 32, 31.2, ci=(30.5, 31.8)),
             _record(tmp_path / "5.json", "swd", "mlp", "mlp_pixel", 32, 90.0),
             _record(tmp_path / "6.json", "swd", "grid", GRID_METHOD, 16, 55.0),
             _record(tmp_path / "7.json", "swd", "grid", GRID_METHOD, 32, 70.0, resized_from=16)]
    df = table_from_metrics("table1", paths, None, metrics=["swd", "consistency"])
    c = df[df.metric == "consistency"].set_index(["run", "resolution"])
    assert set(c.index) == {("inf", 16), ("inf", 32), ("mlp", 32), ("inf2", 32), ("grid", 16), ("grid", 32)}
    assert c.loc[("inf", 32), "value"] == 31.5 and "higher is better" in c.loc[("inf", 32), "note"]
    for key in [("inf", 16), ("grid", 16), ("grid", 32)]:
        assert math.isnan(c.loc[key, "value"]) and c.loc[key, "note"].startswith("no value")
        assert math.isnan(c.loc[key, "ci_low"]) and format_value(c.loc[key, "value"]) == ""
    assert "training resolution" in c.loc[("inf", 16), "note"] and "resized" in c.loc[("grid", 32), "note"]
    assert "3 training steps (12 images)" in c.loc[("inf", 16), "note"]  # every trained row states its budget
    write_table(df, tmp_path / "t")
    back = read_table(tmp_path / "t.csv")
    assert back[back.metric == "consistency"].value.isna().sum() == 3
    md = (tmp_path / "t.md").read_text()
    line = next(x for x in md.splitlines() if "consistency" in x and "| inf " in x and "|   16 |" in x)
    value_cell = line.split("|")[[h.strip() for h in md.splitlines()[0].split("|")].index("Value")]
    assert value_cell.strip() == ""
    assert "nan" not in md.lower() and "nan" not in (tmp_path / "t.tex").read_text().lower()
    # higher is better: 31.5 [31, 32] is best, 31.2 [30.5, 31.8] overlaps it (n.s.), 20 [19, 21] does not
    # (were the lowest best, nothing would be marked: neither interval overlaps [19, 21])
    marks, compared = not_significant(df)
    assert compared and df.run[marks & (df.metric == "consistency").to_numpy()].tolist() == ["inf2"]
    assert "31.20 n.s." in to_markdown(df) and "31.50 n.s." not in to_markdown(df)
    # without a metric list (the CLI), the metrics of the JSONs decide
    assert len(table_from_metrics("table1", paths, None).query("metric == 'consistency'")) == 6


def test_regress_judges_consistency_higher_is_better_in_dB(tmp_path):
    from infdiff.config import config_defaults
    from infdiff.regress import compare, current_frame, direction, load_reference

    tol = config_defaults()["regress"]["tolerance"]
    assert direction("consistency") == -1 and tol["consistency"] == {"rel": 0.0, "abs": 1.0}

    def frame(value, name):
        return current_frame([_record(tmp_path / f"{name}.json", "consistency", "inf", "infdiff", 32, value)])

    ref = frame(30.0, "ref")
    verdicts = {now: compare(ref, frame(now, str(now)), tol).verdict[0] for now in (28.9, 29.5, 30.8, 31.1)}
    assert verdicts == {28.9: "worse", 29.5: "ok", 30.8: "ok", 31.1: "better"}
    # the capped value (identical images) compares like any other number: unchanged is ok
    assert compare(frame(CAP, "c1"), frame(CAP, "c2"), tol).verdict[0] == "ok"
    # a reference from before the metric (the committed one up to issue 12) has no consistency rows:
    # they are new and pass
    from tests.conftest import REPO

    committed = load_reference(REPO / "results/reference/default.csv")
    older = committed[committed.metric != "consistency"]
    assert len(older) < len(committed)  # the committed reference has them now
    df = compare(older, frame(25.0, "new"), tol)
    assert df[df.metric == "consistency"].verdict.tolist() == ["new"]


# ------------------------------------------------------------------------------------------ config and figure
def test_config_accepts_consistency_and_refuses_non_multiples():
    from infdiff.config import ConfigError, used_metrics
    from tests.conftest import tiny_config

    cfg = tiny_config()  # the embedded default's table1 lists [swd, consistency]
    assert "consistency" in cfg["tables"]["table1"]["metrics"] and "consistency" in used_metrics(cfg)
    assert cfg["evaluate"]["consistency"]["max_db"] == CAP
    bad = {"sample": {"n_samples": [{"resolution": r, "n": 4} for r in (16, 24, 32)]},
           "tables": {"table1": {"rows": [{"run": "infdiff", "resolutions": [16, 24]}]}}}
    with pytest.raises(ConfigError, match=r"\[24\] px is not an integer multiple of 16"):
        tiny_config(bad)
    with pytest.raises(ConfigError, match="training resolution 16 px, which has no sample.n_samples entry"):
        tiny_config({"sample": {"n_samples": [{"resolution": 32, "n": 4}]},
                     "tables": {"table1": {"rows": [{"run": "infdiff", "resolutions": [32]}]}}})


def test_fig2_panel_per_seed_and_mean(tmp_path):
    from infdiff.report.figures import consistency_panel, image_grid_figure

    low = _low(n=3, R=4)
    seeds = np.arange(3)
    records = {}
    for k, d in ((2, 1), (4, 2)):
        high = _u8(_replicate(low, k).astype(np.int64) + d)
        n = 3 if k == 2 else 2  # fewer samples at the higher resolution: seed 2 only at 2x
        records[4 * k] = consistency(high[:n], seeds[:n], low, seeds, seed=0, n_boot=10, max_db=CAP)
    panel = consistency_panel(records, 4, [0, 2])
    x = [line["x"].tolist() for line in panel["lines"]]
    assert x == [[2.0, 4.0]] * 3 and panel["xscale"] == "log" and panel["xticks"] == [2, 4]
    seed0, seed2, mean = panel["lines"]
    np.testing.assert_allclose(seed0["y"], 10 * np.log10(255.0**2 / np.array([1, 4])), atol=1e-9)
    assert math.isnan(seed2["y"][1])  # seed 2 was not sampled at 4x: a gap, not a number
    assert mean["y"].tolist() == [records[8]["value"], records[16]["value"]] and "3/2 seeds" in mean["label"]
    # drawn under the image grid: one more axes, below every image, with the panel's labels
    fig = image_grid_figure([[low[0], _replicate(low, 2)[0]]], tmp_path / "f.pdf", title="t", caption="c", panel=panel)
    *cells, plot = fig.axes
    assert len(cells) == 2 and plot.get_xlabel() == panel["xlabel"]
    assert [t.get_text() for t in plot.get_legend().get_texts()] == [line["label"] for line in panel["lines"]]
    assert plot.get_position().y1 < min(ax.get_position().y0 for ax in cells)
    assert (tmp_path / "f.pdf").read_bytes()[:4] == b"%PDF"


def test_cli_evaluate_consistency(tmp_path, capsys):
    """`python -m infdiff evaluate --metric consistency`: --name names the run whose training resolution the
    --ref samples are at; another name is one error line (exit 2) and writes nothing."""
    import yaml

    from infdiff.cli import main
    from infdiff.config import deep_merge
    from tests.conftest import REPO, TINY

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), TINY)))
    low = _low(n=3, R=16)
    ref = _save(tmp_path / "16.npz", low, [5, 6, 7])
    samples = _save(tmp_path / "32.npz", _u8(_replicate(low, 2).astype(np.int64) + 4), [5, 6, 7])
    args = ["evaluate", "--metric", "consistency", "--config", str(config), "--samples", str(samples), "--ref", str(ref),
            "--resolution", "32"]
    assert main([*args, "--name", "infdiff", "--out", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["value"] == pytest.approx(10 * np.log10(255.0**2 / 16), abs=1e-9)
    assert main([*args, "--name", "cli", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "--name must be a run of --config" in err and not (tmp_path / "x.json").exists()
