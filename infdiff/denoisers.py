"""One denoiser signature for every parameterisation (the role of k-diffusion's ``external.py``).

The shared samplers (:mod:`infdiff.samplers`) step any variance-preserving process whose states are

    x_t = alpha_t T x0 + sigma_t T xi,      alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t)

(Eq. 11; T = I for an unmollified process) and ask the network only one thing: its estimate of **T x0**.
Networks are trained to predict different things, so each gets a thin wrapper, written once here, that
turns its output into that estimate:

==========================  =====================================  ==================================
wrapper                     the network predicts                   used by
==========================  =====================================  ==================================
:class:`EpsDenoiser`        T xi (Eq. 44-46)                       ∞-Diff, the fair per-pixel MLP
:class:`VDenoiser`          v = alpha xi - sigma x0 (Salimans & Ho) simple diffusion's U-ViT
:class:`PreviousXDenoiser`  x_{t-1}, the posterior mean (Eq. 12)   the blog's per-pixel MLP
==========================  =====================================  ==================================

Because every method reaches the samplers through this one signature, DDPM, DDIM, respacing, callbacks,
reconstruction guidance and the per-seed noise streams work for all of them, and no method carries a
sampling loop of its own.

A denoiser is called as ``denoiser(x_t, level) -> T x0_hat`` with ``x_t`` [B, C, R, R] and a
:class:`Level` describing the noise level of the step; the result has the shape and dtype of ``x_t``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from torch import Tensor

from infdiff.diffusion import MollifiedDiffusion

__all__ = ["Level", "Denoiser", "NetFn", "EpsDenoiser", "VDenoiser", "PreviousXDenoiser"]


class Level(NamedTuple):
    """The noise level of one sampling step, as the samplers hand it to a denoiser.

    Attributes:
        t: [B] the network's time input at this step, in the process's own units (an int64 timestep
            index of the discrete process, or the logSNR of a continuous one).
        alpha: sqrt(alpha_bar_t), broadcastable against x_t ([B, 1, 1, 1]), in x_t's precision.
        sigma: sqrt(1 - alpha_bar_t), same shape.
    """

    t: Tensor
    alpha: Tensor
    sigma: Tensor


#: (x_t [B, C, R, R], level) -> estimate of T x0 [B, C, R, R]
Denoiser = Callable[[Tensor, Level], Tensor]
#: the raw network on the grid: (x_t [B, C, R, R], t [B]) -> its prediction [B, C, R, R]
NetFn = Callable[[Tensor, Tensor], Tensor]


class EpsDenoiser:
    """Network predicting f ~ T xi (Eq. 44-46): T x0_hat = (x_t - sigma_t f) / alpha_t (Eq. 11 solved)."""

    def __init__(self, net: NetFn):
        self.net = net

    def __call__(self, x_t: Tensor, level: Level) -> Tensor:
        # The prediction may come out of bf16 autocast; the sampler arithmetic stays in x_t's dtype.
        f = self.net(x_t, level.t).to(x_t.dtype)
        return (x_t - level.sigma * f) / level.alpha


class VDenoiser:
    """Network predicting v = alpha xi - sigma x0 (Salimans & Ho 2022): x0_hat = alpha x_t - sigma v.

    Exact for x_t = alpha x0 + sigma xi because alpha^2 + sigma^2 = 1 (no mollifier: T = I).
    """

    def __init__(self, net: NetFn):
        self.net = net

    def __call__(self, x_t: Tensor, level: Level) -> Tensor:
        v = self.net(x_t, level.t).to(x_t.dtype)
        return level.alpha * x_t - level.sigma * v


class PreviousXDenoiser:
    """Network predicting x_{t-1} itself (improved-diffusion's PREVIOUS_X), e.g. trained by MSE on pairs
    (x_t, x_{t-1}) of one forward trajectory, whose optimum is the posterior mean E[x_{t-1} | x_t].

    That mean is mu_tilde = c1 E[x0 | x_t] + c2 x_t (Eq. 12), so x0_hat = (x_{t-1}_hat - c2 x_t) / c1 with
    the coefficients of the network's *own* chain at its timestep t. The estimate is then valid for any
    sampler and any respacing, not only for the one-step chain the network was trained on.

    Args:
        net: (x_t, t) -> x_{t-1} prediction, t the original int64 timestep.
        diffusion: the process the network was trained on (its posterior coefficients).
    """

    def __init__(self, net: NetFn, diffusion: MollifiedDiffusion):
        self.net = net
        self.diffusion = diffusion

    def __call__(self, x_t: Tensor, level: Level) -> Tensor:
        x_prev = self.net(x_t, level.t).to(x_t.dtype)
        c1 = self.diffusion.coef(self.diffusion.posterior_coef_Tx0, level.t, x_t)
        c2 = self.diffusion.coef(self.diffusion.posterior_coef_xt, level.t, x_t)
        return (x_prev - c2 * x_t) / c1
