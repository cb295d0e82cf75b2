"""Table assembly: run variants as labels, seeds merged into mean and spread, speed-up rows."""

import json
import math

import pytest

from infdiff.evaluate import aggregate_seeds, describe_variant, speedup_rows, table_from_metrics


def test_describe_variant_names_only_what_differs():
    assert describe_variant({"ratio": 0.25, "coords": "uniform", "model": {}}) == ""
    assert describe_variant({"ratio": 0.125, "coords": "qmc", "model": {"regular_conv": True}}) == \
        "ratio 1/8, qmc coords, regular convs"
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
