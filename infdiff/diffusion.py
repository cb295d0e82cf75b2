"""Noise schedules and the mollified diffusion process (Sec. 3.2, App. B).

Mollified diffusion is ordinary Gaussian diffusion in which every state is smoothed by the mollifier T
(see :mod:`infdiff.mollifier`):

    q(x_t | x0)          = N(sqrt(alpha_bar_t) T x0, (1 - alpha_bar_t) T T^t)                     (Eq. 11)
    q(x_{t-1} | x_t, x0) = N(mu_tilde_t, beta_tilde_t T T^t),                                      (Eq. 12)
        mu_tilde_t  = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) T x0
                      + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t,
        beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.

Because T is linear and the same at every step, every coefficient is the scalar one of standard DDPM; T
only enters through T x0 and the noise T xi. The network f predicts T xi (Eq. 44-46): its loss is
||f - T xi||^2 (Eq. 46) with x_t = sqrt(alpha_bar) T x0 + sqrt(1 - alpha_bar) T xi, so T^{-1} is never
needed during training, and T x0 (not x0) is recovered when sampling (de-mollified afterwards by the
Wiener filter).

Timesteps are 0-based: index t in 0 .. T-1 has cumulative alpha_bar[t] = prod_{s <= t} (1 - beta_s), and
alpha_bar_prev[0] = 1 (the clean data). This class holds arrays and closed forms only; it never calls
the model (the samplers in :mod:`infdiff.samplers` and the training loss in :mod:`infdiff.methods` do).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from infdiff.mollifier import Mollifier

__all__ = ["SCHEDULES", "make_betas", "cosine_alpha_bar", "respaced_timesteps", "MollifiedDiffusion"]

SCHEDULES = ("cosine", "linear")


def cosine_alpha_bar(t: Tensor, timesteps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal (2021): alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T) + s) / (1 + s) pi/2).

    Args:
        t: continuous times in [0, timesteps] (float64 recommended).
    """
    f = lambda u: torch.cos((u / timesteps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(torch.zeros((), dtype=t.dtype))


def make_betas(schedule: str, timesteps: int) -> Tensor:
    """Per-step betas [timesteps] float64.

    * "cosine": beta_t = 1 - alpha_bar(t+1) / alpha_bar(t) from ``cosine_alpha_bar`` (s = 0.008), clipped
      to 0.999 so the last steps stay invertible (alpha_bar(T) = 0 exactly would give beta = 1).
    * "linear": Ho et al. (2020), 1e-4 .. 2e-2 scaled by 1000 / timesteps (same SNR range for any T).
    Unknown names raise ValueError listing the known ones.
    """
    if int(timesteps) != timesteps or timesteps < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")
    if schedule == "cosine":
        # Evaluated at integer times 0..T: beta_t is the ratio of consecutive alpha_bar (float64, since
        # alpha_bar(T) is ~1e-9 and float32 ratios there would be visibly wrong).
        ab = cosine_alpha_bar(torch.arange(timesteps + 1, dtype=torch.float64), timesteps)
        return (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
    if schedule == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(scale * 1e-4, scale * 2e-2, timesteps, dtype=torch.float64)
    raise ValueError(f"unknown schedule '{schedule}' (known: {', '.join(SCHEDULES)})")


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


class MollifiedDiffusion:
    """Arrays of the mollified process (Eq. 11-12, 40, 44, 46). Methods take tensors, never the model.

    Args:
        betas: [T] per-step variances (any float dtype; stored as float64).
        mollifier: the operator T shared with the training loss and the samplers.

    Attributes (float64 CPU tensors of length T): betas, alphas, alpha_bar, alpha_bar_prev, beta_tilde,
    sqrt_alpha_bar, sqrt_one_minus_alpha_bar, posterior_coef_Tx0, posterior_coef_xt.
    """

    def __init__(self, betas: Tensor, mollifier: Mollifier):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.mollifier = mollifier
        self.num_timesteps = len(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        # alpha_bar_{t-1} with alpha_bar_{-1} = 1: the step before t = 0 is the data itself.
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1.0 - self.alpha_bar).sqrt()
        # Eq. 12. beta_tilde[0] = 0: the last reverse step is deterministic (x_{-1} = T x0 estimate).
        self.beta_tilde = (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar) * betas
        self.posterior_coef_Tx0 = self.alpha_bar_prev.sqrt() * betas / (1.0 - self.alpha_bar)
        self.posterior_coef_xt = self.alphas.sqrt() * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        # Device copies made by `extract`, so sampling does not re-upload 1000 floats every step.
        self._device_cache: dict[tuple, Tensor] = {}

    # ------------------------------------------------ the Schedule protocol of infdiff.samplers
    #: the network's time input is the integer timestep it was trained on
    time_dtype = torch.int64

    def timesteps(self, steps: int, t_start: int | None = None) -> list[int]:
        """The ``steps`` respaced timesteps a sampler visits, [t_start, ..., 0] (:func:`respaced_timesteps`)."""
        return respaced_timesteps(self.num_timesteps, steps, t_start)

    def alpha_bar_at(self, timesteps: Sequence[int]) -> Tensor:
        """float64 alpha_bar of each of ``timesteps``."""
        return self.alpha_bar[list(timesteps)]

    def extract(self, a: Tensor, t: Tensor, ndim: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """a[t] reshaped to broadcast against a tensor with ``ndim`` dims.

        Args:
            a: [T] schedule array (one of the attributes).
            t: [B] int64 timesteps (on the device of the data).
            ndim: dims of the tensor the result multiplies; [B, C, R, R] -> 4, points [B, N, C] -> 3.
            dtype: result dtype (float32 by default; the methods below pass the data's dtype so that
                float64 identities stay exact).
        Returns:
            [B] + [1] * (ndim - 1) tensor on t.device.

        Meant for this object's schedule attributes: their device copies are cached per (array, device,
        dtype) so sampling does not re-upload the schedule at every step.
        """
        key = (id(a), t.device, dtype)
        cached = self._device_cache.get(key)
        if cached is None or cached[0] is not a:
            # Cast on the CPU first: some backends (MPS) have no float64.
            cached = (a, a.to(dtype).to(t.device))
            self._device_cache[key] = cached
        return cached[1][t.long()].reshape(-1, *([1] * (ndim - 1)))

    def coef(self, a: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """``extract(a, t, x.ndim)`` in the precision x needs: float64 for float64 data (so identities
        can be tested to 1e-12), float32 otherwise (also for bf16/fp16 data: coefficients such as
        1 / sqrt(alpha_bar_t) ~ 2e4 near t = T must not be rounded to half precision)."""
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        return self.extract(a, t, x.ndim, dtype=dt)

    def q_sample(self, x0: Tensor, t: Tensor, xi: Tensor) -> Tensor:
        """Draw x_t ~ q(x_t | x0) (Eq. 11) by reparameterisation.

        x_t = sqrt(alpha_bar_t) T x0 + sqrt(1 - alpha_bar_t) T xi = T (sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) xi)
        (T is linear, so one application suffices).

        Args:
            x0: [B, C, R, R] clean images. xi: [B, C, R, R] white noise N(0, I). t: [B] int64.
        Returns:
            x_t [B, C, R, R].
        """
        a = self.coef(self.sqrt_alpha_bar, t, x0)
        s = self.coef(self.sqrt_one_minus_alpha_bar, t, x0)
        # The noise is white *before* T: T xi is a smooth Gaussian random field, so x_t is a continuous
        # function that can be evaluated at any subset of coordinates (Sec. 3.2).
        return self.mollifier(a * x0 + s * xi)

    def q_posterior(self, Tx0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0) (Eq. 12).

        Args:
            Tx0: [B, C, R, R] (or points [B, N, C]) mollified data T x0. x_t: same shape. t: [B] int64.
        Returns:
            mean (same shape as x_t) and beta_tilde_t broadcastable ([B, 1, 1, 1] for images); the full
            covariance is beta_tilde_t T T^t, so a sample is mean + sqrt(beta_tilde_t) T z, z ~ N(0, I).
        """
        # Eq. 12: the scalar DDPM coefficients; T only enters through T x0 (App. B, Eq. 26).
        mean = (self.coef(self.posterior_coef_Tx0, t, x_t) * Tx0
                + self.coef(self.posterior_coef_xt, t, x_t) * x_t)
        return mean, self.coef(self.beta_tilde, t, x_t)

    def predict_Tx0(self, x_t: Tensor, t: Tensor, f: Tensor) -> Tensor:
        """Estimate of T x0 from x_t and the model's estimate f of T xi (Eq. 11 solved for T x0).

        T x0 = (x_t - sqrt(1 - alpha_bar_t) f) / sqrt(alpha_bar_t); exact when f == T xi.
        """
        return ((x_t - self.coef(self.sqrt_one_minus_alpha_bar, t, x_t) * f)
                / self.coef(self.sqrt_alpha_bar, t, x_t))

    def predict_Txi(self, x_t: Tensor, t: Tensor, Tx0: Tensor) -> Tensor:
        """The T xi consistent with x_t and a (e.g. clipped) T x0: (x_t - sqrt(ab_t) T x0) / sqrt(1 - ab_t)."""
        return ((x_t - self.coef(self.sqrt_alpha_bar, t, x_t) * Tx0)
                / self.coef(self.sqrt_one_minus_alpha_bar, t, x_t))

    def p_mean(self, x_t: Tensor, t: Tensor, f: Tensor) -> Tensor:
        """Reverse-step mean with the T xi parameterisation (Eq. 44).

        mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - alpha_bar_t) f) / sqrt(alpha_t). With f == T xi this
        equals the posterior mean of Eq. 12 (substitute T x0 = predict_Tx0(x_t, t, T xi)).
        """
        b = self.coef(self.betas, t, x_t)
        s = self.coef(self.sqrt_one_minus_alpha_bar, t, x_t)
        # Eq. 44 never applies T or T^{-1}: f already lives in the range of T, like x_t.
        return (x_t - b / s * f) / self.coef(self.alphas, t, x_t).sqrt()
