"""Snakemake script: Fig. 7, sample quality against the number of sampling steps at several resolutions."""
import contextlib
import json

import numpy as np

from infdiff.report.figures import curves_figure

LABEL = {"swd": "SWD ×10³", "fid": "FID", "fid_clip": "FID_CLIP", "kid": "KID"}

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    fig = sm.params.fig
    recs = [json.loads(open(p).read()) for p in sm.input.metrics]
    lines = []
    for res in fig["resolutions"]:
        rs = sorted((r for r in recs if r["resolution"] == res), key=lambda r: r["steps"])
        val = lambda k: np.array([np.nan if r.get(k) is None else r[k] for r in rs], float)  # noqa: E731
        lines.append({"label": f"{res} px (N={rs[0]['n_samples']})", "x": val("steps"), "y": val("value"),
                      "ylow": val("ci_low"), "yhigh": val("ci_high"), "style": "-o"})
        for r in rs:
            print(f"{res:4d} px {r['steps']:4d} steps: {r['value']:.2f} [{r.get('ci_low')}, {r.get('ci_high')}]")
    metric = LABEL[fig["metric"]]
    curves_figure(
        [{"title": f"{metric} against sampling steps", "xlabel": f"sampling steps ({sm.params.sampler.upper()}, "
          "respaced)", "ylabel": f"{metric} (lower is better)", "xscale": "log", "yscale": "linear",
          "xticks": fig["steps"], "lines": lines}],
        sm.output[0], title=f"Sampling steps vs quality, one model at {len(fig['resolutions'])} resolutions",
        caption=("Each point scores a fresh sample set (same seeds) drawn with that many steps of the respaced chain; "
                 "bars are 95% bootstrap intervals over samples where the metric has one."))
    print(f"wrote {sm.output[0]}")
