"""The mollified point process shared by ∞-Diff and the per-pixel MLP baseline (paper Sec. 3.2, Eq. 46).

Both are trained and sampled with the same forward process, schedule, loss and samplers, so that only the
network differs (:meth:`MollifiedPointMethod.denoise`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from infdiff import coords as C
from infdiff.denoisers import Denoiser, EpsDenoiser
from infdiff.diffusion import MollifiedDiffusion, make_betas
from infdiff.methods.base import Method
from infdiff.mollifier import Mollifier

__all__ = ["MollifiedPointMethod"]


class MollifiedPointMethod(Method):
    """Mollified diffusion (Sec. 3.2) learnt by a network that denoises a *subset of pixels*.

    Shared by ∞-Diff and the per-pixel MLP baseline (same forward process, schedule, loss and sampler,
    so that only the network differs). Subclasses implement :meth:`denoise`.

    Training (Eq. 46): x_t = sqrt(ab_t) T x0 + sqrt(1 - ab_t) T xi on the full training grid, then only a
    random subset of the pixels (``ratio``) is scored: mean ||f(x_t, c, t) - T xi(c)||^2.
    Sampling: the same network on *all* pixels of any resolution R, starting from T xi_T with xi_T
    resolution-consistent white noise, DDIM/DDPM in the mollified space, and a Wiener filter at the end
    to undo T (the paper de-mollifies samples the same way before scoring).
    """

    def __init__(self, cfg: dict, mollifier: Mollifier | None = None):
        """``mollifier`` replaces the run's ``diffusion`` mollifier (a std-0 one gives ordinary DDPM)."""
        super().__init__()
        self.cfg = cfg
        self.train_res = int(cfg["resolution"])
        self.ratio = C.check_ratio(float(cfg["ratio"]))
        self.coords = C.check_coords(cfg["coords"])
        d = cfg["diffusion"]
        self.mollifier = mollifier or Mollifier(std_px=d["mollifier_std_px"], train_res=self.train_res,
                                                inv_snr=d["wiener_inv_snr"])
        self.diffusion = MollifiedDiffusion(make_betas(d["schedule"], d["timesteps"]), self.mollifier)

    def denoise(self, x_t: Tensor, idx: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Estimate of T xi at pixels ``idx``.

        Args:
            x_t: [B, 3, R, R] the mollified state on the whole grid (a network may read only the points).
            idx: [B, N] int64 flat pixel indices (row-major) of the points to predict.
            t: [B] int64 timesteps.
            cond: [B, ...] per-image condition of a :attr:`conditional` method (None otherwise).
        Returns:
            [B, N, 3].
        """
        raise NotImplementedError

    def condition(self, x0: Tensor, generator: torch.Generator) -> Tensor | None:
        """The training condition of clean images x0 (the autoencoder's z); None for unconditional methods.

        Called after the loss's own draws, so an unconditional run's random stream is unchanged.
        """
        return None

    # ------------------------------------------------------------------ training
    def training_loss(self, x0: Tensor, generator: torch.Generator, t: Tensor | None = None) -> Tensor:
        """Eq. 46, Monte-Carlo over a random coordinate subset: mean ||f(x_t(c), t) - T xi(c)||^2."""
        B, _, R, _ = x0.shape
        dev = x0.device
        # Draw on the CPU generator then move: identical streams on every device (and exact resume).
        if t is None:
            t = torch.randint(0, self.diffusion.num_timesteps, (B,), generator=generator)
        t = t.to(dev)
        xi = torch.randn(x0.shape, generator=generator).to(dev)
        # Uniform random pixels (paper default) or a scrambled low-discrepancy set (Table 2 ablation);
        # both without duplicates (the reference code's QMC could repeat pixels).
        idx = C.draw_subset(self.coords, B, R, self.ratio, generator, device=dev)
        # The mollified states are computed on the full grid (cheap at training resolution) and then
        # subsampled; this is exactly q(x_t | x0) of Eq. 11 evaluated at the sampled coordinates.
        x_t = self.diffusion.q_sample(x0, t, xi)
        target = C.gather_points(self.mollifier(xi), idx)            # T xi at the points [B, N, 3]
        pred = self.denoise(x_t, idx, t, self.condition(x0, generator))   # [B, N, 3]
        return F.mse_loss(pred.float(), target)

    # ------------------------------------------------------------------ sampling
    def denoiser(self, resolution: int, cond: Tensor | None = None) -> Denoiser:
        """The point network on all R x R pixels, predicting T xi (Eq. 44), as a T x0 denoiser.

        ``cond`` [B, ...]: the condition of the B images it will denoise (conditional methods only).
        """
        R = int(resolution)

        def net(x_t: Tensor, t: Tensor) -> Tensor:
            B = x_t.shape[0]
            idx = C.full_grid(B, R, device=x_t.device)
            f = self.denoise(x_t, idx, t, cond)                      # [B, R*R, 3]
            return f.transpose(1, 2).reshape(B, -1, R, R)

        return EpsDenoiser(net)
