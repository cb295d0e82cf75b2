"""Tests of the uncertainty marks in the result tables (infdiff.report.tables.not_significant, Markdown).

Within each group of measured rows sharing (table, dataset, resolution, metric), a row whose 95%
interval overlaps that of the best (lowest) row is marked "n.s."; the CSV keeps the long format.
"""

import numpy as np
import pandas as pd

from infdiff.report.tables import NS_LEGEND, NS_MARK, build_table, not_significant, read_table, write_table


def _row(method, value, lo=None, hi=None, **kw):
    base = {"table": "table1", "method": method, "run": method, "dataset": "shapes", "resolution": 32,
            "metric": "swd", "value": value, "ci_low": lo, "ci_high": hi, "n_samples": 256, "steps": 100,
            "source": "measured", "commit": "abc"}  # fmt: skip
    return {**base, **kw}


ROWS = [
    _row("best", 10.0, 9.0, 11.0),
    _row("close", 10.5, 10.8, 12.0),  # overlaps best's [9, 11] -> n.s.
    _row("far", 20.0, 18.0, 22.0),  # disjoint -> significant, unmarked
    _row("touching", 12.0, 11.0, 13.0),  # closed intervals: sharing the end point counts as overlap
    _row("no_ci", 10.2),  # no interval -> never marked
    # Another resolution is another group: its own best, nothing to compare with.
    _row("other_res", 50.0, 1.0, 100.0, resolution=64),
    # Reported rows are never marked, even with an interval that overlaps.
    _row("paper", 10.1, 9.5, 10.5, source="reported", run="", commit=""),
]


def _marks(df: pd.DataFrame) -> dict:
    marks, _ = not_significant(df)
    return dict(zip(df["method"], marks))


def test_marks_overlap_with_best_of_group():
    df = build_table(ROWS)
    marks, compared = not_significant(df)
    assert compared and marks.dtype == bool and marks.shape == (len(df),)
    assert _marks(df) == {"best": False, "close": True, "far": False, "touching": True, "no_ci": False,
                          "other_res": False, "paper": False}  # fmt: skip


def test_best_is_lowest_value_even_when_listed_later():
    df = build_table([_row("z_worse", 12.0, 11.5, 13.0), _row("a_better", 10.0, 9.0, 11.0)])
    assert _marks(df) == {"a_better": False, "z_worse": False}
    df = build_table([_row("z_worse", 12.0, 10.5, 13.0), _row("a_better", 10.0, 9.0, 11.0)])
    assert _marks(df) == {"a_better": False, "z_worse": True}


def test_best_without_interval_marks_nothing():
    df = build_table([_row("best", 1.0), _row("b", 2.0, 0.0, 5.0), _row("c", 3.0, 2.5, 3.5)])
    marks, compared = not_significant(df)
    assert not marks.any() and not compared


def test_groups_split_by_table_dataset_metric():
    rows = [_row("a", 1.0, 0.0, 2.0), _row("b", 1.5, 1.0, 2.0, dataset="celeba"),
            _row("c", 1.5, 1.0, 2.0, metric="fid"), _row("d", 1.5, 1.0, 2.0, table="table2")]  # fmt: skip
    marks, compared = not_significant(build_table(rows))
    assert not marks.any() and not compared


def test_markdown_marks_and_legend(tmp_path):
    write_table(ROWS, tmp_path / "t")
    text = (tmp_path / "t.md").read_text()
    table, legend = text.rstrip("\n").split("\n\n")
    assert legend == NS_LEGEND and "95% bootstrap" in legend and "samples" in legend
    lines = table.splitlines()
    assert len(lines) == 2 + len(ROWS)
    by_method = {line.split("|")[1].strip(): line for line in lines[2:]}
    marked = {m for m, line in by_method.items() if f" {NS_MARK}" in line}
    assert marked == {"close", "touching"}
    assert f"10.50 {NS_MARK}" in by_method["close"] and "[10.80, 12.00]" in by_method["close"]


def test_markdown_without_comparison_has_no_legend(tmp_path):
    write_table([_row("alone", 1.0, 0.5, 1.5), _row("no_ci", 2.0)], tmp_path / "t")
    text = (tmp_path / "t.md").read_text()
    assert NS_MARK not in text and "\n\n" not in text


def test_csv_keeps_long_format_with_interval_columns(tmp_path):
    df = build_table(ROWS)
    write_table(df, tmp_path / "t")
    back = read_table(tmp_path / "t.csv")
    pd.testing.assert_frame_equal(back, df)
    csv = (tmp_path / "t.csv").read_text()
    assert NS_MARK not in csv and "ci_low,ci_high" in csv.splitlines()[0]
    assert np.isnan(back.loc[back["method"] == "no_ci", "ci_low"]).all()
    assert back.loc[back["method"] == "close", ["ci_low", "ci_high"]].values.tolist() == [[10.8, 12.0]]


def test_reference_rows_are_not_contenders():
    from infdiff.report.tables import build_table, not_significant

    rows = [{"table": "t", "method": "floor", "run": "_floor", "dataset": "d", "resolution": 32, "metric": "swd",
             "value": 10.0, "ci_low": 9.0, "ci_high": 11.0, "source": "measured"},
            {"table": "t", "method": "a", "run": "a", "dataset": "d", "resolution": 32, "metric": "swd",
             "value": 50.0, "ci_low": 45.0, "ci_high": 55.0, "source": "measured"},
            {"table": "t", "method": "b", "run": "b", "dataset": "d", "resolution": 32, "metric": "swd",
             "value": 53.0, "ci_low": 49.0, "ci_high": 58.0, "source": "measured"}]
    df = build_table(rows)
    marks, compared = not_significant(df)
    assert compared
    assert dict(zip(df["run"], marks)) == {"_floor": False, "a": False, "b": True}
