"""Per-pixel MLP diffusion: the coordinate-MLP baseline of ∞-Diff's Table 1 (``method: mlp_pixel``).

The blog post "Coordinate Based Diffusion for Image Synthesis" replaced the U-Net by an MLP that
predicts each pixel of the reverse process from

    v = <x, y, t, I_t(x), N_1(x), ..., N_k(x)>,   N_k = the image blurred by a Gaussian (context),

with 3 hidden layers and output I_{t-1}(x); every attempt produced noise. Two variants are built here:

* ``variant: fair`` (:class:`MLPPixel`): the *same* mollified process, schedule, loss (Eq. 46 on a random
  coordinate subset) and samplers as ∞-Diff (:class:`infdiff.methods.mollified.MollifiedPointMethod`), so that only
  the network differs. Per point it sees Fourier features of its continuous coordinates, x_t there and
  x_t blurred by Gaussians of fixed *continuous* stds (the same lengths at every resolution, like ∞-Diff's
  kernels), and predicts T xi with a residual MLP whose blocks are FiLM-conditioned on t.
* ``variant: as_described`` (:class:`MLPPixelAsDescribed`): the blog's design, a plain 3-hidden-layer MLP
  mapping v to I_{t-1} directly in ordinary (unmollified) DDPM. It reaches the shared samplers through
  :class:`~infdiff.denoisers.PreviousXDenoiser`, like every other method.

Both share the resolution-free context: :func:`context_stack` / :func:`context_features`.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infdiff import coords as C
from infdiff.denoisers import Denoiser, PreviousXDenoiser
from infdiff.diffusion import MollifiedDiffusion
from infdiff.methods.base import Method
from infdiff.methods.mollified import MollifiedPointMethod
from infdiff.mollifier import Mollifier
from infdiff.nets.blocks import ModulatedLayerNorm, PointMLP, TimeEmbedding

__all__ = ["VARIANTS", "context_blur", "context_stack", "context_features", "fourier_features",
           "points_per_call", "PixelMLP", "MLPPixel", "trajectory_pair", "MLPPixelAsDescribed", "build_mlp_pixel"]


# ---------------------------------------------------------------------------------------------- features
@functools.lru_cache(maxsize=None)
def context_blur(std: float, train_res: int) -> Mollifier:
    """The Gaussian blur N of std ``std`` *in units of the image side* (a length in [0, 1]^2).

    A :class:`~infdiff.mollifier.Mollifier` with ``std_px = std * train_res`` at ``train_res`` has std
    ``std * R`` px at any resolution R, i.e. the same continuous operator everywhere; its reflective
    boundary keeps a constant image exactly constant. Cached (with its per-R operator matrices) so that
    sampling does not rebuild [R, R] matrices at every step; it holds no learnt state.
    """
    return Mollifier(std_px=float(std) * int(train_res), train_res=int(train_res), inv_snr=0.0)


def context_stack(x_t: Tensor, stds: Sequence[float], train_res: int) -> Tensor:
    """x_t and its context blurs on the grid: [B, 3, R, R] -> [B, 3 (1 + K), R, R].

    Channels are (x_t, N_1 x_t, ..., N_K x_t), N_k of std ``stds[k]`` image sides. The blurs run in
    float32 (float64 for float64 input) with autocast off, like the mollifier itself.
    """
    return torch.cat([x_t] + [context_blur(s, train_res)(x_t) for s in stds], dim=1)


def context_features(x_t: Tensor, idx: Tensor, stds: Sequence[float], train_res: int) -> Tensor:
    """Per-point context of the noisy image: x_t [B, 3, R, R], idx [B, N] -> [B, N, 3 (1 + K)].

    Point n gets (x_t, N_1 x_t, ..., N_K x_t) at pixel ``idx[:, n]``. Because every N_k has a fixed std in
    continuous units, a constant image gives identical features at every resolution (tested).
    """
    return C.gather_points(context_stack(x_t, stds, train_res), idx)


def fourier_features(coords: Tensor, octaves: int) -> Tensor:
    """Positional encoding of continuous coordinates (NeRF / Fourier features, Tancik et al. 2020).

    Args:
        coords: [B, N, 2] pixel centres (x, y) in [0, 1]^2 (:func:`infdiff.coords.idx_to_coords`).
        octaves: L; frequencies 2^k pi, k = 0 .. L-1.
    Returns:
        [B, N, 4 L]: sin(2^k pi x), sin(2^k pi y), ..., then the cosines (empty for L = 0).
    """
    freqs = math.pi * 2.0 ** torch.arange(octaves, device=coords.device, dtype=coords.dtype)
    args = (coords[..., :, None] * freqs).flatten(-2)                    # [B, N, 2 L]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def points_per_call(chunk: int, B: int, N: int) -> int:
    """Points of each of the B images (of N each) that one network call evaluates.

    With autograd on (training, guided sampling) all N in one call, so that the graph stays one graph, as
    :func:`infdiff.nets.blocks.pointwise` does. Without it (sampling), ``chunk`` points per CPU thread in
    all, at least one per image: a call's hidden activations ([points, mlp_ratio * width]) then stay in
    cache. Measured for the embedded default (width 256, bf16, AMX Xeon): 4096 points per thread gave
    1.15-1.2x faster sampling steps than 16384 on one thread, and 8192 equalled 16384 on two.
    """
    if torch.is_grad_enabled():
        return N
    return max(1, chunk * torch.get_num_threads() // B)


# --------------------------------------------------------------------------------- variant: fair
class PixelMLP(nn.Module):
    """Residual MLP on per-point features, FiLM-conditioned on t (the fair variant's network).

    in-proj -> ``depth`` x [v + Linear(GELU(Linear(LN_t(v))))] -> LN -> Linear(width -> 3), where LN_t is
    :class:`~infdiff.nets.blocks.ModulatedLayerNorm` (LN, then (1 + scale(t)) . + shift(t)) and the inner
    MLP is :class:`~infdiff.nets.blocks.PointMLP` (width -> mlp_ratio * width -> width) with a
    zero-initialised last layer, so every block starts as the identity. Points never interact.
    """

    def __init__(self, in_features: int, width: int, depth: int, mlp_ratio: int, time_dim: int):
        super().__init__()
        self.time = TimeEmbedding(time_dim)
        self.inp = nn.Linear(in_features, width)
        self.norms = nn.ModuleList(ModulatedLayerNorm(width, time_dim) for _ in range(depth))
        self.mlps = nn.ModuleList(PointMLP(width, mlp_ratio * width) for _ in range(depth))
        for mlp in self.mlps:
            nn.init.zeros_(mlp.fc2.weight)
            nn.init.zeros_(mlp.fc2.bias)
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 3)

    def modulations(self, temb: Tensor) -> list:
        """Every block's LN_t modulation (:meth:`ModulatedLayerNorm.modulation`) for temb [B, time_dim]: a
        function of the image's t only, so sampling computes it once per step, not once per slice of points."""
        return [norm.modulation(temb) for norm in self.norms]

    def forward(self, feats: Tensor, temb: Tensor, mods: list | None = None) -> Tensor:
        """feats [B, N, in_features], temb [B, time_dim] (from ``self.time(t)``) -> [B, N, 3]; ``mods``:
        :meth:`modulations` of temb when the caller already has them (slices of one image set)."""
        mods = self.modulations(temb) if mods is None else mods
        v = self.inp(feats)
        for norm, mlp, mod in zip(self.norms, self.mlps, mods):
            v = mlp(norm.modulate(v, mod), residual=v)     # v + MLP(LN_t(v))
        return self.out(self.out_norm(v))


class MLPPixel(MollifiedPointMethod):
    """Fair per-pixel MLP: ∞-Diff's mollified process and sampler, a pointwise network with context.

    Only :meth:`denoise` differs from ∞-Diff (see :class:`infdiff.methods.mollified.MollifiedPointMethod` for the
    loss, Eq. 46, and the DDPM/DDIM samplers with the Wiener de-mollification). Per point c the network
    reads [Fourier(c), x_t(c), N_1 x_t(c), .., N_K x_t(c)] and t, and predicts T xi(c). The blurs replace
    the blog's blurs of the *clean* image (unavailable when sampling) and play the role of ∞-Diff's
    spatial operators, with the same resolution-free definition: lengths in units of the image side.
    """

    name = "mlp_pixel"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        m = cfg["mlp_pixel"]
        self.context_stds = tuple(float(s) for s in m["context_stds"])
        self.octaves = int(m["fourier_octaves"])
        self.chunk = int(m["chunk"])
        in_features = 4 * self.octaves + 3 * (1 + len(self.context_stds))
        self.net = PixelMLP(in_features, m["width"], m["depth"], m["mlp_ratio"], m["time_dim"])

    def denoise(self, x_t: Tensor, idx: Tensor, t: Tensor, cond: None = None) -> Tensor:
        """Estimate of T xi at pixels ``idx``: x_t [B, 3, R, R], idx [B, N], t [B] -> [B, N, 3] (unconditional).

        The blurs are computed once on the whole grid; features and the network then run on slices of
        points (:func:`points_per_call`), which bounds memory at large sampling resolutions. Every point is
        computed independently, so slicing changes nothing but float rounding.
        """
        B, N = idx.shape
        R = x_t.shape[-1]
        ctx = context_stack(x_t, self.context_stds, self.train_res)     # [B, 3 (1 + K), R, R]
        temb = self.net.time(t)                                         # [B, time_dim]
        mods = self.net.modulations(temb)                               # once for all slices
        step = points_per_call(self.chunk, B, N)
        out = []
        for n0 in range(0, N, step):
            part = idx[:, n0:n0 + step]
            pos = fourier_features(C.idx_to_coords(part, R).to(ctx.dtype), self.octaves)
            out.append(self.net(torch.cat([pos, C.gather_points(ctx, part)], dim=-1), temb, mods))
        return torch.cat(out, dim=1)


# ---------------------------------------------------------------------------- variant: as_described
def trajectory_pair(diffusion: MollifiedDiffusion, x0: Tensor, t: Tensor, eps_prev: Tensor,
                    eps_step: Tensor) -> tuple[Tensor, Tensor]:
    """(x_t, x_{t-1}) on one forward trajectory of ordinary DDPM (Ho et al. 2020, 0-based t).

    x_{t-1} ~ q(x_{t-1} | x0) = N(sqrt(ab_{t-1}) x0, (1 - ab_{t-1}) I)  (ab_{-1} = 1: x_{-1} = x0), then one
    forward step x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, so x_t ~ q(x_t | x0) as well and the
    pair is jointly distributed as in the forward chain. Any mollifier of ``diffusion`` is ignored (the
    blog's process is unmollified; this method builds its diffusion with std 0).

    Args:
        x0: [B, C, R, R] data; t: [B] int64 in [0, T); eps_prev, eps_step: [B, C, R, R] N(0, I).
    Returns:
        x_t, x_prev, both [B, C, R, R].
    """
    a_prev = diffusion.coef(diffusion.alpha_bar_prev, t, x0)
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps_prev
    b = diffusion.coef(diffusion.betas, t, x0)
    return (1 - b).sqrt() * x_prev + b.sqrt() * eps_step, x_prev


class MLPPixelAsDescribed(MollifiedPointMethod):
    """The blog's per-pixel MLP, as described: v = <x, y, t, I_t(x), N_1(x)..N_K(x)> -> I_{t-1}(x).

    * Process: plain Gaussian diffusion (no mollifier) with the run's ``diffusion.schedule`` and
      ``diffusion.timesteps``: the point process of :class:`MollifiedPointMethod` with a std-0 mollifier
      (T = I), whose coordinate subsets it shares; its loss and denoiser are its own.
    * Network: an MLP with exactly 3 hidden layers of ``width`` units (SiLU), output I_{t-1} at the point.
    * Inputs: x, y (pixel centres mapped to [-1, 1]) and t (2 t / (T - 1) - 1) in [-1, 1]; I_t(x) and the
      N_k(x) are the noisy values as they are (the data is in [-1, 1]; the noisy image has unit variance
      at large t, so it is not rescaled).
    * Loss: MSE between the output and x_{t-1} of the same forward trajectory (:func:`trajectory_pair`)
      at a random coordinate subset (``ratio``, ``coords``).
    * Sampling: the shared samplers from white noise at any R. The network's MSE-optimal output is the
      posterior mean E[x_{t-1} | x_t] = c1 E[x0 | x_t] + c2 x_t (Eq. 12), which
      :class:`~infdiff.denoisers.PreviousXDenoiser` solves for the x0 estimate; with DDPM over all
      ``diffusion.timesteps`` steps the mean of every step is then the network's I_{t-1} itself, plus the
      posterior noise that ancestral sampling adds (the blog applied the network alone, noise-free).

    DEVIATION from the blog: it blurred the *clean* image for N_k, which does not exist at sampling time
    (its training inputs leak x0); here N_k blurs the noisy I_t, with the same resolution-free stds
    (``context_stds``, units of the image side) as the fair variant. Of the other ``mlp_pixel`` keys it
    reads ``width`` and ``chunk`` (:func:`points_per_call`); ``depth``, ``mlp_ratio``, ``fourier_octaves``
    and ``time_dim`` belong to the fair variant and are ignored.
    """

    name = "mlp_pixel"

    def __init__(self, cfg: dict):
        # Std-0 mollifier: T = I, i.e. ordinary DDPM with the run's schedule (Sec. 3.1 white-noise process);
        # inv_snr 0 makes its "Wiener filter" the identity, so samples are the chain's own output.
        super().__init__(cfg, mollifier=Mollifier(std_px=0, train_res=int(cfg["resolution"]), inv_snr=0))
        m = cfg["mlp_pixel"]
        self.context_stds = tuple(float(s) for s in m["context_stds"])
        self.chunk = int(m["chunk"])
        w = int(m["width"])
        n_in = 3 + 3 * (1 + len(self.context_stds))        # x, y, t, I_t, N_1..N_K
        self.net = nn.Sequential(nn.Linear(n_in, w), nn.SiLU(), nn.Linear(w, w), nn.SiLU(),
                                 nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 3))

    def predict_prev(self, x_t: Tensor, idx: Tensor, t: Tensor) -> Tensor:
        """The network's I_{t-1} at pixels ``idx``: x_t [B, 3, R, R], idx [B, N], t [B] -> [B, N, 3]."""
        B, N = idx.shape
        R = x_t.shape[-1]
        ctx = context_stack(x_t, self.context_stds, self.train_res)
        T = self.diffusion.num_timesteps
        t_in = (2.0 * t.to(ctx.dtype) / max(T - 1, 1) - 1.0)[:, None, None]   # [B, 1, 1] in [-1, 1]
        step = points_per_call(self.chunk, B, N)
        out = []
        for n0 in range(0, N, step):
            part = idx[:, n0:n0 + step]
            xy = 2 * C.idx_to_coords(part, R).to(ctx.dtype) - 1                # pixel centres in [-1, 1]
            v = torch.cat([xy, t_in.expand(B, part.shape[1], 1), C.gather_points(ctx, part)], dim=-1)
            out.append(self.net(v))
        return torch.cat(out, dim=1)

    def training_loss(self, x0: Tensor, generator: torch.Generator, t: Tensor | None = None) -> Tensor:
        """MSE between MLP(v(x_t)) and x_{t-1} of the same trajectory, at a random pixel subset."""
        B, _, R, _ = x0.shape
        dev = x0.device
        # CPU generator, then move: identical draws on every device (exact resume), as the other methods.
        if t is None:
            t = torch.randint(0, self.diffusion.num_timesteps, (B,), generator=generator)
        t = t.to(dev)
        eps_prev = torch.randn(x0.shape, generator=generator).to(dev)
        eps_step = torch.randn(x0.shape, generator=generator).to(dev)
        idx = C.draw_subset(self.coords, B, R, self.ratio, generator, device=dev)
        x_t, x_prev = trajectory_pair(self.diffusion, x0, t, eps_prev, eps_step)
        return F.mse_loss(self.predict_prev(x_t, idx, t).float(), C.gather_points(x_prev, idx).float())

    def denoiser(self, resolution: int) -> Denoiser:
        """The MLP on all R x R pixels, predicting I_{t-1}, as a T x0 denoiser (T = I here)."""
        R = int(resolution)

        def net(x_t: Tensor, t: Tensor) -> Tensor:
            B = x_t.shape[0]
            x_prev = self.predict_prev(x_t, C.full_grid(B, R, device=x_t.device), t)     # [B, R*R, 3]
            return x_prev.float().transpose(1, 2).reshape(B, 3, R, R)

        return PreviousXDenoiser(net, self.diffusion)


# ------------------------------------------------------------------------------ entry point of the spec
VARIANTS = {"fair": MLPPixel, "as_described": MLPPixelAsDescribed}


def build_mlp_pixel(cfg: dict) -> Method:
    """``method: mlp_pixel``: the class named by ``cfg["mlp_pixel"]["variant"]`` (both named "mlp_pixel")."""
    variant = cfg["mlp_pixel"]["variant"]
    if variant not in VARIANTS:
        raise ValueError(f"unknown mlp_pixel variant '{variant}' (known: {', '.join(VARIANTS)})")
    return VARIANTS[variant](cfg)
