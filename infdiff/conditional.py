"""Conditional generation with a trained ∞-Diff model: reconstruction, super-resolution and inpainting.

None needs retraining; all start the reverse process from a state made from the input
(:meth:`infdiff.methods.base.Method.edit`, :meth:`~infdiff.methods.base.Method.decode`):

* **Reconstruction** (autoencoder runs): encode x0 to z, then decode with DDIM either from x0's
  deterministic DDIM encoding (:meth:`~infdiff.methods.base.Method.invert`) or from fresh noise
  (:func:`reconstruct`).
* **Super-resolution.** SDEdit-style (Meng et al. 2022), for any run: upsample the low-resolution image
  bicubically to the target resolution R, noise it to an intermediate step t_s with q(x_{t_s} | x_up)
  (Eq. 11), and denoise at R. The noise drowns the upsampling's blur up to the scale the model must
  re-synthesise; small t_s keeps the input, large t_s trusts the model. The paper's own (Fig. 8, an
  autoencoder run): encode the low-resolution image and sample at R given its z (``z only``); the paper
  notes that the encoding loses information and suggests DDIM encodings, so :func:`superresolve_encoded`
  also carries the low-resolution DDIM encoding to R (:func:`carry_state`) and decodes it there.
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

from infdiff.mollifier import dct_matrix

__all__ = ["upsample", "downsample", "superresolve", "reconstruction_loss", "inpaint", "centre_mask",
           "sdedit_steps", "carry_state", "reconstruct", "superresolve_encoded"]


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
                 batch_size: int | None = None, progress: bool = False, cond: Tensor | None = None) -> Tensor:
    """SDEdit super-resolution: [B, 3, r, r] in [-1, 1] -> [B, 3, R, R] in [-1, 1].

    ``steps`` respaced DDPM steps from ``t_start`` down to 0 at resolution R; image i uses ``seeds[i]``.
    ``cond``: the z of an autoencoder run (e.g. the encoding of ``low``).
    """
    x_up = upsample(low, resolution)
    return method.edit(x_up, seeds, t_start, steps, sampler="ddpm", batch_size=batch_size, progress=progress,
                       cond=cond)


def carry_state(x_t: Tensor, resolution: int, method, seeds: Sequence[int]) -> Tensor:
    """A state [B, C, r, r] of the mollified process carried to [B, C, R, R] (R a multiple of r).

    The low-frequency part is the same continuous function: its DCT-II coefficients, scaled by R / r (the
    orthonormal DCT of a function sampled on R^2 instead of r^2 pixels), are kept and the rest zero-padded,
    i.e. exact band-limited interpolation with the mollifier's reflective boundary. The modes above r, which
    x_t cannot hold, are drawn as in the process: the same modes of T xi, xi the seeds' resolution-R noise
    (:meth:`Method.noise`, scaled so T xi has its variance at R). White noise has independent DCT modes and
    T is diagonal in them, so this is the conditional law of the fine state's noise given its coarse modes
    (the mollifier leaves almost nothing up there: gain < 1e-2 at 4x).
    """
    B, Cc, r, _ = x_t.shape
    R = int(resolution)
    if R % r or R < r:
        raise ValueError(f"carry_state: {R} px is not a multiple of {r} px")
    dev, dt = x_t.device, torch.float32
    D_r, D_R = dct_matrix(r, device=dev, dtype=dt), dct_matrix(R, device=dev, dtype=dt)
    X = torch.zeros(B, Cc, R, R, device=dev, dtype=dt)
    X[..., :r, :r] = (D_r @ x_t.to(dt) @ D_r.T) * (R / r)
    noise = method.diffusion.mollifier(method.noise(list(seeds), R, stream=0).to(dev, dt))
    N = D_R @ noise @ D_R.T
    N[..., :r, :r] = 0
    return D_R.T @ (X + N) @ D_R


def reconstruct(method, x0: Tensor, seeds: Sequence[int], steps: int, t_encode: int | None = None,
                batch_size: int | None = None) -> dict[str, Tensor]:
    """Autoencoder reconstructions of x0 [B, 3, R, R] in [-1, 1] at its own resolution (any R).

    z = encode(x0); "ddim": DDIM-decode (eta 0) x0's DDIM encoding at ``t_encode`` (default: the noisiest
    level) given z; "fresh": DDIM from fresh noise of the seeds given z (what z alone keeps).
    Returns {"ddim", "fresh"}: [B, 3, R, R] in [-1, 1].
    """
    R = x0.shape[-1]
    z = method.encode(x0, seeds, batch_size=batch_size)
    x_t = method.invert(x0, steps, t_encode, cond=z, batch_size=batch_size)
    return {"ddim": method.decode(x_t, seeds, t_encode, steps, cond=z, batch_size=batch_size),
            "fresh": method.sample(seeds, R, steps, sampler="ddim", cond=z, batch_size=batch_size, progress=False)}


def superresolve_encoded(method, low: Tensor, seeds: Sequence[int], resolution: int, steps: int,
                         t_encode: int | None = None, batch_size: int | None = None) -> dict[str, Tensor]:
    """The paper's super-resolution with an autoencoder run: [B, 3, r, r] -> [B, 3, R, R] in [-1, 1].

    z = encode(low) (the encoder reads any resolution). "z": DDIM at R from fresh noise given z (paper
    Fig. 8). "z+ddim": the low-resolution DDIM encoding at ``t_encode`` carried to R (:func:`carry_state`)
    and DDIM-decoded there given z, the fix the paper suggests for what z loses.
    """
    z = method.encode(low, seeds, batch_size=batch_size)
    x_t = method.invert(low, steps, t_encode, cond=z, batch_size=batch_size)
    carried = carry_state(x_t, resolution, method, seeds)
    return {"z": method.sample(seeds, resolution, steps, sampler="ddim", cond=z, batch_size=batch_size,
                               progress=False),
            "z+ddim": method.decode(carried, seeds, t_encode, steps, cond=z, batch_size=batch_size)}


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
    """Inpainting by reconstruction guidance from the original at ``t_start``.

    An unconditional run starts from the noised original, q(x_{t_s} | x_bar) (Eq. 11). An autoencoder run
    (paper Sec. 5: "the reverse diffusion process can be applied to encodings from a chosen time step
    t_s") starts from x_bar's DDIM encoding at t_s, given the z of its *known* pixels only; the DDPM steps
    from there add the variation, so t_s controls how far the hole may move from the original.

    Args:
        x_bar: [B, 3, R, R] in [-1, 1] the original (its hole is never shown to the model except through
            the start state, as in the paper).
        mask: [B, 1, R, R] 1 = known, 0 = to fill.
        guidance_scale: lambda of the update above.
    Returns:
        [B, 3, R, R] in [-1, 1].
    """
    T_x_bar = method.mollifier(x_bar.to(method.device, torch.float32))
    mask = mask.to(method.device, torch.float32)

    def guidance(x_t: Tensor, Tx0_hat: Tensor, rows: slice) -> Tensor:
        return reconstruction_loss(Tx0_hat, T_x_bar[rows], mask[rows])

    if method.conditional:
        z = method.encode(x_bar, seeds, batch_size=batch_size, mask=mask)
        x_t = method.invert(x_bar, steps, t_start, cond=z, batch_size=batch_size)
        return method.decode(x_t, seeds, t_start, steps, sampler="ddpm", guidance=guidance,
                             guidance_scale=guidance_scale, batch_size=batch_size, progress=progress, cond=z)
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
