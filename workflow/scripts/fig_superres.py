"""Snakemake script: Fig. 8, super-resolution scored against the exact truth (file data: the held-out image).

Every run: bicubic and SDEdit. An autoencoder run also: the paper's (encode the low-resolution image,
sample at the high resolution given z) and z plus the low-resolution DDIM encoding carried up.
"""
import contextlib
import time

import numpy as np
import torch

from infdiff.conditional import downsample, sdedit_steps, superresolve, superresolve_encoded, upsample
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
    low, high, n, t_s, t_enc = fig["low"], fig["high"], fig["n"], fig["t_start"], fig["t_encode"]
    dev = pick_device(sm.params.device)
    method, cfg = load_method(sm.input.checkpoint, dev, weights=sm.params.weights)
    truth_u8, _, meta = read_images(sm.input.truth)
    truth_u8 = truth_u8[:n]
    truth = to_float(truth_u8)                                       # [n, 3, high, high]
    x_low = downsample(truth, low)                                   # what an image of `low` pixels records
    T_total = method.diffusion.num_timesteps
    sd_steps = sdedit_steps(opts["steps"], t_s, T_total)
    seeds = list(range(opts["first_seed"], opts["first_seed"] + n))
    bs = opts["batch_size"]
    outputs, walls = {"bicubic": upsample(x_low, high)}, {}
    # an autoencoder run conditions every reverse process on the low-resolution image's z
    z = method.encode(x_low, seeds, batch_size=bs) if method.conditional else None
    t0 = time.time()
    outputs["sdedit"] = superresolve(method, x_low, seeds, high, t_s, sd_steps, batch_size=bs, cond=z)
    walls["sdedit"] = time.time() - t0
    if method.conditional:
        t0 = time.time()
        outputs.update(superresolve_encoded(method, x_low, seeds, high, opts["steps"], t_enc, batch_size=bs))
        walls["z, z+ddim"] = time.time() - t0
    u8 = {k: to_uint8(v) for k, v in outputs.items()}
    scores = {k: {"psnr": psnr(v, truth_u8), "ssim": ssim(v, truth_u8)} for k, v in u8.items()}
    summary = {k: {m: float(np.mean(v[m])) for m in v} for k, v in scores.items()}
    enc_level = f"t = {t_enc}" if t_enc is not None else f"t = {T_total - 1}"
    labels = {"bicubic": "bicubic", "sdedit": "SDEdit" + (" + z" if method.conditional else ""),
              "z": "z only (paper)", "z+ddim": f"z + DDIM encoding ({enc_level})"}
    record = {"figure": "fig08-superres", "framework": "autoencoder" if method.conditional else "unconditional",
              "methods": {k: labels[k] for k in outputs}, "low": low, "high": high, "t_start": t_s,
              "sdedit_steps": sd_steps, "steps": opts["steps"], "t_encode": t_enc, "n": n,
              "seeds": [seeds[0], seeds[-1]], "truth_file": str(sm.input.truth), "mean": summary,
              "per_image": {k: {m: [float(x) for x in v[m]] for m in v} for k, v in scores.items()},
              "wall_time": walls,
              "provenance": provenance(cfg, seeds=seeds, wall_time=sum(walls.values()),
                                       device=device_name(sm.params.device))}
    write_json(sm.output.metrics, record)
    shown = min(n, 6)
    keys = list(outputs)
    rows = [[to_uint8(x_low)[i], *(u8[k][i] for k in keys), truth_u8[i]] for i in range(shown)]
    scored = "; ".join(f"{labels[k]} {summary[k]['psnr']:.2f} dB / {summary[k]['ssim']:.3f}" for k in keys)
    how = (f"SDEdit noises the bicubic upsampling to t_s = {t_s} of {T_total} (Eq. 11) and denoises it at {high} px "
           f"with {sd_steps} DDPM steps.")
    if method.conditional:
        how += (f" The autoencoder encodes the {low} px input to z (the encoder reads any resolution); 'z only' "
                f"samples at {high} px from fresh noise given z with {opts['steps']} DDIM steps (the paper's Fig. 8); "
                f"'z + DDIM encoding' carries the input's {low} px DDIM encoding ({enc_level}) to {high} px "
                "(DCT band-limited interpolation) and decodes it there given z. SDEdit is given z too.")
    else:
        how += " This run has no autoencoder: the paper's encoder-based super-resolution needs framework: autoencoder."
    # procedural data has an exact image at every resolution; file data, its held-out image resized once
    exact = cfg["dataset"]["kind"] == "shapes"
    truth = (f"exact truth ({high} px)", f"the exact {high} px image",
             f"the procedural dataset rendered exactly at {high} px") if exact else (
        f"held-out image ({high} px)", f"the held-out {high} px image",
        f"the held-out images, resized from their files to {high} px when prepared")
    image_grid_figure(
        rows, sm.output.pdf, title=f"Super-resolution {low} → {high} px (model trained at {cfg['resolution']} px)",
        col_labels=[f"input ({low} px)", *(labels[k] for k in keys), truth[0]],
        col_group_gaps=[1, len(keys) + 1],
        caption=(f"Input: {truth[1]} area-averaged to {low} px. {how} Mean PSNR / SSIM over {n} "
                 f"images against {truth[2]}: {scored}."))
    print(f"{n} images: {summary}; wall {walls}")
