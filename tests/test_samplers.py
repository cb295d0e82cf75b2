"""Tests for infdiff.samplers with oracle models.

The samplers take a T x0 denoiser (infdiff.denoisers); the models here predict T xi and are wrapped in
EpsDenoiser, as ∞-Diff's network is. For data that is a single known image x0 the exact model is known in
closed form:
f(x_t, t) = E[T xi | x_t] = (x_t - sqrt(ab_t) T x0) / sqrt(1 - ab_t). With it, q(x_{t-1} | x_t) is exactly the
Eq. 12 posterior, so an ancestral sampler must reproduce the forward marginals q(x_t | x0) (Eq. 11) at
every visited step, DDIM (eta = 0) must keep the initial T xi along its whole trajectory, and both must end
exactly at T x0.
"""

import pytest
import torch

from infdiff.denoisers import EpsDenoiser
from infdiff.diffusion import MollifiedDiffusion, make_betas
from infdiff.mollifier import Mollifier
from infdiff.samplers import ddim_sample, ddpm_sample, respaced_diffusion, respaced_timesteps
from tests.conftest import explicit_T

R = 4


# thousands of tiny 4 x 4 operations: run single-threaded (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("single_thread")


def make_diffusion(T=1000):
    return MollifiedDiffusion(make_betas("cosine", T), Mollifier(std_px=1.0, train_res=R))


def x0_image(dtype=torch.float64):
    return (torch.linspace(-0.9, 0.9, R * R, dtype=dtype).reshape(1, 1, R, R) ** 3)


def oracle(diff, x0):
    """Exact E[T xi | x_t] for the one-image data distribution {x0}."""
    Tx0 = diff.mollifier(x0)

    def model_fn(x_t, t):
        ab = diff.extract(diff.alpha_bar, t, x_t.ndim, dtype=x_t.dtype)
        return (x_t - ab.sqrt() * Tx0) / (1 - ab).sqrt()

    return EpsDenoiser(model_fn)


def initial_state(diff, x0, n, seed, dtype=torch.float64):
    """x_T ~ q(x_{T-1} | x0) and the T xi it was built from."""
    xi = torch.randn(n, *x0.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=dtype)
    t = torch.full((n,), diff.num_timesteps - 1)
    return diff.q_sample(x0.expand(n, *x0.shape[1:]), t, xi), diff.mollifier(xi)


def noise_source(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return lambda k: torch.randn(n, 1, R, R, generator=g, dtype=dtype)


def test_respaced_timesteps():
    for steps in (2, 3, 10, 50, 999, 1000):
        ts = respaced_timesteps(1000, steps)
        assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:]))  # strictly descending, hence distinct
    assert respaced_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert respaced_timesteps(1000, 1) == [999]
    assert respaced_timesteps(1000, 5) == [999, 749, 500, 250, 0]  # evenly spaced (rounded)
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError):
            respaced_timesteps(1000, bad)


def test_respaced_diffusion_betas():
    diff = make_diffusion()
    full = respaced_diffusion(diff, respaced_timesteps(1000, 1000))
    # Respacing with every step is the original process.
    assert torch.allclose(full.betas, diff.betas, atol=1e-12, rtol=0)
    assert torch.allclose(full.beta_tilde, diff.beta_tilde, atol=1e-12, rtol=0)
    ts = respaced_timesteps(1000, 37)
    sub = respaced_diffusion(diff, ts)
    # alpha_bar telescopes to the visited originals; betas are larger (fewer, bigger steps).
    assert torch.allclose(sub.alpha_bar, diff.alpha_bar[sorted(ts)], rtol=1e-10, atol=0)
    assert (sub.betas[1:] > diff.betas[sorted(ts)][1:]).all()


@pytest.mark.parametrize("steps", [1, 2, 7, 100, 1000])
def test_ddim_oracle_recovers_Tx0(steps):
    diff = make_diffusion()
    x0 = x0_image()
    x_T, _ = initial_state(diff, x0, 8, seed=steps)
    out = ddim_sample(oracle(diff, x0), diff, x_T, steps)
    assert torch.allclose(out, diff.mollifier(x0).expand_as(out), atol=1e-4)
    # float32 path as well. A single step predicts T x0 from t = T-1, where sqrt(ab) = 5e-5 divides the
    # float32 rounding of x_t - sqrt(1 - ab) f (~1e-7): a ~2e-3 error that no formula avoids. With two or
    # more steps the last prediction is made at t = 0 (ab ~ 1) and is exact again.
    x_T32 = x_T.float()
    out32 = ddim_sample(oracle(diff, x0.float()), diff, x_T32, steps)
    assert out32.dtype == torch.float32
    assert torch.allclose(out32, diff.mollifier(x0.float()).expand_as(out32), atol=1e-4 if steps > 1 else 1e-2)


def test_ddim_eta0_keeps_the_noise_and_is_deterministic():
    # With the exact model DDIM (eta = 0) moves along x_t = sqrt(ab_t) T x0 + sqrt(1 - ab_t) T xi for the
    # *same* T xi at every visited t (Song et al.'s deterministic generative process). A wrong update
    # (e.g. sqrt(ab) instead of sqrt(ab_prev), or a missing term) breaks this after one step.
    diff = make_diffusion()
    x0 = x0_image()
    x_T, Txi = initial_state(diff, x0, 4, seed=0)
    Tx0 = diff.mollifier(x0)
    seen = []

    def cb(i, t, x_t, Tx0_hat):
        ab = diff.alpha_bar[t]
        seen.append(t)
        assert torch.allclose(x_t, ab.sqrt() * Tx0 + (1 - ab).sqrt() * Txi, atol=1e-6)
        assert torch.allclose(Tx0_hat, Tx0.expand_as(Tx0_hat), atol=1e-4)

    ddim_sample(oracle(diff, x0), diff, x_T, 20, callback=cb)
    assert seen == respaced_timesteps(1000, 20)

    # Deterministic for an arbitrary (non-oracle) model.
    def model(x, t):
        return torch.tanh(3 * x) + 0.001 * t.view(-1, 1, 1, 1)

    a = ddim_sample(EpsDenoiser(model), diff, x_T, 15, eta=0.0)
    b = ddim_sample(EpsDenoiser(model), diff, x_T.clone(), 15, eta=0.0)
    assert torch.equal(a, b)
    assert a.abs().max() <= 1.0  # clipped T x0 estimate


def test_ddim_eta1_reproduces_forward_marginals():
    # DDIM's non-Markovian process has the marginals q(x_t | x0) for any eta; with eta = 1 that needs the
    # injected noise sigma T z to be right.
    diff = make_diffusion()
    x0 = x0_image()
    n = 20_000
    x_T, _ = initial_state(diff, x0, n, seed=1)
    Tm = explicit_T(diff.mollifier, R)
    check_at = {5, 12}
    stats = {}

    def cb(i, t, x_t, Tx0_hat):
        if i in check_at:
            stats[t] = x_t.reshape(n, -1)

    ddim_sample(oracle(diff, x0), diff, x_T, 20, eta=1.0, noise_fn=noise_source(n, 2), callback=cb)
    assert len(stats) == len(check_at)
    for t, xs in stats.items():
        ab = diff.alpha_bar[t]
        cov_ref = (1 - ab) * Tm @ Tm.T
        # Std errors at n = 20000: mean <= 0.003, covariance entries <= 0.01 * max variance.
        assert (xs.mean(0) - ab.sqrt() * Tm @ x0.flatten()).abs().max() < 0.02
        assert (torch.cov(xs.T) - cov_ref).abs().max() < 0.05 * cov_ref.diagonal().max()


def test_ddim_eta_needs_noise_fn():
    diff = make_diffusion(50)
    with pytest.raises(ValueError, match="noise_fn"):
        ddim_sample(EpsDenoiser(lambda x, t: x), diff, torch.zeros(1, 1, R, R), 5, eta=0.5)


def test_ddpm_oracle_ends_at_Tx0():
    diff = make_diffusion()
    x0 = x0_image()
    x_T, _ = initial_state(diff, x0, 4, seed=3)
    out = ddpm_sample(oracle(diff, x0), diff, x_T, 1000, noise_fn=noise_source(4, 4))
    assert torch.allclose(out, diff.mollifier(x0).expand_as(out), atol=1e-4)


@pytest.mark.parametrize("num_timesteps,steps", [(1000, 25), (30, 30)])
def test_ddpm_oracle_reproduces_forward_marginals(num_timesteps, steps):
    # Ancestral sampling with the exact model: every visited x_t must be distributed as Eq. 11
    # (mean sqrt(ab) T x0, covariance (1 - ab) T T^t), which checks the (respaced) posterior mean, the
    # variance beta_tilde' and that the injected noise is mollified. It must end exactly at T x0.
    diff = make_diffusion(num_timesteps)
    x0 = x0_image()
    n = 20_000
    x_T, _ = initial_state(diff, x0, n, seed=3)
    Tm = explicit_T(diff.mollifier, R)
    ts = respaced_timesteps(num_timesteps, steps)
    check_at = {len(ts) // 2, len(ts) - 3}
    stats = {}

    def cb(i, t, x_t, Tx0_hat):
        if i in check_at:
            stats[t] = x_t.reshape(n, -1).clone()

    out = ddpm_sample(oracle(diff, x0), diff, x_T, steps, noise_fn=noise_source(n, 4), callback=cb)
    assert torch.allclose(out, diff.mollifier(x0).expand_as(out), atol=1e-4)
    assert len(stats) == 2
    for t, xs in stats.items():
        ab = diff.alpha_bar[t]
        cov_ref = (1 - ab) * Tm @ Tm.T
        # Std errors at n = 20000: mean <= 0.003, covariance entries <= 0.01 * max variance.
        assert (xs.mean(0) - ab.sqrt() * Tm @ x0.flatten()).abs().max() < 0.02
        assert (torch.cov(xs.T) - cov_ref).abs().max() < 0.05 * cov_ref.diagonal().max()


def test_ddpm_full_steps_uses_original_betas_eq44():
    # With steps == num_timesteps (no clipping) one sampler step must be exactly Eq. 44's mean with the
    # original arrays plus sqrt(beta_tilde_t) T z.
    diff = make_diffusion(100)
    m = diff.mollifier
    g = torch.Generator().manual_seed(5)
    x_T = m(torch.randn(3, 1, R, R, generator=g, dtype=torch.float64))
    z0 = torch.randn(3, 1, R, R, generator=g, dtype=torch.float64)
    zs = [z0] + [torch.randn(3, 1, R, R, generator=g, dtype=torch.float64) for _ in range(99)]

    def model(x, t):
        return 0.5 * x + 0.01 * t.view(-1, 1, 1, 1)

    got = {}

    def cb(i, t, x_t, Tx0_hat):
        got[i] = (t, x_t)

    ddpm_sample(EpsDenoiser(model), diff, x_T, 100, noise_fn=lambda k: zs[k], clip_Tx0=False, callback=cb)
    t = torch.full((3,), 99)
    expected = diff.p_mean(x_T, t, model(x_T, t)) + diff.beta_tilde[99].sqrt() * m(z0)
    assert got[1][0] == 98
    assert torch.allclose(got[1][1], expected, atol=1e-10)


def test_ddpm_clips_and_calls_noise_per_step():
    diff = make_diffusion(100)
    calls = []

    def noise_fn(k):
        calls.append(k)
        return torch.zeros(2, 1, R, R)

    out = ddpm_sample(EpsDenoiser(lambda x, t: -5 * torch.ones_like(x)), diff, torch.zeros(2, 1, R, R), 10,
                      noise_fn=noise_fn)
    assert out.abs().max() <= 1.0
    assert calls == list(range(9))  # no noise after the last (t = 0) step
