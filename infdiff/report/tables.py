"""Result tables: one long-format frame, written as CSV (machine), Markdown (people) and LaTeX (paper).

Rows are plain dicts with the keys of :data:`TABLE_COLUMNS`; measured rows come from metric JSONs,
reported rows (the paper's numbers) from a YAML file via :func:`load_paper_results`, so that both sit in
the same table with ``source`` telling them apart. The long format keeps every number with its sample
count, steps, CI and commit; the Markdown/LaTeX renderers only format it.

The Markdown and LaTeX renderers are hand-written on purpose: ``DataFrame.to_markdown`` needs
``tabulate`` and ``to_latex`` needs ``jinja2``, optional packages whose absence should not break a run.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from infdiff.io import write_text
from infdiff.metrics import HIGHER_IS_BETTER

__all__ = [
    "TABLE_COLUMNS",
    "build_table",
    "write_table",
    "read_table",
    "load_paper_results",
    "format_value",
    "to_markdown",
    "not_significant",
    "to_latex",
    "latex_escape",
]

TABLE_COLUMNS = [
    "table", "method", "run", "dataset", "resolution", "metric", "value", "ci_low", "ci_high",
    "n_samples", "steps", "source", "commit", "note",
]  # fmt: skip
# Column dtypes: nullable integers keep "missing" distinct from 0 and survive a CSV round trip.
_INT_COLUMNS = ("resolution", "n_samples", "steps")
_FLOAT_COLUMNS = ("value", "ci_low", "ci_high")
_STR_COLUMNS = tuple(c for c in TABLE_COLUMNS if c not in _INT_COLUMNS + _FLOAT_COLUMNS)
# measured rows first (what this run found), then the paper's reported numbers
_SORT_KEYS = ["table", "source", "dataset", "resolution", "metric", "method"]
SOURCES = ("measured", "reported")

# Human-readable columns (Markdown/LaTeX): the commit stays in the CSV only (too long to read).
_DISPLAY = [
    ("table", "Table"), ("method", "Method"), ("run", "Run"), ("dataset", "Dataset"), ("resolution", "Res."),
    ("metric", "Metric"), ("value", "Value"), ("ci", "CI"), ("n_samples", "N"), ("steps", "Steps"),
    ("source", "Source"), ("note", "Note"),
]  # fmt: skip
_NUMERIC_DISPLAY = {"resolution", "value", "ci", "n_samples", "steps"}


# ----------------------------------------------------------------------------------------------------
# Building and reading the long table
# ----------------------------------------------------------------------------------------------------


def _is_missing(v: Any) -> bool:
    """True for None, NaN (any float type), pd.NA/NaT and the empty string."""
    if v is None or (isinstance(v, str) and v == ""):
        return True
    try:
        r = pd.isna(v)
    except (TypeError, ValueError):
        return False
    return bool(r) if isinstance(r, (bool, np.bool_)) else False


def build_table(rows: Iterable[dict], extra: str = "drop") -> pd.DataFrame:
    """Long-format result table.

    Args:
        rows: dicts keyed by (a subset of) :data:`TABLE_COLUMNS`; missing keys become NA (numbers) or ""
            (text). Rows may be whole metric JSON dicts: keys outside the columns are dropped
            (``extra="drop"``) or rejected (``extra="raise"``).
    Returns:
        DataFrame with exactly the columns TABLE_COLUMNS (resolution/n_samples/steps as nullable Int64,
        value/ci_low/ci_high float64, the rest str), stably sorted by
        (table, source, dataset, resolution, metric, method), index 0..n-1.
    """
    if extra not in ("drop", "raise"):
        raise ValueError(f"extra must be 'drop' or 'raise', got {extra!r}")
    records = []
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - set(TABLE_COLUMNS))
        if unknown and extra == "raise":
            raise ValueError(f"row {i} has unknown keys {unknown}; allowed: {TABLE_COLUMNS}")
        records.append({c: row.get(c) for c in TABLE_COLUMNS})
    df = pd.DataFrame.from_records(records, columns=TABLE_COLUMNS)
    df = _coerce(df)
    bad = sorted(set(df["source"]) - set(SOURCES) - {""})
    if bad:
        raise ValueError(f"source must be one of {SOURCES}, got {bad}")
    # mergesort is stable: rows that tie on all keys keep the order they were given in.
    df = df.sort_values(_SORT_KEYS, kind="mergesort", na_position="last")
    return df.reset_index(drop=True)


def _to_float(v: Any, column: str) -> float | None:
    """Number or None for a cell of a numeric column; clear error for text such as "n/a"."""
    if _is_missing(v):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"column {column!r} must be numeric, got {v!r}") from None


def _coerce(df: pd.DataFrame) -> pd.DataFrame:
    """Give every column its canonical dtype (shared by build_table and read_table)."""
    out = {}
    for c in _INT_COLUMNS:
        vals = [_to_float(v, c) for v in df[c].tolist()]
        # Via float so that "64" / 64.0 (from CSV or YAML) become 64, but 64.5 is an error, not a truncation.
        if any(v is not None and (not math.isfinite(v) or v % 1) for v in vals):
            raise ValueError(f"column {c!r} must hold integers, got {[v for v in vals if v is not None]}")
        out[c] = pd.array([None if v is None else int(v) for v in vals], dtype="Int64")
    for c in _FLOAT_COLUMNS:
        vals = [_to_float(v, c) for v in df[c].tolist()]
        out[c] = np.array([np.nan if v is None else v for v in vals], dtype=np.float64)
    for c in _STR_COLUMNS:
        out[c] = np.array(["" if _is_missing(v) else str(v) for v in df[c].tolist()], dtype=object)
    return pd.DataFrame({c: out[c] for c in TABLE_COLUMNS}, index=df.index)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV written by :func:`write_table` back with the canonical dtypes ("" for empty text)."""
    # Everything as text, no NA guessing (a method called "NA" stays a string); _coerce parses numbers.
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a result table, missing columns {missing}")
    return _coerce(df[TABLE_COLUMNS]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------


def format_value(v: Any) -> str:
    """2 decimals for |v| >= 1 (FID-like numbers), 3 significant digits below; "" for missing."""
    if _is_missing(v):
        return ""
    v = float(v)
    if v == 0 or abs(v) >= 1 or not math.isfinite(v):
        return f"{v:.2f}"
    return f"{v:.3g}"


def _format_int(v: Any) -> str:
    return "" if _is_missing(v) else str(int(v))


# Comparable measured rows: same table, dataset, resolution and metric (best in the metric's direction).
_GROUP_KEYS = ["table", "dataset", "resolution", "metric"]
NS_MARK = "n.s."
NS_LEGEND = (
    f"{NS_MARK}: not significantly different from the best measured value of the same table, dataset, "
    "resolution and metric (the lowest; the highest for consistency, a PSNR), i.e. their 95% bootstrap intervals "
    "(CI: samples, or for consistency seeds, resampled with replacement) overlap. Unmarked measured rows with a "
    "CI differ significantly from that best row."
)


def not_significant(df: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """Which rows are not significantly different from the best row of their group.

    Groups are the *measured* method rows sharing (table, dataset, resolution, metric), reference rows
    (runs "_noise" / "_floor") excluded; the best row is the one with the lowest value, or the highest for
    a higher-is-better metric (:data:`infdiff.metrics.HIGHER_IS_BETTER`: consistency), the first on ties.
    Rows without a value (an empty consistency cell) take no part. A row is marked when it has an interval that overlaps the
    best row's interval (closed intervals). Rows without an interval, reported rows, and the best row
    itself are never marked; if the best row has no interval, nothing in its group can be compared.

    Args:
        df: a frame from :func:`build_table`.
    Returns:
        (marks ``[len(df)]`` bool, compared): ``compared`` says whether any comparison was made at all,
        i.e. whether an absent mark carries information (then the legend is needed).
    """
    marks = np.zeros(len(df), dtype=bool)
    compared = False
    lo = df["ci_low"].to_numpy(dtype=np.float64)
    hi = df["ci_high"].to_numpy(dtype=np.float64)
    value = df["value"].to_numpy(dtype=np.float64)
    has_ci = np.isfinite(lo) & np.isfinite(hi)
    # Reference rows (runs named "_noise", "_floor": pure noise, real vs real) bracket the scale; they are
    # not contenders, so the "best" row is the best *method* of the group.
    measured = df[(df["source"] == "measured") & ~df["run"].astype(str).str.startswith("_")]
    # dropna=False: a row without dataset/resolution still belongs to a group (of rows lacking the same).
    for _, grp in measured.groupby(_GROUP_KEYS, dropna=False, sort=False):
        pos = df.index.get_indexer(grp.index)
        pos = pos[np.isfinite(value[pos])]
        if len(pos) < 2:
            continue
        metric = str(grp["metric"].iloc[0])
        # argmin/argmax return the first extremum: ties keep table order
        best = pos[np.argmax(value[pos]) if metric in HIGHER_IS_BETTER else np.argmin(value[pos])]
        if not has_ci[best]:
            continue
        for i in pos:
            if i == best or not has_ci[i]:
                continue
            compared = True
            # Closed intervals overlap unless one ends before the other starts.
            marks[i] = lo[i] <= hi[best] and lo[best] <= hi[i]
    return marks, compared


def _display_rows(df: pd.DataFrame, marks: np.ndarray | None = None) -> tuple[list[str], list[list[str]], list[bool]]:
    """Strings for the people-facing tables: (headers, rows, numeric-column flags).

    One line per row of the long table; value and CI formatted, columns empty in every row dropped
    (e.g. "Table" when the file holds a single table) so the result stays narrow. ``marks`` (``[len(df)]``
    bool, optional) appends :data:`NS_MARK` to the value of the marked rows.
    """
    cells: dict[str, list[str]] = {}
    for key, _ in _DISPLAY:
        if key == "value":
            cells[key] = [format_value(v) for v in df["value"]]
            if marks is not None:
                cells[key] = [f"{c} {NS_MARK}" if m else c for c, m in zip(cells[key], marks)]
        elif key == "ci":
            cells[key] = [
                "" if _is_missing(lo) and _is_missing(hi) else f"[{format_value(lo)}, {format_value(hi)}]"
                for lo, hi in zip(df["ci_low"], df["ci_high"])
            ]
        elif key in _INT_COLUMNS:
            cells[key] = [_format_int(v) for v in df[key]]
        else:
            cells[key] = ["" if _is_missing(v) else str(v) for v in df[key]]
    keep = [(k, h) for k, h in _DISPLAY if k in ("method", "metric", "value") or any(cells[k])]
    if "table" in dict(keep) and len(set(cells["table"])) <= 1:
        keep = [(k, h) for k, h in keep if k != "table"]  # one table per file: the column says nothing
    headers = [h for _, h in keep]
    rows = [[cells[k][i] for k, _ in keep] for i in range(len(df))]
    return headers, rows, [k in _NUMERIC_DISPLAY for k, _ in keep]


def _md_cell(s: str) -> str:
    # A pipe would end the cell and a newline the row.
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown table: header, alignment line, one line per row of df.

    Measured rows whose 95% interval overlaps that of the best row of their group carry "n.s." after the
    value (see :func:`not_significant`); when any such comparison was made, a blank line and the legend
    :data:`NS_LEGEND` follow the table, so that the absence of the mark is readable too.
    """
    marks, compared = not_significant(df)
    headers, rows, numeric = _display_rows(df, marks)
    body = [[_md_cell(c) for c in r] for r in rows]
    head = [_md_cell(h) for h in headers]
    # Pad columns to a common width so the raw file also reads as a table.
    widths = [max([len(h)] + [len(r[j]) for r in body] + [3]) for j, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    # "---:" right-aligns numeric columns in rendered Markdown.
    align = "| " + " | ".join(("-" * (w - 1) + ":") if num else ("-" * w) for w, num in zip(widths, numeric)) + " |"
    # The blank line ends the table: without it Markdown would read the legend as another row.
    legend = ["", NS_LEGEND] if compared else []
    return "\n".join([line(head), align] + [line(r) for r in body] + legend) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "∞": r"$\infty$", "±": r"$\pm$",
}  # fmt: skip


def latex_escape(s: str) -> str:
    """Escape LaTeX special characters (one pass, so inserted backslashes are not re-escaped)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(s))


def to_latex(df: pd.DataFrame) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``) with one line per row of df."""
    headers, rows, numeric = _display_rows(df)
    spec = "".join("r" if num else "l" for num in numeric)
    out = io.StringIO()
    out.write(f"\\begin{{tabular}}{{{spec}}}\n\\toprule\n")
    out.write(" & ".join(latex_escape(h) for h in headers) + " \\\\\n\\midrule\n")
    for r in rows:
        out.write(" & ".join(latex_escape(c) for c in r) + " \\\\\n")
    out.write("\\bottomrule\n\\end{tabular}\n")
    return out.getvalue()


# ----------------------------------------------------------------------------------------------------
# Writing and paper numbers
# ----------------------------------------------------------------------------------------------------


def write_table(df: pd.DataFrame | Iterable[dict], stem: str | os.PathLike) -> None:
    """Write ``stem.csv`` (long table), ``stem.md`` and ``stem.tex``, each atomically.

    Args:
        df: a frame from :func:`build_table` (or rows, which are passed through it).
        stem: path without suffix, e.g. ``results/tables/table1``; parent directories are created.
    """
    if not isinstance(df, pd.DataFrame):
        df = build_table(df)
    else:
        # Re-canonicalise (dtypes, column order, sort) so that hand-edited frames render the same way.
        df = build_table(df.to_dict("records"))
    stem = Path(stem)
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    write_text(stem.with_name(stem.name + ".csv"), buf.getvalue())
    write_text(stem.with_name(stem.name + ".md"), to_markdown(df))
    write_text(stem.with_name(stem.name + ".tex"), to_latex(df))


def load_paper_results(path: str | os.PathLike) -> list[dict]:
    """Rows of reported (paper) numbers from a YAML file ``{table_name: [row, ...], ...}``.

    Each row needs ``method``, ``metric`` and ``value``; ``table`` is set from its key and ``source`` to
    "reported". An empty file gives []. Malformed files raise ValueError naming the file and row.
    """
    import yaml  # local: only report rules need it

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of table name -> list of rows, got {type(data).__name__}")
    rows = []
    for table, entries in data.items():
        if not isinstance(entries, list):
            raise ValueError(f"{path}: {table!r} must be a list of rows, got {type(entries).__name__}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: {table}[{i}] must be a mapping, got {entry!r}")
            missing = [k for k in ("method", "metric", "value") if _is_missing(entry.get(k))]
            if missing:
                raise ValueError(f"{path}: {table}[{i}] lacks {missing}")
            unknown = sorted(set(entry) - set(TABLE_COLUMNS))
            if unknown:
                raise ValueError(f"{path}: {table}[{i}] has unknown keys {unknown}; allowed: {TABLE_COLUMNS}")
            rows.append({**entry, "table": str(table), "source": "reported"})
    return rows
