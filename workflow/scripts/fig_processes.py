"""Snakemake script: Fig. 3, white-noise diffusion vs mollified diffusion of one image at several t."""
import contextlib

import torch

from infdiff.data import to_float, to_uint8
from infdiff.diffusion import MollifiedDiffusion, make_betas
from infdiff.evaluate import read_images
from infdiff.mollifier import Mollifier
from infdiff.report.figures import image_grid_figure

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    fig, cfg = sm.params.fig, sm.params.run_cfg
    d, R = cfg["diffusion"], fig["resolution"]
    images, _, _ = read_images(sm.input.images)
    x0 = to_float(images[:1])                                      # [1, 3, R, R] in [-1, 1]
    T = Mollifier(std_px=d["mollifier_std_px"], train_res=cfg["resolution"], inv_snr=d["wiener_inv_snr"])
    mollified = MollifiedDiffusion(make_betas(d["schedule"], d["timesteps"]), T)
    xi = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    rows = [[], []]
    for t in fig["timesteps"]:
        tt = torch.tensor([t])
        ab = mollified.alpha_bar[t].float()
        # Sec. 3.1: x_t = sqrt(ab) x0 + sqrt(1 - ab) xi (white noise: no function-space limit)
        rows[0].append(to_uint8((ab.sqrt() * x0 + (1 - ab).sqrt() * xi).clamp(-1, 1))[0])
        # Eq. 11: x_t = T (sqrt(ab) x0 + sqrt(1 - ab) xi), the same noise draw, mollified
        rows[1].append(to_uint8(mollified.q_sample(x0, tt, xi).clamp(-1, 1))[0])
    std = d["mollifier_std_px"] * R / cfg["resolution"]
    image_grid_figure(
        rows, sm.output[0], title=f"Forward processes of one {R} px image ({d['schedule']} schedule)",
        row_labels=["white noise (Sec. 3.1)", "mollified (Eq. 11)"], col_labels=[f"t = {t}" for t in fig["timesteps"]],
        caption=(f"Top: standard diffusion adds white noise, which has no limit as the resolution grows. Bottom: the "
                 f"same noise draw under ∞-Diff's mollified process, x_t = T(sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ξ), with T a "
                 f"Gaussian blur of std {d['mollifier_std_px']} px at the training resolution ({std:g} px here); "
                 f"values clipped to [-1, 1] for display."))
    print(f"wrote {sm.output[0]}")
