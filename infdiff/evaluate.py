"""From sample files to metric records and tables, with provenance on every number (DESIGN.md §5).

A metric JSON is the unit the tables (and later the regression check) read. It holds the value and
everything needed to trust or reproduce it: metric settings, n_samples, the seed range, steps,
resolution, run, config sha256, git commit + dirty flag, package versions, device and wall time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from infdiff.io import write_json
from infdiff.provenance import provenance

# Display names of the method families in tables.
METHOD_NAMES = {"infdiff": "∞-Diff", "mlp_pixel": "MLP pixel diffusion", "simple_diffusion": "simple diffusion U-ViT"}
# Metrics with one number per sample set; fid, fid_clip and kid embed images with a pretrained network.
FEATURE_METRICS = ("fid", "fid_clip", "kid")
KNOWN_METRICS = ("swd", *FEATURE_METRICS)


def read_images(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(uint8 images [N, 3, R, R], seeds or None, meta dict) from a samples.npz or a prepared data split."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            return z["images"], (z["seeds"] if "seeds" in z.files else None), meta
    except Exception as e:
        raise RuntimeError(f"{path} is not a readable images .npz ({type(e).__name__}: {e})") from e


def compute_metric(metric: str, samples: np.ndarray, ref, settings: dict, workers: int = 1,
                   metrics_cfg: dict | None = None, device: str = "cpu") -> dict:
    """{'value', 'levels', 'ci_low', 'ci_high', 'n_boot', 'n_ref', 'settings'} of ``metric``.

    Args:
        samples: uint8 images ``[N, 3, R, R]``.
        ref: uint8 reference images ``[M, 3, R, R]`` (swd), or for the feature metrics (fid, fid_clip,
            kid) either reference images or a reference-statistics dict from
            :func:`infdiff.metrics.fid.load_reference_stats`.
        settings: the config's ``evaluate`` section (per-metric settings under the metric's name).
        metrics_cfg: the config's ``metrics`` section (weight files, CLIP architecture).

    SWD's interval is a 95% bootstrap over the *samples* (the reference set stays fixed), see
    :func:`infdiff.metrics.swd.swd_bootstrap`; ``n_boot`` 0 skips it (ci_low/ci_high NaN). The feature
    metrics have no interval (NaN): at the paper's 30k-50k samples their sampling error is far below the
    differences between methods, and a bootstrap would need as many feature passes.
    """
    s = settings.get(metric, {})
    if len(samples) < s.get("min_samples", 1):
        raise ValueError(f"{metric}: {len(samples)} samples is fewer than evaluate.{metric}.min_samples = "
                         f"{s['min_samples']}; sample more (sample.n_samples) or lower the minimum knowingly")
    if metric == "swd":
        from infdiff.metrics.swd import swd_bootstrap

        out = swd_bootstrap(samples, ref, seed=s.get("seed", 0), n_boot=s.get("n_boot", 200),
                            min_res=s.get("min_res", 16), patches_per_image=s.get("patches_per_image", 128),
                            directions=s.get("directions", 512), workers=workers)
        return {"value": float(out["avg"]), "levels": {str(k): float(v) for k, v in out["levels"].items()},
                "ci_low": out["ci_low"], "ci_high": out["ci_high"], "n_boot": out["n_boot"],
                "n_ref": int(len(ref)), "settings": s}
    if metric in FEATURE_METRICS:
        from infdiff.metrics import fid

        metrics_cfg = metrics_cfg or {}
        extractor = fid.load_extractor(fid.EXTRACTOR_OF[metric], metrics_cfg.get("weights"), device=device,
                                       clip_arch=metrics_cfg.get("clip_arch", "ViT-B-32-quickgelu"))
        if not isinstance(ref, dict):  # reference images given directly (CLI): embed them here
            feats = fid.features(ref, extractor, batch_size=s.get("batch_size", 64), device=device)
            ref = {"mu": None, "sigma": None, "feats": feats, "meta": {}}
            ref["mu"], ref["sigma"] = fid.gaussian_stats(feats)
        out = fid.score(metric, samples, ref, extractor, s, device=device)
        return {"value": float(out["value"]), "levels": {}, "ci_low": float("nan"), "ci_high": float("nan"),
                "n_boot": 0, "n_ref": int(out["n_ref"]),
                "settings": {**s, **out.get("settings", {}), "extractor": extractor.name,
                             "preprocessing": extractor.preprocessing}}
    raise ValueError(f"unknown metric '{metric}' (known: {', '.join(KNOWN_METRICS)})")


def _finite_or_none(v) -> float | None:
    """float(v), or None for a missing or non-finite number (strict JSON cannot hold NaN)."""
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else None


def evaluate_files(metric: str, samples: str | Path, ref: str | Path, out: str | Path, settings: dict,
                   run: str, run_cfg: dict | None, resolution: int, steps: int, kind: str = "samples",
                   device: str = "cpu", dataset: str | None = None, n_params: int | None = None,
                   metrics_cfg: dict | None = None, history: str | Path | None = None) -> dict:
    """Score ``samples`` against ``ref`` and write the metric JSON ``out`` atomically; return it.

    ``ref`` is a reference images .npz, or for fid/fid_clip/kid a reference-statistics .npz (rule
    ``reference_stats``). ``resized_from`` (samples of a grid model drawn at its training resolution and
    resized) is taken from the samples' metadata, so that every table labels such rows. With ``history``
    the record is also appended to that JSON-lines file (the regression history across commits).
    """
    images, seeds, meta = read_images(samples)
    ref_data = _read_reference(ref, metric)
    if images.shape[-1] != resolution:
        raise ValueError(f"samples are {images.shape[-1]} px but the metric is at {resolution} px")
    ref_res = ref_data["meta"].get("resolution") if isinstance(ref_data, dict) else ref_data.shape[-1]
    if ref_res is not None and int(ref_res) != resolution:
        raise ValueError(f"reference is {ref_res} px but the metric is at {resolution} px")
    if kind != "samples":
        # the minimum sample count guards reported method numbers; the noise and real-vs-real rows only
        # place them on a scale (a held-out split may well be smaller than the paper's 50k samples)
        settings = {**settings, metric: {k: v for k, v in settings.get(metric, {}).items() if k != "min_samples"}}
    t0 = time.time()
    result = compute_metric(metric, images, ref_data, settings, metrics_cfg=metrics_cfg, device=device)
    wall = time.time() - t0
    record = {
        "metric": metric, "value": result["value"], "levels": result["levels"],
        # JSON has no NaN: a missing interval (n_boot 0) is written as null.
        "ci_low": _finite_or_none(result.get("ci_low")), "ci_high": _finite_or_none(result.get("ci_high")),
        "n_boot": int(result.get("n_boot", 0)), "kind": kind,
        "run": run, "method": (run_cfg or {}).get("method", kind),
        "dataset": dataset or ((run_cfg or {}).get("dataset") or {}).get("name"),
        "train_steps": ((run_cfg or {}).get("train") or {}).get("steps"),
        "train_images": _images_seen(run_cfg), "n_params": n_params,
        "resized_from": meta.get("resized_from"),
        "sampling_precision": (meta.get("provenance") or {}).get("precision"),
        "variant": describe_variant(run_cfg), "seed": (run_cfg or {}).get("seed"),
        "resolution": resolution, "steps": steps, "n_samples": int(images.shape[0]),
        "n_ref": result["n_ref"],
        "seed_range": [int(seeds.min()), int(seeds.max())] if seeds is not None and len(seeds) else None,
        "samples_file": str(samples), "ref_file": str(ref), "settings": result["settings"],
        "provenance": provenance(run_cfg, wall_time=wall, device=device),
    }
    write_json(out, record)
    if history is not None:
        from infdiff.history import append_history, history_record

        append_history(history, history_record(record))
    return record


def _read_reference(path: str | Path, metric: str):
    """Reference images ``[M, 3, R, R]`` uint8, or (feature metrics) a reference-statistics dict."""
    if metric in FEATURE_METRICS:
        with np.load(Path(path)) as z:
            is_stats = "mu" in z.files
        if is_stats:
            from infdiff.metrics.fid import load_reference_stats

            return load_reference_stats(path)
    return read_images(path)[0]


def _images_seen(run_cfg: dict | None) -> int | None:
    """Training images a run sees (train.steps x train.batch_size): the budget tables compare at."""
    t = (run_cfg or {}).get("train") or {}
    return int(t["steps"]) * int(t["batch_size"]) if "steps" in t and "batch_size" in t else None


def _ratio_label(r: float) -> str:
    """0.125 -> '1/8', 1.0 -> '1' (the paper's notation for coordinate ratios)."""
    from fractions import Fraction

    f = Fraction(r).limit_denominator(64)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def describe_variant(run_cfg: dict | None) -> str:
    """The choices of a run that differ from the paper's ∞-Diff (Table 2/3 row labels), '' if none."""
    if not run_cfg:
        return ""
    parts = []
    method = run_cfg.get("method", "infdiff")
    if method == "mlp_pixel":
        return (run_cfg.get("mlp_pixel") or {}).get("variant", "fair").replace("_", " ")
    if method == "simple_diffusion":
        sd = run_cfg.get("simple_diffusion") or {}
        if sd.get("stem", "wavelet") != "wavelet":
            parts.append(f"{sd['stem']} stem")
        if sd.get("schedule", "shifted") != "shifted":
            parts.append(f"{sd['schedule']} schedule")
        return ", ".join(parts)
    if run_cfg.get("ratio", 0.25) != 0.25:
        parts.append(f"ratio {_ratio_label(run_cfg['ratio'])}")
    if run_cfg.get("coords", "uniform") != "uniform":
        parts.append(f"{run_cfg['coords']} coords")
    for key, label in (("sparse_downsample", "sparse downsample"), ("nonlinear_kernel", "nonlinear kernel"),
                       ("regular_conv", "regular convs")):
        if (run_cfg.get("model") or {}).get(key):
            parts.append(label)
    return ", ".join(parts)


def metric_row(table: str, path: str | Path) -> dict:
    """One long-format table row from a metric JSON."""
    path = Path(path)
    rec = json.loads(path.read_text())
    prov = rec.get("provenance", {})
    commit = prov.get("git_commit", "unknown")
    if prov.get("git_dirty"):
        commit = f"{commit}+dirty"
    kind = rec.get("kind", "samples")
    if kind == "noise":
        method, note = "pure Gaussian noise", "N(0,1) per pixel, clipped to [-1,1]"
    elif kind == "floor":
        method, note = "real vs real (floor)", "two disjoint reference sets"
    else:
        method = METHOD_NAMES.get(rec["method"], rec["method"])
        if rec.get("variant"):
            method = f"{method} ({rec['variant']})"
        if rec.get("resized_from"):
            # a grid model cannot sample at this resolution: its samples were resized (labelled everywhere)
            method = f"{method}, resized from {rec['resized_from']} px"
        note = _budget_note(rec)
    return {"table": table, "method": method, "run": rec["run"], "dataset": rec.get("dataset"),
            "resolution": rec["resolution"], "metric": rec["metric"], "value": rec["value"],
            # Older metric JSONs have no interval: missing -> NA in the table (build_table handles None).
            "ci_low": rec.get("ci_low"), "ci_high": rec.get("ci_high"),
            "n_samples": rec["n_samples"], "steps": rec["steps"], "source": "measured",
            "commit": commit, "note": note}


def _budget_note(rec: dict) -> str:
    """'2400 training steps (76800 images), 1.37M params' from a metric record (parts it has)."""
    parts = []
    if rec.get("train_steps") is not None:
        seen = f" ({rec['train_images']} images)" if rec.get("train_images") is not None else ""
        parts.append(f"{rec['train_steps']} training steps{seen}")
    if rec.get("n_params"):
        parts.append(f"{rec['n_params'] / 1e6:.2f}M params")
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


def table_from_metrics(table: str, metric_paths: Sequence[str | Path], paper_results: str | Path | None,
                       speedup: str | Path | None = None):
    """A long-format DataFrame: measured rows from metric JSONs (seeds merged), the speed-up benchmark,
    then the paper's reported rows."""
    from infdiff.report.tables import build_table, load_paper_results

    rows = aggregate_seeds([metric_row(table, p) for p in metric_paths])
    if speedup is not None:
        rows += speedup_rows(table, speedup)
    if paper_results is not None:
        rows += [r for r in load_paper_results(paper_results) if r.get("table") == table]
    return build_table(rows)
