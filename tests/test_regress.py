"""Regression check: verdicts in each metric's direction, missing/new rows, reports and accept round trip."""

import json
import math

import pandas as pd
import pytest

from infdiff import regress
from infdiff.regress import accept, compare, current_frame, failures, load_reference, write_report

TOL = {"swd": {"rel": 0.1, "abs": 0.0}, "psnr": {"rel": 0.0, "abs": 0.5}, "fid": {"rel": 0.05, "abs": 0.0}}


def _write(tmp_path, metric="swd", run="infdiff", res=16, value=10.0, kind="samples", dataset="shapes",
           steps=3, commit="f" * 40, dirty=False, ci=(9.0, 11.0)):
    """A metric JSON with the layout of infdiff.evaluate.evaluate_files; returns its path."""
    path = tmp_path / "metrics" / run / f"{metric}-{res}px-{steps}steps-{dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {"metric": metric, "value": value, "ci_low": ci[0], "ci_high": ci[1], "n_boot": 10, "kind": kind,
           "run": run, "method": "infdiff", "dataset": dataset, "resolution": res, "steps": steps,
           "n_samples": 8, "n_ref": 8, "seed_range": [0, 7], "settings": {},
           "provenance": {"git_commit": commit, "git_dirty": dirty, "config_sha256": "c" * 64,
                          "versions": {}, "device": "cpu", "timestamp_utc": "2026-01-01T00:00:00+00:00"}}
    path.write_text(json.dumps(rec))
    return path


def _frame(tmp_path, values: dict, **kw) -> pd.DataFrame:
    """current_frame of metric JSONs {(metric, run, res): value}, each in its own folder."""
    paths = []
    for i, ((metric, run, res), value) in enumerate(values.items()):
        paths.append(_write(tmp_path / str(len(list(tmp_path.glob("*")))) / str(i), metric, run, res, value, **kw))
    return current_frame(paths)


BASE = {("swd", "infdiff", 16): 10.0, ("swd", "infdiff", 32): 20.0, ("swd", "mlp_pixel", 16): 30.0,
        ("psnr", "infdiff", 32): 25.0}


def _verdicts(df) -> dict:
    return {(r.metric, r.run, r.resolution): r.verdict for r in df.itertuples()}


def test_current_frame(tmp_path):
    paths = [_write(tmp_path, res=32, dirty=True), _write(tmp_path, res=16, value=float("inf"))]
    df = current_frame(paths)
    assert list(df.columns) == [*regress.KEY, "value", "ci_low", "ci_high", "n_samples", "commit",
                                "config_sha256", "time"]
    assert list(df["resolution"]) == [16, 32]  # sorted by key, numerically
    assert df["commit"].tolist() == ["f" * 40, "f" * 40 + "+dirty"]
    assert math.isinf(df["value"][0]) and df["n_samples"].tolist() == [8, 8]
    with pytest.raises(ValueError, match="same key"):
        current_frame([paths[0], paths[0]])


def test_equal_values_pass(tmp_path):
    ref, cur = _frame(tmp_path, BASE), _frame(tmp_path, BASE)
    df = compare(ref, cur, TOL)
    assert list(df.columns) == regress.REPORT_COLUMNS
    assert set(df["verdict"]) == {"ok"} and len(df) == 4
    assert (df["delta"] == 0).all() and failures(df) == []
    # allowed = abs + rel * |reference|
    assert df.set_index(["metric", "run", "resolution"])["allowed"].to_dict() == {
        ("psnr", "infdiff", 32): 0.5, ("swd", "infdiff", 16): 1.0, ("swd", "infdiff", 32): 2.0,
        ("swd", "mlp_pixel", 16): pytest.approx(3.0)}


def test_regression_is_named_and_improvement_passes(tmp_path):
    ref = _frame(tmp_path, BASE)
    # swd +30% (rel tolerance 10%): worse; another swd -30%: better; a third +5%: within tolerance
    now = {**BASE, ("swd", "infdiff", 16): 13.0, ("swd", "infdiff", 32): 14.0, ("swd", "mlp_pixel", 16): 31.5}
    df = compare(ref, _frame(tmp_path, now), TOL)
    assert _verdicts(df) == {("swd", "infdiff", 16): "worse", ("swd", "infdiff", 32): "better",
                             ("swd", "mlp_pixel", 16): "ok", ("psnr", "infdiff", 32): "ok"}
    row = df[df["verdict"] == "worse"].iloc[0]
    assert row["delta"] == pytest.approx(3.0) and row["allowed"] == pytest.approx(1.0)
    lines = failures(df)
    assert len(lines) == 1
    assert all(s in lines[0] for s in ("swd", "infdiff", "16 px", "13", "10"))


def test_psnr_direction_is_reversed(tmp_path):
    ref = _frame(tmp_path, BASE)
    lower = compare(ref, _frame(tmp_path, {**BASE, ("psnr", "infdiff", 32): 24.0}), TOL)
    higher = compare(ref, _frame(tmp_path, {**BASE, ("psnr", "infdiff", 32): 26.0}), TOL)
    assert _verdicts(lower)[("psnr", "infdiff", 32)] == "worse"
    assert _verdicts(higher)[("psnr", "infdiff", 32)] == "better"
    assert "psnr" in failures(lower)[0] and failures(higher) == []
    # within the absolute tolerance (0.5 dB); exactly at the allowance is still ok
    for v in (24.7, 25.3, 24.5):
        assert _verdicts(compare(ref, _frame(tmp_path, {**BASE, ("psnr", "infdiff", 32): v}), TOL))[
            ("psnr", "infdiff", 32)] == "ok"


def test_missing_and_new_rows(tmp_path):
    ref = _frame(tmp_path, BASE)
    now = {k: v for k, v in BASE.items() if k != ("swd", "mlp_pixel", 16)}
    now[("swd", "infdiff", 64)] = 40.0
    df = compare(ref, _frame(tmp_path, now), TOL)
    v = _verdicts(df)
    assert v[("swd", "mlp_pixel", 16)] == "missing" and v[("swd", "infdiff", 64)] == "new"
    lines = failures(df)
    assert len(lines) == 1 and "mlp_pixel" in lines[0] and "missing" in lines[0]
    new = df[df["verdict"] == "new"].iloc[0]
    assert math.isnan(new["reference"]) and new["now"] == 40.0
    # no reference at all (first run): everything is new and passes
    first = compare(ref.iloc[0:0], _frame(tmp_path, now), TOL)
    assert set(first["verdict"]) == {"new"} and failures(first) == []
    # a metric that ran but produced no number fails instead of passing as "new"
    p = _write(tmp_path / "nan", value=None, res=128)
    assert set(compare(ref.iloc[0:0], current_frame([p]), TOL)["verdict"]) == {"missing"}


def test_keys_distinguish_kind_dataset_steps(tmp_path):
    a = current_frame([_write(tmp_path / "a", run="_noise", kind="noise", dataset="shapes", value=100.0),
                       _write(tmp_path / "b", run="_noise", kind="noise", dataset="other", value=50.0)])
    b = current_frame([_write(tmp_path / "c", run="_noise", kind="noise", dataset="shapes", value=100.0),
                       _write(tmp_path / "d", run="_noise", kind="noise", dataset="other", value=50.0, steps=4)])
    df = compare(a, b, TOL)
    assert sorted(df["verdict"]) == ["missing", "new", "ok"]


def test_tolerance_and_direction_errors(tmp_path):
    ref = _frame(tmp_path, BASE)
    with pytest.raises(ValueError, match=r"regress\.tolerance\.psnr"):
        compare(ref, ref, {"swd": {"rel": 0.1, "abs": 0.0}})
    with pytest.raises(ValueError, match="unknown keys"):
        compare(ref, ref, {**TOL, "swd": {"relative": 0.1}})
    with pytest.raises(ValueError, match=">= 0"):
        compare(ref, ref, {**TOL, "swd": {"rel": -0.1, "abs": 0.0}})
    odd = _frame(tmp_path, {("lpips", "infdiff", 16): 0.3})
    with pytest.raises(ValueError, match="lpips.*direction"):
        compare(odd, odd, {"lpips": {"rel": 0.1, "abs": 0.0}})
    # a vanished metric needs no tolerance: it is "missing" whatever it is
    assert set(compare(odd, ref.iloc[0:0], {})["verdict"]) == {"missing"}


def test_infinite_psnr_unchanged_is_ok(tmp_path):
    ref = _frame(tmp_path, {("psnr", "infdiff", 32): float("inf")})
    assert _verdicts(compare(ref, ref, TOL)) == {("psnr", "infdiff", 32): "ok"}
    drop = _frame(tmp_path, {("psnr", "infdiff", 32): 40.0})
    assert _verdicts(compare(ref, drop, TOL)) == {("psnr", "infdiff", 32): "worse"}


def test_load_reference_missing_says_how(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"snakemake --cores all regress.*--accept"):
        load_reference(tmp_path / "reference" / "default.csv")


def test_accept_round_trip(tmp_path):
    values = {("swd", "infdiff", 16): 0.1 + 0.2, ("swd", "infdiff", 8): 1 / 3, ("psnr", "infdiff", 32): 27.123456789}
    cur = _frame(tmp_path, values)
    ref_path = tmp_path / "reference" / "default.csv"
    out = accept(cur, ref_path, note="first")
    assert list(out.columns) == regress.REFERENCE_COLUMNS
    df = compare(load_reference(ref_path), cur, TOL)
    assert set(df["verdict"]) == {"ok"} and (df["delta"] == 0).all()  # repr precision: exact round trip
    text = ref_path.read_text()
    assert "0.30000000000000004" in text and text.endswith("\n")
    assert [line.split(",")[4] for line in text.splitlines()[1:]] == ["32", "8", "16"]  # sorted by KEY
    assert set(out["note"]) == {"first"}

    # through the CSV that the regress_report rule saves; re-accepting the same numbers changes nothing
    csv = tmp_path / "regress-current.csv"
    cur.to_csv(csv, index=False)
    accept(csv, ref_path, note="again")
    assert ref_path.read_text() == text

    # one changed value: only its line changes
    changed = _frame(tmp_path, {**values, ("swd", "infdiff", 8): 0.5})
    accept(changed, ref_path, note="retuned")
    new_lines, old_lines = ref_path.read_text().splitlines(), text.splitlines()
    assert [a == b for a, b in zip(old_lines, new_lines)] == [True, True, False, True]
    assert new_lines[2].endswith(",retuned") and ",0.5," in new_lines[2]
    assert not [p for p in ref_path.parent.iterdir() if p.name != "default.csv"]  # no temp files
    with pytest.raises(ValueError, match="no metrics"):
        accept(cur.iloc[0:0], ref_path)


def test_write_report(tmp_path):
    ref = _frame(tmp_path, BASE)
    df = compare(ref, _frame(tmp_path, {**BASE, ("swd", "infdiff", 16): 13.0}), TOL)
    df["reference_file"] = "results/reference/default.csv"  # extra columns go to the CSV
    write_report(df, tmp_path / "tables" / "regress")
    md = (tmp_path / "tables" / "regress.md").read_text()
    assert md.startswith("**FAIL**: 1 worse")
    assert "| Metric | Run" in md and "| Verdict |" in md and "+3.00" in md
    back = pd.read_csv(tmp_path / "tables" / "regress.csv")
    assert "reference_file" in back.columns
    assert failures(back) == failures(df)
    ok = compare(ref, ref, TOL)
    write_report(ok, tmp_path / "ok")
    assert (tmp_path / "ok.md").read_text().startswith("**PASS**")
