"""Snakemake script: autoencoder reconstructions at several resolutions, scored against the exact truth.

Each image of the procedural dataset, rendered exactly at k x the training resolution, is encoded to z
(the encoder reads any resolution) and decoded with DDIM there, from its own DDIM encoding and from fresh
noise; PSNR/SSIM against the rendering it came from.
"""
import contextlib
import time

import numpy as np
import torch

from infdiff.conditional import reconstruct
from infdiff.data import to_float, to_uint8
from infdiff.evaluate import read_images
from infdiff.io import device_name, load_method, pick_device, write_json
from infdiff.metrics.pixel import psnr, ssim
from infdiff.provenance import provenance
from infdiff.report.figures import image_grid_figure

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    torch.set_num_threads(max(1, sm.threads))
    fig, opts = sm.params.fig, sm.params.sample
    n, steps, bs = fig["n"], opts["steps"], opts["batch_size"]
    dev = pick_device(sm.params.device)
    method, cfg = load_method(sm.input.checkpoint, dev, weights=sm.params.weights)
    R0, T_total = int(cfg["resolution"]), method.diffusion.num_timesteps
    seeds = list(range(opts["first_seed"], opts["first_seed"] + n))
    results, rows, row_labels, t_start = [], [], [], time.time()
    for factor, truth_file in zip(fig["factors"], sm.input.truth):
        truth_u8 = read_images(truth_file)[0][:n]
        R = truth_u8.shape[-1]
        for t_enc in fig["t_encodes"]:
            t0 = time.time()
            out = reconstruct(method, to_float(truth_u8), seeds, steps, t_enc, batch_size=bs)
            wall = time.time() - t0
            level = T_total - 1 if t_enc is None else t_enc
            for how, x in out.items():
                u8 = to_uint8(x)
                results.append({"factor": factor, "resolution": R, "t_encode": level, "decode_from": how,
                                "psnr": float(np.mean(psnr(u8, truth_u8))), "ssim": float(np.mean(ssim(u8, truth_u8))),
                                "n": len(u8), "wall_time": wall})
                print(f"{R} px, DDIM encoding t={level}, from {how}: PSNR {results[-1]['psnr']:.2f} dB, "
                      f"SSIM {results[-1]['ssim']:.3f} ({wall:.0f}s)")
            for i in range(min(n, 2)):
                rows.append([truth_u8[i], to_uint8(out["ddim"])[i], to_uint8(out["fresh"])[i]])
                row_labels.append(f"{R} px\nt = {level}")
    write_json(sm.output.metrics, {
        "figure": "reconstruction", "run": sm.params.run, "steps": steps, "sampler": "ddim", "n": n,
        "seeds": [seeds[0], seeds[-1]], "truth_files": list(map(str, sm.input.truth)), "results": results,
        "provenance": provenance(cfg, seeds=seeds, wall_time=time.time() - t_start,
                                 device=device_name(sm.params.device))})
    # procedural data has an exact image at every resolution; file data, its held-out image resized once
    exact = cfg["dataset"]["kind"] == "shapes"
    truth = ("exact truth", "Each image, rendered exactly at the row's resolution,") if exact else (
        "held-out image", "Each held-out image, resized from its file to the row's resolution when prepared,")
    scored = "; ".join(f"{r['resolution']} px, t = {r['t_encode']}, from {r['decode_from']}: {r['psnr']:.2f} dB"
                       for r in results)
    image_grid_figure(
        rows, sm.output.pdf, title=f"Autoencoder reconstructions (model trained at {R0} px)",
        col_labels=[truth[0], "DDIM encoding -> DDIM", "fresh noise -> DDIM"], row_labels=row_labels,
        caption=(f"{truth[1]} is encoded to z and decoded at that "
                 f"resolution with {steps} DDIM steps given z: from its own DDIM encoding at level t (Song et al. "
                 f"2021; of {T_total}) and from fresh noise (what z alone keeps). Mean PSNR over {n} images: "
                 f"{scored}."))
