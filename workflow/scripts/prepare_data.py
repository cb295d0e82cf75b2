"""Snakemake script: render / load one data split into an .npz (thin wrapper over infdiff.data)."""
import contextlib
import json

from infdiff.data import prepare

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    meta = prepare(sm.params.dataset, sm.wildcards.split, int(sm.wildcards.res), int(sm.params.n),
                   sm.output[0])
    print(json.dumps(meta, default=str, indent=2))
