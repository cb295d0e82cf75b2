"""Snakemake script: score one sample set against the reference split and record provenance."""
import contextlib
import json
from pathlib import Path

from infdiff.evaluate import evaluate_files, metric_device

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    w, p = sm.wildcards, sm.params
    # the trained run's config.json holds its parameter count; the noise and floor rows have no run
    n_params = json.loads(Path(sm.input.run_info).read_text())["n_params"] if p.kind == "samples" else None
    # an autoencoder run's stage 2 (latent model): its steps and time are recorded beside the stage-1 budget
    stage2 = json.loads(Path(sm.input.stage2[0]).read_text()) if p.kind == "samples" and sm.input.stage2 else None
    result = evaluate_files(
        metric=w.metric, samples=sm.input.samples, ref=sm.input.ref, out=sm.output[0],
        settings=p.evaluate, run=p.run, run_cfg=p.run_cfg, resolution=int(w.res), steps=p.steps,
        kind=p.kind, device=metric_device(w.metric, p.device), dataset=p.dataset, n_params=n_params,
        metrics_cfg=p.metrics, history=p.history, stage2=stage2,
        first=p.first)
    print(json.dumps({k: result[k] for k in ("metric", "run", "resolution", "value", "ci_low", "ci_high")}))
