"""Snakemake script: Fig. 9, inpainting by reconstruction guidance from two start steps."""
import contextlib
import time

import torch

from infdiff.conditional import centre_mask, inpaint, sdedit_steps
from infdiff.data import to_float, to_uint8
from infdiff.evaluate import read_images
from infdiff.report.figures import image_grid_figure
from infdiff.io import load_method, pick_device

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    torch.set_num_threads(max(1, sm.threads))
    fig, opts = sm.params.fig, sm.params.sample
    n, R, lam = fig["n"], fig["resolution"], fig["guidance_scale"]
    dev = pick_device(sm.params.device)
    method, cfg = load_method(sm.input.checkpoint, dev, weights=sm.params.weights)
    images, _, _ = read_images(sm.input.images)
    x_bar = to_float(images[:n])
    mask = centre_mask(n, R, fig["mask_frac"])
    seeds = list(range(opts["first_seed"], opts["first_seed"] + n))
    shown_input = to_uint8(x_bar * mask + (1 - mask) * 0.0)          # the hole shown as mid grey
    columns, labels = [images[:n], shown_input], ["original", "masked input"]
    T_total = method.diffusion.num_timesteps
    for t_s in fig["t_starts"]:
        steps = sdedit_steps(opts["steps"], t_s, T_total)
        t0 = time.time()
        out = inpaint(method, x_bar, mask, seeds, t_s, steps, lam, batch_size=opts["batch_size"])
        err = ((mask * (out - x_bar)) ** 2).sum() / mask.sum() / 3
        moved = (((1 - mask) * (out - x_bar)) ** 2).sum() / (1 - mask).sum() / 3
        print(f"t_s={t_s}: {steps} steps, {time.time() - t0:.1f}s, known-region MSE {err:.4f}, hole MSE to the "
              f"original {moved:.4f}")
        columns.append(to_uint8(out))
        labels.append(f"t_s = {t_s} ({steps} steps); hole moved: MSE {moved:.3f}")
    rows = [[col[i] for col in columns] for i in range(n)]
    image_grid_figure(
        rows, sm.output[0], title=f"Inpainting by reconstruction guidance ({R} px, model trained at {cfg['resolution']} px)",
        col_labels=labels, col_group_gaps=[2],
        caption=((f"Autoencoder run: the original's DDIM encoding at t_s of {T_total}, given the z of its known "
                  "pixels only, is denoised with DDPM (paper Sec. 5: the reverse process applied to encodings "
                  "from a chosen t_s); after every step " if method.conditional else
                  f"The original is noised to t_s of {T_total} (Eq. 11) and denoised with DDPM; after every step ") +
                 f"x_(t-1) <- x_(t-1) - λ ∇_(x_t) ||m ⊙ (μ_0(x_t, t) - T x̄)||², λ = {lam:g}, m = 1 outside the "
                 f"centred hole of side {fig['mask_frac']:g} R (paper Sec. 5). A larger t_s gives the model more "
                 f"freedom in the hole and keeps less of the original there."))
    print(f"wrote {sm.output[0]}")
