"""Super-resolution (SDEdit start step) and inpainting (reconstruction guidance): their maths on tiny tensors."""

import pytest
import torch

from infdiff.conditional import (centre_mask, downsample, inpaint, reconstruction_loss, sdedit_steps,
                                 superresolve, upsample)
from infdiff.denoisers import EpsDenoiser
from infdiff.diffusion import MollifiedDiffusion, make_betas
from infdiff.methods import build_method
from infdiff.mollifier import Mollifier
from infdiff.samplers import ddpm_sample, respaced_diffusion, respaced_timesteps

R = 8
pytestmark = pytest.mark.usefixtures("single_thread")


def make_diffusion(T=1000):
    return MollifiedDiffusion(make_betas("cosine", T), Mollifier(std_px=1.0, train_res=R))


def linear_model(x_t, t):
    """A differentiable stand-in network: predicts a fixed fraction of x_t as the noise."""
    return 0.3 * x_t


def test_start_step_respects_t_s():
    """The chain visits [t_s, ..., 0] only, starting from the state it is given (no draw from x_T)."""
    assert respaced_timesteps(1000, 4, t_start=300) == [300, 200, 100, 0]
    assert respaced_timesteps(1000, 1, t_start=300) == [300]
    with pytest.raises(ValueError, match="t_start"):
        respaced_timesteps(1000, 4, t_start=1000)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 11\]"):
        respaced_timesteps(1000, 12, t_start=10)
    diff = make_diffusion()
    seen, first = [], []

    def model_fn(x_t, t):
        seen.append(int(t[0]))
        first.append(x_t.clone()) if not first else None
        return torch.zeros_like(x_t)

    x_s = torch.randn(2, 3, R, R, dtype=torch.float64)
    ddpm_sample(EpsDenoiser(model_fn), diff, x_s, 4,
                noise_fn=lambda k: torch.randn(2, 3, R, R, dtype=torch.float64), t_start=300)
    assert seen == [300, 200, 100, 0]
    assert torch.equal(first[0], x_s)
    # the respaced process telescopes to the original alpha_bar at every visited step, t_s included
    resp = respaced_diffusion(diff, [300, 200, 100, 0])
    assert torch.allclose(resp.alpha_bar[-1], diff.alpha_bar[300])
    assert sdedit_steps(50, 299, 1000) == 15 and sdedit_steps(50, 0, 1000) == 1


def test_guidance_gradient_points_downhill_and_reduces_masked_error():
    diff = make_diffusion()
    resp = respaced_diffusion(diff, respaced_timesteps(1000, 10, 300))
    torch.manual_seed(0)
    target = diff.mollifier(torch.rand(1, 3, R, R, dtype=torch.float64) * 2 - 1)
    mask = torch.zeros(1, 1, R, R, dtype=torch.float64)
    mask[..., : R // 2] = 1
    x = torch.randn(1, 3, R, R, dtype=torch.float64)
    j = torch.full((1,), resp.num_timesteps - 1)

    def loss_of(x_t):
        Tx0 = resp.predict_Tx0(x_t, j, linear_model(x_t, None))
        return reconstruction_loss(Tx0, target, mask)

    x_in = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of(x_in), x_in)
    # the gradient is the derivative: a finite difference along a random direction agrees with <g, d>
    d = torch.randn_like(x)
    eps = 1e-6
    fd = (loss_of(x + eps * d) - loss_of(x - eps * d)) / (2 * eps)
    assert torch.allclose(fd, (g * d).sum(), rtol=1e-5)
    # the update x - lambda g lowers the masked error for small lambda (right sign), and never touches
    # what the loss cannot see beyond the mollifier's reach: the hole's far side
    assert loss_of(x - 1e-3 * g) < loss_of(x) < loss_of(x + 1e-3 * g)

    # whole guided chains: the same noise, with and without guidance
    def run(scale):
        gen = torch.Generator().manual_seed(1)
        noises = [torch.randn(1, 3, R, R, generator=gen, dtype=torch.float64) for _ in range(10)]

        def guidance(x_t, mu_0):
            return reconstruction_loss(mu_0, target, mask)

        out = ddpm_sample(EpsDenoiser(linear_model), diff, x.clone(), 10, noise_fn=lambda k: noises[k],
                          t_start=300, guidance=guidance, guidance_scale=scale)
        return reconstruction_loss(out, target, mask).item()

    unguided, guided = run(0.0), run(0.05)
    assert guided < 0.5 * unguided


def test_guidance_takes_its_gradient_through_the_unclipped_estimate():
    """The paper's update uses mu_0(x_t, t) as the network gives it. Clipping it inside the graph would give
    every pixel whose estimate lies outside [-1, 1] zero guidance; here all of them do, so clipped guidance
    would change nothing at all."""
    diff = make_diffusion()
    x = torch.full((1, 3, R, R), 3.0, dtype=torch.float64)          # T x0 estimate ~3: clipped to 1
    mask = torch.zeros(1, 1, R, R, dtype=torch.float64)
    mask[..., : R // 2] = 1
    target = torch.zeros(1, 3, R, R, dtype=torch.float64)
    zero = lambda k: torch.zeros_like(x)                              # noqa: E731
    ts = respaced_timesteps(1000, 2, t_start=300)

    def first_step(scale):
        states = []
        ddpm_sample(EpsDenoiser(linear_model), diff, x.clone(), 2, noise_fn=zero, t_start=300,
                    guidance=lambda x_t, mu_0: reconstruction_loss(mu_0, target, mask), guidance_scale=scale,
                    callback=lambda i, t, x_t, Tx0: states.append(x_t))
        return states[1]

    # mu_0 = c x with c = (1 - 0.3 sigma) / alpha at t_s (Eq. 11 solved for T x0 with f = 0.3 x_t), so
    # grad ||m mu_0||^2 = 2 m c^2 x, and the guided state moves by -lambda times that.
    ab = diff.alpha_bar[ts[0]]
    c = (1 - 0.3 * (1 - ab).sqrt()) / ab.sqrt()
    assert c * 3.0 > 1.0                                              # the estimate really is clipped
    moved = first_step(0.01) - first_step(0.0)
    assert torch.allclose(moved, -0.01 * 2 * mask * c**2 * x, rtol=1e-9, atol=1e-12)
    assert moved.abs().max() > 0.05


def test_edit_on_a_model(tiny_cfg):
    """Method.edit: t_s = 0 returns the input (up to the first step's noise); the result depends only on
    each image's own seed; inpainting keeps the known region closer to the original with guidance."""
    torch.manual_seed(0)
    method = build_method(tiny_cfg).eval()
    x = torch.rand(3, 3, 16, 16) * 1.6 - 0.8
    kept = method.edit(x, [1, 2, 3], t_start=0, steps=1, demollify=False)
    assert torch.allclose(kept, method.mollifier(x).clamp(-1, 1), atol=0.05)
    a = method.edit(x, [1, 2, 3], t_start=200, steps=4)
    b = torch.cat([method.edit(x[i:i + 1], [s], t_start=200, steps=4) for i, s in enumerate([1, 2, 3])])
    assert torch.allclose(a, b, atol=1e-5)
    mask = centre_mask(3, 16, frac=0.5)
    plain = inpaint(method, x, mask, [1, 2, 3], t_start=350, steps=6, guidance_scale=0.0)
    guided = inpaint(method, x, mask, [1, 2, 3], t_start=350, steps=6, guidance_scale=0.05)
    err = lambda y: (mask * (y - x)).pow(2).sum().item()  # noqa: E731
    assert err(guided) < err(plain)


def test_superresolve_shapes_and_helpers(tiny_cfg):
    method = build_method(tiny_cfg).eval()
    hi = torch.rand(2, 3, 32, 32) * 2 - 1
    low = downsample(hi, 8)
    assert torch.allclose(low[:, :, 0, 0], hi[:, :, :4, :4].mean(dim=(2, 3)))
    assert upsample(low, 32).shape == (2, 3, 32, 32)
    out = superresolve(method, low, [5, 6], 32, t_start=100, steps=3)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    m = centre_mask(1, 8, 0.5)
    assert m.sum() == 64 - 16 and m[0, 0, 3, 3] == 0 and m[0, 0, 0, 0] == 1
