"""Samplers shared by every method: DDPM (Eq. 40/44) and DDIM, on a respaced sequence of noise levels.

Both step a variance-preserving process whose states are

    x_t = sqrt(alpha_bar_t) T x0 + sqrt(1 - alpha_bar_t) T xi          (Eq. 11; T = I when unmollified)

and return the final estimate of **T x0**; undoing T (the Wiener filter of :mod:`infdiff.mollifier`) is the
caller's choice. The process is a :class:`Schedule`: its mollifier T and the noise levels a run of
``steps`` steps visits (the discrete timesteps of :class:`~infdiff.diffusion.MollifiedDiffusion`, or
the logSNR grid of a continuous schedule). The model is a denoiser in the one signature of
:mod:`infdiff.denoisers`,

    denoiser(x_t [B, C, R, R], level) -> T x0_hat [B, C, R, R],

which wraps whatever the network predicts (T xi, v or x_{t-1}), so the same code samples ∞-Diff at any
resolution and both baselines.

Respacing: a run visits ``steps`` noise levels, noisiest first. The visited alpha_bar values define a
shorter diffusion with beta'_i = 1 - alpha_bar[t_i] / alpha_bar[t_{i+1}] (Nichol & Dhariwal 2021), which
is again a mollified diffusion with the same T (:func:`respace`); its arrays give every coefficient.

* DDPM: x_{t'} = mu_tilde(x_t, clip(T x0_hat)) + sigma T z with sigma^2 = beta_tilde' (Eq. 12 posterior
  with the estimate plugged in; Eq. 40 up to the T x0 parameterisation, Eq. 44 without clipping).
* DDIM (Song et al. 2021): x_{t'} = sqrt(ab') T x0_hat + sqrt(1 - ab' - sigma^2) f_hat + sigma T z,
  sigma = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab'); eta = 0 is deterministic, so a seed maps to
  one image (with resolution-consistent noise, the same image at every resolution).

The noise z of each step comes from ``noise_fn(k)`` (white noise [B, C, R, R] for step k) so that samples
depend only on their own seeds; the sampler applies T itself. Samplers run under ``torch.no_grad()``;
reconstruction guidance enables gradients locally, for the one model evaluation of each step.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence

import torch
from torch import Tensor

from infdiff.denoisers import Denoiser, Level
from infdiff.diffusion import MollifiedDiffusion, respaced_timesteps
from infdiff.mollifier import Mollifier

__all__ = ["Schedule", "respaced_timesteps", "respace", "respaced_diffusion", "progress_bar", "ddim_sample",
           "ddim_invert", "ddpm_sample", "SAMPLERS"]

SAMPLERS = ("ddim", "ddpm")


class Schedule(Protocol):
    """What the samplers need of a process (implemented by MollifiedDiffusion and continuous schedules)."""

    #: the mollifier T of every state (identity for an unmollified process)
    mollifier: Mollifier
    #: dtype of the [B] time input the network is given (int64 timesteps, float32 logSNR)
    time_dtype: torch.dtype

    def timesteps(self, steps: int, t_start=None) -> list:
        """The network time inputs of the ``steps`` visited levels, noisiest first."""

    def alpha_bar_at(self, timesteps: Sequence) -> Tensor:
        """float64 [len(timesteps)] cumulative alpha_bar of each of ``timesteps``."""


def respace(schedule: Schedule, timesteps: Sequence) -> MollifiedDiffusion:
    """The process restricted to ``timesteps`` (the visited levels, noisiest first).

    Index j of the result is the j-th *least* noisy visited level (j = n - 1 - i for step i), with
    beta'_j = 1 - alpha_bar_j / alpha_bar_{j-1} (alpha_bar_{-1} = 1, the clean data), so alpha_bar'_j
    telescopes to the level's alpha_bar and the last reverse step lands on T x0.
    """
    ab = schedule.alpha_bar_at(list(timesteps)[::-1])
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    return MollifiedDiffusion(1.0 - ab / ab_prev, schedule.mollifier)


def respaced_diffusion(diffusion: MollifiedDiffusion, timesteps: list[int]) -> MollifiedDiffusion:
    """:func:`respace` of a discrete process for timesteps in any order (used ascending).

    For the full sequence 0..T-1 the result has the original betas.
    """
    return respace(diffusion, sorted(set(int(t) for t in timesteps), reverse=True))


def progress_bar(iterable, progress: bool, desc: str):
    """``iterable`` wrapped in a tqdm bar named ``desc`` when ``progress`` (shared by every sampler)."""
    if not progress:
        return iterable
    from tqdm.auto import tqdm  # only imported when a bar is wanted

    return tqdm(iterable, desc=desc, leave=False)


def _level(schedule: Schedule, resp: MollifiedDiffusion, x: Tensor, t: object, j: int) -> tuple[Level, Tensor]:
    """The :class:`Level` of visited level ``t`` (respaced index ``j``) for states like ``x``, and j as [B].

    The network sees its own time input; alpha and sigma come from the respaced arrays, in the
    precision :meth:`MollifiedDiffusion.coef` gives for x.
    """
    B = x.shape[0]
    t_in = torch.full((B,), t, dtype=schedule.time_dtype, device=x.device)
    j_t = torch.full((B,), j, dtype=torch.int64, device=x.device)
    return Level(t_in, resp.coef(resp.sqrt_alpha_bar, j_t, x), resp.coef(resp.sqrt_one_minus_alpha_bar, j_t, x)), j_t


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, schedule: Schedule, x_T: Tensor, steps: int,
                eta: float = 0.0, noise_fn: Optional[Callable[[int], Tensor]] = None,
                clip_Tx0: bool = True, callback=None, progress: bool = False,
                t_start=None) -> Tensor:
    """DDIM in the (mollified) space of the schedule.

    Args:
        denoiser: (x_t, level) -> estimate of T x0 (:mod:`infdiff.denoisers`).
        schedule: the (unrespaced) process the model was trained with.
        x_T: [B, C, R, R] initial state ~ N(0, T T^t) (T applied by the caller to white noise).
        steps: number of model evaluations (respaced levels).
        eta: 0 = deterministic DDIM, 1 = DDPM-like stochasticity.
        noise_fn: k -> white noise [B, C, R, R] for step k; required when eta > 0.
        clip_Tx0: clip the T x0 estimate to [-1, 1]. T is an average whose weights are positive up to
            tiny ringing from the band-limited spectrum (row abs-sums <= 1.004 in 2-D at std 1 px), so
            T x0 of data in [-1, 1] lies in [-1, 1] up to that.
        callback: optional callback(i, t, x_t, Tx0_hat) after every model evaluation.
        progress: show a tqdm bar.
        t_start: start part-way at this level (default: the noisiest); ``x_T`` is then a state x_{t_start}.
    Returns:
        [B, C, R, R] the final estimate of T x0 (not de-mollified).
    """
    if eta > 0 and noise_fn is None:
        raise ValueError("ddim_sample with eta > 0 needs noise_fn (per-sample noise keeps seeds reproducible)")
    ts = schedule.timesteps(steps, t_start)
    # Index j of the respaced process is the j-th least noisy visited level, so step i uses j = n-1-i.
    resp = respace(schedule, ts)
    T = schedule.mollifier
    x = x_T
    Tx0_hat = x_T
    n = len(ts)
    for i in progress_bar(range(n), progress, "DDIM"):
        level, j = _level(schedule, resp, x, ts[i], n - 1 - i)
        Tx0_hat = denoiser(x, level)
        if clip_Tx0:
            Tx0_hat = Tx0_hat.clamp(-1.0, 1.0)
        # The T xi consistent with x_t and the (clipped) estimate, as in guided-diffusion's DDIM.
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
def ddim_invert(denoiser: Denoiser, schedule: Schedule, Tx0: Tensor, steps: int, t_end=None,
                progress: bool = False) -> Tensor:
    """Deterministic DDIM encoding: T x0 -> the state at level ``t_end`` that DDIM (eta 0) decodes to it.

    Song et al. (2021, Sec. 5.4) and diffusion autoencoders' "stochastic encoding": the DDIM update run
    forwards over the levels a ``steps``-step :func:`ddim_sample` visits (least noisy first), treating the
    clean T x0 as the state at the least noisy level:

        x_{j+1} = sqrt(ab_{j+1}) T x0_hat(x_j) + sqrt(1 - ab_{j+1}) f_hat(x_j),    f_hat: the implied T xi.

    It is exact up to the discretisation (each step reuses the estimate at x_j for x_{j+1}), so decoding
    with ``ddim_sample(..., steps, t_start=t_end)`` and the same denoiser returns ~T x0. The estimate is
    not clipped (clipping would break the inverse). ``steps - 1`` model evaluations.

    Args:
        Tx0: [B, C, R, R] mollified clean images (T applied by the caller).
        t_end: the level to stop at (default: the noisiest, where sampling starts).
    Returns:
        [B, C, R, R] the state x_{t_end}.
    """
    ts = schedule.timesteps(steps, t_end)
    resp = respace(schedule, ts)
    n = len(ts)
    x = Tx0
    for j in progress_bar(range(n - 1), progress, "DDIM inversion"):
        level, j_t = _level(schedule, resp, x, ts[n - 1 - j], j)
        Tx0_hat = denoiser(x, level)
        f = resp.predict_Txi(x, j_t, Tx0_hat)
        ab_next = resp.coef(resp.alpha_bar, j_t + 1, x)
        x = ab_next.sqrt() * Tx0_hat + (1 - ab_next).sqrt() * f
    return x


@torch.no_grad()
def ddpm_sample(denoiser: Denoiser, schedule: Schedule, x_T: Tensor, steps: int,
                noise_fn: Callable[[int], Tensor], clip_Tx0: bool = True, callback=None,
                progress: bool = False, t_start=None,
                guidance: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
                guidance_scale: float = 0.0) -> Tensor:
    """Ancestral sampling (Eq. 40/44) with respaced betas and sigma_t^2 = beta_tilde_t.

    Each step: T x0_hat = denoiser(x_t, level) (clipped to [-1, 1] if ``clip_Tx0``);
    x_{t'} = mu_tilde(x_t, T x0_hat) + sqrt(beta_tilde') T z, z = noise_fn(k) (Eq. 12 posterior). Without
    clipping, and with a T xi network, the mean equals Eq. 44's mu_theta exactly.

    Reconstruction guidance (paper Sec. 5, "Inpainting"; Ho et al. 2022): with ``guidance`` a function
    (x_t, mu_0(x_t)) -> scalar loss, e.g. ||m * (mu_0 - T x_bar)||^2, every step becomes
    x_{t'} <- x_{t'} - guidance_scale * grad_{x_t} loss, the gradient taken through the network. mu_0 is
    the *unclipped* estimate of T x0 (the paper's mu_tilde_0(x_t, t)): clipping inside the graph would give
    every clipped pixel zero guidance. Only the posterior mean uses the clipped estimate.

    Args: as :func:`ddim_sample`; ``noise_fn`` is required.
    Returns:
        [B, C, R, R] the final estimate of T x0 (not de-mollified).
    """
    ts = schedule.timesteps(steps, t_start)
    resp = respace(schedule, ts)
    T = schedule.mollifier
    x = x_T
    Tx0_hat = x_T
    n = len(ts)
    for i in progress_bar(range(n), progress, "DDPM"):
        grad = None
        if guidance is None:
            level, j = _level(schedule, resp, x, ts[i], n - 1 - i)
            Tx0_hat = denoiser(x, level)
        else:
            # the same single model evaluation, with a graph back to x_t for the guidance gradient
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                level, j = _level(schedule, resp, x_in, ts[i], n - 1 - i)
                mu_0 = denoiser(x_in, level)
                (grad,) = torch.autograd.grad(guidance(x_in, mu_0), x_in)
            Tx0_hat = mu_0.detach()
        if clip_Tx0:
            Tx0_hat = Tx0_hat.clamp(-1.0, 1.0)
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
