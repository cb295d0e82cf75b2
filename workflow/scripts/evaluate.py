"""Snakemake script: score one sample set against the reference split and record provenance."""
import contextlib
import json
from pathlib import Path

from infdiff.evaluate import evaluate_files
from infdiff.io import pick_device

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    w = sm.wildcards
    run_info = sm.input.get("run_info")  # the trained run's config.json (parameter count), if any
    n_params = json.loads(Path(run_info).read_text()).get("n_params") if run_info else None
    result = evaluate_files(
        metric=w.metric, samples=sm.input.samples, ref=sm.input.ref, out=sm.output[0],
        settings=sm.params.evaluate, run=w.get("run", f"_{sm.params.kind}"), run_cfg=sm.params.run_cfg,
        resolution=int(w.res), steps=int(w.get("steps", 0)), kind=sm.params.kind,
        device=str(pick_device(sm.params.device)), dataset=w.get("dataset"), n_params=n_params,
        metrics_cfg=sm.params.metrics, history=sm.params.history)
    print(json.dumps({k: result[k] for k in ("metric", "run", "resolution", "value", "ci_low", "ci_high")}))
