"""Snakemake script: stage 2 of an autoencoder run (encode the training set, train the latent DDPM)."""
import contextlib
import json
from pathlib import Path

import torch

from infdiff.data import load_prepared
from infdiff.io import write_json
from infdiff.train_latent import train_latent

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    torch.set_num_threads(max(1, sm.threads))
    summary = train_latent(sm.input.checkpoint, sm.params.cfg, load_prepared(sm.input.data),
                           Path(sm.output.latent).parent, device=sm.params.device, weights=sm.params.weights)
    write_json(sm.output.summary, summary)
    print(json.dumps(summary, indent=2))
