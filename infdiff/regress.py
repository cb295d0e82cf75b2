"""Regression check across commits: fresh metrics against a committed, accepted reference (docs/architecture.md, "What users run", "Results and provenance").

Rows are identified by :data:`KEY` (run, kind, dataset, metric, resolution, steps). For each row the
change ``delta = now - reference`` is judged against an allowance ``abs + rel * |reference|`` from the
config's ``regress.tolerance.<metric>``, in the metric's own direction (:func:`infdiff.metrics.direction`):
SWD/FID/KID are better when lower, PSNR/SSIM and resolution consistency (a PSNR in dB) when higher. A
metric in dB gets an absolute tolerance (``rel: 0``): 1 dB is the same change at 20 dB as at 40 dB,
where a relative one would allow twice as much at 40. A row only in the current metrics is "new"
(passes, e.g. a metric added to a table after the reference was accepted); a reference row with no
current value is "missing" (fails, so that a metric cannot silently drop out of the check).

The reference CSV is committed to git, so :func:`accept` writes it sorted, with floats in their shortest
round-trip form (``repr``), and keeps the timestamp of rows whose numbers did not change: re-accepting
touches only the lines that really changed.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from infdiff.history import commit_label
from infdiff.io import write_text
from infdiff.metrics import HIGHER_IS_BETTER, LOWER_IS_BETTER, direction
from infdiff.report.tables import _is_missing, _md_cell, format_value

__all__ = [
    "LOWER_IS_BETTER", "HIGHER_IS_BETTER", "KEY", "direction", "current_frame", "load_reference", "compare",
    "write_report", "failures", "accept",
]  # fmt: skip

KEY = ("run", "kind", "dataset", "metric", "resolution", "steps")

CURRENT_COLUMNS = [*KEY, "value", "ci_low", "ci_high", "n_samples", "commit", "config_sha256", "time"]
REFERENCE_COLUMNS = [*KEY, "value", "ci_low", "ci_high", "n_samples", "commit", "accepted_utc", "note"]
REPORT_COLUMNS = ["metric", "run", "kind", "dataset", "resolution", "steps", "reference", "now", "delta",
                  "allowed", "verdict"]
FAILING = ("worse", "missing")
VERDICTS = ("worse", "missing", "better", "ok", "new")

_INT = {"resolution", "steps", "n_samples"}
_FLOAT = {"value", "ci_low", "ci_high", "reference", "now", "delta", "allowed"}
_ACCEPT_HINT = "run `snakemake --cores all regress` then `python -m infdiff regress --accept` to create it"


# ----------------------------------------------------------------------------------------------------
# Frames with canonical dtypes
# ----------------------------------------------------------------------------------------------------


def _canonical(df: pd.DataFrame, columns: Iterable[str], source: str) -> pd.DataFrame:
    """``df`` restricted to ``columns`` with canonical dtypes: Int64 counts, float64 numbers, str text ("").

    Shared by frames built from JSONs, read from CSV (all text) or handed in by callers, so that merges
    on :data:`KEY` never fail on 32 vs "32" or on NaN vs "" in a text key. Absent columns are filled.
    """
    out = {}
    for c in columns:
        vals = df[c].tolist() if c in df.columns else [None] * len(df)
        if c in _INT or c in _FLOAT:
            nums = []
            for v in vals:
                try:
                    # float("inf") parses the "inf" that strict JSON writers put for infinite PSNR.
                    nums.append(None if _is_missing(v) else float(v))
                except (TypeError, ValueError):
                    raise ValueError(f"{source}: column {c!r} must be numeric, got {v!r}") from None
            if c in _INT:
                if any(v is not None and (not math.isfinite(v) or v % 1) for v in nums):
                    raise ValueError(f"{source}: column {c!r} must hold integers, got {nums}")
                out[c] = pd.array([None if v is None else int(v) for v in nums], dtype="Int64")
            else:
                out[c] = np.array([np.nan if v is None else v for v in nums], dtype=np.float64)
        else:
            out[c] = np.array(["" if _is_missing(v) else str(v) for v in vals], dtype=object)
    return pd.DataFrame(out, columns=list(columns))


def _check_unique(df: pd.DataFrame, source: str) -> None:
    dup = df[df.duplicated(list(KEY), keep=False)]
    if len(dup):
        rows = dup[list(KEY)].drop_duplicates().to_dict("records")
        raise ValueError(f"{source}: several rows share the key {KEY}: {rows}")


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    # mergesort is stable, so rows tying on the key (none, after _check_unique) keep their order.
    return df.sort_values(list(KEY), kind="mergesort", na_position="last").reset_index(drop=True)


def current_frame(metric_paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per metric JSON: :data:`KEY` + value, ci_low, ci_high, n_samples, commit, config_sha256, time.

    ``commit`` is ``"<sha>"`` or ``"<sha>+dirty"``; ``time`` the record's UTC timestamp. Rows are sorted
    by KEY. Unreadable files and two files with the same key are errors naming the files.
    """
    rows, origin = [], {}
    for p in metric_paths:
        try:
            rec = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: not a readable metric JSON ({type(e).__name__}: {e})") from None
        missing = [k for k in ("metric", "value", "run", "resolution") if k not in rec]
        if missing:
            raise ValueError(f"{p}: not a metric record, missing {missing}")
        prov = rec.get("provenance") or {}
        row = {"run": rec["run"], "kind": rec.get("kind", "samples"), "dataset": rec.get("dataset"),
               "metric": rec["metric"], "resolution": rec["resolution"], "steps": rec.get("steps"),
               "value": rec["value"], "ci_low": rec.get("ci_low"), "ci_high": rec.get("ci_high"),
               "n_samples": rec.get("n_samples"),
               "commit": commit_label(prov.get("git_commit"), prov.get("git_dirty")),
               "config_sha256": prov.get("config_sha256"), "time": prov.get("timestamp_utc")}
        key = tuple(str(row[k]) for k in KEY)
        if key in origin:
            raise ValueError(f"{origin[key]} and {p} have the same key {dict(zip(KEY, key))}")
        origin[key] = p
        rows.append(row)
    df = _canonical(pd.DataFrame.from_records(rows, columns=CURRENT_COLUMNS), CURRENT_COLUMNS, "metric JSONs")
    return _sorted(df)


def _read_csv(path: str | os.PathLike) -> pd.DataFrame:
    # All text, no NA guessing (a run called "NA" stays a name); _canonical parses the numbers.
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def load_reference(path: str | os.PathLike) -> pd.DataFrame:
    """The accepted reference CSV (written by :func:`accept`) with the columns :data:`REFERENCE_COLUMNS`.

    Raises:
        FileNotFoundError: no file yet; the message says how to create one.
        ValueError: the file lacks a KEY or value column, or two rows share a key.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no regression reference at {path}: {_ACCEPT_HINT}")
    raw = _read_csv(path)
    missing = [c for c in (*KEY, "value") if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: not a regression reference, missing columns {missing}")
    df = _canonical(raw, REFERENCE_COLUMNS, str(path))
    _check_unique(df, str(path))
    return _sorted(df)


# ----------------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------------


def _tolerance(tolerance: dict, metric: str) -> tuple[float, float]:
    """(rel, abs) of ``metric`` from ``regress.tolerance`` as the schema fills it (``abs`` defaults to 0 there);
    the entry itself must exist."""
    entry = tolerance.get(metric)
    if entry is None:
        raise ValueError(f"no tolerance for metric '{metric}': set regress.tolerance.{metric} "
                         f"(e.g. {{rel: 0.05, abs: 0.0}})")
    if not isinstance(entry, dict):
        raise ValueError(f"regress.tolerance.{metric} must be a mapping {{rel: ..., abs: ...}}, got {entry!r}")
    unknown = sorted(set(entry) - {"rel", "abs"})
    if unknown:
        raise ValueError(f"regress.tolerance.{metric}: unknown keys {unknown} (allowed: rel, abs)")
    rel, abs_ = float(entry["rel"]), float(entry["abs"])
    if not (rel >= 0 and abs_ >= 0):
        raise ValueError(f"regress.tolerance.{metric}: rel and abs must be >= 0, got {entry}")
    return rel, abs_


def _verdict(sign: int, ref: float, now: float, rel: float, abs_: float) -> tuple[float, float, str]:
    """(delta, allowed, verdict) of one row present in both frames."""
    if math.isnan(ref):
        return math.nan, math.nan, "new"  # nothing accepted to compare with
    # now == ref first: inf - inf is NaN, but an unchanged infinite PSNR (identical images) is "ok".
    delta = 0.0 if now == ref else now - ref
    # A relative tolerance of an infinite reference would allow anything: only abs applies there.
    allowed = abs_ + (rel * abs(ref) if math.isfinite(ref) else 0.0)
    bad = sign * delta  # > 0: moved in the metric's bad direction
    if bad > allowed:
        return delta, allowed, "worse"
    if -bad > allowed:
        return delta, allowed, "better"
    return delta, allowed, "ok"


def compare(reference: pd.DataFrame, current: pd.DataFrame, tolerance: dict) -> pd.DataFrame:
    """Verdict per row of the outer join of ``reference`` and ``current`` on :data:`KEY`.

    Args:
        reference: a frame from :func:`load_reference` (may be empty).
        current: a frame from :func:`current_frame`.
        tolerance: ``{metric: {"rel": float, "abs": float}}`` (the config's ``regress.tolerance``).
    Returns:
        DataFrame with :data:`REPORT_COLUMNS`: reference and now values, ``delta = now - reference``,
        ``allowed = abs + rel * |reference|`` and ``verdict``: "worse" when the change in the metric's bad
        direction exceeds ``allowed``, "better" when the change in the good direction does, "ok"
        otherwise, "new" for a row without reference, "missing" for a reference row without a current
        value. Sorted by metric, run, kind, dataset, resolution, steps.
    Raises:
        ValueError: a metric with a current value has no direction or no tolerance entry (a vanished
            metric needs neither: it is reported "missing" whatever it is); duplicate keys.
    """
    ref = _canonical(reference, [*KEY, "value"], "reference")
    cur = _canonical(current, [*KEY, "value"], "current")
    _check_unique(ref, "reference")
    _check_unique(cur, "current")
    # Fail on configuration errors before judging anything, naming every offending metric once.
    settings = {m: (direction(m), *_tolerance(tolerance or {}, m)) for m in sorted(set(cur["metric"]))}
    merged = ref.rename(columns={"value": "reference"}).merge(
        cur.rename(columns={"value": "now"}), on=list(KEY), how="outer", indicator=True)
    out = []
    for row in merged.to_dict("records"):
        r, n = float(row["reference"]), float(row["now"])
        if row["_merge"] == "left_only" or math.isnan(n):
            # vanished, or present without a number (a failed metric must not pass as "new")
            delta, allowed, verdict = math.nan, math.nan, "missing"
        elif row["_merge"] == "right_only":
            delta, allowed, verdict = math.nan, math.nan, "new"
        else:
            sign, rel, abs_ = settings[row["metric"]]
            delta, allowed, verdict = _verdict(sign, r, n, rel, abs_)
        out.append({**{k: row[k] for k in KEY}, "reference": r, "now": n, "delta": delta, "allowed": allowed,
                    "verdict": verdict})
    df = _canonical(pd.DataFrame.from_records(out, columns=REPORT_COLUMNS), REPORT_COLUMNS, "report")
    order = ["metric", "run", "kind", "dataset", "resolution", "steps"]
    return df.sort_values(order, kind="mergesort").reset_index(drop=True)


def failures(df: pd.DataFrame) -> list[str]:
    """One line per "worse" or "missing" row of a :func:`compare` frame (also one read back from CSV)."""
    lines = []
    for row in df.to_dict("records"):
        verdict = str(row["verdict"])
        if verdict not in FAILING:
            continue
        what = f"{row['metric']} of run {row['run']}"
        if not _is_missing(row.get("dataset")):
            what += f" ({row['dataset']})"
        what += f" at {_int_text(row['resolution'])} px, {_int_text(row.get('steps'))} steps"
        ref, now = _num(row["reference"]), _num(row["now"])
        if verdict == "worse":
            lines.append(f"{what}: worse, {now:.6g} vs reference {ref:.6g} (delta {_num(row['delta']):+.6g}, "
                         f"allowed {_num(row['allowed']):.6g})")
        else:
            had = "no reference value either" if math.isnan(ref) else f"reference {ref:.6g}"
            lines.append(f"{what}: missing, no current value ({had}); accept the removal with "
                         "`python -m infdiff regress --accept` if it is intended")
    return lines


def _num(v) -> float:
    return math.nan if _is_missing(v) else float(v)


def _int_text(v) -> str:
    return "?" if _is_missing(v) else str(int(float(v)))


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------


def _summary(df: pd.DataFrame) -> str:
    counts = {v: int((df["verdict"].astype(str) == v).sum()) for v in VERDICTS}
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
    if counts["worse"] or counts["missing"]:
        return (f"**FAIL**: {counts['worse']} worse beyond tolerance, {counts['missing']} missing "
                f"({len(df)} rows: {tally}).")
    return f"**PASS**: no metric worse beyond its tolerance, none missing ({len(df)} rows: {tally})."


def _markdown(df: pd.DataFrame) -> str:
    """Summary line, then the table metric / run / resolution / reference / now / delta / allowed / verdict.

    A dataset column is added when the report spans several datasets (the same run name, e.g. "_noise",
    can then appear once per dataset).
    """
    cols = [("metric", "Metric", False), ("run", "Run", False)]
    if df["dataset"].astype(str).nunique() > 1:
        cols.append(("dataset", "Dataset", False))
    cols += [("resolution", "Res.", True), ("reference", "Reference", True), ("now", "Now", True),
             ("delta", "Delta", True), ("allowed", "Allowed", True), ("verdict", "Verdict", False)]
    rows = []
    for rec in df.to_dict("records"):
        cells = []
        for key, _, _ in cols:
            v = rec[key]
            if key in _INT:
                cells.append("" if _is_missing(v) else str(int(float(v))))
            elif key in _FLOAT:
                text = format_value(v)
                # an explicit sign: the direction of a change is half of its meaning
                cells.append("+" + text if key == "delta" and text and float(v) > 0 else text)
            else:
                cells.append("" if _is_missing(v) else str(v))
        rows.append([_md_cell(c) for c in cells])
    head = [h for _, h, _ in cols]
    widths = [max([len(h), 3] + [len(r[j]) for r in rows]) for j, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w)
                                 for c, w, (_, _, num) in zip(cells, widths, cols)) + " |"

    align = "| " + " | ".join("-" * (w - 1) + ":" if num else "-" * w for w, (_, _, num) in zip(widths, cols)) + " |"
    legend = ("Delta = now - reference; a change in the metric's bad direction (higher SWD/FID/KID, lower "
              "PSNR/SSIM/consistency) beyond Allowed = abs + rel x |reference| (regress.tolerance) is 'worse'.")
    return "\n".join([_summary(df), "", line(head), align, *(line(r) for r in rows), "", legend]) + "\n"


def write_report(df: pd.DataFrame, stem: str | os.PathLike) -> None:
    """Write ``stem.csv`` (every column of ``df``, full precision) and ``stem.md`` (summary + table), atomically."""
    stem = Path(stem)
    missing = [c for c in REPORT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"not a compare() frame: missing columns {missing}")
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    write_text(stem.with_name(stem.name + ".csv"), buf.getvalue())
    write_text(stem.with_name(stem.name + ".md"), _markdown(df))


def _cell(v, column: str) -> str:
    """Stable CSV text: ints as ints, floats as their shortest round-trip ``repr``, missing as ""."""
    if _is_missing(v):
        return ""
    if column in _INT:
        return str(int(v))
    if column in _FLOAT:
        return repr(float(v))
    return str(v)


def accept(current_csv_or_frame: str | os.PathLike | pd.DataFrame, reference_path: str | os.PathLike,
           note: str | None = None) -> pd.DataFrame:
    """Make the current metrics the accepted reference: write ``reference_path`` atomically and return it.

    Args:
        current_csv_or_frame: a frame from :func:`current_frame`, or the CSV it was saved to
            (``results/tables/regress-current.csv``).
        reference_path: the committed reference CSV (``regress.reference``).
        note: why the values were accepted, stored in the ``note`` column of every changed row.
    Returns:
        The reference frame (:data:`REFERENCE_COLUMNS`), sorted by :data:`KEY`. Rows whose value,
        interval, n_samples and commit equal those already accepted keep their ``accepted_utc`` and note,
        so the git diff shows only what changed.
    """
    if isinstance(current_csv_or_frame, pd.DataFrame):
        raw, source = current_csv_or_frame, "current frame"
    else:
        raw, source = _read_csv(current_csv_or_frame), str(current_csv_or_frame)
    missing = [c for c in (*KEY, "value") if c not in raw.columns]
    if missing:
        raise ValueError(f"{source}: not a current-metrics table, missing columns {missing}")
    df = _canonical(raw, REFERENCE_COLUMNS, source)
    if df.empty:
        raise ValueError(f"{source}: no metrics to accept")
    _check_unique(df, source)
    df["accepted_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    df["note"] = note or ""
    text = pd.DataFrame({c: [_cell(v, c) for v in df[c]] for c in REFERENCE_COLUMNS}, dtype=object)
    if Path(reference_path).exists():
        old = _read_csv(reference_path)
        old = old.reindex(columns=REFERENCE_COLUMNS, fill_value="").astype(str)
        # Same numbers and commit as accepted before (compared as written text): keep the old stamp.
        same = [*KEY, "value", "ci_low", "ci_high", "n_samples", "commit"]
        kept = {tuple(r[c] for c in same): (r["accepted_utc"], r["note"]) for r in old.to_dict("records")}
        for i, r in enumerate(text.to_dict("records")):
            hit = kept.get(tuple(r[c] for c in same))
            if hit is not None:
                text.loc[i, ["accepted_utc", "note"]] = list(hit)
    text = _sorted_text(text, df)
    buf = io.StringIO()
    text.to_csv(buf, index=False, lineterminator="\n")
    write_text(reference_path, buf.getvalue())
    return load_reference(reference_path)


def _sorted_text(text: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the text frame in the KEY order of the typed frame (numbers sort as numbers, not text)."""
    order = df.sort_values(list(KEY), kind="mergesort", na_position="last").index
    return text.loc[order].reset_index(drop=True)
