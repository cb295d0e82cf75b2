"""Table assembly: run variants as labels, seeds merged into mean and spread, speed-up rows."""

import json
import math

import pytest

from infdiff.config import config_defaults
from infdiff.report.rows import aggregate_seeds, describe_variant, speedup_rows, table_from_metrics


def test_describe_variant_names_only_what_differs_from_the_schema_defaults():
    from infdiff.config import section_defaults

    run = section_defaults("run")                        # the paper's ∞-Diff: nothing to name
    assert describe_variant(run) == ""
    run.update(ratio=0.125, coords="qmc")
    run["model"]["regular_conv"] = True
    assert describe_variant(run) == "ratio 1/8, qmc coords, regular conv"
    mlp = {**section_defaults("run"), "method": "mlp_pixel"}
    assert describe_variant(mlp) == ""
    mlp["mlp_pixel"] = {**mlp["mlp_pixel"], "variant": "as_described"}
    assert describe_variant(mlp) == "as described variant"
    uvit = {**section_defaults("run"), "method": "simple_diffusion"}
    uvit["simple_diffusion"] = {**uvit["simple_diffusion"], "stem": "conv"}
    assert describe_variant(uvit) == "conv stem"
    assert describe_variant(None) == ""


def _row(run, value):
    return {"table": "table2", "method": "∞-Diff", "run": run, "dataset": "shapes", "resolution": 32,
            "metric": "swd", "value": value, "ci_low": value - 1, "ci_high": value + 1, "note": "1500 training steps"}


def test_seeds_merge_into_mean_and_t_interval():
    rows = aggregate_seeds([_row("a-seed0", 10.0), _row("a-seed1", 12.0), _row("a-seed2", 14.0), _row("b", 5.0)])
    merged = {r["run"]: r for r in rows}
    assert set(merged) == {"a", "b"}
    a = merged["a"]
    assert a["value"] == pytest.approx(12.0)
    # 95% t interval of the mean over 3 seeds: 12 +- t(0.975, 2) * 2 / sqrt(3) = 12 +- 4.968
    assert a["ci_high"] - a["value"] == pytest.approx(4.303 * 2 / math.sqrt(3), rel=1e-3)
    assert "mean of 3 seeds (0, 1, 2)" in a["note"]
    assert merged["b"] == _row("b", 5.0)


def test_speedup_rows_and_table(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"run": "ablation_base", "dataset": "shapes", "provenance": {"git_commit": "abc"},
                                 "rows": [{"ratio": r, "points": int(1024 * r), "batch_size": 32, "resolution": 32,
                                           "median_ms": 100 / s, "iqr_ms": 1.0, "speedup": s, "saved_mb": 50 * r,
                                           "cuda_peak_mb": None, "repeats": 5}
                                          for r, s in ((1.0, 1.0), (0.25, 2.0))]}))
    rows = speedup_rows("table3", bench)
    assert {r["metric"] for r in rows} == {"train_speedup", "step_ms", "backward_mb"}
    quarter = [r for r in rows if r["metric"] == "train_speedup" and "1/4" in r["method"]]
    assert quarter[0]["value"] == 2.0
    df = table_from_metrics("table3", [], None, speedup=bench)
    assert len(df) == 6 and (df.source == "measured").all()


def _npz(path, images, seeds=None):
    import numpy as np

    np.savez(path, images=images, seeds=np.arange(len(images)) if seeds is None else seeds, meta=json.dumps({}))
    return path


def test_fid_against_cached_statistics_records_and_appends_history(tmp_path):
    """evaluate_files with a reference-statistics file: the stand-in Inception goes through the real loader,
    the minimum sample count refuses method rows but not the floor row, and each result joins the history."""
    import numpy as np

    from infdiff.evaluate import evaluate_files
    from infdiff.history import read_history
    from infdiff.metrics import fid
    from tests.standins import save_inception

    save_inception(tmp_path / "inc.pt", dim=3)
    metrics_cfg = {**config_defaults()["metrics"], "weights": {"inception": str(tmp_path / "inc.pt")}}
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, size=(12, 3, 16, 16), dtype=np.uint8)
    samples = _npz(tmp_path / "s.npz", rng.integers(0, 256, size=(6, 3, 16, 16), dtype=np.uint8))
    ext = fid.load_extractor("inception", metrics_cfg["weights"])
    fid.save_reference_stats(tmp_path / "ref.npz", fid.features(ref, ext),
                             {"resolution": 16, "extractor": ext.name, "preprocessing": ext.preprocessing})
    settings = {"fid": {"min_samples": 6, "batch_size": 4}}  # evaluate.fid as the schema fills it
    hist = tmp_path / "history.jsonl"
    rec = evaluate_files("fid", samples, tmp_path / "ref.npz", tmp_path / "fid.json", settings, run="r",
                         run_cfg=None, resolution=16, steps=3, metrics_cfg=metrics_cfg, history=hist)
    assert rec["value"] > 0 and rec["n_ref"] == 12 and rec["ci_low"] is None
    assert json.loads((tmp_path / "fid.json").read_text())["value"] == rec["value"]
    # the same images as their own reference: FID ~ 0
    fid.save_reference_stats(tmp_path / "self.npz", fid.features(np.load(samples)["images"], ext),
                             {"resolution": 16, "extractor": ext.name, "preprocessing": ext.preprocessing})
    same = evaluate_files("fid", samples, tmp_path / "self.npz", tmp_path / "self.json", settings, run="r",
                          run_cfg=None, resolution=16, steps=3, metrics_cfg=metrics_cfg, history=hist)
    assert abs(same["value"]) < 1e-6
    strict = {"fid": {"min_samples": 7, "batch_size": 4}}
    with pytest.raises(ValueError, match="evaluate.fid.min_samples"):
        evaluate_files("fid", samples, tmp_path / "ref.npz", tmp_path / "x.json", strict, run="r", run_cfg=None,
                       resolution=16, steps=3, metrics_cfg=metrics_cfg)
    assert not (tmp_path / "x.json").exists()
    floor = evaluate_files("fid", samples, tmp_path / "ref.npz", tmp_path / "floor.json", strict, run="_floor",
                           run_cfg=None, resolution=16, steps=0, kind="floor", metrics_cfg=metrics_cfg)
    assert floor["value"] == pytest.approx(rec["value"])
    lines = read_history(hist)
    assert [(h["metric"], h["run"], h["value"]) for h in lines] == [("fid", "r", rec["value"]),
                                                                      ("fid", "r", same["value"])]
    with pytest.raises(ValueError, match="reference is 16 px"):
        evaluate_files("fid", _npz(tmp_path / "s32.npz", np.zeros((6, 3, 32, 32), np.uint8)), tmp_path / "ref.npz",
                       tmp_path / "y.json", settings, run="r", run_cfg=None, resolution=32, steps=3,
                       metrics_cfg=metrics_cfg)
