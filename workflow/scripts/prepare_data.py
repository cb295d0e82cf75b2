"""Snakemake script: render / decode one data split into a prepared store (.npy + JSON report), infdiff.data."""
import contextlib
import json
from pathlib import Path

from infdiff.data import prepare, report_path

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    if Path(sm.output.report) != report_path(sm.output.npy):
        raise ValueError(f"rule prepare_data: the report must be {report_path(sm.output.npy)}, not {sm.output.report}")
    n = sm.params.n  # None: the whole split of a folder/lmdb dataset
    meta = prepare(sm.params.dataset, sm.wildcards.split, int(sm.wildcards.res), None if n is None else int(n),
                   sm.output.npy, workers=sm.threads, progress=True)
    print(json.dumps({k: v for k, v in meta.items() if k != "skipped"}, default=str, indent=2))
    for s in meta["skipped"]:
        print(f"skipped {s['name']}: {s['error']}")
