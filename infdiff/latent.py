"""Stage 2 of the diffusion-autoencoder framework: a DDPM on the encoder's latents.

Paper App. A: "the latent model architecture and diffusion hyperparameters are the same as used by
Preechakul et al. [2022]". DiffAE's latent DDPM, as configured by the official ∞-Diff code:

* :class:`MLPSkipNet`: an MLP whose every hidden layer also reads the input z_t (skip connections),
  Linear -> scale by (1 + Linear(temb)) -> LayerNorm -> SiLU; 2048 wide and 10 layers officially.
* a chain of ``timesteps`` steps with a constant beta (0.008), the epsilon parameterisation and an L1
  loss, sampled with ancestral (DDPM) steps. It is an ordinary DDPM, i.e. the mollified process with
  T = I (:class:`~infdiff.mollifier.Mollifier` of std 0), so the shared samplers and denoiser wrappers
  run it unchanged.
* latents normalised per dimension by the training set's mean **and** std, both stored with the model
  (the official code forced the mean to 0, its "BUG" comment).

Sampling draws one z per seed from the seed's own streams (:data:`infdiff.noise.LATENT_STREAMS` + k),
so z, like the image, depends only on its seed.

Shapes: z [B, z_dim] float32; t [B] int64.
"""

from __future__ import annotations

import json
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from infdiff.config import ConfigError
from infdiff.denoisers import EpsDenoiser
from infdiff.diffusion import MollifiedDiffusion
from infdiff.mollifier import Mollifier
from infdiff.nets.blocks import TimeEmbedding
from infdiff.noise import LATENT_STREAMS, batch_vector_noise
from infdiff.samplers import ddpm_sample

__all__ = ["MLPSkipNet", "LatentDDPM", "build_latent", "latent_from_checkpoint"]


class MLPSkipNet(nn.Module):
    """eps_hat(z_t, t): DiffAE's MLP with the input concatenated into every layer after the first.

    Args:
        z_dim: latent size d; hidden: width; layers: Linear layers (the last maps to d, zero-initialised
            so the untrained model predicts eps = 0); time_dim: timestep embedding width; dropout: after
            each hidden activation.
    Forward: z_t [B, d], t [B] -> [B, d].
    """

    def __init__(self, z_dim: int, hidden: int, layers: int, time_dim: int, dropout: float):
        super().__init__()
        self.time_embed = TimeEmbedding(time_dim)
        self.linears = nn.ModuleList()
        self.time_scales = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(layers - 1):
            self.linears.append(nn.Linear(z_dim if i == 0 else hidden + z_dim, hidden))
            self.time_scales.append(nn.Linear(time_dim, hidden))
            self.norms.append(nn.LayerNorm(hidden))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden + z_dim, z_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z_t: Tensor, t: Tensor) -> Tensor:
        temb = F.silu(self.time_embed(t))
        h = z_t
        for i, (lin, ts, norm) in enumerate(zip(self.linears, self.time_scales, self.norms)):
            h = lin(h if i == 0 else torch.cat([h, z_t], dim=-1))
            h = self.drop(F.silu(norm(h * (1 + ts(temb)))))       # DiffAE's MLPLNAct, condition_bias 1
        return self.out(torch.cat([h, z_t], dim=-1))


class LatentDDPM(nn.Module):
    """The latent model of an autoencoder run: normalisation, the MLP, its DDPM chain.

    Args:
        z_dim: latent size; cfg: the run's ``autoencoder.latent`` section (schema ``$defs/autoencoder``).
    Buffers ``z_mean`` / ``z_std`` [z_dim] hold the training latents' statistics (set by
    :meth:`fit_normalisation`, saved in the state dict).
    """

    def __init__(self, z_dim: int, cfg: dict):
        super().__init__()
        self.z_dim = int(z_dim)
        self.sample_steps = int(cfg["sample_steps"])
        self.net = MLPSkipNet(self.z_dim, cfg["hidden"], cfg["layers"], cfg["time_dim"], cfg["dropout"])
        betas = torch.full((int(cfg["timesteps"]),), float(cfg["beta"]), dtype=torch.float64)
        # T = I: an ordinary DDPM, run by the shared samplers like every image process
        self.diffusion = MollifiedDiffusion(betas, Mollifier(std_px=0.0, train_res=1))
        self.register_buffer("z_mean", torch.zeros(self.z_dim))
        self.register_buffer("z_std", torch.ones(self.z_dim))

    # ------------------------------------------------------------------ normalisation
    @torch.no_grad()
    def fit_normalisation(self, z: Tensor) -> None:
        """Per-dimension mean and std of the training latents z [N, d] (std floored at 1e-6)."""
        self.z_mean.copy_(z.mean(0))
        self.z_std.copy_(z.std(0, unbiased=False).clamp(min=1e-6))

    def normalise(self, z: Tensor) -> Tensor:
        """(z - mean) / std, per dimension: [B, d] -> [B, d]."""
        return (z - self.z_mean) / self.z_std

    def denormalise(self, z_n: Tensor) -> Tensor:
        """The inverse of :meth:`normalise`."""
        return z_n * self.z_std + self.z_mean

    # ------------------------------------------------------------------ training and sampling
    def training_loss(self, z_n: Tensor, generator: torch.Generator) -> Tensor:
        """L1 epsilon loss (DiffAE's latent loss) on normalised latents z_n [B, d]; draws t and eps."""
        B = z_n.shape[0]
        t = torch.randint(0, self.diffusion.num_timesteps, (B,), generator=generator).to(z_n.device)
        eps = torch.randn(z_n.shape, generator=generator).to(z_n.device)
        z_t = self.diffusion.q_sample(z_n, t, eps)
        return (self.net(z_t, t) - eps).abs().mean()

    @torch.no_grad()
    def sample(self, seeds: Sequence[int], steps: int | None = None, progress: bool = False) -> Tensor:
        """One z per seed, [len(seeds), d] float32 (denormalised), by ancestral sampling of the latent chain.

        Row i depends only on seeds[i]: its initial state and every step's noise come from its own streams.
        Latents are not clipped (they are unbounded, unlike images).
        """
        seeds = [int(s) for s in seeds]
        dev = self.z_mean.device
        was_training = self.training
        self.eval()
        try:
            x_T = batch_vector_noise(seeds, self.z_dim, stream=LATENT_STREAMS, device=dev)
            z_n = ddpm_sample(EpsDenoiser(self.net), self.diffusion, x_T, steps or self.sample_steps,
                              noise_fn=lambda k: batch_vector_noise(seeds, self.z_dim, LATENT_STREAMS + k + 1, dev),
                              clip_Tx0=False, progress=progress)
        finally:
            self.train(was_training)
        return self.denormalise(z_n).float()


def build_latent(cfg: dict) -> LatentDDPM:
    """The (untrained) latent model of an autoencoder run config."""
    ae = cfg["autoencoder"]
    return LatentDDPM(ae["z_dim"], ae["latent"])


def latent_from_checkpoint(ckpt: dict, stage1: dict, where: str = "", ema: bool = True,
                           weights: str = "last") -> LatentDDPM:
    """The latent model of a loaded stage-2 checkpoint (EMA weights), checked to belong to ``stage1``.

    Both are checkpoint dicts (:func:`infdiff.io.load_checkpoint`); a latent model trained from another
    stage-1 checkpoint (another config), or from its other EMA weights (``weights``: last / best), is refused.
    """
    if ckpt.get("stage1_weights", "last") != weights:
        raise ConfigError(f"latent model {where} encodes the stage-1 model's {ckpt.get('stage1_weights', 'last')} "
                          f"EMA weights, not its {weights} ones: run stage 2 again (rule train_latent) with the "
                          "same sample.checkpoint")
    if ckpt.get("stage1_config_sha256") != stage1.get("config_sha256"):
        raise ConfigError(f"latent model {where} was trained from another stage-1 checkpoint (config sha "
                          f"{str(ckpt.get('stage1_config_sha256'))[:16]} != {str(stage1.get('config_sha256'))[:16]}): "
                          "run stage 2 again (rule train_latent)")
    model = build_latent(json.loads(ckpt["config_json"]))
    model.load_state_dict(ckpt["ema" if ema else "model"])
    return model.eval()
