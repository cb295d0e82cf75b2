"""Samplers for mollified diffusion: DDPM (Eq. 40/44) and DDIM, on a respaced timestep sequence.

Both work in the mollified space x_t = sqrt(alpha_bar_t) T x0 + sqrt(1 - alpha_bar_t) T xi (Eq. 11) and
return the final estimate of **T x0**; undoing T (the Wiener filter of :mod:`infdiff.mollifier`) is the
caller's choice. The model is a plain function

    model_fn(x_t [B, C, R, R], t [B] int64 original timestep) -> f [B, C, R, R], the estimate of T xi,

so the same code samples ∞-Diff at any resolution (the function handles R) and the baselines.

Respacing: sampling visits ``steps`` of the T training timesteps, t_0 = T-1 > ... > t_{n-1} = 0. The
visited alpha_bar values define a shorter diffusion with beta'_i = 1 - alpha_bar[t_i] / alpha_bar[t_{i+1}]
(Nichol & Dhariwal 2021), which is again a mollified diffusion with the same T (:func:`respaced_diffusion`).

* DDPM: x_{t'} = mu_tilde(x_t, clip(T x0_hat)) + sigma T z with sigma^2 = beta_tilde' (Eq. 12 posterior
  with the estimate plugged in; Eq. 40 up to the T x0 parameterisation, Eq. 44 without clipping).
* DDIM (Song et al. 2021): x_{t'} = sqrt(ab') T x0_hat + sqrt(1 - ab' - sigma^2) f_hat + sigma T z,
  sigma = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab'); eta = 0 is deterministic, so a seed maps to
  one image (with resolution-consistent noise, the same image at every resolution).

The noise z of each step comes from ``noise_fn(k)`` (white noise [B, C, R, R] for step k) so that samples
depend only on their own seeds; the sampler applies T itself. Samplers run under ``torch.no_grad()``; a
model_fn that needs gradients (reconstruction guidance) can enable them locally.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from infdiff.diffusion import MollifiedDiffusion

__all__ = ["ModelFn", "respaced_timesteps", "respaced_diffusion", "progress_bar", "ddim_sample", "ddpm_sample"]

ModelFn = Callable[[Tensor, Tensor], Tensor]


def respaced_timesteps(num_timesteps: int, steps: int, t_start: int | None = None) -> list[int]:
    """``steps`` evenly spaced distinct timesteps in [0, t_start], descending: [t_start, ..., 0].

    ``t_start`` defaults to T-1 (sampling from pure noise); a smaller one starts part-way, from a noised
    image (SDEdit-style editing, inpainting). ``steps == t_start + 1`` gives every timestep. ``steps == 1``
    gives [t_start] (a single jump to the T x0 estimate; it cannot both start at t_start and end at 0).
    """
    t_start = num_timesteps - 1 if t_start is None else t_start
    if int(t_start) != t_start or not 0 <= t_start < num_timesteps:
        raise ValueError(f"t_start must be an integer in [0, {num_timesteps - 1}], got {t_start!r}")
    if int(steps) != steps or not 1 <= steps <= t_start + 1:
        raise ValueError(f"steps must be an integer in [1, {t_start + 1}], got {steps!r}")
    if steps == 1:
        return [int(t_start)]
    # Spacing t_start/(steps-1) >= 1 with exact integers when it equals 1, so rounding keeps them distinct.
    ts = np.round(np.linspace(t_start, 0, int(steps))).astype(np.int64)
    return [int(t) for t in ts]


def respaced_diffusion(diffusion: MollifiedDiffusion, timesteps: list[int]) -> MollifiedDiffusion:
    """The mollified diffusion restricted to ``timesteps`` (any order; used ascending).

    Index j of the result corresponds to the j-th smallest original timestep t_j, with
    beta'_j = 1 - alpha_bar[t_j] / alpha_bar[t_{j-1}] (alpha_bar[t_{-1}] = 1), so alpha_bar'_j telescopes to
    alpha_bar[t_j]. For the full sequence 0..T-1 these are the original betas.
    """
    ts = sorted(set(int(t) for t in timesteps))
    ab = diffusion.alpha_bar[ts]
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    return MollifiedDiffusion(1.0 - ab / ab_prev, diffusion.mollifier)


def progress_bar(iterable, progress: bool, desc: str):
    """``iterable`` wrapped in a tqdm bar named ``desc`` when ``progress`` (shared by every sampler)."""
    if not progress:
        return iterable
    from tqdm.auto import tqdm  # only imported when a bar is wanted

    return tqdm(iterable, desc=desc, leave=False)


def _step_tensors(x: Tensor, t_orig: int, j: int) -> tuple[Tensor, Tensor]:
    """[B] int64 tensors of the original timestep (for the model) and the respaced index (for arrays)."""
    B = x.shape[0]
    return (torch.full((B,), t_orig, dtype=torch.int64, device=x.device),
            torch.full((B,), j, dtype=torch.int64, device=x.device))


def _estimate(model_fn: ModelFn, resp: MollifiedDiffusion, x: Tensor, t_orig: int, j: int,
              clip_Tx0: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One model evaluation shared by both samplers: (j as [B] tensor, f_hat, T x0_hat).

    The model sees the original timestep it was trained on; the arrays use the respaced index j.
    """
    t_model, j_t = _step_tensors(x, t_orig, j)
    f = model_fn(x, t_model).to(x.dtype)
    Tx0_hat = resp.predict_Tx0(x, j_t, f)
    if clip_Tx0:
        Tx0_hat = Tx0_hat.clamp(-1.0, 1.0)
    return j_t, f, Tx0_hat


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, diffusion: MollifiedDiffusion, x_T: Tensor, steps: int,
                eta: float = 0.0, noise_fn: Optional[Callable[[int], Tensor]] = None,
                clip_Tx0: bool = True, callback=None, progress: bool = False,
                t_start: int | None = None) -> Tensor:
    """DDIM in the mollified space.

    Args:
        model_fn: (x_t, t) -> estimate of T xi.
        diffusion: the (unrespaced) process the model was trained with.
        x_T: [B, C, R, R] initial state ~ N(0, T T^t) (T applied by the caller to white noise).
        steps: number of model evaluations (respaced timesteps).
        eta: 0 = deterministic DDIM, 1 = DDPM-like stochasticity.
        noise_fn: k -> white noise [B, C, R, R] for step k; required when eta > 0.
        clip_Tx0: clip the T x0 estimate to [-1, 1] and recompute f from it. T is an average whose
            weights are positive up to tiny ringing from the band-limited spectrum (row abs-sums <= 1.004
            in 2-D at std 1 px), so T x0 of data in [-1, 1] lies in [-1, 1] up to that.
        callback: optional callback(i, t, x_t, Tx0_hat) after every model evaluation.
        progress: show a tqdm bar.
        t_start: start part-way at this timestep (default T-1); ``x_T`` is then a state x_{t_start}.
    Returns:
        [B, C, R, R] the final estimate of T x0 (not de-mollified).
    """
    if eta > 0 and noise_fn is None:
        raise ValueError("ddim_sample with eta > 0 needs noise_fn (per-sample noise keeps seeds reproducible)")
    ts = respaced_timesteps(diffusion.num_timesteps, steps, t_start)
    # Index j of the respaced process is the j-th smallest visited timestep, so step i uses j = n-1-i.
    resp = respaced_diffusion(diffusion, ts)
    T = diffusion.mollifier
    x = x_T
    Tx0_hat = x_T
    n = len(ts)
    for i in progress_bar(range(n), progress, "DDIM"):
        j, f, Tx0_hat = _estimate(model_fn, resp, x, ts[i], n - 1 - i, clip_Tx0)
        if clip_Tx0:
            # Keep the pair (T x0_hat, f_hat) consistent with x_t, as in guided-diffusion's DDIM.
            f = resp.predict_Txi(x, j, Tx0_hat)
        if callback is not None:
            callback(i, ts[i], x, Tx0_hat)
        if i == n - 1:
            break
        ab = resp.coef(resp.alpha_bar, j, x)
        ab_prev = resp.coef(resp.alpha_bar_prev, j, x)
        # Song et al. (2021) Eq. 16, with every noise term mollified (x_t lives in the range of T).
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        x = ab_prev.sqrt() * Tx0_hat + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * f
        if eta > 0:
            x = x + sigma * T(noise_fn(i).to(device=x.device, dtype=x.dtype))
    return Tx0_hat


@torch.no_grad()
def ddpm_sample(model_fn: ModelFn, diffusion: MollifiedDiffusion, x_T: Tensor, steps: int,
                noise_fn: Callable[[int], Tensor], clip_Tx0: bool = True, callback=None,
                progress: bool = False, t_start: int | None = None,
                guidance: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                guidance_scale: float = 0.0) -> Tensor:
    """Ancestral sampling (Eq. 40/44) with respaced betas and sigma_t^2 = beta_tilde_t.

    Each step: f = model_fn(x_t, t); T x0_hat = predict_Tx0 (clipped to [-1, 1] if ``clip_Tx0``);
    x_{t'} = mu_tilde(x_t, T x0_hat) + sqrt(beta_tilde') T z, z = noise_fn(k) (Eq. 12 posterior). Without
    clipping the mean equals Eq. 44's mu_theta exactly.

    Reconstruction guidance (paper Sec. 5, "Inpainting"; Ho et al. 2022): with ``guidance`` a function
    (x_t, T x0_hat(x_t)) -> scalar loss, e.g. ||m * (T x0_hat - T x_bar)||^2, every step becomes
    x_{t'} <- x_{t'} - guidance_scale * grad_{x_t} loss, the gradient taken through the network.

    Args: as :func:`ddim_sample`; ``noise_fn`` is required.
    Returns:
        [B, C, R, R] the final estimate of T x0 (not de-mollified).
    """
    ts = respaced_timesteps(diffusion.num_timesteps, steps, t_start)
    resp = respaced_diffusion(diffusion, ts)
    T = diffusion.mollifier
    x = x_T
    Tx0_hat = x_T
    n = len(ts)
    for i in progress_bar(range(n), progress, "DDPM"):
        grad = None
        if guidance is None:
            j, _, Tx0_hat = _estimate(model_fn, resp, x, ts[i], n - 1 - i, clip_Tx0)
        else:
            # the same single model evaluation, with a graph back to x_t for the guidance gradient
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                j, _, Tx0_hat = _estimate(model_fn, resp, x_in, ts[i], n - 1 - i, clip_Tx0)
                (grad,) = torch.autograd.grad(guidance(x_in, Tx0_hat), x_in)
            Tx0_hat = Tx0_hat.detach()
        if callback is not None:
            callback(i, ts[i], x, Tx0_hat)
        if i == n - 1:
            # Last step (beta_tilde = 0 there): the posterior mean is T x0_hat itself.
            break
        # Eq. 12 posterior around the estimate; with sigma^2 = beta_tilde' the step is exact whenever the
        # estimate is (tested with an oracle), and the noise is mollified like every state.
        mean, var = resp.q_posterior(Tx0_hat, x, j)
        z = noise_fn(i).to(device=x.device, dtype=x.dtype)
        x = mean + var.sqrt() * T(z)
        if grad is not None:
            x = x - guidance_scale * grad
    return Tx0_hat
