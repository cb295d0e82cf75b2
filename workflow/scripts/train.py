"""Snakemake script: train one named run (resumes from <run>/state/<config sha>/latest.pt after a kill).

A job given more than one GPU (resources: gpu > 1, set by the profile) trains data-parallel: torchrun
starts one process per GPU (infdiff/distributed.py). The weights do not depend on that number.
"""
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from infdiff.io import write_json
from infdiff.train import train

sm = snakemake  # noqa: F821  (injected by Snakemake)
out = Path(sm.output.checkpoint).parent
val = sm.input.get("val")
gpus = int(sm.resources.get("gpu", 0) or 0)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    if gpus > 1:
        run_config = out / "torchrun-config.json"       # the processes read the run config from here
        write_json(run_config, sm.params.cfg)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "infdiff.__main__", "train", "--run-config", str(run_config), "--data", sm.input.train, "--out", str(out),
               "--device", sm.params.device] + (["--val-data", val] if val else [])
        print("data-parallel training:", " ".join(cmd), flush=True)
        try:
            rc = subprocess.call(cmd, stdout=log, stderr=log)
        finally:
            run_config.unlink(missing_ok=True)
        if rc:
            raise SystemExit(f"torchrun exited with status {rc} (143 = pre-empted: the checkpoint was written, "
                             "run again to resume)")
    else:
        torch.set_num_threads(max(1, sm.threads))
        summary = train(sm.params.cfg, sm.input.train, out, device=sm.params.device, val_data=val)
        print(json.dumps(summary, indent=2))
