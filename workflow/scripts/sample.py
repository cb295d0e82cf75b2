"""Snakemake script: sample one run at one resolution (EMA weights, per-sample seeds)."""
import contextlib
import json

import torch

from infdiff.io import checkpoint_weights, device_name, load_checkpoint
from infdiff.provenance import provenance
from infdiff.sample import resize_sample_set, sample_checkpoint, save_samples, timed

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    torch.set_num_threads(max(1, sm.threads))
    opts = sm.params.sample
    res, steps = int(sm.wildcards.res), int(sm.wildcards.steps)
    seeds = list(range(opts["first_seed"], opts["first_seed"] + int(sm.params.n)))
    native = sm.input.get("native")         # a grid model above its training resolution: resize, not resample
    if native:
        drawn, wall = timed(resize_sample_set, native, res, seeds)
    else:
        drawn, wall = timed(sample_checkpoint, sm.input.checkpoint, res, seeds, steps,
                            sampler=opts["sampler"], eta=opts["eta"], batch_size=opts["batch_size"],
                            device=sm.params.device, latent=sm.input.get("latent"), weights=opts["checkpoint"])
    ckpt = load_checkpoint(sm.input.checkpoint)
    cfg = json.loads(ckpt["config_json"])
    # resized_from: a grid model sampled at its training resolution and resized (labelled in tables)
    meta = {"run": sm.wildcards.run, "resolution": res, "steps": steps, "sampler": opts["sampler"],
            "resized_from": drawn.resized_from, "resized_set": native,
            # which EMA weights drew them (last, or best by validation loss), at which step
            "weights": checkpoint_weights(ckpt, opts["checkpoint"], sm.input.checkpoint)[1],
            "provenance": provenance(cfg, seeds=seeds, wall_time=wall, device=device_name(sm.params.device),
                                     precision=drawn.precision)}
    save_samples(drawn.images, seeds, sm.output.npz, sm.output.grid, meta=meta)
    how = (f" (resized from the {drawn.resized_from}px set {native})" if native else
           f" (sampled at {drawn.resized_from}px, resized)" if drawn.resized_from else "")
    print(f"{len(seeds)} samples at {res}px{how} in {wall:.1f}s, {drawn.precision}")
