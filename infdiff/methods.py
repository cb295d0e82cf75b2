"""The ``Method`` interface and registry: the only thing train.py, sample.py and the workflow know.

A method owns its network *and* its generative process, so that training and sampling code is shared
by ∞-Diff and the baselines (DESIGN.md §3 "The Method interface")::

    loss = method.training_loss(x0, generator)          # scalar; draws t, noise and coordinates itself
    x = method.sample(seeds, resolution, steps)         # [len(seeds), C, R, R] in [-1, 1]

Sampling uses one noise stream per seed (EDM's "stacked random generator" idea), so image i depends on
``seeds[i]`` only, never on the batch it was drawn in or on the batch size.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infdiff import coords as C
from infdiff.diffusion import MollifiedDiffusion, make_betas
from infdiff.mollifier import Mollifier
from infdiff.noise import batch_white_noise
from infdiff.samplers import ddim_sample, ddpm_sample


class Method(nn.Module):
    """Base class of a generative method trained and sampled by the shared harness."""

    #: registry name, set by :func:`register`
    name: str = ""

    def training_loss(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        """x0 [B, C, R, R] in [-1, 1] on the model's device -> scalar loss (draws from ``generator``)."""
        raise NotImplementedError

    def sample(self, seeds: Sequence[int], resolution: int, steps: int, progress: bool = True,
               **options) -> Tensor:
        """Draw one image per seed: [len(seeds), C, resolution, resolution] in [-1, 1]."""
        raise NotImplementedError

    def can_sample(self, resolution: int) -> bool:
        """Whether :meth:`sample` draws images at ``resolution`` natively (grid models: only R_train).

        Where it cannot, the harness samples at the training resolution and resizes (and labels the
        rows "resized"), see :func:`infdiff.sample.sample_checkpoint`.
        """
        return True

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


METHODS: dict[str, Callable[[dict], Method]] = {}


def register(name: str):
    """Class decorator adding a :class:`Method` subclass to the registry under ``name``."""
    def wrap(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return wrap


def build_method(cfg: dict) -> Method:
    """Instantiate the method named by ``cfg["method"]`` from a resolved run config."""
    name = cfg.get("method")
    if name not in METHODS:
        # The baselines register themselves on import; imported here so that `import infdiff.methods`
        # stays light and the baselines can import infdiff without a cycle.
        import baselines.mlp_pixel  # noqa: F401
        import baselines.simple_diffusion  # noqa: F401
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name](cfg)


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

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.train_res = int(cfg["resolution"])
        self.ratio = C.check_ratio(float(cfg["ratio"]))
        self.coords = C.check_coords(cfg.get("coords", "uniform"))
        d = cfg["diffusion"]
        self.mollifier = Mollifier(std_px=d["mollifier_std_px"], train_res=self.train_res,
                                   inv_snr=d["wiener_inv_snr"])
        self.diffusion = MollifiedDiffusion(make_betas(d["schedule"], d["timesteps"]), self.mollifier)

    def denoise(self, x_t: Tensor, idx: Tensor, t: Tensor) -> Tensor:
        """Estimate of T xi at pixels ``idx``.

        Args:
            x_t: [B, 3, R, R] the mollified state on the whole grid (a network may read only the points).
            idx: [B, N] int64 flat pixel indices (row-major) of the points to predict.
            t: [B] int64 timesteps.
        Returns:
            [B, N, 3].
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def training_loss(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        """Eq. 46, Monte-Carlo over a random coordinate subset: mean ||f(x_t(c), t) - T xi(c)||^2."""
        B, _, R, _ = x0.shape
        dev = x0.device
        # Draw on the CPU generator then move: identical streams on every device (and exact resume).
        t = torch.randint(0, self.diffusion.num_timesteps, (B,), generator=generator).to(dev)
        xi = torch.randn(x0.shape, generator=generator).to(dev)
        # Uniform random pixels (paper default) or a scrambled low-discrepancy set (Table 2 ablation);
        # both without duplicates (the reference code's QMC could repeat pixels).
        idx = C.draw_subset(self.coords, B, R, self.ratio, generator, device=dev)
        # The mollified states are computed on the full grid (cheap at training resolution) and then
        # subsampled; this is exactly q(x_t | x0) of Eq. 11 evaluated at the sampled coordinates.
        x_t = self.diffusion.q_sample(x0, t, xi)
        target = C.gather_points(self.mollifier(xi), idx)            # T xi at the points [B, N, 3]
        pred = self.denoise(x_t, idx, t)                             # [B, N, 3]
        return F.mse_loss(pred.float(), target)

    # ------------------------------------------------------------------ sampling
    def _model_fn(self, R: int) -> Callable[[Tensor, Tensor], Tensor]:
        """Wrap the point network as a grid function (x_t [B,3,R,R], t [B]) -> T xi estimate [B,3,R,R]."""
        def fn(x_t: Tensor, t: Tensor) -> Tensor:
            B = x_t.shape[0]
            idx = C.full_grid(B, R, device=x_t.device)
            f = self.denoise(x_t, idx, t)                            # [B, R*R, 3]
            return f.transpose(1, 2).reshape(B, -1, R, R)
        return fn

    def noise(self, seeds: Sequence[int], R: int, stream: int = 0) -> Tensor:
        """White noise xi [B, 3, R, R] for ``seeds``, scaled by R / R_train.

        DESIGN.md §3: the scale keeps the per-pixel variance of T xi equal to its value at the training
        resolution (the mollifier's std in pixels grows with R, which shrinks the variance of blurred
        white noise by (R_train / R)^2). Same scaling as the official code's ``noise_mul``.
        """
        xi = batch_white_noise(seeds, R, channels=3, stream=stream, device=self.device)
        return xi * (R / self.train_res)

    @torch.no_grad()
    def sample(self, seeds: Sequence[int], resolution: int, steps: int, progress: bool = True,
               sampler: str = "ddim", eta: float = 0.0, batch_size: int | None = None,
               demollify: bool = True, callback=None) -> Tensor:
        """Sample one image per seed at ``resolution`` (any R, from the same model).

        Returns [len(seeds), 3, R, R] in [-1, 1], Wiener de-mollified unless ``demollify=False``
        (then the estimate of T x0 is returned).
        """
        return self._reverse(list(seeds), int(resolution), steps, None, None, progress, sampler, eta,
                             batch_size, demollify, callback)

    @torch.no_grad()
    def edit(self, x_init: Tensor, seeds: Sequence[int], t_start: int, steps: int, progress: bool = False,
             sampler: str = "ddpm", guidance=None, guidance_scale: float = 0.0,
             batch_size: int | None = None, demollify: bool = True) -> Tensor:
        """Run the reverse process from x_init noised to ``t_start`` (SDEdit; Meng et al. 2022).

        x_{t_start} = sqrt(ab) T x_init + sqrt(1 - ab) T xi (Eq. 11, xi from each seed's stream 0), then
        ``steps`` respaced steps down to t = 0 at x_init's resolution. ``guidance(x_t, T x0_hat) -> loss``
        adds reconstruction guidance (DDPM only, see :func:`infdiff.samplers.ddpm_sample`).

        Args:
            x_init: [B, 3, R, R] in [-1, 1] (e.g. an upsampled low-resolution image, or the original of an
                inpainting task); ``len(seeds) == B``.
        Returns:
            [B, 3, R, R] in [-1, 1].
        """
        if x_init.shape[0] != len(seeds):
            raise ValueError(f"edit: {x_init.shape[0]} images but {len(seeds)} seeds")
        if guidance is not None and sampler != "ddpm":
            raise ValueError("reconstruction guidance is implemented for the ddpm sampler")
        return self._reverse(list(seeds), x_init.shape[-1], steps, x_init, t_start, progress, sampler, 0.0,
                             batch_size, demollify, None, guidance, guidance_scale)

    def _reverse(self, seeds: list[int], R: int, steps: int, x_init: Tensor | None, t_start: int | None,
                 progress: bool, sampler: str, eta: float, batch_size: int | None, demollify: bool,
                 callback, guidance=None, guidance_scale: float = 0.0) -> Tensor:
        """Shared chunk loop of :meth:`sample` (from pure noise) and :meth:`edit` (from a noised image)."""
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"unknown sampler '{sampler}' (known: ddim, ddpm)")
        was_training = self.training
        self.eval()  # dropout off while sampling (the official code never called .eval())
        batch_size = batch_size or len(seeds)
        out = []
        try:
            for start in range(0, len(seeds), batch_size):
                chunk = seeds[start:start + batch_size]
                xi = self.noise(chunk, R, stream=0)
                if x_init is None:
                    x_T = self.mollifier(xi)                    # x_T ~ N(0, T T^t), scaled
                else:                                           # x_{t_start} ~ q(x_t | x_init), Eq. 11
                    t = torch.full((len(chunk),), int(t_start), dtype=torch.int64, device=self.device)
                    x0 = x_init[start:start + batch_size].to(self.device, torch.float32)
                    x_T = self.diffusion.q_sample(x0, t, xi)
                fn = self._model_fn(R)
                if sampler == "ddim":
                    noise_fn = (lambda k, c=chunk: self.noise(c, R, stream=k + 1)) if eta > 0 else None
                    Tx0 = ddim_sample(fn, self.diffusion, x_T, steps, eta=eta, noise_fn=noise_fn,
                                      callback=callback, progress=progress, t_start=t_start)
                else:
                    g = None if guidance is None else (
                        lambda x_t, Tx0_hat, s=start: guidance(x_t, Tx0_hat, slice(s, s + x_t.shape[0])))
                    Tx0 = ddpm_sample(fn, self.diffusion, x_T, steps,
                                      noise_fn=lambda k, c=chunk: self.noise(c, R, stream=k + 1),
                                      callback=callback, progress=progress, t_start=t_start,
                                      guidance=g, guidance_scale=guidance_scale)
                x0 = self.mollifier.wiener(Tx0) if demollify else Tx0
                out.append(x0.clamp(-1, 1).float().cpu())
        finally:
            self.train(was_training)
        return torch.cat(out)


@register("infdiff")
class InfDiff(MollifiedPointMethod):
    """∞-Diff: mollified diffusion (Sec. 3.2) parameterised by a sparse neural operator (Sec. 4.2).

    The network sees only the values of x_t at the sampled pixels (a function evaluated on an
    irregular point set); see :class:`MollifiedPointMethod` for the process it is trained and sampled with.
    """

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        from infdiff.nets import InfDiffNet  # deferred: keeps `import infdiff.methods` light

        m = cfg["model"]
        self.net = InfDiffNet(
            in_channels=3, channels=m["channels"], sparse_blocks=m["sparse_blocks"],
            kernel_size=m["kernel_size"], train_res=self.train_res, grid_res=m["grid_res"],
            unet_channels=m["unet_channels"], unet_mults=tuple(m["unet_mults"]),
            unet_blocks=m["unet_blocks"], attn_res=tuple(m["attn_res"]), dropout=m["dropout"],
            time_dim=m["time_dim"], mlp_ratio=m["mlp_ratio"], interp=m["interp"], knn=m["knn"],
            # Table 2 ablation switches (absent keys = the paper's architecture)
            regular_conv=m.get("regular_conv", False), nonlinear_kernel=m.get("nonlinear_kernel", False),
            sparse_downsample=m.get("sparse_downsample", False))

    def denoise(self, x_t: Tensor, idx: Tensor, t: Tensor) -> Tensor:
        """The sparse operator sees x_t at the points only: [B, N, 3] values at ``idx`` -> T xi estimate."""
        return self.net(C.gather_points(x_t, idx), idx, x_t.shape[-1], t)
