"""Conditional generation with an unconditional ∞-Diff model: super-resolution and inpainting.

Neither needs retraining; both start the reverse process part-way, from a noised version of the input
(:meth:`infdiff.methods.base.Method.edit`):

* **Super-resolution** (paper Fig. 8 uses a diffusion autoencoder, which this harness does not train).
  Here it is SDEdit-style (Meng et al. 2022): upsample the low-resolution image bicubically to the target
  resolution R, noise it to an intermediate step t_s with q(x_{t_s} | x_up) (Eq. 11), and denoise at R.
  The noise drowns the upsampling's blur up to the scale the model must re-synthesise; small t_s keeps the
  input, large t_s trusts the model.
* **Inpainting** (paper Sec. 5, "Inpainting"): reconstruction guidance (Ho et al. 2022). Start from the
  noised original at t_s (the paper uses t_s = 200 and 350 of 1000) and after every DDPM step move the
  state down the gradient of the masked reconstruction error of the model's clean estimate:

      x_{t-1} <- x_{t-1} - lambda * grad_{x_t} || m * (mu_0(x_t, t) - T x_bar) ||^2,

  with m = 1 on known pixels, mu_0 the estimate of T x_0 and x_bar the original image.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["upsample", "downsample", "superresolve", "reconstruction_loss", "inpaint", "centre_mask",
           "sdedit_steps"]


def upsample(x: Tensor, resolution: int) -> Tensor:
    """Bicubic upsampling of [B, C, r, r] in [-1, 1] to [B, C, R, R] (the baseline and SDEdit's input)."""
    return F.interpolate(x.float(), size=(resolution, resolution), mode="bicubic", align_corners=False).clamp(-1, 1)


def downsample(x: Tensor, resolution: int) -> Tensor:
    """Area average of [B, C, R, R] to [B, C, r, r] (R a multiple of r): what a sensor of r pixels records."""
    return F.adaptive_avg_pool2d(x.float(), resolution)


def sdedit_steps(steps: int, t_start: int, num_timesteps: int) -> int:
    """Steps over [0, t_start] at the density of ``steps`` over the whole chain (at least 1)."""
    return max(1, min(t_start + 1, round(steps * (t_start + 1) / num_timesteps)))


def superresolve(method, low: Tensor, seeds: Sequence[int], resolution: int, t_start: int, steps: int,
                 batch_size: int | None = None, progress: bool = False) -> Tensor:
    """SDEdit super-resolution: [B, 3, r, r] in [-1, 1] -> [B, 3, R, R] in [-1, 1].

    ``steps`` respaced DDPM steps from ``t_start`` down to 0 at resolution R; image i uses ``seeds[i]``.
    """
    x_up = upsample(low, resolution)
    return method.edit(x_up, seeds, t_start, steps, sampler="ddpm", batch_size=batch_size, progress=progress)


def reconstruction_loss(Tx0_hat: Tensor, T_x_bar: Tensor, mask: Tensor) -> Tensor:
    """|| m * (mu_0 - T x_bar) ||^2 summed over pixels and images (the guidance objective).

    Args:
        Tx0_hat: [B, C, R, R] the model's estimate of T x_0 (a function of x_t).
        T_x_bar: [B, C, R, R] the mollified original.
        mask: [B, 1, R, R] 1 on known pixels, 0 in the hole.
    """
    return (mask * (Tx0_hat - T_x_bar)).pow(2).sum()


def inpaint(method, x_bar: Tensor, mask: Tensor, seeds: Sequence[int], t_start: int, steps: int,
            guidance_scale: float, batch_size: int | None = None, progress: bool = False) -> Tensor:
    """Inpainting by reconstruction guidance from the noised original at ``t_start``.

    Args:
        x_bar: [B, 3, R, R] in [-1, 1] the original (its hole is never shown to the model except through
            the noised start state, as in the paper).
        mask: [B, 1, R, R] 1 = known, 0 = to fill.
        guidance_scale: lambda of the update above.
    Returns:
        [B, 3, R, R] in [-1, 1].
    """
    T_x_bar = method.mollifier(x_bar.to(method.device, torch.float32))
    mask = mask.to(method.device, torch.float32)

    def guidance(x_t: Tensor, Tx0_hat: Tensor, rows: slice) -> Tensor:
        return reconstruction_loss(Tx0_hat, T_x_bar[rows], mask[rows])

    # x_bar is also the start: the hole starts as the noised original, which t_s >= 200 mostly erases
    return method.edit(x_bar, seeds, t_start, steps, sampler="ddpm", guidance=guidance,
                       guidance_scale=guidance_scale, batch_size=batch_size, progress=progress)


def centre_mask(n: int, resolution: int, frac: float = 0.5) -> Tensor:
    """[n, 1, R, R] mask that hides a centred square of side ``frac * R`` (1 = known, 0 = hole)."""
    m = torch.ones(n, 1, resolution, resolution)
    side = int(round(frac * resolution))
    lo = (resolution - side) // 2
    m[:, :, lo:lo + side, lo:lo + side] = 0
    return m
