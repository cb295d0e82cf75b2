"""simple diffusion baseline: schedules, v identities, multiscale loss, U-ViT, training and sampling."""

import math

import pytest
import torch
import torch.nn.functional as F

from baselines.simple_diffusion import (SimpleDiffusion, alpha_sigma, eps_from_v, logsnr_cosine,
                                        logsnr_interpolated, logsnr_shifted, multiscale_loss,
                                        multiscale_weights, v_target, x_from_v)
from infdiff.methods import METHODS, entry_point

R = 16

# Thousands of tiny ops: on a busy 2-core machine intra-op threads slow them down ~100x (conftest).
pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_cfg(**sd) -> dict:
    """A run config with a tiny U-ViT at 16 px (stem 8 px, levels 8 and 4 px, transformer at 2 x 2)."""
    base = dict(stem="wavelet", channels=[8, 16], blocks=1, transformer_width=32, transformer_depth=1,
                heads=4, dropout=0.0, dropout_max_res=4, schedule="shifted", shift_base=64,
                interpolate_from=8, interpolate_t1="base", multiscale_min=4, logsnr_min=-15.0,
                logsnr_max=15.0)
    return {"method": "simple_diffusion", "resolution": R, "simple_diffusion": {**base, **sd}}


def randomised(method: SimpleDiffusion, seed: int = 0) -> SimpleDiffusion:
    """Give the zero-initialised layers random weights, so that outputs depend on the network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return method


# ------------------------------------------------------------------------------------------ schedules
def test_registered():
    spec = METHODS["simple_diffusion"]
    assert entry_point(spec) is SimpleDiffusion and SimpleDiffusion.name == spec.name == "simple_diffusion"
    assert not spec.any_resolution and not spec.starts_part_way


def test_cosine_schedule_ends_and_formula():
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(logsnr_cosine(t), torch.tensor([15.0, -15.0], dtype=torch.float64), atol=1e-9)
    # Inside (0, 1) it is -2 log tan(pi t / 2) up to the tiny remap of t that keeps the ends finite.
    t = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    assert torch.allclose(logsnr_cosine(t), -2 * torch.log(torch.tan(math.pi * t / 2)), atol=1e-2)
    assert (logsnr_cosine(t).diff() < 0).all()


@pytest.mark.parametrize("d, shift", [(128, -1.386294), (256, -2.772589), (64, 0.0), (32, 1.386294)])
def test_shifted_schedule(d, shift):
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    diff = logsnr_shifted(t, d, base=64) - logsnr_cosine(t)
    assert torch.allclose(diff, torch.full_like(t, shift), atol=1e-6)
    # Clamped to [logsnr_min, logsnr_max], finite at both ends.
    ends = logsnr_shifted(torch.tensor([0.0, 1.0], dtype=torch.float64), d)
    assert torch.isfinite(ends).all() and ends.max() <= 15 and ends.min() >= -15


@pytest.mark.parametrize("t1", ["image", "base"])
def test_interpolated_schedule_ends_and_direction(t1):
    d, lo = 128, 32
    image = lambda t: logsnr_shifted(t, d, d)          # noqa: E731  unshifted cosine
    base = lambda t: logsnr_shifted(t, d, lo)          # noqa: E731  shifted by 2 log(32 / 128)
    at_1, at_0 = (image, base) if t1 == "image" else (base, image)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    got = logsnr_interpolated(t, d, lo, t1)
    assert torch.allclose(got, t * at_1(t) + (1 - t) * at_0(t), atol=1e-12)
    assert got[0].item() == pytest.approx(at_0(t[:1]).item(), abs=1e-12)   # t = 0 end
    assert got[-1].item() == pytest.approx(at_1(t[-1:]).item(), abs=1e-12)  # t = 1 end
    # The two directions differ (the flag matters): at t = 0 the unshifted end is 15, the shifted 12.23.
    assert got[0].item() == pytest.approx(15.0 if t1 == "base" else 15.0 + 2 * math.log(lo / d), abs=1e-9)
    with pytest.raises(ValueError, match="image, base"):
        logsnr_interpolated(t, d, lo, "middle")


def test_v_parameterisation_identities():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 4, 3, 3, 3, dtype=torch.float64, generator=g)
    logsnr = torch.linspace(-14, 14, 4, dtype=torch.float64)
    alpha, sigma = (a[:, None, None, None] for a in alpha_sigma(logsnr))
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(alpha), atol=1e-15)
    assert torch.allclose(torch.log(alpha**2 / sigma**2), logsnr[:, None, None, None], atol=1e-9)
    z = alpha * x + sigma * eps
    v = v_target(x, eps, alpha, sigma)
    assert torch.allclose(x_from_v(z, v, alpha, sigma), x, atol=1e-12)
    assert torch.allclose(eps_from_v(z, v, alpha, sigma), eps, atol=1e-12)


# ------------------------------------------------------------------------------------- multiscale loss
def test_multiscale_weights():
    assert multiscale_weights(32, 8) == {8: 1 / 8, 16: 1 / 16, 32: 1 / 32}
    assert multiscale_weights(32, 32) == {32: 1 / 32}
    for bad in [(32, 12), (32, 64), (48, 16)]:  # 48 / 16 = 3 is not a power of two
        with pytest.raises(ValueError):
            multiscale_weights(*bad)


def test_multiscale_loss_values():
    g = torch.Generator().manual_seed(0)
    eps, eps_hat = torch.randn(2, 3, 3, 16, 16, dtype=torch.float64, generator=g)
    mse = F.mse_loss(eps_hat, eps)
    # One scale: the plain MSE (normalised) and MSE / d (the paper's literal sum).
    assert multiscale_loss(eps, eps_hat, 16).item() == pytest.approx(mse.item(), rel=1e-6)
    assert multiscale_loss(eps, eps_hat, 16, normalize=False).item() == pytest.approx(mse.item() / 16, rel=1e-6)
    # The literal sum, written out.
    want = sum(F.mse_loss(F.avg_pool2d(eps_hat, 16 // s), F.avg_pool2d(eps, 16 // s)) / s for s in (4, 8, 16))
    assert multiscale_loss(eps, eps_hat, 4, normalize=False).item() == pytest.approx(want.item(), rel=1e-6)
    assert multiscale_loss(eps, eps_hat, 4).item() == pytest.approx(want.item() / (1 / 4 + 1 / 8 + 1 / 16), rel=1e-6)


def test_multiscale_loss_weights_low_frequency_errors_up():
    """A constant error is the same MSE at every scale; a white error averages out at coarse scales."""
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(4, 3, 32, 32, generator=g)
    flat = eps + 0.1
    white = eps + 0.1 * torch.randn(4, 3, 32, 32, generator=g)
    assert multiscale_loss(eps, flat, 8).item() == pytest.approx(0.01, rel=1e-4)
    assert multiscale_loss(eps, white, 8) < 0.5 * F.mse_loss(white, eps)


# ------------------------------------------------------------------------------------------ network
def test_dropout_only_at_low_resolution():
    m = SimpleDiffusion(tiny_cfg(dropout=0.2, dropout_max_res=4))
    net = m.net
    # level 0 runs at 8 px (no dropout), level 1 at 4 px and the transformer at 2 px (dropout)
    assert net.down[0][0].drop.p == 0.0 and net.up[-1][0].drop.p == 0.0
    assert net.down[1][0].drop.p == 0.2 and net.up[0][0].drop.p == 0.2
    assert net.transformer[0].drop.p == 0.2 and net.tokens == 4


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="known: shifted, interpolated"):
        SimpleDiffusion(tiny_cfg(schedule="cosine"))
    with pytest.raises(ValueError, match="known: wavelet, conv"):
        SimpleDiffusion(tiny_cfg(stem="patch"))
    with pytest.raises(ValueError, match="divisible"):
        SimpleDiffusion(tiny_cfg(channels=[8, 16, 32, 64]))
    with pytest.raises(ValueError, match="min_res"):
        SimpleDiffusion(tiny_cfg(multiscale_min=3))


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("stem", ["wavelet", "conv"])
def test_training_loss_decreases(stem):
    torch.manual_seed(0)
    m = SimpleDiffusion(tiny_cfg(stem=stem))
    x0 = torch.rand(8, 3, R, R, generator=torch.Generator().manual_seed(0)) * 2 - 1
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def loss():  # same t and eps every time: only the weights change
        return m.training_loss(x0, torch.Generator().manual_seed(1))

    first = loss()
    assert first.ndim == 0 and first.dtype == torch.float32 and torch.isfinite(first)
    for _ in range(20):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.85 * first.item()


def test_training_loss_under_bf16_autocast():
    torch.manual_seed(0)
    m = randomised(SimpleDiffusion(tiny_cfg()))
    x0 = torch.rand(2, 3, R, R) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m.training_loss(x0, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref = m.training_loss(x0, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(ref.item(), rel=0.1)


# ------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampling_shapes_range_and_batch_independence(sampler):
    torch.manual_seed(0)
    m = randomised(SimpleDiffusion(tiny_cfg(dropout=0.1))).train()
    seeds = [5, 6, 7, 8]
    together = m.sample(seeds, R, steps=4, progress=False, sampler=sampler, batch_size=4)
    assert m.training  # the previous mode is restored
    alone = m.sample(seeds, R, steps=4, progress=False, sampler=sampler, batch_size=1)
    shuffled = m.sample(seeds[::-1], R, steps=4, progress=False, sampler=sampler, batch_size=3)
    assert together.shape == (4, 3, R, R) and together.dtype == torch.float32
    assert together.min() >= -1 and together.max() <= 1 and torch.isfinite(together).all()
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together, shuffled.flip(0), atol=1e-5)
    assert (together[0] - together[1]).abs().max() > 1e-3


def test_ddim_eta_one_is_ddpm():
    """DDIM's eta = 1 noise level is the ancestral posterior variance: same seeds, same samples.

    Equal up to float32 rounding: the shared DDIM computes sqrt(1 - ab' - sigma^2) in the samples' float32,
    which loses ~1e-3 of that coefficient's digits where ab' is near 1 (measured: 4e-5 apart here)."""
    m = randomised(SimpleDiffusion(tiny_cfg()))
    a = m.sample([1, 2], R, steps=5, progress=False, sampler="ddpm")
    b = m.sample([1, 2], R, steps=5, progress=False, sampler="ddim", eta=1.0)
    c = m.sample([1, 2], R, steps=5, progress=False, sampler="ddim", eta=0.0)
    assert torch.allclose(a, b, atol=2e-4) and (a - c).abs().max() > 1e-2


class GaussianOracle(torch.nn.Module):
    """The exact v-prediction for data x ~ N(0, s^2 I): x_hat = E[x | z] = alpha s^2 / (alpha^2 s^2 + sigma^2) z."""

    def __init__(self, s: float):
        super().__init__()
        self.s = s
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # Method.device reads the first parameter

    def forward(self, z, logsnr):
        alpha, sigma = (a[:, None, None, None] for a in alpha_sigma(logsnr))
        x_hat = alpha * self.s**2 / (alpha**2 * self.s**2 + sigma**2) * z
        return (alpha * z - x_hat) / sigma          # v from x_hat: x_hat = alpha z - sigma v


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampler_with_exact_model_reproduces_the_data_variance(sampler):
    """With the exact denoiser of Gaussian data both samplers return samples of variance ~ s^2.

    Few steps lose variance (ancestral steps plug in the posterior mean; DDPM at 20 steps: -17%), which
    vanishes as steps grow: at 100 steps DDPM is within ~2.5% and DDIM within ~1.5%. A wrong posterior
    coefficient, noise scale or step direction is far off.
    """
    m = SimpleDiffusion(tiny_cfg())
    s = 0.3
    m.net = GaussianOracle(s)
    x = m.sample(list(range(8)), R, steps=100, progress=False, sampler=sampler)
    assert x.mean().abs() < 0.02
    assert x.var().item() == pytest.approx(s**2, rel=0.05)


def test_samples_only_at_training_resolution():
    m = SimpleDiffusion(tiny_cfg())
    with pytest.raises(ValueError, match="resiz"):
        m.sample([1], 2 * R, steps=2, progress=False)
    with pytest.raises(ValueError, match="known: ddim, ddpm"):
        m.sample([1], R, steps=2, progress=False, sampler="heun")
    with pytest.raises(ValueError, match="part-way"):
        m.edit(torch.zeros(1, 3, R, R), [1], t_start=100, steps=2)


def test_conv_stem_samples():
    m = randomised(SimpleDiffusion(tiny_cfg(stem="conv", schedule="interpolated")))
    x = m.sample([3], R, steps=2, progress=False)
    assert x.shape == (1, 3, R, R) and torch.isfinite(x).all()
