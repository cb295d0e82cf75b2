"""Snakemake script: feature statistics (mean, covariance, features) of one reference split, cached.

The split's stores (one, or for "full" train, val, ref and ref2) are memory maps: features are computed
batch by batch, store after store, so no image set is ever held in memory.
"""
import contextlib
import time

import numpy as np
import torch

from infdiff.data import load_prepared
from infdiff.io import pick_device
from infdiff.metrics import fid
from infdiff.provenance import provenance

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    torch.set_num_threads(max(1, sm.threads))
    w, m = sm.wildcards, sm.params.metrics
    expected = fid.configured_stats_key(sm.params.dataset, w.split, int(w.res), sm.params.n, w.extractor, m)
    if w.key != expected:  # a stale name: some input of the statistics changed since the DAG was built
        raise ValueError(f"reference statistics key {w.key} != {expected} expected from the current config")
    device = str(pick_device(sm.params.device))
    extractor = fid.load_extractor(w.extractor, m["weights"], device=device, clip_arch=m["clip_arch"])
    t0 = time.time()
    feats, stores = [], []
    for path in sm.input.images:
        images, report = load_prepared(path, with_meta=True)
        if images.shape[-1] != int(w.res):
            raise ValueError(f"{path} holds {images.shape[-1]} px images, not {w.res} px")
        feats.append(fid.features(images, extractor, batch_size=sm.params.batch_size, device=device, progress=True))
        stores.append({"file": str(path), "n": int(len(images)), "files_sha256": report["files_sha256"],
                       "counts": report["counts"]})
        print(f"{path}: {len(images)} images")
    feats = np.concatenate(feats)
    meta = {"dataset": w.dataset, "split": w.split, "resolution": int(w.res), "n": int(len(feats)),
            "extractor": extractor.name, "preprocessing": extractor.preprocessing, "key": w.key,
            "weights_file": extractor.weights_file, "images_files": [s["file"] for s in stores], "stores": stores,
            "provenance": provenance({"dataset": sm.params.dataset, "metrics": m}, wall_time=time.time() - t0,
                                     device=device)}
    fid.save_reference_stats(sm.output[0], feats, meta)
    print(f"{len(feats)} images -> {feats.shape[1]}-d {extractor.name} features in {time.time() - t0:.1f}s")
