"""The per-pixel MLP baseline (baselines/mlp_pixel.py): resolution-free context, parameter parity with
∞-Diff, training, seeded sampling at any resolution, and the as_described variant's one-step targets."""

import copy
import math

import pytest
import torch
import yaml

from baselines import mlp_pixel as MP
from infdiff import coords as C
from infdiff.config import SCHEMA_PATH, load_config, run_config
from infdiff.diffusion import MollifiedDiffusion, make_betas
from infdiff.methods import METHODS, entry_point
from infdiff.methods.infdiff import InfDiff
from infdiff.mollifier import Mollifier
from tests.conftest import REPO

STDS = (0.015625, 0.03125, 0.0625, 0.125)


def schema_defaults() -> dict:
    """The `mlp_pixel:` defaults as the schema documents them (the one source of the defaults)."""
    props = yaml.safe_load(SCHEMA_PATH.read_text())["$defs"]["mlp_pixel"]["properties"]
    return {k: copy.deepcopy(v["default"]) for k, v in props.items()}


def as_mlp_pixel(cfg: dict, **over) -> dict:
    """A run config turned into an mlp_pixel run: schema defaults, then the run's own keys, then ``over``."""
    cfg = copy.deepcopy(cfg)
    cfg["method"] = "mlp_pixel"
    cfg["mlp_pixel"] = {**schema_defaults(), **cfg.get("mlp_pixel", {}), **over}
    return cfg


@pytest.fixture(params=["fair", "as_described"])
def tiny_mlp_cfg(request, tiny_cfg) -> dict:
    """Tiny sizes (R_train 16); a small ``chunk`` so that sampling really evaluates in slices."""
    cfg = as_mlp_pixel(tiny_cfg, variant=request.param, width=32, depth=2, fourier_octaves=3,
                       time_dim=16, chunk=100)
    if request.param == "as_described":
        cfg["diffusion"]["timesteps"] = 4       # sampled with all its steps
    return cfg


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------- context
def test_context_features_of_a_constant_image_are_the_same_at_every_resolution(single_thread):
    c = torch.tensor([0.3, -0.7, 0.1], dtype=torch.float64)
    want = c.repeat(1 + len(STDS))                                    # (x_t, N_1 .. N_K), 3 channels each
    for R in (8, 16, 48, 64):
        x = c.view(1, 3, 1, 1).expand(2, 3, R, R).contiguous()
        f = MP.context_features(x, C.full_grid(2, R), STDS, train_res=16)
        assert f.shape == (2, R * R, 3 * (1 + len(STDS)))
        assert torch.allclose(f, want.expand_as(f), atol=1e-12, rtol=0)
    # A non-constant image: every blur scale gives different values (the check above can fail).
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f = MP.context_features(x, C.full_grid(1, 16), STDS, train_res=16).view(1, 256, 1 + len(STDS), 3)
    for a in range(1 + len(STDS)):
        for b in range(a):
            assert (f[:, :, a] - f[:, :, b]).abs().max() > 1e-3


@pytest.mark.parametrize("std", [0.0625, 0.125])
def test_blur_std_is_fixed_in_units_of_the_image_side(std):
    """A step edge at x = 1/2 blurred by N (reflective boundary = an infinite edge) is the continuous
    profile erf((x - 1/2) / (std sqrt 2)) at R, 2R and 4R; a std fixed in pixels is far from it."""
    for R in (32, 64, 128):
        x = (torch.arange(R, dtype=torch.float64) + 0.5) / R                # pixel centres
        edge = torch.sign(x - 0.5).expand(1, 1, R, R).contiguous()
        profile = torch.erf((x - 0.5) / (std * math.sqrt(2)))
        blurred = MP.context_blur(std, 32)(edge)[0, 0]
        assert (blurred - profile).abs().max() < 0.01, R
        if R > 32:  # the same std in pixels of the 32 px grid is a shorter length at R: wrong profile
            fixed_px = Mollifier(std_px=std * 32, train_res=R)(edge)[0, 0]
            assert (fixed_px - profile).abs().max() > 0.1


def test_fourier_features():
    xy = torch.tensor([[[0.25, 0.5]]], dtype=torch.float64)
    f = MP.fourier_features(xy, 2)                                      # k = 0, 1
    want = [math.sin(math.pi * 0.25), math.sin(2 * math.pi * 0.25), math.sin(math.pi * 0.5),
            math.sin(2 * math.pi * 0.5)]
    want += [math.cos(math.pi * 0.25), math.cos(2 * math.pi * 0.25), math.cos(math.pi * 0.5),
             math.cos(2 * math.pi * 0.5)]
    assert torch.allclose(f[0, 0], torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert MP.fourier_features(xy, 0).shape == (1, 1, 0)


# ------------------------------------------------------------------------------------- registry
def test_registry_builds_the_named_variant(tiny_cfg):
    assert entry_point(METHODS["mlp_pixel"]) is MP.build_mlp_pixel
    fair = MP.build_mlp_pixel(as_mlp_pixel(tiny_cfg, variant="fair", width=8, depth=1, time_dim=8))
    desc = MP.build_mlp_pixel(as_mlp_pixel(tiny_cfg, variant="as_described", width=8))
    assert type(fair) is MP.MLPPixel and type(desc) is MP.MLPPixelAsDescribed
    assert fair.name == desc.name == "mlp_pixel"
    with pytest.raises(ValueError, match="known: fair, as_described"):
        MP.build_mlp_pixel(as_mlp_pixel(tiny_cfg, variant="blog"))


def test_fair_variant_has_about_as_many_parameters_as_infdiff():
    """Within 20% of the embedded default's ∞-Diff (the comparison in Table 1 is at equal size)."""
    config = load_config(REPO / "config.yaml")
    infdiff = run_config(config, "infdiff")
    # The embedded mlp_pixel run when there is one (fair variant), else ∞-Diff's run with the defaults.
    base = run_config(config, "mlp_pixel") if "mlp_pixel" in config["runs"] else infdiff
    torch.manual_seed(0)
    mlp = MP.build_mlp_pixel(as_mlp_pixel(base, variant="fair"))
    n_mlp, n_inf = n_params(mlp), n_params(InfDiff(infdiff))
    assert abs(n_mlp / n_inf - 1) < 0.2, (n_mlp, n_inf)


def test_chunked_evaluation_equals_one_call(tiny_cfg, single_thread):
    torch.manual_seed(0)
    m = MP.build_mlp_pixel(as_mlp_pixel(tiny_cfg, width=16, depth=2, time_dim=16, chunk=1 << 20)).double()
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=g)
    idx, t = C.full_grid(3, 16), torch.tensor([0, 500, 999])
    with torch.no_grad():                                               # sampling: sliced
        whole = m.denoise(x_t, idx, t)
        m.chunk = 70                                                    # 23 points per image per slice
        assert MP.points_per_call(m.chunk, 3, 256) == 23
        assert torch.allclose(m.denoise(x_t, idx, t), whole, atol=1e-12)
        torch.set_num_threads(2)                                        # chunk is per thread
        assert MP.points_per_call(70, 3, 256) == 46
        torch.set_num_threads(1)
    with torch.enable_grad():                                           # training: one call, one graph
        assert MP.points_per_call(70, 3, 256) == 256
        assert torch.allclose(m.denoise(x_t, idx, t), whole, atol=1e-12)


# ----------------------------------------------------------------------------- training, sampling
def test_training_loss_is_finite_and_a_few_adam_steps_reduce_it(tiny_mlp_cfg, single_thread):
    torch.manual_seed(0)
    m = MP.build_mlp_pixel(tiny_mlp_cfg)
    x0 = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fixed = lambda: m.training_loss(x0, torch.Generator().manual_seed(0))  # noqa: E731  same t, noise, points
    first = fixed()
    assert first.ndim == 0 and torch.isfinite(first)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(15):
        opt.zero_grad()
        loss = fixed()
        loss.backward()
        opt.step()
    assert fixed().item() < 0.9 * first.item()


def test_training_loss_under_bf16_autocast_is_float32(tiny_mlp_cfg, single_thread):
    torch.manual_seed(0)
    m = MP.build_mlp_pixel(tiny_mlp_cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m.training_loss(torch.zeros(2, 3, 16, 16), torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_sampling_shapes_range_and_batch_size_independence(tiny_mlp_cfg, single_thread):
    torch.manual_seed(0)
    m = MP.build_mlp_pixel(tiny_mlp_cfg).train()
    steps = 4 if tiny_mlp_cfg["mlp_pixel"]["variant"] == "as_described" else 2
    for R in (16, 32):
        x = m.sample([1, 2], R, steps=steps, progress=False)
        assert x.shape == (2, 3, R, R) and x.dtype == torch.float32
        assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    assert m.training                                                   # mode restored
    seeds = [11, 12, 13, 14]
    together = m.sample(seeds, 16, steps=steps, progress=False, batch_size=4)
    alone = m.sample(seeds, 16, steps=steps, progress=False, batch_size=1)
    assert torch.allclose(together, alone, atol=1e-5)
    if tiny_mlp_cfg["mlp_pixel"]["variant"] == "fair":
        # (An untrained as_described MLP is a contraction: after its 4 steps every seed gives ~one image.)
        assert (together[0] - together[1]).abs().max() > 1e-4


# ----------------------------------------------------------------------------- as_described only
@pytest.mark.parametrize("t", [0, 7, 49])
def test_as_described_pairs_follow_one_forward_trajectory(t):
    """x_{t-1} ~ q(x_{t-1} | x0), x_t ~ q(x_t | x0) and Cov(x_t, x_{t-1}) = sqrt(alpha_t) (1 - ab_{t-1})."""
    d = MollifiedDiffusion(make_betas("cosine", 50), Mollifier(std_px=0))
    n = 200_000
    g = torch.Generator().manual_seed(t)
    x0 = torch.full((n, 1, 1, 1), 0.6, dtype=torch.float64)
    eps = torch.randn(2, n, 1, 1, 1, dtype=torch.float64, generator=g)
    x_t, x_prev = MP.trajectory_pair(d, x0, torch.full((n,), t), eps[0], eps[1])
    ab, ab_prev, alpha = (float(a[t]) for a in (d.alpha_bar, d.alpha_bar_prev, d.alphas))
    assert abs(x_prev.mean() - math.sqrt(ab_prev) * 0.6) < 0.01
    assert abs(x_prev.var() - (1 - ab_prev)) < 0.01
    assert abs(x_t.mean() - math.sqrt(ab) * 0.6) < 0.01
    assert abs(x_t.var() - (1 - ab)) < 0.01
    cov = ((x_t - x_t.mean()) * (x_prev - x_prev.mean())).mean()
    assert abs(cov - math.sqrt(alpha) * (1 - ab_prev)) < 0.01
    if t == 0:
        assert torch.equal(x_prev, x0)                                  # x_{-1} is the data itself


def test_as_described_through_the_shared_sampler_is_its_one_step_chain(tiny_cfg, single_thread):
    """PreviousXDenoiser is exact: over all T steps, unclipped and without the ancestral noise, DDPM's
    posterior mean of every step is the network's own I_{t-1}, i.e. the blog's chain x <- MLP(x)."""
    from infdiff.samplers import ddpm_sample

    cfg = as_mlp_pixel(tiny_cfg, variant="as_described", width=8)
    cfg["diffusion"]["timesteps"] = 5
    torch.manual_seed(0)
    m = MP.build_mlp_pixel(cfg).eval()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    zero = lambda k: torch.zeros_like(x_T)                                # noqa: E731
    got = ddpm_sample(m.denoiser(8), m.diffusion, x_T, 5, noise_fn=zero, clip_Tx0=False)
    x, idx = x_T, C.full_grid(2, 8)
    with torch.no_grad():
        for t in range(4, -1, -1):
            x = m.predict_prev(x, idx, torch.full((2,), t)).transpose(1, 2).reshape(2, 3, 8, 8)
    assert torch.allclose(got, x, atol=1e-4)
    # and, like every method, it can be sampled with fewer (respaced) steps
    assert m.sample([1], 8, steps=3, progress=False).shape == (1, 3, 8, 8)
