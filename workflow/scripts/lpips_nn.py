"""Snakemake script: the nearest training images of a run's first samples by LPIPS (paper Figs. 13-15)."""
import contextlib
import time

import torch

from infdiff.evaluate import read_images
from infdiff.metrics.lpips_nn import load_lpips, nearest_neighbours, save_neighbours
from infdiff.io import pick_device
from infdiff.provenance import provenance

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    torch.set_num_threads(max(1, sm.threads))
    s = sm.params.settings
    device = str(pick_device(sm.params.device))
    samples, seeds, _ = read_images(sm.input.samples)
    train, _, _ = read_images(sm.input.train)
    samples, seeds = samples[: s["n"]], seeds[: s["n"]]
    t0 = time.time()
    net = load_lpips(sm.params.metrics["weights"], device=device)
    result = nearest_neighbours(samples, train, k=s["k"], distance="lpips", lpips_net=net,
                                prefilter=s["prefilter"], embed_res=s["embed_res"], device=device, progress=True)
    meta = {"run": sm.wildcards.run, "seeds": [int(x) for x in seeds], "samples_file": str(sm.input.samples),
            "train_file": str(sm.input.train), "settings": s,
            "provenance": provenance(s, wall_time=time.time() - t0, device=device)}
    save_neighbours(sm.output.npz, sm.output.grid, samples, train, result, meta)
    print(f"{len(samples)} samples x {len(train)} training images, k={s['k']}, in {time.time() - t0:.1f}s")
