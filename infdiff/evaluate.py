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

from infdiff.provenance import provenance, write_json_atomic

# Display names of the method families in tables.
METHOD_NAMES = {"infdiff": "∞-Diff", "mlp_pixel": "MLP pixel diffusion", "simple_diffusion": "simple diffusion U-ViT"}
KNOWN_METRICS = ("swd",)


def _read(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 images [N, 3, R, R], seeds or None) from a samples.npz or a prepared data split."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with np.load(path) as z:
            return z["images"], (z["seeds"] if "seeds" in z.files else None)
    except Exception as e:
        raise RuntimeError(f"{path} is not a readable images .npz ({type(e).__name__}: {e})") from e


def compute_metric(metric: str, samples: np.ndarray, ref: np.ndarray, settings: dict) -> dict:
    """{'value': float, 'levels': {...}} of ``metric`` between two uint8 image sets."""
    if metric == "swd":
        from infdiff.metrics.swd import swd

        s = settings.get("swd", {})
        out = swd(samples, ref, seed=s.get("seed", 0), min_res=s.get("min_res", 16),
                  patches_per_image=s.get("patches_per_image", 128), directions=s.get("directions", 512))
        return {"value": float(out["avg"]), "levels": {str(k): float(v) for k, v in out["levels"].items()},
                "settings": s}
    raise ValueError(f"unknown metric '{metric}' (known: {', '.join(KNOWN_METRICS)})")


def evaluate_files(metric: str, samples: str | Path, ref: str | Path, out: str | Path, settings: dict,
                   run: str, run_cfg: dict | None, resolution: int, steps: int, kind: str = "samples",
                   device: str = "cpu", dataset: str | None = None) -> dict:
    """Score ``samples`` against ``ref`` and write the metric JSON ``out`` atomically; return it."""
    images, seeds = _read(samples)
    ref_images, _ = _read(ref)
    for name, arr in (("samples", images), ("reference", ref_images)):
        if arr.shape[-1] != resolution:
            raise ValueError(f"{name} are {arr.shape[-1]} px but the metric is at {resolution} px")
    t0 = time.time()
    result = compute_metric(metric, images, ref_images, settings)
    wall = time.time() - t0
    record = {
        "metric": metric, "value": result["value"], "levels": result["levels"], "kind": kind,
        "run": run, "method": (run_cfg or {}).get("method", kind),
        "dataset": dataset or ((run_cfg or {}).get("dataset") or {}).get("name"),
        "train_steps": ((run_cfg or {}).get("train") or {}).get("steps"),
        "resolution": resolution, "steps": steps, "n_samples": int(images.shape[0]),
        "n_ref": int(ref_images.shape[0]),
        "seed_range": [int(seeds.min()), int(seeds.max())] if seeds is not None and len(seeds) else None,
        "samples_file": str(samples), "ref_file": str(ref), "settings": result["settings"],
        "provenance": provenance(run_cfg, wall_time=wall, device=device),
    }
    write_json_atomic(out, record)
    return record


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
        note = f"{rec.get('train_steps')} training steps" if rec.get("train_steps") is not None else ""
    return {"table": table, "method": method, "run": rec["run"], "dataset": rec.get("dataset"),
            "resolution": rec["resolution"], "metric": rec["metric"], "value": rec["value"],
            "n_samples": rec["n_samples"], "steps": rec["steps"], "source": "measured",
            "commit": commit, "note": note}


def table_from_metrics(table: str, metric_paths: Sequence[str | Path], paper_results: str | Path | None):
    """A long-format DataFrame: measured rows from metric JSONs, then the paper's reported rows."""
    from infdiff.report.tables import build_table, load_paper_results

    rows = [metric_row(table, p) for p in metric_paths]
    if paper_results is not None:
        rows += [r for r in load_paper_results(paper_results) if r.get("table") == table]
    return build_table(rows)
