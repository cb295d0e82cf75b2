"""From sample files to metric records, with provenance on every number (docs/architecture.md, "Results and provenance").

A metric JSON is the unit the tables and the regression check read. It holds the value and
everything needed to trust or reproduce it: metric settings, n_samples, the seed range, steps,
resolution, run, config sha256, git commit + dirty flag, package versions, device and wall time.
Turning records into labelled table rows is :mod:`infdiff.report.rows`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from infdiff.io import write_json
from infdiff.metrics import FEATURE_METRICS, PAIRED_METRICS
from infdiff.provenance import provenance
from infdiff.report.rows import describe_variant

# Metrics with one number per sample set; fid, fid_clip and kid embed images with a pretrained network.
# The paired metrics (consistency) compare a run's samples with its own training-resolution samples.
KNOWN_METRICS = ("swd", *FEATURE_METRICS, *PAIRED_METRICS)


def read_images(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(uint8 images [N, 3, R, R], seeds or None, meta dict) from a samples.npz or a prepared data split.

    A prepared split (.npy) comes as a read-only memory map with its report as meta and no seeds.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".npy":
        from infdiff.data import load_prepared

        images, meta = load_prepared(path, with_meta=True)
        return images, None, meta
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            return z["images"], (z["seeds"] if "seeds" in z.files else None), meta
    except Exception as e:
        raise RuntimeError(f"{path} is not a readable images .npz ({type(e).__name__}: {e})") from e


def compute_metric(metric: str, samples: np.ndarray, ref, settings: dict, workers: int = 1,
                   metrics_cfg: dict | None = None, device: str = "cpu", seeds=None, ref_seeds=None) -> dict:
    """{'value', 'levels', 'ci_low', 'ci_high', 'n_boot', 'n_ref', 'settings'} of ``metric``.

    Args:
        samples: uint8 images ``[N, 3, R, R]``.
        ref: uint8 reference images ``[M, 3, R, R]`` (swd), or for the feature metrics (fid, fid_clip,
            kid) either reference images or a reference-statistics dict from
            :func:`infdiff.metrics.fid.load_reference_stats`; for ``consistency`` the same run's samples
            ``[M, 3, R_train, R_train]`` at its training resolution (R = k R_train).
        settings: the config's ``evaluate`` section (per-metric settings under the metric's name).
        metrics_cfg: the config's ``metrics`` section (weight files, CLIP architecture).
        seeds, ref_seeds: ``[N]`` and ``[M]`` seeds of ``samples`` and ``ref`` (``consistency`` only: it
            compares each seed with itself).

    SWD's interval is a 95% bootstrap over the *samples* (the reference set stays fixed), see
    :func:`infdiff.metrics.swd.swd_bootstrap`; ``n_boot`` 0 skips it (ci_low/ci_high NaN). The feature
    metrics have no interval (NaN): at the paper's 30k-50k samples their sampling error is far below the
    differences between methods, and a bootstrap would need as many feature passes. ``consistency``'s
    interval is a 95% bootstrap over the matched seeds, its ``n_ref`` the number of matched seeds, and
    its record also holds the per-seed ``seeds`` and ``psnr`` (:func:`infdiff.metrics.consistency.consistency`).
    """
    s = settings[metric]
    if metric in PAIRED_METRICS:
        from infdiff.metrics.consistency import consistency

        if seeds is None or ref_seeds is None:
            raise ValueError(f"{metric} matches samples by seed: both sample sets need their seeds")
        out = consistency(samples, seeds, ref, ref_seeds, seed=s["seed"], n_boot=s["n_boot"], max_db=s["max_db"])
        if out["n_ref"] < s["min_samples"]:
            raise ValueError(f"{metric}: {out['n_ref']} seeds in both sample sets is fewer than "
                             f"evaluate.{metric}.min_samples = {s['min_samples']}; sample more (sample.n_samples)")
        return {**out, "settings": {**s, **out["settings"]}}
    if len(samples) < s["min_samples"]:
        raise ValueError(f"{metric}: {len(samples)} samples is fewer than evaluate.{metric}.min_samples = "
                         f"{s['min_samples']}; sample more (sample.n_samples) or lower the minimum knowingly")
    if metric == "swd":
        from infdiff.metrics.swd import swd_bootstrap

        out = swd_bootstrap(samples, ref, seed=s["seed"], n_boot=s["n_boot"], min_res=s["min_res"],
                            patches_per_image=s["patches_per_image"], directions=s["directions"], workers=workers)
        return {"value": float(out["avg"]), "levels": {str(k): float(v) for k, v in out["levels"].items()},
                "ci_low": out["ci_low"], "ci_high": out["ci_high"], "n_boot": out["n_boot"],
                "n_ref": int(len(ref)), "settings": s}
    if metric in FEATURE_METRICS:
        from infdiff.metrics import fid

        if metrics_cfg is None:
            raise ValueError(f"{metric} needs the config's `metrics` section (weight files, CLIP architecture)")
        extractor = fid.load_extractor(fid.EXTRACTOR_OF[metric], metrics_cfg["weights"], device=device,
                                       clip_arch=metrics_cfg["clip_arch"])
        if not isinstance(ref, dict):  # reference images given directly (CLI): embed them here
            feats = fid.features(ref, extractor, batch_size=s["batch_size"], device=device)
            ref = {"mu": None, "sigma": None, "feats": feats, "meta": {}}
            ref["mu"], ref["sigma"] = fid.gaussian_stats(feats)
        out = fid.score(metric, samples, ref, extractor, s, device=device)
        return {"value": float(out["value"]), "levels": {}, "ci_low": float("nan"), "ci_high": float("nan"),
                "n_boot": 0, "n_ref": int(out["n_ref"]),
                "settings": {**s, **out.get("settings", {}), "extractor": extractor.name,
                             "preprocessing": extractor.preprocessing}}
    raise ValueError(f"unknown metric '{metric}' (known: {', '.join(KNOWN_METRICS)})")


def metric_device(metric: str, requested: str = "auto") -> str:
    """The device ``metric`` is computed on: for the feature metrics, which embed images with a network,
    the ``requested`` one resolved (``auto`` -> cuda when available, :func:`infdiff.io.pick_device`);
    ``cpu`` for swd and consistency, which compute in numpy and so never import torch (a job scoring
    them starts in a fraction of a second instead of the seconds torch's import takes)."""
    if metric not in FEATURE_METRICS:
        return "cpu"
    from infdiff.io import pick_device

    return str(pick_device(requested))


def _finite_or_none(v) -> float | None:
    """float(v), or None for a missing or non-finite number (strict JSON cannot hold NaN)."""
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else None


def evaluate_files(metric: str, samples: str | Path, ref: str | Path, out: str | Path, settings: dict,
                   run: str, run_cfg: dict | None, resolution: int, steps: int, kind: str = "samples",
                   device: str = "cpu", dataset: str | None = None, n_params: int | None = None,
                   metrics_cfg: dict | None = None, history: str | Path | None = None,
                   stage2: dict | None = None, first: int | None = None) -> dict:
    """Score ``samples`` against ``ref`` and write the metric JSON ``out`` atomically; return it.

    ``ref`` is reference images (a prepared split .npy or an images .npz), or for fid/fid_clip/kid a
    reference-statistics .npz (rule ``reference_stats``), or for ``consistency`` the run's samples.npz
    at its training resolution (rule ``evaluate_consistency``; seeds matched, see
    :mod:`infdiff.metrics.consistency`). ``resized_from`` (samples of a grid model drawn at its training
    resolution and resized) is taken from the samples' metadata, so that every table labels such rows. With ``history`` the record is also appended to that
    JSON-lines file (the regression history across commits).
    ``stage2``: the summary of an autoencoder run's latent model (rule ``train_latent``), recorded beside
    the stage-1 budget (which is what ``train_images`` counts).
    ``first``: score only the first ``first`` samples, those of the lowest seeds (a table scoring fewer
    than the set holds: sample i depends on its seed only, so they are exactly a set of that size); the
    record's ``n_drawn`` then says how many the set held.
    """
    images, seeds, meta = read_images(samples)
    n_drawn = None
    if first is not None:
        if first > len(images):
            raise ValueError(f"{samples} holds {len(images)} samples; cannot score the first {first}")
        n_drawn = int(len(images))
        keep = np.sort(np.argsort(seeds, kind="stable")[:first]) if seeds is not None else np.arange(first)
        images, seeds = images[keep], (seeds[keep] if seeds is not None else None)
    if images.shape[-1] != resolution:
        raise ValueError(f"samples are {images.shape[-1]} px but the metric is at {resolution} px")
    ref_seeds = None
    if metric in PAIRED_METRICS:
        ref_data, ref_seeds = _read_paired_reference(metric, samples, seeds, meta, ref, kind, run_cfg)
    else:
        ref_data = _read_reference(ref, metric)
        ref_res = ref_data["meta"].get("resolution") if isinstance(ref_data, dict) else ref_data.shape[-1]
        if ref_res is not None and int(ref_res) != resolution:
            raise ValueError(f"reference is {ref_res} px but the metric is at {resolution} px")
    if kind != "samples":
        # the minimum sample count guards reported method numbers; the noise and real-vs-real rows only
        # place them on a scale (a held-out split may well be smaller than the paper's 50k samples)
        settings = {**settings, metric: {**settings[metric], "min_samples": 1}}
    t0 = time.time()
    result = compute_metric(metric, images, ref_data, settings, metrics_cfg=metrics_cfg, device=device,
                            seeds=seeds, ref_seeds=ref_seeds)
    wall = time.time() - t0
    scored = seeds
    if "seeds" in result:  # a paired metric: only the seeds present in both sets were scored
        scored = result["seeds"]
    record = {
        "metric": metric, "value": result["value"], "levels": result["levels"],
        # JSON has no NaN: a missing interval (n_boot 0) is written as null.
        "ci_low": _finite_or_none(result.get("ci_low")), "ci_high": _finite_or_none(result.get("ci_high")),
        "n_boot": int(result["n_boot"]), "kind": kind,
        # the noise and floor rows have no run: their "method" is their kind
        "run": run, "method": run_cfg["method"] if run_cfg else kind,
        "dataset": dataset or (run_cfg["dataset"]["name"] if run_cfg else None),
        "train_steps": run_cfg["train"]["steps"] if run_cfg else None,
        "train_images": run_cfg["train"]["steps"] * run_cfg["train"]["batch_size"] if run_cfg else None,
        "train_resolution": run_cfg["resolution"] if run_cfg else None,
        "n_params": n_params,
        "latent_steps": stage2["steps"] if stage2 else None,
        "latent_wall_time": stage2["encode_wall_time"] + stage2["train_wall_time"] if stage2 else None,
        "resized_from": meta.get("resized_from"),
        "weights": meta.get("weights"),     # which EMA weights were scored (sample.checkpoint), at which step
        "sampling_precision": (meta.get("provenance") or {}).get("precision"),
        "variant": describe_variant(run_cfg), "seed": run_cfg["seed"] if run_cfg else None,
        "resolution": resolution, "steps": steps,
        "n_samples": int(images.shape[0]) if scored is None else int(len(scored)),
        "n_drawn": n_drawn,   # the sample set's size when only its first n_samples were scored, else null
        "n_ref": result["n_ref"],
        "seed_range": [int(scored.min()), int(scored.max())] if scored is not None and len(scored) else None,
        "samples_file": str(samples), "ref_file": str(ref), "settings": result["settings"],
        "provenance": provenance(run_cfg, wall_time=wall, device=device),
    }
    if "psnr" in result:  # per-seed values of a paired metric (a few hundred numbers at most)
        record["per_seed"] = {str(int(s)): float(v) for s, v in zip(result["seeds"], result["psnr"])}
    write_json(out, record)
    if history is not None:
        from infdiff.history import append_history, history_record

        append_history(history, history_record(record))
    return record


def _read_paired_reference(metric: str, samples, seeds, meta: dict, ref, kind: str, run_cfg: dict | None):
    """(images, seeds) of the run's own samples that a paired metric compares ``samples`` with.

    Refused, with the reason: the noise and floor rows, samples without seeds, and samples of a method
    that cannot sample at other resolutions (a resize compared with its source says nothing about the model).
    """
    from infdiff.methods import method_spec

    if kind != "samples" or run_cfg is None:
        raise ValueError(f"{metric} compares a run's samples with its own training-resolution samples; "
                         f"{kind} rows have none")
    if not method_spec(run_cfg["method"]).any_resolution:
        raise ValueError(f"{metric}: run {run_cfg['name']!r} uses method {run_cfg['method']!r}, which samples "
                         "only at its training resolution (its other rows are resizes)")
    ref_images, ref_seeds, ref_meta = read_images(ref)
    for path, s, m in ((samples, seeds, meta), (ref, ref_seeds, ref_meta)):
        if s is None:
            raise ValueError(f"{path} has no seeds: {metric} matches images by seed")
        if m.get("resized_from"):
            raise ValueError(f"{path} holds samples resized from {m['resized_from']} px, not drawn at their "
                             f"resolution: {metric} needs samples of a model that samples any resolution")
    if ref_images.shape[-1] != run_cfg["resolution"]:
        raise ValueError(f"{ref} is {ref_images.shape[-1]} px, but {metric} compares with the training "
                         f"resolution {run_cfg['resolution']} px")
    return ref_images, ref_seeds


def _read_reference(path: str | Path, metric: str):
    """Reference images ``[M, 3, R, R]`` uint8, or (feature metrics) a reference-statistics dict."""
    if metric in FEATURE_METRICS and Path(path).suffix != ".npy":  # not a prepared split
        with np.load(Path(path)) as z:
            is_stats = "mu" in z.files
        if is_stats:
            from infdiff.metrics.fid import load_reference_stats

            return load_reference_stats(path)
    return read_images(path)[0]
