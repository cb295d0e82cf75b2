"""Snakemake script: train one named run (resumes from <run>/state/<config sha>/latest.pt after a kill)."""
import contextlib
import json
from pathlib import Path

import torch

from infdiff.data import load_prepared
from infdiff.train import train

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    torch.set_num_threads(max(1, sm.threads))
    summary = train(sm.params.cfg, load_prepared(sm.input[0]), Path(sm.output.checkpoint).parent,
                    device=sm.params.device)
    print(json.dumps(summary, indent=2))
