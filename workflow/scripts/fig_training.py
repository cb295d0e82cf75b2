"""Snakemake script: training loss curves of every run from its stats.jsonl."""
import contextlib
import json

import numpy as np

from infdiff.report.figures import curves_figure, ema

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    panels = []
    for run, path in zip(sm.params.runs, sm.input.stats):
        recs = [json.loads(line) for line in open(path) if line.strip()]
        recs = [r for r in recs if "loss" in r and "step" in r]
        step = np.array([r["step"] for r in recs], float)
        loss = np.array([r["loss"] for r in recs], float)
        panels.append({"title": run, "xlabel": "training step", "ylabel": "training loss", "xscale": "linear",
                       "yscale": "log", "lines": [
                           {"label": "logged", "x": step, "y": loss, "style": "-", "alpha": 0.3},
                           # window ~1/25 of the run whatever log_every is (a longer one lags the fast early drop)
                           {"label": "EMA", "x": step, "y": ema(loss, decay=max(0.0, 1 - 25 / len(loss))),
                            "style": "-"}]})
        print(f"{run}: {len(recs)} points, final loss {loss[-1]:.4f}")
    curves_figure(panels, sm.output[0], title="Training loss of every run",
                  caption=("Loss logged every train.log_every steps (each method's own objective, so levels are not "
                           "comparable across methods), with a bias-corrected exponential moving average."))
    print(f"wrote {sm.output[0]}")
