"""simple diffusion (Hoogeboom, Heek & Salimans 2023): a grid baseline trained and sampled at one resolution.

Continuous-time Gaussian diffusion on the pixel grid, z_t = alpha_t x + sigma_t eps, with

* a logSNR schedule (Sec. 3.1): the cosine schedule logSNR(t) = -2 log tan(pi t / 2), **shifted** by
  2 log(base / d) for images of side d (the cosine schedule was tuned at 64 px; larger images keep more
  signal at a given per-pixel noise, so they need more noise), optionally **interpolated** between two
  shifts over t (their 512 px models); alpha_t^2 = sigmoid(logSNR), sigma_t^2 = sigmoid(-logSNR);
* v-prediction (Salimans & Ho 2022): v = alpha eps - sigma x, predicted by the U-ViT (:mod:`baselines.uvit`);
* the multiscale loss (Sec. 3.2) on the implied eps, which up-weights errors at low frequencies;
* ancestral (DDPM) or DDIM sampling on a uniform grid of t from 1 to 0, by the shared samplers: the
  process is a :class:`LogSNRProcess` (the samplers' Schedule) and the U-ViT reaches them through
  :class:`~infdiff.denoisers.VDenoiser`.

It is a *grid* model: it samples only at its training resolution (its spec has no ``any_resolution``); the harness draws the
Table 1 rows at other resolutions by resizing its samples and labels them so.

Precision: the network may run under bf16 autocast; the schedule, the loss and every sampler step are
float32 (float64 for per-step scalars), on ``.float()`` network outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.uvit import UViT
from infdiff.denoisers import Denoiser, VDenoiser
from infdiff.methods.base import Method
from infdiff.mollifier import Mollifier

__all__ = ["logsnr_cosine", "logsnr_shifted", "logsnr_interpolated", "alpha_sigma", "v_target",
           "x_from_v", "eps_from_v", "multiscale_weights", "multiscale_loss", "LogSNRProcess", "SimpleDiffusion"]

SCHEDULES = ("shifted", "interpolated")


# ---------------------------------------------------------------------------------------- schedules
def logsnr_cosine(t: Tensor, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> Tensor:
    """Cosine schedule logSNR(t) = -2 log tan(pi t / 2) with finite ends (Hoogeboom et al., App. B).

    t in [0, 1] is mapped affinely onto [t_min, t_max] = [atan(e^{-logsnr_max/2}), atan(e^{-logsnr_min/2})]
    before the tangent, so logSNR(0) = logsnr_max and logSNR(1) = logsnr_min exactly. With the default
    range the remap moves the angle pi t / 2 by at most 5.5e-4 (logSNR by < 0.01 for t in [0.1, 0.9]), so
    inside (0, 1) this is the plain cosine schedule (alpha = cos(pi t / 2), sigma = sin(pi t / 2)).
    """
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return -2.0 * torch.log(torch.tan(t_min + t * (t_max - t_min)))


def logsnr_shifted(t: Tensor, d: int, base: float = 64.0, logsnr_min: float = -15.0,
                   logsnr_max: float = 15.0) -> Tensor:
    """Shifted cosine schedule (Sec. 3.1): logSNR_cosine(t) + 2 log(base / d), clamped to [min, max].

    Averaging a d x d image to base x base pixels raises its SNR by (d / base)^2; the shift undoes that, so
    the *low-frequency* content of a d px image sees the noise a base px image sees under the cosine
    schedule (d = 128: -1.386; d = 256: -2.773; d = 32: +1.386, less noise than at 64 px).
    """
    shift = 2.0 * math.log(base / d)
    return (logsnr_cosine(t, logsnr_min, logsnr_max) + shift).clamp(logsnr_min, logsnr_max)


def logsnr_interpolated(t: Tensor, d: int, lo: float, t1: str = "base", logsnr_min: float = -15.0,
                        logsnr_max: float = 15.0) -> Tensor:
    """Shifted schedule interpolated over t between two shifts: t logSNR_a(t) + (1 - t) logSNR_b(t).

    The two ends are the schedule of the image itself, logSNR_image = logsnr_shifted(t, d, base=d) (the
    unshifted cosine), and logSNR_base = logsnr_shifted(t, d, base=lo). ``t1`` names the one that holds at
    t = 1 (a); the other holds at t = 0 (b).

    Direction: Hoogeboom et al.'s pseudo-code is ``t * logsnr_low + (1 - t) * logsnr_high`` with
    logsnr_low the schedule shifted to the *lower* noise resolution (32 for their 512 px model): the
    strong shift governs the noisy end (t -> 1), where the global structure is decided, and the weak one
    the clean end, which keeps steps for the fine details. That is ``t1 = "base"`` when lo < d.
    """
    if t1 not in ("image", "base"):
        raise ValueError(f"unknown interpolate_t1 '{t1}' (known: image, base)")
    image = logsnr_shifted(t, d, d, logsnr_min, logsnr_max)
    base = logsnr_shifted(t, d, lo, logsnr_min, logsnr_max)
    a, b = (image, base) if t1 == "image" else (base, image)
    return t * a + (1 - t) * b


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """Variance-preserving scales: alpha = sqrt(sigmoid(logSNR)), sigma = sqrt(sigmoid(-logSNR))."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


# --------------------------------------------------------------------------------- v-parameterisation
def v_target(x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """v = alpha eps - sigma x (Salimans & Ho 2022, Eq. 4 up to notation)."""
    return alpha * eps - sigma * x


def x_from_v(z: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x_hat = alpha z - sigma v (exact for z = alpha x + sigma eps since alpha^2 + sigma^2 = 1)."""
    return alpha * z - sigma * v


def eps_from_v(z: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps_hat = sigma z + alpha v."""
    return sigma * z + alpha * v


# --------------------------------------------------------------------------------- multiscale loss
def multiscale_weights(d: int, min_res: int) -> dict[int, float]:
    """{s: 1/s} for s in {min_res, 2 min_res, ..., d} (Hoogeboom et al., Sec. 3.2)."""
    if min_res < 1 or d < min_res or d % min_res or (d // min_res) & (d // min_res - 1):
        raise ValueError(f"multiscale loss needs d = min_res * 2^k, got d={d}, min_res={min_res}")
    out, s = {}, int(min_res)
    while s <= d:
        out[s] = 1.0 / s
        s *= 2
    return out


def multiscale_loss(eps: Tensor, eps_hat: Tensor, min_res: int, normalize: bool = True) -> Tensor:
    """Multiscale eps loss: sum_s (1/s) L^{s x s} over s in {min_res, .., d}, divided by sum_s (1/s).

    L^{s x s} = (1/s^2) ||D_s[eps] - D_s[eps_hat]||^2 with D_s the average pooling to s x s (identity at
    s = d), i.e. the per-pixel mean squared error at resolution s; here also averaged over channels and
    the batch (``F.mse_loss``), so that L^{d x d} is the plain MSE.

    Normalisation (``normalize=True``, our default): the weighted sum is divided by the sum of the
    weights, so the loss is a weighted *average* of per-scale MSEs. Adam is invariant to the overall
    scale; the division keeps the loss (and the gradient norm that the training loop clips at
    ``grad_clip``) on the scale of the plain MSE, as for ∞-Diff. ``normalize=False`` is the paper's literal
    sum (with min_res = d: MSE / d).

    Args:
        eps, eps_hat: [B, C, d, d]; the loss is computed in float32.
    Returns:
        scalar.
    """
    d = eps.shape[-1]
    eps, eps_hat = eps.float(), eps_hat.float()
    weights = multiscale_weights(d, min_res)
    total = eps.new_zeros(())
    for s, w in weights.items():
        k = d // s
        a, b = (eps, eps_hat) if k == 1 else (F.avg_pool2d(eps, k), F.avg_pool2d(eps_hat, k))
        total = total + w * F.mse_loss(b, a)
    return total / sum(weights.values()) if normalize else total


# ---------------------------------------------------------------------------------------- process
class LogSNRProcess:
    """The continuous-time process z_t = alpha_t x + sigma_t eps as a Schedule of :mod:`infdiff.samplers`.

    alpha_t^2 = sigmoid(logSNR(t)) = alpha_bar_t; no mollifier (T = I, and its Wiener filter is the
    identity). A run of ``steps`` steps visits t_k = 1 - k / steps, k = 0 .. steps - 1 (Hoogeboom et al.'s
    uniform grid from pure noise down to t = 1 / steps, whose x_hat is the sample); the network is told
    the logSNR of each level.

    Args:
        logsnr: t (float64 tensor in [0, 1]) -> logSNR(t), the run's schedule.
        train_res: the resolution the process lives at (only for the identity mollifier's bookkeeping).
    """

    time_dtype = torch.float32

    def __init__(self, logsnr, train_res: int):
        self.logsnr = logsnr
        self.mollifier = Mollifier(std_px=0, train_res=train_res, inv_snr=0)

    def timesteps(self, steps: int, t_start=None) -> list[float]:
        """logSNR at t = 1, 1 - 1/steps, .., 1/steps (float64 arithmetic), noisiest first."""
        if t_start is not None:
            raise ValueError("simple_diffusion samples from pure noise only (spec.starts_part_way is False)")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        lam = self.logsnr(torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64))[:int(steps)]
        if not bool((lam[1:] > lam[:-1]).all()):
            # the clamp at logsnr_max makes the finest levels equal for very many steps
            raise ValueError(f"{steps} steps visit equal logSNR levels (clamped at the schedule's logsnr_max); "
                             "use fewer steps")
        return [float(v) for v in lam]

    def alpha_bar_at(self, timesteps) -> Tensor:
        """alpha_bar = sigmoid(logSNR), float64."""
        return torch.sigmoid(torch.tensor(list(timesteps), dtype=torch.float64))


# ----------------------------------------------------------------------------------------- method
class SimpleDiffusion(Method):
    """simple diffusion with a U-ViT, trained and sampled at the run's ``resolution`` only.

    Reads ``cfg["resolution"]`` and the ``simple_diffusion`` block (stem, channels, blocks,
    transformer_width/depth, heads, dropout, dropout_max_res, schedule, shift_base, interpolate_from,
    interpolate_t1, multiscale_min, logsnr_min, logsnr_max). The common ``diffusion`` block (discrete
    schedule, mollifier) does not apply: this is an unmollified continuous-time process.
    """

    name = "simple_diffusion"

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.train_res = int(cfg["resolution"])
        sd = cfg["simple_diffusion"]
        self.schedule = sd["schedule"]
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown simple_diffusion schedule '{self.schedule}' "
                             f"(known: {', '.join(SCHEDULES)})")
        self.shift_base = float(sd["shift_base"])
        self.interpolate_from = float(sd["interpolate_from"])
        self.interpolate_t1 = sd["interpolate_t1"]
        if self.interpolate_t1 not in ("image", "base"):
            raise ValueError(f"unknown interpolate_t1 '{self.interpolate_t1}' (known: image, base)")
        self.logsnr_min, self.logsnr_max = float(sd["logsnr_min"]), float(sd["logsnr_max"])
        self.multiscale_min = int(sd["multiscale_min"])
        multiscale_weights(self.train_res, self.multiscale_min)  # fail at build time, not at step 1
        self.net = UViT(self.train_res, channels=sd["channels"], blocks=int(sd["blocks"]),
                        transformer_width=int(sd["transformer_width"]),
                        transformer_depth=int(sd["transformer_depth"]), heads=int(sd["heads"]),
                        dropout=float(sd["dropout"]), dropout_max_res=int(sd["dropout_max_res"]),
                        stem=sd["stem"], logsnr_range=(self.logsnr_min, self.logsnr_max))
        self.diffusion = LogSNRProcess(self.logsnr, self.train_res)

    # -------------------------------------------------------------------------- process
    def logsnr(self, t: Tensor) -> Tensor:
        """logSNR(t) [B] of this run's schedule at its training resolution d (float32 or float64, as t)."""
        rng = (self.logsnr_min, self.logsnr_max)
        if self.schedule == "shifted":
            return logsnr_shifted(t, self.train_res, self.shift_base, *rng)
        return logsnr_interpolated(t, self.train_res, self.interpolate_from, self.interpolate_t1, *rng)

    def training_loss(self, x0: Tensor, generator: torch.Generator, t: Tensor | None = None) -> Tensor:
        """t ~ U(0, 1), eps ~ N(0, I), z_t = alpha x + sigma eps; multiscale loss on eps_hat from v_hat."""
        B = x0.shape[0]
        dev = x0.device
        # Drawn on the CPU generator then moved: the same streams on every device (exact resume).
        if t is None:
            t = torch.rand(B, generator=generator)
        t = t.to(dev)
        eps = torch.randn(x0.shape, generator=generator).to(dev)
        logsnr = self.logsnr(t)
        alpha, sigma = (a[:, None, None, None] for a in alpha_sigma(logsnr))
        z = alpha * x0.float() + sigma * eps
        v_hat = self.net(z, logsnr).float()
        return multiscale_loss(eps, eps_from_v(z, v_hat, alpha, sigma), self.multiscale_min)

    def fixed_timesteps(self, k: int) -> Tensor:
        """k evenly spaced times [k] in (0, 1): the midpoints (k + 1/2) / k, away from t = 0 and t = 1."""
        return (torch.arange(int(k), dtype=torch.float32) + 0.5) / int(k)

    # -------------------------------------------------------------------------- sampling
    def denoiser(self, resolution: int) -> Denoiser:
        """The U-ViT (v-prediction, conditioned on logSNR) as an x0 denoiser at the training resolution."""
        return VDenoiser(lambda z, lam: self.net(z, lam).float())
