"""The diffusion-autoencoder framework (paper Sec. 5, App. A): encoder, z-conditioning, latent DDPM,
DDIM encoding, and the two training stages."""

import copy

import numpy as np
import pytest
import torch

from infdiff.config import ConfigError, run_config
from infdiff.data import ShapesDataset, split_seeds, to_uint8
from infdiff.denoisers import EpsDenoiser
from infdiff.diffusion import MollifiedDiffusion, make_betas
from infdiff.io import load_checkpoint, load_method
from infdiff.latent import LatentDDPM
from infdiff.methods import build_method
from infdiff.mollifier import Mollifier
from infdiff.nets import InfDiffNet
from infdiff.nets.encoder import InfDiffEncoder
from infdiff.samplers import ddim_invert, ddim_sample
from infdiff.train import train
from infdiff.train_latent import train_latent
from tests.conftest import net_kwargs, tiny_config

AE = {"framework": "autoencoder",
      "autoencoder": {"z_dim": 8, "latent": {"hidden": 32, "layers": 3, "time_dim": 16, "steps": 40,
                                             "batch_size": 16, "timesteps": 100, "sample_steps": 20}}}


def ae_config(extra: dict | None = None) -> dict:
    run = {"inherit": "infdiff", **copy.deepcopy(AE), **(extra or {})}
    return run_config(tiny_config({"runs": {"ae_unit": run}}), "ae_unit")


def latent_cfg(**over) -> dict:
    return {**ae_config()["autoencoder"]["latent"], **over}


# ------------------------------------------------------------------------------------ latent model
def test_latent_normalisation_round_trip_uses_mean_and_std():
    torch.manual_seed(0)
    z = torch.randn(500, 8) * torch.linspace(0.1, 3.0, 8) + torch.linspace(-2.0, 5.0, 8)
    lat = LatentDDPM(8, latent_cfg())
    lat.fit_normalisation(z)
    z_n = lat.normalise(z)
    torch.testing.assert_close(z_n.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z_n.std(0, unbiased=False), torch.ones(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(lat.denormalise(z_n), z, atol=1e-5, rtol=0)
    # the mean is the data's (the official code forced it to 0) and travels in the state dict
    torch.testing.assert_close(lat.z_mean, z.mean(0))
    restored = LatentDDPM(8, latent_cfg())
    restored.load_state_dict(lat.state_dict())
    torch.testing.assert_close(restored.denormalise(z_n), z, atol=1e-5, rtol=0)


def test_latent_samples_depend_on_their_seed_only():
    torch.manual_seed(0)
    lat = LatentDDPM(8, latent_cfg())
    torch.nn.init.normal_(lat.net.out.weight, std=0.1)   # a non-trivial eps network
    lat.fit_normalisation(torch.randn(64, 8) * 2 + 1)
    both = lat.sample([5, 6])
    torch.testing.assert_close(lat.sample([6])[0], both[1])
    assert not torch.allclose(both[0], both[1])


# ------------------------------------------------------------------------------------ the networks
def test_unconditional_network_is_unchanged_and_z_zero_reduces_to_it():
    kw = net_kwargs(channels=8, sparse_blocks=1, grid_res=8, unet_channels=8, unet_mults=[1, 2], attn_res=[4],
                    time_dim=16, train_res=16)
    torch.manual_seed(0)
    plain = InfDiffNet(**kw)
    torch.manual_seed(0)
    cond = InfDiffNet(z_dim=6, **kw)
    p_plain, p_cond = dict(plain.named_parameters()), dict(cond.named_parameters())
    # z off: no extra parameter; z on: only the z projections are new, every shared one starts equal
    assert not any("zproj" in k for k in p_plain)
    assert set(p_cond) - set(p_plain) == {k for k in p_cond if "zproj" in k} != set()
    for k, v in p_plain.items():
        torch.testing.assert_close(p_cond[k], v, rtol=0, atol=0)
    # give every weight non-trivial values (zero-initialised layers would hide a wrong conditioning)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, v in p_plain.items():
            v.copy_(torch.randn(v.shape, generator=g) * 0.2)
            p_cond[k].copy_(v)
        for k, v in p_cond.items():
            if "zproj" in k:
                v.copy_(torch.randn(v.shape, generator=g) * 0.5)
    R, B = 16, 2
    idx = torch.stack([torch.randperm(R * R, generator=g)[:64] for _ in range(B)])
    x, t = torch.randn(B, 64, 3, generator=g), torch.tensor([10, 700])
    plain.eval(), cond.eval()
    with torch.no_grad():
        ref = plain(x, idx, R, t)
        torch.testing.assert_close(cond(x, idx, R, t, torch.zeros(B, 6)), ref, rtol=0, atol=1e-6)
        moved = cond(x, idx, R, t, torch.randn(B, 6, generator=g))
    assert (moved - ref).abs().max() > 1e-2
    with pytest.raises(ValueError, match="conditioned on z"):
        cond(x, idx, R, t)


def _encoder(seed=0, **over):
    torch.manual_seed(seed)
    return InfDiffEncoder(**{**net_kwargs(train_res=32), "z_dim": 16, **over}).eval()


def test_encoder_reads_any_resolution_nearly_the_same():
    """The same function rendered at 32 and 64 px encodes to nearly the same z (continuous coordinates)."""
    enc = _encoder()
    ds = ShapesDataset()
    seeds = [11, 12, 13, 14]
    x32, x64 = (torch.from_numpy(ds.render_batch(seeds, R)) for R in (32, 64))

    def z_of(x):  # every pixel: no subset noise, so the difference is the discretisation alone
        B, _, R, _ = x.shape
        idx = torch.arange(R * R).expand(B, -1)
        return enc(x.flatten(2).transpose(1, 2), idx, R)

    with torch.no_grad():
        z32, z64 = z_of(x32), z_of(x64)
    rel = ((z64 - z32).norm(dim=1) / z32.norm(dim=1)).max().item()
    between_images = ((z32 - z32.roll(1, 0)).norm(dim=1) / z32.norm(dim=1)).min().item()
    print(f"encoder 32 vs 64 px: max relative difference {rel:.4f}; between images at least {between_images:.4f}")
    assert rel < 0.05 and rel < between_images / 5


def test_encoding_is_deterministic_per_seed_and_batch_independent():
    cfg = ae_config({"model": {"dropout": 0.5}})   # dropout would make a train-mode encoding random
    torch.manual_seed(0)
    method = build_method(cfg)
    with torch.no_grad():  # non-trivial weights: zero-initialised layers would hide the dropout
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    method.train()
    x0 = torch.from_numpy(ShapesDataset().render_batch([1, 2, 3], 16))
    z = method.encode(x0, [7, 8, 9])
    assert method.training  # restored
    torch.testing.assert_close(method.encode(x0, [7, 8, 9]), z, rtol=0, atol=0)
    torch.testing.assert_close(method.encode(x0[1:2], [8]), z[1:2], rtol=0, atol=1e-6)
    assert not torch.allclose(method.encode(x0, [1, 8, 9])[0], z[0])  # another seed reads other pixels


# ------------------------------------------------------------------------------------ DDIM encoding
def test_ddim_inversion_is_exact_in_the_limit():
    """ddim_invert then ddim_sample returns T x0, the error shrinking as the steps grow (a smooth network)."""
    torch.manual_seed(0)
    M = Mollifier(1.0, 16)
    D = MollifiedDiffusion(make_betas("cosine", 1000), M)
    Tx0 = M(torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1)
    W = torch.randn(3, 3, dtype=torch.float64) * 0.3
    dn = EpsDenoiser(lambda x, t: torch.tanh(torch.einsum("ij,bjhw->bihw", W, x)) * (1 + t[:, None, None, None] / 1e3))
    errs = []
    for steps in (10, 40, 160):
        back = ddim_sample(dn, D, ddim_invert(dn, D, Tx0, steps, 500), steps, clip_Tx0=False, t_start=500)
        errs.append(((back - Tx0).norm() / Tx0.norm()).item())
    assert errs[2] < errs[0] / 4 and errs[2] < 5e-3, errs


@pytest.fixture(scope="module")
def trained_ae(tmp_path_factory):
    """A tiny autoencoder trained for a few seconds on 16 training images, and its stage-2 model."""
    cfg = ae_config({"train": {"steps": 120, "batch_size": 8, "lr": 3e-3, "warmup": 20,
                               "checkpoint_every": 1000, "log_every": 20}})
    data = to_uint8(ShapesDataset().render_batch(split_seeds("train", 16), 16))
    out = tmp_path_factory.mktemp("ae")
    train(cfg, data, out, progress=False)
    train_latent(out / "checkpoint.pt", cfg, data, out, progress=False)
    return cfg, data, out


def test_ddim_encoding_reconstructs_far_better_than_fresh_noise(trained_ae):
    cfg, data, out = trained_ae
    method, _ = load_method(out / "checkpoint.pt")
    x0 = torch.from_numpy(data[:4]).float() / 127.5 - 1
    seeds = [0, 1, 2, 3]
    z = method.encode(x0, seeds)
    t_enc, steps = 800, 20
    x_t = method.invert(x0, steps, t_enc, cond=z)
    rec = method.decode(x_t, seeds, t_enc, steps, cond=z)
    fresh = method.sample(seeds, 16, steps, cond=z, progress=False)
    mse_rec, mse_fresh = ((rec - x0) ** 2).mean().item(), ((fresh - x0) ** 2).mean().item()
    print(f"DDIM encoding (t={t_enc}) MSE {mse_rec:.4f}, fresh noise MSE {mse_fresh:.4f}")
    assert mse_rec < mse_fresh / 10


def test_autoencoder_samples_through_the_latent_model_by_seed(trained_ae):
    cfg, data, out = trained_ae
    method, _ = load_method(out / "checkpoint.pt", latent=out / "latent.pt")
    both = method.sample([3, 4], 16, 3, progress=False)
    torch.testing.assert_close(method.sample([4], 16, 3, progress=False)[0], both[1], rtol=0, atol=1e-5)
    without, _ = load_method(out / "checkpoint.pt")
    with pytest.raises(ValueError, match="stage-2 latent model"):
        without.sample([3], 16, 3, progress=False)
    lat = load_checkpoint(out / "latent.pt")
    assert lat["summary"]["n_latents"] == len(data)
    assert lat["ema"]["z_mean"].abs().sum() > 0   # the latents' own mean, not 0


def test_stage2_refuses_a_stage1_checkpoint_of_another_config(trained_ae, tmp_path):
    cfg, data, out = trained_ae
    other = copy.deepcopy(cfg)
    other["autoencoder"]["encoder_ratio"] = 0.5
    with pytest.raises(ConfigError, match="another config"):
        train_latent(out / "checkpoint.pt", other, data, tmp_path, progress=False)


def test_framework_needs_a_method_that_has_it():
    with pytest.raises(ConfigError, match="only ∞-Diff"):
        tiny_config({"runs": {"mlp_pixel": {"framework": "autoencoder"}}})
    with pytest.raises(ConfigError, match="sparse_downsample"):
        tiny_config({"runs": {"infdiff": {"framework": "autoencoder", "model": {"sparse_downsample": True}}}})
    # the unconditional run's config does not carry the autoencoder section (nor change its hash)
    assert "autoencoder" not in run_config(tiny_config(), "infdiff")
    assert np.isclose(ae_config()["autoencoder"]["encoder_ratio"], 0.25)


# ------------------------------------------------------------------------------------ carrying a state up
def test_carry_state_interpolates_band_limited_states_exactly():
    """A state made of DCT modes below r is the same continuous function at R: carried exactly."""
    from types import SimpleNamespace

    from infdiff.conditional import carry_state

    stub = SimpleNamespace(noise=lambda seeds, R, stream: torch.zeros(len(seeds), 3, R, R),
                           diffusion=SimpleNamespace(mollifier=lambda x: x))

    def f(R):  # cos(pi u) cos(3 pi v) at pixel centres, plus a constant
        u = (torch.arange(R) + 0.5) / R
        return (0.3 + torch.cos(torch.pi * u)[:, None] * torch.cos(3 * torch.pi * u)[None, :]).expand(1, 3, R, R)

    torch.testing.assert_close(carry_state(f(16), 64, stub, [0]), f(64), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        carry_state(f(16), 40, stub, [0])


def test_carry_state_keeps_the_noise_variance_of_the_process():
    from types import SimpleNamespace

    from infdiff.conditional import carry_state
    from infdiff.noise import batch_white_noise

    M = Mollifier(1.0, 16)
    stub = SimpleNamespace(noise=lambda seeds, R, stream: batch_white_noise(seeds, R, stream=stream) * M.noise_scale(R),
                           diffusion=SimpleNamespace(mollifier=M))
    seeds = list(range(48))
    low = M(stub.noise(seeds, 16, 0))
    carried = carry_state(low, 32, stub, [s + 100 for s in seeds])
    fresh = M(stub.noise(seeds, 32, 0))
    ratio = (carried.var() / fresh.var()).item()
    assert abs(ratio - 1) < 0.05, ratio


def test_a_latent_model_of_another_stage1_checkpoint_is_refused(trained_ae):
    from infdiff.latent import latent_from_checkpoint

    cfg, data, out = trained_ae
    stage1, latent = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(out / "latent.pt")
    latent_from_checkpoint(latent, stage1)  # its own stage 1: accepted
    with pytest.raises(ConfigError, match="another stage-1 checkpoint"):
        latent_from_checkpoint(latent, {**stage1, "config_sha256": "0" * 64})


def test_masked_encoding_reads_the_known_pixels_only(trained_ae):
    """Inpainting's z comes from the known pixels: whatever the hole holds, z is the same."""
    from infdiff.conditional import centre_mask

    cfg, data, out = trained_ae
    method, _ = load_method(out / "checkpoint.pt")
    x0 = torch.from_numpy(data[:2]).float() / 127.5 - 1
    mask = centre_mask(2, 16, 0.5)
    other = torch.where(mask.bool(), x0, torch.rand_like(x0) * 2 - 1)
    z = method.encode(x0, [1, 2], mask=mask)
    torch.testing.assert_close(method.encode(other, [1, 2], mask=mask), z, rtol=0, atol=0)
    assert not torch.allclose(method.encode(other, [1, 2]), method.encode(x0, [1, 2]))
