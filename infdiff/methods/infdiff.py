"""∞-Diff: mollified diffusion (Sec. 3.2) parameterised by a sparse neural operator (Sec. 4.2).

Two frameworks (the run's ``framework`` key):

* ``unconditional``: the denoiser alone.
* ``autoencoder``: the paper's own (Sec. 5, App. A; Preechakul et al. 2022). An encoder, the first half of
  the architecture (:class:`~infdiff.nets.encoder.InfDiffEncoder`), reads its own random subset of the
  *clean* image's pixels and gives z [B, z_dim]; every modulated LayerNorm and grid ResBlock of the
  denoiser is also scaled by z. Stage 1 trains both jointly on the mollified loss (Eq. 46); stage 2
  (:mod:`infdiff.latent`, :mod:`infdiff.train_latent`) fits a DDPM to the latents, which
  :meth:`InfDiff.prior_condition` samples for unconditional generation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from infdiff import coords as C
from infdiff.methods.mollified import MollifiedPointMethod
from infdiff.nets import InfDiffNet
from infdiff.nets.encoder import InfDiffEncoder
from infdiff.noise import ENCODER_STREAM, make_generator

__all__ = ["InfDiff"]


class InfDiff(MollifiedPointMethod):
    """∞-Diff: the network sees only the values of x_t at the sampled pixels.

    A function evaluated on an irregular point set; see :class:`MollifiedPointMethod` for the process it
    is trained and sampled with. Reads the run's ``model`` section (schema ``$defs/model``), passed to
    :class:`~infdiff.nets.InfDiffNet` as it is, and with ``framework: autoencoder`` its ``autoencoder``
    section. The denoiser is built first, so with the same seed its parameters start from the same
    values in both frameworks.
    """

    name = "infdiff"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.conditional = cfg["framework"] == "autoencoder"
        ae = cfg["autoencoder"] if self.conditional else None
        z_dim = ae["z_dim"] if ae else 0
        self.net = InfDiffNet(in_channels=3, train_res=self.train_res, z_dim=z_dim, **cfg["model"])
        if ae:
            self.encoder = InfDiffEncoder(in_channels=3, train_res=self.train_res, z_dim=z_dim, **cfg["model"])
            self.encoder_ratio = C.check_ratio(float(ae["encoder_ratio"]))
        # stage 2, attached after loading (not a submodule: the stage-1 checkpoint does not hold it)
        self.__dict__["latent"] = None

    def denoise(self, x_t: Tensor, idx: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The sparse operator sees x_t at the points only: [B, N, 3] values at ``idx`` -> T xi estimate."""
        if self.conditional and cond is None:
            raise ValueError("an autoencoder run denoises given z: pass cond (encode an image, or sample z "
                             "from the latent model)")
        return self.net(C.gather_points(x_t, idx), idx, x_t.shape[-1], t, cond)

    # ------------------------------------------------------------------ the autoencoder framework
    def _encode_points(self, x0: Tensor, idx: Tensor) -> Tensor:
        return self.encoder(C.gather_points(x0, idx), idx, x0.shape[-1])

    def condition(self, x0: Tensor, generator: torch.Generator) -> Tensor | None:
        """Stage 1: z of the clean x0 from its own uniform subset (independent of the denoiser's points)."""
        if not self.conditional:
            return None
        B, _, R, _ = x0.shape
        idx = C.uniform_subset(B, R, self.encoder_ratio, generator, device=x0.device)
        return self._encode_points(x0, idx)

    @torch.no_grad()
    def encode(self, x0: Tensor, seeds: Sequence[int], batch_size: int | None = None,
               mask: Tensor | None = None) -> Tensor:
        """z [B, z_dim] of clean images x0 [B, 3, R, R] in [-1, 1], at any resolution R, in eval mode.

        Image i reads the ``encoder_ratio`` subset drawn by seed ``seeds[i]``'s encoder stream, so its z
        depends on the image and its seed only (not on the batch; dropout off, unlike the official code).
        ``mask`` [B, 1, R, R] (1 = known): the subset is drawn from the known pixels only, as many as
        ``encoder_ratio`` of the whole image where there are enough (the encoder reads any point set).
        """
        if not self.conditional:
            raise ValueError(f"run '{self.cfg.get('name', '')}' has framework '{self.cfg['framework']}': it has no encoder")
        if len(seeds) != x0.shape[0]:
            raise ValueError(f"encode: {x0.shape[0]} images but {len(seeds)} seeds")
        was_training = self.training
        self.eval()
        R = x0.shape[-1]
        batch_size = batch_size or len(seeds)
        out = []
        try:
            for start in range(0, len(seeds), batch_size):
                chunk = [int(s) for s in seeds[start:start + batch_size]]
                x = x0[start:start + batch_size].to(self.device, torch.float32)
                if mask is None:
                    idx = torch.cat([C.uniform_subset(1, R, self.encoder_ratio, make_generator(s, ENCODER_STREAM))
                                     for s in chunk]).to(self.device)
                    out.append(self._encode_points(x, idx).float())
                    continue
                for i, s in enumerate(chunk):  # known pixels differ per image: one point set each
                    known = mask[start + i].reshape(-1).nonzero().squeeze(1)
                    n = min(len(known), C.num_points(R, self.encoder_ratio))
                    pick = torch.randperm(len(known), generator=make_generator(s, ENCODER_STREAM))[:n]
                    idx = known[pick].sort().values[None].to(self.device)
                    out.append(self._encode_points(x[i:i + 1], idx).float())
        finally:
            self.train(was_training)
        return torch.cat(out)

    def attach_latent(self, latent) -> None:
        """Attach the stage-2 latent model (:class:`~infdiff.latent.LatentDDPM`) used by :meth:`prior_condition`."""
        if not self.conditional:
            raise ValueError("only an autoencoder run has a latent model")
        if latent.z_dim != self.net.z_dim:
            raise ValueError(f"latent model of size {latent.z_dim} for a z of size {self.net.z_dim}")
        self.__dict__["latent"] = latent.to(self.device).eval()

    def prior_condition(self, seeds: Sequence[int]) -> Tensor | None:
        """Unconditional sampling: None, or (autoencoder) z of each seed drawn from the latent DDPM."""
        if not self.conditional:
            return None
        if self.latent is None:
            raise ValueError(f"run '{self.cfg.get('name', '')}' is a diffusion autoencoder: sampling it without given "
                             "z needs its stage-2 latent model (rule train_latent, runs/<run>/latent.pt), "
                             "loaded with infdiff.io.load_method(checkpoint, latent=...)")
        return self.latent.sample(seeds).to(self.device)
