"""Snakemake script: median training-step time per coordinate ratio, interleaved in one job."""
import contextlib

import torch

from infdiff.io import pick_device, write_json
from infdiff.provenance import provenance
from infdiff.step_timing import time_train_steps

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    torch.set_num_threads(max(1, sm.threads))
    spec, cfg = sm.params.spec, sm.params.cfg
    dev = pick_device(sm.params.device)
    rows = time_train_steps(cfg, [float(r) for r in spec["ratios"]], repeats=spec["repeats"],
                            warmup=spec["warmup"], device=str(dev))
    write_json(sm.output[0], {"rows": rows, "run": cfg["name"], "dataset": cfg["dataset"]["name"],
                              "provenance": provenance(cfg, device=str(dev), seeds=[0])})
    for r in rows:
        print(r)
