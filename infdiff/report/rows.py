"""From metric records to long-format table rows: method labels, seeds merged, speed-up rows.

The metric JSONs (:func:`infdiff.evaluate.evaluate_files`) and the Table 3 timing JSON
(:mod:`infdiff.step_timing`, via the workflow) hold numbers with their provenance; this module names
them for people: the display name of a method (its spec, :mod:`infdiff.methods.specs`), the choices of a
run that differ from the schema's defaults (:func:`describe_variant`), the training budget, and the mean over
training seeds. :func:`table_from_metrics` assembles one table's rows, measured and reported, into the
frame that :mod:`infdiff.report.tables` writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from infdiff.methods import METHODS, method_spec
from infdiff.metrics import FEATURE_METRICS, PAIRED_METRICS


def method_display(method: str) -> str:
    """The table and figure name of a method (its spec's ``display``); unknown names are shown as they are."""
    return METHODS[method].display if method in METHODS else method


def _ratio_label(r: float) -> str:
    """0.125 -> '1/8', 1.0 -> '1' (the paper's notation for coordinate ratios)."""
    from fractions import Fraction

    f = Fraction(r).limit_denominator(64)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def _dotted(cfg: dict, key: str):
    """cfg["a"]["b"] for key "a.b"."""
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _value_label(key: str, value) -> str:
    """How a non-default value reads in a row label: a switch by its name ("sparse downsample"), a
    fraction in the paper's notation ("ratio 1/8"), a choice before its key ("qmc coords")."""
    name = key.rsplit(".", 1)[-1].replace("_", " ")
    if isinstance(value, bool):
        return name
    if isinstance(value, (int, float)):
        return f"{name} {_ratio_label(value)}"
    return f"{str(value).replace('_', ' ')} {name}"


def describe_variant(run_cfg: dict | None) -> str:
    """The run's choices that differ from the schema's defaults, among its method's ``label_keys``
    (Table 2/3 row labels: "ratio 1/8, qmc coords"); '' for the defaults or no run."""
    if not run_cfg:
        return ""
    from infdiff.config import section_defaults  # reads the schema, the one home of the defaults

    defaults = section_defaults("run")
    return ", ".join(_value_label(key, _dotted(run_cfg, key)) for key in method_spec(run_cfg["method"]).label_keys
                     if _dotted(run_cfg, key) != _dotted(defaults, key))


def metric_row(table: str, path: str | Path) -> dict:
    """One long-format table row from a metric JSON."""
    path = Path(path)
    rec = json.loads(path.read_text())
    prov = rec.get("provenance", {})
    commit = prov.get("git_commit", "unknown")
    if prov.get("git_dirty"):
        commit = f"{commit}+dirty"
    kind = rec.get("kind", "samples")
    counted = _count_note(rec)
    if kind == "noise":
        method, note = "pure Gaussian noise", "N(0,1) per pixel, clipped to [-1,1]"
    elif kind == "floor":
        method, note = "real vs real (floor)", "two disjoint reference sets"
    else:
        method = method_display(rec["method"])
        if rec.get("variant"):
            method = f"{method} ({rec['variant']})"
        if rec.get("resized_from"):
            # a grid model cannot sample at this resolution: its samples were resized (labelled everywhere)
            method = f"{method}, resized from {rec['resized_from']} px"
        note = _budget_note(rec)
        if rec["metric"] in PAIRED_METRICS:
            R = f"{rec['train_resolution']} px" if rec.get("train_resolution") else "training-resolution"
            what = (f"PSNR in dB, higher is better: each {rec['resolution']} px sample area-downsampled to {R}, "
                    f"against the {R} sample of the same seed; mean over {rec['n_samples']} matched seeds")
            note = "; ".join(filter(None, [what, note]))
    note = "; ".join(filter(None, [counted, note]))
    return {"table": table, "method": method, "run": rec["run"], "dataset": rec.get("dataset"),
            "resolution": rec["resolution"], "metric": rec["metric"], "value": rec["value"],
            # Older metric JSONs have no interval: missing -> NA in the table (build_table handles None).
            "ci_low": rec.get("ci_low"), "ci_high": rec.get("ci_high"),
            "n_samples": rec["n_samples"], "steps": rec["steps"], "source": "measured",
            "commit": commit, "note": note,
            # not table columns (build_table drops them): what empty_paired_rows says of an empty cell
            "train_resolution": rec.get("train_resolution"), "resized_from": rec.get("resized_from"),
            "budget": _budget_note(rec) if kind == "samples" else ""}


def _count_note(rec: dict) -> str:
    """How many samples a score saw, where the number depends on it: '10000 samples' for the feature metrics
    (FID's bias falls with the count: the paper scores Table 3 on 10k, Table 1 on 30k/50k), and 'first 10000
    of 50000 samples' whenever only part of a sample set was scored."""
    n = rec.get("n_samples")
    if rec.get("n_drawn"):
        return f"first {n} of {rec['n_drawn']} samples"
    return f"{n} samples" if rec.get("metric") in FEATURE_METRICS and n else ""


def _budget_note(rec: dict) -> str:
    """'2400 training steps (76800 images), 1.37M params' from a metric record (parts it has)."""
    parts = []
    if rec.get("train_steps") is not None:
        seen = f" ({rec['train_images']} images)" if rec.get("train_images") is not None else ""
        parts.append(f"{rec['train_steps']} training steps{seen}")
    if rec.get("n_params"):
        parts.append(f"{rec['n_params'] / 1e6:.2f}M params")
    scored = rec.get("weights") or {}
    if scored.get("weights") == "best":
        parts.append(f"best EMA weights by validation loss: step {scored['step']} of {scored['trained_steps']}")
    elif scored and scored.get("trained_steps") != rec.get("train_steps"):  # stopped early by patience
        parts.append(f"last EMA weights: step {scored['step']} (stopped early)")
    if rec.get("latent_steps") is not None:  # an autoencoder run: stage 2 is reported on its own
        parts.append(f"stage 2 (latent DDPM): {rec['latent_steps']} steps, {rec['latent_wall_time']:.0f} s")
    return ", ".join(parts)


def aggregate_seeds(rows: list[dict]) -> list[dict]:
    """Merge rows of one run trained under several seeds ("<run>-seed<k>") into mean and spread.

    The interval of a merged row is a 95% Student-t interval of the mean *over training seeds* (the
    per-seed bootstrap intervals over samples are in the per-seed metric JSONs).
    """
    import re
    import statistics

    from scipy import stats

    groups: dict[tuple, list[dict]] = {}
    out = []
    for row in rows:
        m = re.fullmatch(r"(.+)-seed(\d+)", row.get("run") or "")
        if m is None:
            out.append(row)
            continue
        groups.setdefault((m.group(1), row["dataset"], row["resolution"], row["metric"]), []).append(row)
    for (run, *_), members in groups.items():
        values = [r["value"] for r in members]
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        half = stats.t.ppf(0.975, len(values) - 1) * sd / len(values) ** 0.5 if len(values) > 1 else float("nan")
        seeds = ", ".join(r["run"].rsplit("-seed", 1)[1] for r in members)
        out.append({**members[0], "run": run, "value": mean, "ci_low": mean - half, "ci_high": mean + half,
                    "note": f"{members[0]['note']}; mean of {len(values)} seeds ({seeds}), sd {sd:.3g}, "
                            "interval over seeds"})
    return out


def speedup_rows(table: str, path: str | Path) -> list[dict]:
    """Rows of the interleaved training-step benchmark: speed-up vs the largest ratio, step time, memory."""
    rec = json.loads(Path(path).read_text())
    prov = rec.get("provenance", {})
    commit = f"{prov.get('git_commit', 'unknown')}{'+dirty' if prov.get('git_dirty') else ''}"
    rows = []
    for r in rec["rows"]:
        base = {"table": table, "method": f"∞-Diff (ratio {_ratio_label(r['ratio'])})", "run": rec["run"],
                "dataset": rec["dataset"], "resolution": r["resolution"], "source": "measured",
                "commit": commit, "n_samples": r["repeats"]}
        timing = f"batch {r['batch_size']}, {r['points']} points/image, median of {r['repeats']} interleaved steps"
        rows.append({**base, "metric": "train_speedup", "value": r["speedup"], "note": timing})
        rows.append({**base, "metric": "step_ms", "value": r["median_ms"], "note": f"IQR {r['iqr_ms']:.1f} ms; {timing}"})
        rows.append({**base, "metric": "backward_mb", "value": r["saved_mb"],
                     "note": "activations saved for backward" + (
                         f"; CUDA peak {r['cuda_peak_mb']:.0f} MB" if r.get("cuda_peak_mb") else "")})
    return rows


def empty_paired_rows(rows: list[dict], metrics: Sequence[str]) -> list[dict]:
    """An empty cell (value NA, with the reason in its note) for each paired metric a measured method row
    lacks.

    A paired metric (:data:`infdiff.metrics.PAIRED_METRICS`: consistency) compares a run's samples with its
    own samples at the training resolution, so it has no value at the training resolution itself, nor for a
    method that samples only there (its other rows are resizes). Those JSONs are never computed; this row
    says so in the table instead of leaving the reader to guess, and it is never a number. The noise and
    real-vs-real rows get none (they have no run).
    """
    paired = [m for m in metrics if m in PAIRED_METRICS]
    have = {(r["run"], r["dataset"], r["resolution"], r["metric"]) for r in rows}
    out, seen = [], set()
    for row in rows:
        key = (row["run"], row["dataset"], row["resolution"])
        if row.get("source") != "measured" or str(row["run"]).startswith("_") or key in seen:
            continue
        seen.add(key)
        for metric in paired:
            if (*key, metric) in have:
                continue
            if row.get("resized_from"):
                why = (f"no value: these are its {row['resized_from']} px samples resized (the method samples only "
                       "at its training resolution)")
            elif row.get("train_resolution") == row["resolution"]:
                why = f"no value: {metric} compares the other resolutions with this, the training resolution"
            else:
                why = (f"no value: {metric} compares a run's samples with its own at the training resolution, "
                       "which this row is, or its method samples only there")
            # the row's training budget too: every trained row of a table states it
            out.append({**row, "metric": metric, "value": None, "ci_low": None, "ci_high": None, "n_samples": None,
                        "note": "; ".join(filter(None, [why, row.get("budget")]))})
    return out


def table_from_metrics(table: str, metric_paths: Sequence[str | Path], paper_results: str | Path | None,
                       speedup: str | Path | None = None, metrics: Sequence[str] | None = None):
    """A long-format DataFrame: measured rows from metric JSONs (seeds merged), an empty cell for each
    paired metric of ``metrics`` (the table's metric list; None: the metrics of the JSONs) that a row has
    no value of (:func:`empty_paired_rows`), the speed-up benchmark, then the paper's reported rows."""
    from infdiff.report.tables import build_table, load_paper_results

    rows = aggregate_seeds([metric_row(table, p) for p in metric_paths])
    rows += empty_paired_rows(rows, sorted({r["metric"] for r in rows}) if metrics is None else metrics)
    if speedup is not None:
        rows += speedup_rows(table, speedup)
    if paper_results is not None:
        rows += [r for r in load_paper_results(paper_results) if r.get("table") == table]
    return build_table(rows)
