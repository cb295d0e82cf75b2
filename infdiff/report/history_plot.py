"""Metric history across commits as a PDF: does a number drift, and since which commit? (docs/architecture.md, "Results and provenance")

Reads the JSON-lines history that every evaluate job appends to (:mod:`infdiff.history`). One panel per
metric; the x axis lists commits in the order they first appear in the file (the order results were
produced, robust to clock skew between machines), the y axis the latest value measured at that commit
for each (run, kind, dataset, resolution), with its 95% interval as error bars where it has one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from infdiff.history import commit_label, read_history
from infdiff.metrics import HIGHER_IS_BETTER, LOWER_IS_BETTER
from infdiff.report.figures import save_pdf

__all__ = ["plot_history"]

_SHORT_SHA = 7
# One line per (run, kind, dataset, resolution); "kind" separates a run's samples from reference rows.
_LINE_KEYS = ["run", "kind", "dataset", "resolution"]


def _number(v) -> float:
    """float of a history entry; NaN for null and text that is not a number (inf stays inf)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _frame(records: list[dict]) -> pd.DataFrame:
    """History records as a frame with a short commit label, the latest record per (metric, commit, line)."""
    df = pd.DataFrame.from_records(records)
    for c in ("metric", "run", "kind", "dataset", "resolution", "git_commit", "git_dirty"):
        if c not in df.columns:
            df[c] = None
    for c in ("value", "ci_low", "ci_high"):
        df[c] = [_number(v) for v in (df[c] if c in df.columns else [None] * len(df))]
    df["commit"] = [commit_label(c, d, short=_SHORT_SHA) for c, d in zip(df["git_commit"], df["git_dirty"])]
    for c in ("metric", "run", "kind", "dataset"):
        df[c] = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in df[c]]
    df["resolution"] = [_number(v) for v in df["resolution"]]
    # File order is append order: the last record of a (commit, line) is its latest measurement.
    return df.drop_duplicates(["metric", "commit", *_LINE_KEYS], keep="last")


def _ylabel(metric: str) -> str:
    if metric in LOWER_IS_BETTER:
        return f"{metric} (lower is better)"
    if metric in HIGHER_IS_BETTER:
        return f"{metric} (higher is better)"
    return metric  # a metric the regression check does not know: plot it anyway, without a claim


def plot_history(history_path: str | os.PathLike, out_pdf: str | os.PathLike) -> None:
    """Plot the history file ``history_path`` into ``out_pdf`` (written atomically, parents created).

    Raises:
        ValueError: the history is absent or has no record with a metric and a finite value (nothing to
            plot); a corrupt line (the message of :func:`infdiff.history.read_history` names it).
    """
    # Figure + the Agg canvas directly, not pyplot: no global backend switch, no figure left open.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history_path, out_pdf = Path(history_path), Path(out_pdf)
    if not history_path.exists():
        raise ValueError(f"no metric history at {history_path}: every evaluate job appends to it, so compute "
                         "some metrics first (e.g. `snakemake --cores all table1`)")
    df = _frame(read_history(history_path)) if history_path.stat().st_size else pd.DataFrame()
    if not df.empty:
        df = df[(df["metric"] != "") & np.isfinite(df["value"].to_numpy(dtype=np.float64))]
    if df.empty:
        raise ValueError(f"the metric history {history_path} has no record with a metric and a finite value: "
                         "nothing to plot")
    commits = list(pd.unique(df["commit"]))  # order of first appearance
    x_of = {c: i for i, c in enumerate(commits)}
    metrics = sorted(df["metric"].unique())
    # One colour per line across all panels, so that a run reads the same in every metric.
    line_keys = sorted(df[_LINE_KEYS].drop_duplicates().itertuples(index=False, name=None), key=str)
    colour = {k: f"C{i % 10}" for i, k in enumerate(line_keys)}

    # the legend sits right of the axes (3.5 in): tables hold ~20 lines, which would cover the points
    fig = Figure(figsize=(max(6.0, 0.7 * len(commits) + 3.0) + 3.5, 3.2 * len(metrics) + 1.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics):
        sub = df[df["metric"] == metric]
        lines = list(sub.groupby(_LINE_KEYS, sort=True, dropna=False))
        many_datasets = sub["dataset"].nunique() > 1
        for j, ((run, kind, dataset, res), grp) in enumerate(lines):
            # Dodge the lines sideways a little so that error bars at the same commit stay readable.
            dx = 0.0 if len(lines) == 1 else 0.25 * (j / (len(lines) - 1) - 0.5)
            x = np.array([x_of[c] for c in grp["commit"]], dtype=np.float64) + dx
            y = grp["value"].to_numpy(dtype=np.float64)
            order = np.argsort(x, kind="stable")
            # matplotlib hides labels starting with "_": reference runs ("_noise", "_floor") get a word
            label = f"{run[1:]} (reference)" if run.startswith("_") else run
            if math.isfinite(res):
                label += f" {int(res)} px"
            if kind not in ("", "samples") and not run.startswith("_"):
                label += f" ({kind})"
            if many_datasets and dataset:
                label += f", {dataset}"
            c = colour[(run, kind, dataset, res)]
            ax.plot(x[order], y[order], marker="o", markersize=4, color=c, label=label)
            lo, hi = grp["ci_low"].to_numpy(dtype=np.float64), grp["ci_high"].to_numpy(dtype=np.float64)
            has = np.isfinite(lo) & np.isfinite(hi)
            if has.any():
                # Clip at 0: a percentile interval need not contain the point estimate, and matplotlib
                # refuses negative error lengths.
                yerr = np.stack([np.clip(y[has] - lo[has], 0, None), np.clip(hi[has] - y[has], 0, None)])
                ax.errorbar(x[has], y[has], yerr=yerr, fmt="none", ecolor=c, capsize=3)
        ax.set_ylabel(_ylabel(metric))
        ax.set_title(metric, fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    axes[-1].set_xticks(range(len(commits)))
    axes[-1].set_xticklabels(commits, rotation=45, ha="right", fontsize="small")
    axes[-1].set_xlim(-0.5, len(commits) - 0.5)
    axes[-1].set_xlabel("commit (order of first appearance)\n+dirty: uncommitted changes")
    fig.suptitle(f"Metric history ({history_path.name}): latest value per commit, 95% intervals")
    fig.tight_layout()
    save_pdf(fig, out_pdf)
