"""Tests of the result tables (infdiff.report.tables)."""

import math

import pandas as pd
import pytest

from infdiff.report.tables import (
    TABLE_COLUMNS,
    build_table,
    format_value,
    latex_escape,
    load_paper_results,
    read_table,
    write_table,
)

ROWS = [
    {"table": "table1", "method": "infdiff", "run": "celeba_64", "dataset": "celebahq", "resolution": 64,
     "metric": "fid_clip", "value": 5.123456, "ci_low": 4.9, "ci_high": 5.3, "n_samples": 10000, "steps": 100,
     "source": "measured", "commit": "abc123", "note": "ours_50% & more"},
    {"table": "table1", "method": "∞-Diff", "dataset": "celebahq", "resolution": 64, "metric": "fid_clip",
     "value": 4.57, "source": "reported", "note": "paper Table 1"},
    {"table": "table1", "method": "dpf", "dataset": "celebahq", "resolution": 64, "metric": "fid_clip",
     "value": 13.21, "source": "reported"},
    {"table": "table1", "method": "infdiff", "run": "shapes_32", "dataset": "shapes", "resolution": 32,
     "metric": "swd", "value": 0.0123456, "n_samples": 256, "source": "measured", "extra_key": "dropped"},
]  # fmt: skip


def test_columns_exact_and_sorted():
    df = build_table(ROWS)
    assert list(df.columns) == TABLE_COLUMNS
    assert len(df) == 4
    # Sorted by (table, source, dataset, resolution, metric, method): measured rows first, then
    # the paper's reported ones; within a source celebahq before shapes, then method name.
    assert df["source"].tolist() == ["measured"] * 2 + ["reported"] * 2
    assert df["dataset"].tolist() == ["celebahq", "shapes", "celebahq", "celebahq"]
    assert df["method"].tolist() == ["infdiff", "infdiff", "dpf", "∞-Diff"]
    # Missing text is "", missing numbers are NA.
    assert df.loc[2, "run"] == "" and pd.isna(df.loc[2, "n_samples"]) and math.isnan(df.loc[2, "ci_low"])
    assert str(df["resolution"].dtype) == "Int64" and df["value"].dtype == "float64"


def test_build_table_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown keys"):
        build_table(ROWS, extra="raise")
    with pytest.raises(ValueError, match="source"):
        build_table([{"method": "m", "metric": "fid", "value": 1.0, "source": "guessed"}])
    with pytest.raises(ValueError, match="integers"):
        build_table([{"method": "m", "metric": "fid", "value": 1.0, "resolution": 64.5}])
    assert list(build_table([]).columns) == TABLE_COLUMNS


def test_csv_round_trip(tmp_path):
    rows = ROWS + [{"method": "NA", "metric": "psnr", "value": 0.1 + 0.2, "resolution": "128"}]
    df = build_table(rows)
    write_table(df, tmp_path / "t" / "table1")
    back = read_table(tmp_path / "t" / "table1.csv")
    pd.testing.assert_frame_equal(back, df)
    assert back.loc[back["metric"] == "psnr", "method"].item() == "NA"  # not parsed as missing
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["table1.csv", "table1.md", "table1.tex"]


def test_markdown_header_and_one_line_per_row(tmp_path):
    write_table(ROWS, tmp_path / "t1")
    lines = (tmp_path / "t1.md").read_text().strip().splitlines()
    assert len(lines) == 2 + len(ROWS)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:2] == ["Method", "Run"] and "Value" in header and "Source" in header
    assert set(lines[1]) <= set("|-: ")
    body = "\n".join(lines[2:])
    assert "5.12" in body and "0.0123" in body and "[4.90, 5.30]" in body
    assert body.count("measured") == 2 and body.count("reported") == 2
    assert all(line.startswith("|") and line.endswith("|") for line in lines)


def test_latex_escapes_and_booktabs(tmp_path):
    write_table(ROWS, tmp_path / "t1")
    tex = (tmp_path / "t1.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"fid\_clip" in tex and "fid_clip" not in tex
    assert r"ours\_50\% \& more" in tex
    assert r"$\infty$-Diff" in tex
    # One data line per row, between \midrule and \bottomrule.
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == len(ROWS) and all(line.endswith(r"\\") for line in body)
    assert latex_escape("a_b%c&d#e\\f") == r"a\_b\%c\&d\#e\textbackslash{}f"


def test_format_value():
    assert format_value(4.5678) == "4.57" and format_value(85.99) == "85.99"
    assert format_value(0.012345) == "0.0123" and format_value(0) == "0.00"
    assert format_value(float("nan")) == "" and format_value(None) == ""


def test_load_paper_results(tmp_path):
    path = tmp_path / "paper.yaml"
    path.write_text(
        "table1:\n"
        '  - {method: "∞-Diff", dataset: celebahq, resolution: 64, metric: fid_clip, value: 4.57, note: "paper Table 1"}\n'
        '  - {method: "DPF", dataset: celebahq, resolution: 64, metric: fid_clip, value: 13.21}\n'
        "table3:\n"
        '  - {method: "∞-Diff", run: "ratio 1/4", dataset: ffhq, resolution: 128, metric: fid_clip, value: 4.75}\n',
        encoding="utf-8",
    )
    rows = load_paper_results(path)
    assert len(rows) == 3
    assert all(r["source"] == "reported" for r in rows)
    assert [r["table"] for r in rows] == ["table1", "table1", "table3"]
    df = build_table(rows)
    assert df.loc[df["method"] == "DPF", "value"].item() == pytest.approx(13.21)
    assert df.loc[df["table"] == "table3", "resolution"].item() == 128

    bad = tmp_path / "bad.yaml"
    bad.write_text("table1:\n  - {method: x, metric: fid}\n")
    with pytest.raises(ValueError, match="lacks"):
        load_paper_results(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_paper_results(empty) == []
