"""The ``Method`` interface, and the one sampling loop every method shares.

A method owns its network *and* its generative process, so that training and sampling code is shared by
∞-Diff and the baselines (docs/architecture.md, "Methods")::

    loss = method.training_loss(x0, generator)          # scalar; draws t, noise and coordinates itself
    x = method.sample(seeds, resolution, steps)         # [len(seeds), C, R, R] in [-1, 1]

A subclass provides three things and inherits sampling, editing and guidance:

* ``self.diffusion``, its process as a :class:`~infdiff.samplers.Schedule` (noise levels and mollifier T);
* :meth:`denoiser`, its network wrapped into the one signature of :mod:`infdiff.denoisers`;
* :meth:`training_loss`.

Sampling uses one noise stream per seed (EDM's "stacked random generator" idea): stream 0 is the
initial state, stream k + 1 the noise of reverse step k. Image i depends on ``seeds[i]`` only, never on
the batch it was drawn in or on the batch size.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from infdiff.denoisers import Denoiser
from infdiff.methods.specs import MethodSpec, method_spec
from infdiff.noise import batch_white_noise
from infdiff.samplers import SAMPLERS, ddim_invert, ddim_sample, ddpm_sample

__all__ = ["Method"]

#: guidance(x_t, mu_0, rows) -> scalar loss; rows is the slice of the batch being sampled
Guidance = Callable[[Tensor, Tensor, slice], Tensor]


class Method(nn.Module):
    """Base class of a generative method trained and sampled by the shared harness.

    Subclasses set ``name`` (their line in :data:`infdiff.methods.METHODS`), ``self.train_res`` and
    ``self.diffusion``, and implement :meth:`training_loss` and :meth:`denoiser`.
    """

    #: the method's name in the spec table
    name: str = ""
    #: True when the denoiser takes a per-image condition (the autoencoder framework's z)
    conditional: bool = False

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.name)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def training_loss(self, x0: Tensor, generator: torch.Generator, t: Tensor | None = None) -> Tensor:
        """x0 [B, C, R, R] in [-1, 1] on the model's device -> scalar loss (draws from ``generator``).

        ``t`` [B]: the timesteps (units of :meth:`fixed_timesteps`); None draws them from ``generator``.
        Given timesteps are how the validation loss scores every image at the same noise levels.
        """
        raise NotImplementedError

    def fixed_timesteps(self, k: int) -> Tensor:
        """k evenly spaced timesteps [k] covering the method's time range (the validation loss's levels).

        Discrete-time methods: integers from 0 to T - 1, endpoints included. A continuous-time method
        overrides this.
        """
        T = self.diffusion.num_timesteps
        return torch.linspace(0, T - 1, int(k)).round().long()

    def denoiser(self, resolution: int) -> Denoiser:
        """The network as a grid denoiser at ``resolution``: (x_t [B, C, R, R], level) -> T x0_hat.

        A :attr:`conditional` method also takes ``cond`` (a [B, ...] condition of the images denoised).
        """
        raise NotImplementedError

    def prior_condition(self, seeds: Sequence[int]) -> Tensor | None:
        """The condition an unconditional sample of ``seeds`` uses: None, or (autoencoder) a z per seed."""
        return None

    def _denoiser_for(self, R: int, cond: Tensor | None, rows: slice) -> Denoiser:
        if cond is None:
            return self.denoiser(R)
        if not self.conditional:
            raise ValueError(f"{self.name} is unconditional: it takes no condition (cond must be None)")
        return self.denoiser(R, cond=cond[rows].to(self.device))

    def noise(self, seeds: Sequence[int], resolution: int, stream: int = 0) -> Tensor:
        """White noise xi [B, 3, R, R] of ``seeds``, scaled so T xi keeps its variance at every R.

        The mollifier's std in pixels grows with R, which shrinks the per-pixel variance of blurred white
        noise by (R_train / R)^2; the factor R / R_train (:meth:`Mollifier.noise_scale`) undoes that, so
        the initial state and every step's noise have the variance the network was trained with (the
        official code's ``noise_mul``). Without a mollifier the factor is 1.
        """
        xi = batch_white_noise(seeds, resolution, channels=3, stream=stream, device=self.device)
        return xi * self.diffusion.mollifier.noise_scale(resolution)

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, seeds: Sequence[int], resolution: int, steps: int, progress: bool = True,
               sampler: str = "ddim", eta: float = 0.0, batch_size: int | None = None,
               demollify: bool = True, callback=None, cond: Tensor | None = None) -> Tensor:
        """Sample one image per seed at ``resolution`` from pure noise.

        Returns [len(seeds), 3, R, R] in [-1, 1], float32 on the CPU; Wiener de-mollified unless
        ``demollify=False`` (then the estimate of T x0 is returned). A method without
        ``spec.any_resolution`` samples only at its training resolution. ``cond`` [len(seeds), ...]
        conditions a :attr:`conditional` method (e.g. the z of encoded images); by default it is
        :meth:`prior_condition` of the seeds.
        """
        R = int(resolution)
        if not self.spec.any_resolution and R != self.train_res:
            raise ValueError(f"{self.name} samples only at its training resolution {self.train_res} px, not "
                             f"{R} px; rows at other resolutions are its samples resized, which "
                             "infdiff.sample.sample_checkpoint does (and labels)")
        cond = self.prior_condition(list(seeds)) if cond is None else cond
        return self._reverse(list(seeds), R, steps, None, None, progress, sampler, eta, batch_size,
                             demollify, callback, cond=cond)

    @torch.no_grad()
    def edit(self, x_init: Tensor, seeds: Sequence[int], t_start: int, steps: int, progress: bool = False,
             sampler: str = "ddpm", guidance: Guidance | None = None, guidance_scale: float = 0.0,
             batch_size: int | None = None, demollify: bool = True, cond: Tensor | None = None) -> Tensor:
        """Run the reverse process from x_init noised to ``t_start`` (SDEdit; Meng et al. 2022).

        x_{t_start} = sqrt(ab) T x_init + sqrt(1 - ab) T xi (Eq. 11, xi from each seed's stream 0), then
        ``steps`` respaced steps down to t = 0 at x_init's resolution. ``guidance(x_t, mu_0, rows) -> loss``
        adds reconstruction guidance (DDPM only, see :func:`infdiff.samplers.ddpm_sample`).

        Args:
            x_init: [B, 3, R, R] in [-1, 1] (e.g. an upsampled low-resolution image, or the original of an
                inpainting task); ``len(seeds) == B``.
            cond: [B, ...] condition of a :attr:`conditional` method (default :meth:`prior_condition`).
        Returns:
            [B, 3, R, R] in [-1, 1].
        """
        if x_init.shape[0] != len(seeds):
            raise ValueError(f"edit: {x_init.shape[0]} images but {len(seeds)} seeds")
        cond = self.prior_condition(list(seeds)) if cond is None else cond
        return self._reverse(list(seeds), x_init.shape[-1], steps, x_init, t_start, progress, sampler, 0.0,
                             batch_size, demollify, None, guidance, guidance_scale, cond=cond)

    @torch.no_grad()
    def decode(self, x_t: Tensor, seeds: Sequence[int], t_start: int | None, steps: int, progress: bool = False,
               sampler: str = "ddim", guidance: Guidance | None = None, guidance_scale: float = 0.0,
               batch_size: int | None = None, demollify: bool = True, cond: Tensor | None = None) -> Tensor:
        """Run the reverse process from a given state x_{t_start} (e.g. a DDIM encoding, :meth:`invert`).

        Args:
            x_t: [B, 3, R, R] a state at level ``t_start`` (mollified space; None = the noisiest level).
            seeds: one per image: the noise of stochastic steps (DDPM) comes from their streams.
        Returns:
            [B, 3, R, R] in [-1, 1], as :meth:`sample`.
        """
        if x_t.shape[0] != len(seeds):
            raise ValueError(f"decode: {x_t.shape[0]} states but {len(seeds)} seeds")
        cond = self.prior_condition(list(seeds)) if cond is None else cond
        return self._reverse(list(seeds), x_t.shape[-1], steps, None, t_start, progress, sampler, 0.0,
                             batch_size, demollify, None, guidance, guidance_scale, cond=cond, x_start=x_t)

    @torch.no_grad()
    def invert(self, x0: Tensor, steps: int, t_end: int | None = None, cond: Tensor | None = None,
               batch_size: int | None = None, progress: bool = False) -> Tensor:
        """Deterministic DDIM encoding (Song et al. 2021, Sec. 5.4) of clean images x0 [B, 3, R, R] in [-1, 1].

        Runs DDIM forwards from T x0 over the levels a ``steps``-step sampler visits up to ``t_end``
        (default: the noisiest); :meth:`decode` with the same steps, ``t_start = t_end`` and the same
        ``cond`` maps the result back to (nearly) T x0, then de-mollifies. Returns the state [B, 3, R, R]
        (mollified space, float32 on the model's device).
        """
        self._check_part_way()
        was_training = self.training
        self.eval()
        R = x0.shape[-1]
        batch_size = batch_size or x0.shape[0]
        out = []
        try:
            for start in range(0, x0.shape[0], batch_size):
                rows = slice(start, start + batch_size)
                Tx0 = self.diffusion.mollifier(x0[rows].to(self.device, torch.float32))
                out.append(ddim_invert(self._denoiser_for(R, cond, rows), self.diffusion, Tx0, steps, t_end,
                                       progress=progress))
        finally:
            self.train(was_training)
        return torch.cat(out)

    def _check_part_way(self) -> None:
        if not self.spec.starts_part_way:
            raise ValueError(f"{self.name} cannot start the reverse process part-way (spec.starts_part_way)")

    def _reverse(self, seeds: list[int], R: int, steps: int, x_init: Tensor | None, t_start: int | None,
                 progress: bool, sampler: str, eta: float, batch_size: int | None, demollify: bool,
                 callback, guidance: Guidance | None = None, guidance_scale: float = 0.0,
                 cond: Tensor | None = None, x_start: Tensor | None = None) -> Tensor:
        """The chunk loop of :meth:`sample` (from pure noise), :meth:`edit` (from a noised image) and
        :meth:`decode` (from a given state ``x_start`` at ``t_start``)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler '{sampler}' (known: {', '.join(SAMPLERS)})")
        if x_init is not None or x_start is not None:
            self._check_part_way()
        if guidance is not None and sampler != "ddpm":
            raise ValueError("reconstruction guidance is implemented for the ddpm sampler")
        if cond is not None and len(cond) != len(seeds):
            raise ValueError(f"{len(cond)} conditions for {len(seeds)} seeds")
        was_training = self.training
        self.eval()  # dropout off while sampling (the official code never called .eval())
        batch_size = batch_size or len(seeds)
        T = self.diffusion.mollifier
        out = []
        try:
            for start in range(0, len(seeds), batch_size):
                chunk = seeds[start:start + batch_size]
                rows = slice(start, start + batch_size)
                denoiser = self._denoiser_for(R, cond, rows)
                if x_start is not None:                         # a given state (DDIM encoding)
                    x_T = x_start[rows].to(self.device, torch.float32)
                elif x_init is None:
                    x_T = T(self.noise(chunk, R, stream=0))     # x_T ~ N(0, T T^t), scaled
                else:                                           # x_{t_start} ~ q(x_t | x_init), Eq. 11
                    xi = self.noise(chunk, R, stream=0)
                    t = torch.full((len(chunk),), int(t_start), dtype=torch.int64, device=self.device)
                    x0 = x_init[rows].to(self.device, torch.float32)
                    x_T = self.diffusion.q_sample(x0, t, xi)
                step_noise = lambda k, c=chunk: self.noise(c, R, stream=k + 1)  # noqa: E731
                if sampler == "ddim":
                    Tx0 = ddim_sample(denoiser, self.diffusion, x_T, steps, eta=eta,
                                      noise_fn=step_noise if eta > 0 else None, callback=callback,
                                      progress=progress, t_start=t_start)
                else:
                    g = None if guidance is None else (
                        lambda x_t, mu_0, s=start: guidance(x_t, mu_0, slice(s, s + x_t.shape[0])))
                    Tx0 = ddpm_sample(denoiser, self.diffusion, x_T, steps, noise_fn=step_noise,
                                      callback=callback, progress=progress, t_start=t_start,
                                      guidance=g, guidance_scale=guidance_scale)
                # The paper de-mollifies samples with the Wiener filter before scoring (Sec. 3.2);
                # for an unmollified process the filter is the identity.
                x0 = T.wiener(Tx0) if demollify else Tx0
                out.append(x0.clamp(-1, 1).float().cpu())
        finally:
            self.train(was_training)
        return torch.cat(out)
