"""Tests for infdiff.diffusion: schedules and the mollified process (Eq. 11, 12, 44) against explicit
matrices and Monte-Carlo moments."""

import math

import pytest
import torch

from infdiff.diffusion import MollifiedDiffusion, make_betas
from infdiff.mollifier import Mollifier
from tests.conftest import explicit_T

R = 4  # small enough that the full R^2 x R^2 covariance is cheap to estimate and compare


# thousands of tiny 4 x 4 operations: run single-threaded (see tests/conftest.py)
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def diff():
    # std 1 px at R = 4: strong smoothing, so T T^t is far from I and a missing T shows up clearly.
    return MollifiedDiffusion(make_betas("cosine", 1000), Mollifier(std_px=1.0, train_res=R))


@pytest.fixture(scope="module")
def x0():
    return torch.linspace(-1, 1, R * R, dtype=torch.float64).reshape(1, 1, R, R) ** 3


def mc_moments(samples: torch.Tensor):
    """samples [n, R^2] -> (mean [R^2], covariance [R^2, R^2])."""
    return samples.mean(0), torch.cov(samples.T)


def test_cosine_schedule_matches_closed_form():
    Tn, s = 1000, 0.008
    betas = make_betas("cosine", Tn)
    assert betas.dtype == torch.float64 and betas.shape == (Tn,)
    t = torch.arange(1, Tn + 1, dtype=torch.float64)
    f = lambda u: torch.cos((u / Tn + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    closed = f(t) / f(torch.tensor(0.0, dtype=torch.float64))
    ab = torch.cumprod(1 - betas, 0)
    unclipped = betas < 0.999
    assert unclipped.sum() >= Tn - 2  # only the very last step(s) are clipped
    # Before the first clipped step alpha_bar is exactly the closed form.
    first_clip = int((~unclipped).nonzero()[0]) if (~unclipped).any() else Tn
    assert torch.allclose(ab[:first_clip], closed[:first_clip], rtol=1e-10, atol=1e-14)
    assert betas.max() <= 0.999 and betas.min() > 0


def test_linear_schedule_and_unknown():
    b = make_betas("linear", 1000)
    assert math.isclose(b[0].item(), 1e-4) and math.isclose(b[-1].item(), 2e-2)
    b2 = make_betas("linear", 250)
    assert math.isclose(b2[0].item(), 4e-4) and math.isclose(b2[-1].item(), 8e-2)
    with pytest.raises(ValueError, match="cosine.*linear"):
        make_betas("sigmoid", 10)


def test_arrays(diff):
    assert diff.num_timesteps == 1000
    assert torch.allclose(diff.alpha_bar, torch.cumprod(1 - diff.betas, 0))
    assert diff.alpha_bar_prev[0] == 1 and torch.equal(diff.alpha_bar_prev[1:], diff.alpha_bar[:-1])
    assert diff.beta_tilde[0] == 0
    for name in ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "beta_tilde",
                 "posterior_coef_Tx0", "posterior_coef_xt"):
        a = getattr(diff, name)
        assert a.dtype == torch.float64 and a.device.type == "cpu" and a.shape == (1000,)


def test_extract_broadcasts_over_images_and_points(diff):
    t = torch.tensor([0, 10, 999])
    c = diff.extract(diff.alpha_bar, t, 4)
    assert c.shape == (3, 1, 1, 1) and c.dtype == torch.float32
    assert torch.allclose(c.flatten().double(), diff.alpha_bar[t], rtol=1e-6)
    p = diff.extract(diff.betas, t, 3)
    assert p.shape == (3, 1, 1)
    pts = torch.ones(3, 7, 3)
    assert (p * pts).shape == pts.shape


def test_q_sample_moments_match_eq11(diff, x0):
    # Eq. 11: x_t ~ N(sqrt(ab) T x0, (1 - ab) T T^t). Compare the empirical mean and full covariance of
    # 100k draws with those computed directly from the explicit matrix T. A process that forgot to
    # mollify the noise would have covariance (1 - ab) I (off by ~0.5 on the diagonal).
    n, t = 100_000, 400
    Tm = explicit_T(diff.mollifier, R)
    ab = diff.alpha_bar[t]
    xi = torch.randn(n, 1, R, R, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t = diff.q_sample(x0.expand(n, 1, R, R), torch.full((n,), t), xi)
    mean, cov = mc_moments(x_t.reshape(n, -1))
    mean_ref = ab.sqrt() * Tm @ x0.flatten()
    cov_ref = (1 - ab) * Tm @ Tm.T
    # Std errors: mean sqrt(var / n) <= 0.002; covariance entries ~ var * sqrt(2 / n) <= 0.002.
    scale = cov_ref.diagonal().max()
    assert (mean - mean_ref).abs().max() < 0.01
    assert (cov - cov_ref).abs().max() < 0.02 * scale
    assert (cov_ref - (1 - ab) * torch.eye(R * R, dtype=torch.float64)).abs().max() > 0.25 * scale


@pytest.mark.parametrize("t", [1, 50, 500, 998])
def test_posterior_identity_eq23_32(diff, x0, t):
    # App. B: with mu = sqrt(ab_t) T x0, Lambda^{-1} = (1 - ab_t) T T^t and the posterior
    # q(x_{t-1} | x_t, x0) = N(A x_t + b, L^{-1}), the marginal of x_{t-1} must be Eq. 21:
    # A mu + b == sqrt(ab_{t-1}) T x0 and L^{-1} + A Lambda^{-1} A^t == (1 - ab_{t-1}) T T^t.
    Tm = explicit_T(diff.mollifier, R)
    TT = Tm @ Tm.T
    Tx0 = (Tm @ x0.flatten()).reshape(1, 1, R, R)
    tt = torch.tensor([t])
    ab, ab_prev = diff.alpha_bar[t], diff.alpha_bar_prev[t]
    mu = ab.sqrt() * Tx0
    # A and b read off q_posterior as an affine function of x_t.
    b, var = diff.q_posterior(Tx0, torch.zeros_like(Tx0), tt)
    e = torch.zeros(1, 1, R, R, dtype=torch.float64)
    e[..., 1, 2] = 1.0
    A_scalar = (diff.q_posterior(Tx0, e, tt)[0] - b)[..., 1, 2].item()
    A = A_scalar * torch.eye(R * R, dtype=torch.float64)
    mean_of_mu, _ = diff.q_posterior(Tx0, mu, tt)
    assert torch.allclose(mean_of_mu, ab_prev.sqrt() * Tx0, atol=1e-12)                # Eq. 27-29
    L_inv = var.flatten()[0] * TT
    Lambda_inv = (1 - ab) * TT
    assert torch.allclose(L_inv + A @ Lambda_inv @ A.T, (1 - ab_prev) * TT, atol=1e-12)  # Eq. 30-32
    assert var.shape == (1, 1, 1, 1)


@pytest.mark.parametrize("t", [3, 200, 700])
def test_posterior_equals_direct_gaussian_conditioning(diff, x0, t):
    # Build the joint of (x_{t-1}, x_t) given x0 from the forward Markov step in mollified space,
    # x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) T eps (whose marginals are Eq. 11), and condition
    # directly: mean = m1 + C12 C22^{-1} (x_t - m2), cov = C11 - C12 C22^{-1} C21.
    Tm = explicit_T(diff.mollifier, R)
    TT = Tm @ Tm.T
    a, beta = diff.alphas[t], diff.betas[t]
    ab, ab_prev = diff.alpha_bar[t], diff.alpha_bar_prev[t]
    Tx0 = Tm @ x0.flatten()
    m1, m2 = ab_prev.sqrt() * Tx0, ab.sqrt() * Tx0
    C11 = (1 - ab_prev) * TT
    C12 = a.sqrt() * (1 - ab_prev) * TT
    C22 = a * C11 + beta * TT
    assert torch.allclose(C22, (1 - ab) * TT, atol=1e-12)  # consistent with Eq. 11
    x_t = torch.randn(R * R, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    K = torch.linalg.solve(C22, C12.T).T                    # C12 C22^{-1}
    mean_ref = m1 + K @ (x_t - m2)
    cov_ref = C11 - K @ C12.T
    mean, var = diff.q_posterior(Tx0.reshape(1, 1, R, R), x_t.reshape(1, 1, R, R), torch.tensor([t]))
    assert torch.allclose(mean.flatten(), mean_ref, atol=1e-8)
    assert torch.allclose(var.flatten()[0] * TT, cov_ref, atol=1e-8)


def test_posterior_monte_carlo_reproduces_marginal(diff, x0):
    # x_t ~ q(x_t | x0), then x_{t-1} = mean + sqrt(beta_tilde) T z must be distributed as
    # q(x_{t-1} | x0) = N(sqrt(ab_{t-1}) T x0, (1 - ab_{t-1}) T T^t).
    n, t = 100_000, 300
    g = torch.Generator().manual_seed(1)
    m = diff.mollifier
    Tm = explicit_T(m, R)
    tt = torch.full((n,), t)
    xs = x0.expand(n, 1, R, R)
    x_t = diff.q_sample(xs, tt, torch.randn(n, 1, R, R, generator=g, dtype=torch.float64))
    mean, var = diff.q_posterior(m(xs), x_t, tt)
    x_prev = mean + var.sqrt() * m(torch.randn(n, 1, R, R, generator=g, dtype=torch.float64))
    emp_mean, emp_cov = mc_moments(x_prev.reshape(n, -1))
    ab_prev = diff.alpha_bar_prev[t]
    cov_ref = (1 - ab_prev) * Tm @ Tm.T
    assert (emp_mean - ab_prev.sqrt() * Tm @ x0.flatten()).abs().max() < 0.01
    assert (emp_cov - cov_ref).abs().max() < 0.02 * cov_ref.diagonal().max()


def test_predict_Tx0_inverts_q_sample(diff):
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(5, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    xi = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    m = Mollifier(std_px=1.0, train_res=8)
    d = MollifiedDiffusion(diff.betas, m)
    t = torch.tensor([0, 10, 500, 900, 990])
    x_t = d.q_sample(x0, t, xi)
    assert torch.allclose(d.predict_Tx0(x_t, t, m(xi)), m(x0), atol=1e-8)
    assert torch.allclose(d.predict_Txi(x_t, t, m(x0)), m(xi), atol=1e-8)
    # A wrong f must not give T x0 back.
    assert not torch.allclose(d.predict_Tx0(x_t, t, xi), m(x0), atol=1e-2)


def test_p_mean_eq44_equals_posterior_mean(diff):
    # Eq. 44 with f == T xi is the Eq. 12 posterior mean evaluated at the true T x0.
    g = torch.Generator().manual_seed(3)
    m = Mollifier(std_px=1.0, train_res=8)
    d = MollifiedDiffusion(diff.betas, m)
    x0 = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    xi = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 100, 400, 800, 950])
    x_t = d.q_sample(x0, t, xi)
    post_mean, _ = d.q_posterior(m(x0), x_t, t)
    assert torch.allclose(d.p_mean(x_t, t, m(xi)), post_mean, atol=1e-8)
    # Also on point tensors [B, N, C] (the coefficient shape must broadcast there too).
    pts_xt, pts_f = x_t.flatten(2).transpose(1, 2), m(xi).flatten(2).transpose(1, 2)
    pts_mean, _ = d.q_posterior(m(x0).flatten(2).transpose(1, 2), pts_xt, t)
    assert torch.allclose(d.p_mean(pts_xt, t, pts_f), pts_mean, atol=1e-8)


def test_float32_path(diff):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    xi = torch.randn(2, 3, 8, 8)
    d = MollifiedDiffusion(diff.betas, Mollifier(std_px=1.0, train_res=8))
    x_t = d.q_sample(x0, torch.tensor([5, 300]), xi)
    assert x_t.dtype == torch.float32
    assert torch.allclose(d.predict_Tx0(x_t, torch.tensor([5, 300]), d.mollifier(xi)), d.mollifier(x0), atol=1e-4)
