"""The ∞-Diff network: shapes at any resolution, gradients, dropout, interpolation conventions, batching."""

import math

import pytest
import torch

from infdiff.nets import InfDiffNet
from tests.conftest import net_kwargs
from infdiff.nets.interp import grid_to_coords, grid_to_points, knn_stencil, points_to_grid
from infdiff.coords import idx_to_coords
from infdiff.nets.unet import GridUNet, ResBlock

# A small network with every component of the default (2 sparse blocks each side, knn, U-Net with
# attention and dropout at the low resolutions), sized to keep the tests fast on 2 CPU cores.
SMALL = net_kwargs(channels=16, sparse_blocks=2, kernel_size=7, train_res=32, grid_res=8, unet_channels=16,
                   unet_mults=(1, 2), unet_blocks=1, attn_res=(4,), dropout=0.1, time_dim=32, interp="knn")


def _subset(B, R, ratio, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = max(1, round(ratio * R * R))
    return torch.stack([torch.randperm(R * R, generator=g)[:N].sort().values for _ in range(B)])


def _randomise_zero_params(net, seed=0):
    """Give zero-initialised layers (output, modulations, N&D zero convs) random values, so that every
    path of the network affects the output and gradient tests see all parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().gt(0).any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def _net(**kw):
    torch.manual_seed(0)
    return _randomise_zero_params(InfDiffNet(**{**SMALL, **kw}))


def _brute_knn_weights(idx, R, G, k):
    """[B, G*G, N] inverse squared distance weights over the k nearest points (ties kept), float64."""
    r, c = (idx // R).double(), (idx % R).double()
    px, py = (c + 0.5) / R, (r + 0.5) / R
    n = (torch.arange(G).double() + 0.5) / G
    ny, nx = torch.meshgrid(n, n, indexing="ij")
    d2 = (nx.reshape(1, -1, 1) - px[:, None]) ** 2 + (ny.reshape(1, -1, 1) - py[:, None]) ** 2
    dk = d2.sort(-1).values[..., k - 1:k]
    w = torch.where(d2 <= dk * (1 + 1e-5), 1 / (d2 + 1e-12), torch.zeros_like(d2))
    return w / w.sum(-1, keepdim=True)


# -------------------------------------------------------------------------------------------- shapes
def test_forward_shapes_at_quarter_ratio_and_full_grids_with_same_weights():
    net = _net().eval()
    B = 2
    t = torch.tensor([3, 870])
    idx = _subset(B, 32, 0.25)
    out = net(torch.randn(B, idx.shape[1], 3), idx, 32, t)
    assert out.shape == (B, 256, 3) and torch.isfinite(out).all()
    with torch.no_grad():
        for R in (32, 64, 128):
            idx = torch.arange(R * R).expand(1, -1)
            out = net(torch.randn(1, R * R, 3), idx, R, t[:1])
            assert out.shape == (1, R * R, 3) and torch.isfinite(out).all()


def test_gradients_reach_every_parameter():
    net = _net(dropout=0.0)
    idx = _subset(2, 32, 0.25)
    out = net(torch.randn(2, idx.shape[1], 3), idx, 32, torch.tensor([10, 500]))
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().gt(0).any()]
    assert not missing, missing


def test_bf16_autocast_tracks_float32_and_reaches_every_parameter():
    """precision bf16/auto: the network under CPU bf16 autocast (convs and linears in bf16; group norms and
    attention in float32, infdiff/nets/unet.py) gives the float32 output to bf16 accuracy,
    and its gradients reach every parameter."""
    net = _net(dropout=0.0)
    idx = _subset(2, 32, 0.25)
    x, t = torch.randn(2, idx.shape[1], 3), torch.tensor([10, 500])
    ref = net(x, idx, 32, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, idx, 32, t)
    assert torch.isfinite(out).all()
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 0.05, rel
    out.float().square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or not p.grad.abs().gt(0).any()]
    assert not missing, missing


def test_output_is_zero_at_initialisation():
    # Zero-initialised output layer: the untrained model predicts T xi = 0 (the MSE-optimal constant).
    net = InfDiffNet(**SMALL)
    idx = _subset(1, 32, 0.25)
    assert net(torch.randn(1, idx.shape[1], 3), idx, 32, torch.tensor([5])).abs().max() == 0


def test_dropout_only_in_train_mode_and_only_at_low_resolutions():
    net = _net(dropout=0.5)
    idx = _subset(2, 32, 0.25)
    x, t = torch.randn(2, idx.shape[1], 3), torch.tensor([100, 900])
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x, idx, 32, t), net(x, idx, 32, t))
        net.train()
        assert not torch.allclose(net(x, idx, 32, t), net(x, idx, 32, t))
    # App. A: dropout where attention is (grid 4 here), not at the finest grid level (8).
    unet = GridUNet(16, 16, base=16, mults=(1, 2), attn_res=(4,), dropout=0.3, time_dim=32, grid_res=8)
    ps = [m.drop.p for m in unet.modules() if isinstance(m, ResBlock)]
    assert 0.0 in ps and 0.3 in ps
    assert all(m.drop.p == 0.3 for m in unet.mid if isinstance(m, ResBlock))


def test_batch_composition_does_not_change_outputs():
    net = _net().eval()
    t = torch.tensor([7, 400, 999])
    for R, idx in ((32, _subset(3, 32, 0.25, seed=4)), (32, torch.arange(1024).expand(3, -1))):
        x = torch.randn(3, idx.shape[1], 3)
        with torch.no_grad():
            full = net(x, idx, R, t)
            for i in range(3):
                alone = net(x[i:i + 1], idx[i:i + 1], R, t[i:i + 1])
                torch.testing.assert_close(full[i:i + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("interp", ["knn", "gaussian"])
def test_chunked_sampling_path_equals_training_path(interp):
    # Without autograd, large point sets run the pointwise layers slice by slice (cache-friendly), on a
    # CPU the norms and residual MLPs as C++ passes (float32 conv inputs, channel-major for the FFT) and
    # the full-grid interpolation in place; the result must match the one-go evaluation used in training.
    net = _net(interp=interp).eval()
    R, B = 128, 3
    idx = torch.arange(R * R).expand(B, -1)
    x, t = torch.randn(B, R * R, 3), torch.tensor([5, 300, 800])
    with torch.no_grad():
        chunked = net(x, idx, R, t)
    one_go = net(x, idx, R, t).detach()
    torch.testing.assert_close(chunked, one_go, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("R, planes", [(32, False), (64, True)])   # k = 7: direct conv; k = 15: the FFT
def test_sampling_writes_the_operators_input_in_the_layout_it_reads(R, planes, monkeypatch):
    # The first norm of a block writes the operator's input: channel planes for the FFT, point-major rows for the
    # direct conv's channels-last view (channel-major there cost a transposing copy of the whole tensor, ~30%
    # of a 32 px sampling step of 128 images); either way the values are the training path's.
    from infdiff import fused_norm
    from infdiff.sparse import SparseGeometry, reads_planes

    from infdiff.cpp_build import cpp_available

    if not cpp_available("cpu")[0]:
        pytest.skip("no C++ build here: the eager pointwise path runs")
    net = _net().eval()
    B = 40                                                   # B * R^2 above 2 POINT_CHUNK: the chunked path
    idx = torch.arange(R * R).expand(B, -1)
    x, t = torch.randn(B, R * R, 3), torch.randint(0, 1000, (B,))
    seen, real = [], fused_norm.modulated_norm

    def spy(*a, channel_major=False, **k):
        if k.get("dtype") == torch.float32:                  # a block's first norm: the operator's input
            seen.append(channel_major)
        return real(*a, channel_major=channel_major, **k)

    monkeypatch.setattr(fused_norm, "modulated_norm", spy)
    with torch.no_grad():
        sampled = net(x, idx, R, t)
    assert len(seen) == 2 * net_kwargs()["sparse_blocks"] and set(seen) == {planes}
    torch.testing.assert_close(sampled, net(x, idx, R, t).detach(), rtol=1e-5, atol=1e-5)
    k = 7 if not planes else 15
    assert reads_planes(SparseGeometry(idx[:1], R, k)) == planes
    assert not reads_planes(SparseGeometry(idx[:1, ::4].contiguous(), R, 15))     # gathers read rows


def test_pointwise_channel_major_output_feeds_the_fft_planes_without_a_copy():
    # Sampling writes the conv input channel-major slice by slice; the dense backend's planes are then
    # the same storage (no transpose pass), and the values are the one-go pointwise result.
    from infdiff.nets.blocks import POINT_CHUNK, pointwise
    from infdiff.sparse import _planes
    x = torch.randn(2, 3 * POINT_CHUNK + 5, 8)
    fn = lambda a: torch.nn.functional.gelu(a) * 2 - 1
    with torch.no_grad():
        out = pointwise(fn, x, channel_major=True)
    assert out.shape == x.shape and out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out, fn(x), rtol=0, atol=0)
    planes = _planes(out)
    assert planes.data_ptr() == out.data_ptr()
    torch.testing.assert_close(planes, fn(x).transpose(1, 2), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(3, 50, 32), (2, 7, 256), (1, 1, 5), (4, 3, 3)])
def test_layer_norm_equals_torch_layer_norm_in_values_and_gradients(shape):
    # The group-norm kernel with one group per row is the LayerNorm over the last dim (biased variance,
    # same eps), forward and backward; non-contiguous inputs (channel-major views) included.
    from infdiff.nets.blocks import layer_norm
    g = torch.Generator().manual_seed(0)
    for x0 in (torch.randn(shape, generator=g) * 3 + 1, torch.randn(shape[::-1], generator=g).transpose(0, 2)):
        x, y = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
        w = torch.randn(x0.shape, generator=g)
        ours, ref = layer_norm(x), torch.nn.functional.layer_norm(y, x0.shape[-1:])
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        (ours * w).sum().backward()
        (ref * w).sum().backward()
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xb = x0.bfloat16()
        assert layer_norm(xb).dtype == torch.nn.functional.layer_norm(xb, x0.shape[-1:]).dtype


def test_modulated_layer_norm_applies_its_modulation_per_image():
    # LN(v) * (1 + scale(t)) + shift(t), times (1 + s_z(z)) with a latent; modulation() computed once per
    # forward and modulate() on any slice of points give the same values as forward().
    from infdiff.nets.blocks import ModulatedLayerNorm
    torch.manual_seed(0)
    for z_dim in (0, 6):
        norm = _randomise_zero_params(ModulatedLayerNorm(8, 16, z_dim))
        v, temb = torch.randn(3, 20, 8), torch.randn(3, 16)
        z = torch.randn(3, z_dim) if z_dim else None
        scale, shift = norm.proj(temb).chunk(2, dim=-1)
        ln = (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-5)
        ref = ln * (1 + scale[:, None]) + shift[:, None]
        if z_dim:
            ref = ref * (1 + norm.zproj(z))[:, None]
        torch.testing.assert_close(norm(v, temb, z), ref, rtol=1e-5, atol=1e-5)
        mod = norm.modulation(temb, z)
        torch.testing.assert_close(norm.modulate(v[:, 5:9], mod), ref[:, 5:9], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pass z"):
        norm.modulation(temb, None)


def test_bad_arguments():
    with pytest.raises(ValueError, match="interpolation"):
        InfDiffNet(**{**SMALL, "interp": "nearest"})
    with pytest.raises(ValueError, match="backend"):
        InfDiffNet(**{**SMALL, "backend": "torchsparse"})
    net = InfDiffNet(**SMALL)
    with pytest.raises(ValueError):
        net(torch.zeros(1, 10, 3), torch.arange(9)[None], 3, torch.zeros(1))


def test_gaussian_interp_network_and_torch_dense_backends_agree():
    idx = _subset(2, 32, 0.25)
    x, t = torch.randn(2, idx.shape[1], 3), torch.tensor([1, 2])
    with torch.no_grad():
        a = _net(interp="gaussian", backend="torch").eval()(x, idx, 32, t)
        b = _net(interp="gaussian", backend="dense").eval()(x, idx, 32, t)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ grid -> points
@pytest.mark.parametrize("G,R", [(16, 32), (8, 40), (16, 16)])
def test_grid_to_points_reads_x_and_y_at_known_coordinates(G, R):
    # A grid holding the function x (channel 0) and y (channel 1) at its cell centres (i + 0.5) / G.
    # Bilinear interpolation is exact for linear functions; beyond the outer centres the border is held.
    # The official code's [0, 1] "ij" coordinates would read a quarter of the grid with x and y swapped.
    c = (torch.arange(G, dtype=torch.float64) + 0.5) / G
    grid = torch.stack([c[None, :].expand(G, G), c[:, None].expand(G, G)])[None]   # [1, 2, G, G]
    idx = _subset(1, R, 0.5, seed=G + R)
    out = grid_to_points(grid, idx, R)[0]                                          # [N, 2]
    x = ((idx[0] % R).double() + 0.5) / R
    y = ((idx[0] // R).double() + 0.5) / R
    lo, hi = 0.5 / G, 1 - 0.5 / G
    torch.testing.assert_close(out[:, 0], x.clamp(lo, hi))
    torch.testing.assert_close(out[:, 1], y.clamp(lo, hi))
    # grid_to_coords with explicit (x, y) coordinates agrees.
    coords = torch.tensor([[[0.3, 0.8], [0.61, 0.2]]], dtype=torch.float64)
    torch.testing.assert_close(grid_to_coords(grid, coords)[0], coords[0])


@pytest.mark.parametrize("G,R", [(16, 64), (16, 33), (8, 8), (16, 8)])
def test_grid_to_points_on_the_full_grid_is_the_same_read(G, R):
    # Sampling reads every pixel in raster order by a bilinear resize instead of per-point coordinates:
    # the same values (up to float rounding of the coordinates), as a view of channel-major storage.
    torch.manual_seed(G * R)
    grid = torch.randn(2, 5, G, G, dtype=torch.float64)
    idx = torch.arange(R * R).expand(2, -1)
    full = grid_to_points(grid, idx, R)
    # Against pixel centres in float64 (idx_to_coords gives float32 ones: 2e-6 off at R = 33 by rounding).
    centres = torch.stack([idx % R, idx // R], -1).double().add(0.5).div(R)
    torch.testing.assert_close(full, grid_to_coords(grid, centres), rtol=0, atol=1e-12)
    torch.testing.assert_close(full.float(), grid_to_coords(grid.float(), idx_to_coords(idx, R)), rtol=0, atol=1e-5)
    assert full.shape == (2, R * R, 5) and full.transpose(1, 2).is_contiguous()
    c = (torch.arange(G, dtype=torch.float64) + 0.5) / G
    linear = torch.stack([c[None, :].expand(G, G), c[:, None].expand(G, G)])[None]
    x = ((torch.arange(R * R) % R).double() + 0.5) / R
    torch.testing.assert_close(grid_to_points(linear, idx[:1], R)[0, :, 0], x.clamp(0.5 / G, 1 - 0.5 / G))


# ------------------------------------------------------------------------------------ points -> grid
@pytest.mark.parametrize("R,G,ratio", [(32, 16, 0.25), (32, 16, 1.0), (16, 8, 0.1), (64, 16, 0.02),
                                       (20, 16, 0.5), (8, 16, 1.0)])
def test_knn_stencil_matches_brute_force(R, G, ratio):
    idx = _subset(3, R, ratio, seed=R + G)
    N = idx.shape[1]
    src, w = knn_stencil(idx, R, G, 3)
    dense = torch.zeros(3, G * G, N + 1, dtype=torch.float64).scatter_add_(2, src, w.double())[..., :N]
    torch.testing.assert_close(dense, _brute_knn_weights(idx, R, G, 3), rtol=0, atol=1e-6)


def test_knn_ties_are_symmetric_on_the_full_grid():
    # 16 x 16 nodes over 32 x 32 pixels: every node has 4 equidistant nearest pixels. All 4 are used
    # with equal weights, so a linear function is reproduced exactly (no 2 px speckle from picking 3).
    R, G = 32, 16
    idx = torch.arange(R * R)[None]
    _, w = knn_stencil(idx, R, G, 3)
    assert ((w > 0).sum(-1) == 4).all()
    xy = torch.stack([((idx % R) + 0.5) / R, ((idx // R) + 0.5) / R], -1).double()  # [1, N, 2]
    out = points_to_grid(xy, idx, R, G, mode="knn")
    c = (torch.arange(G, dtype=torch.float64) + 0.5) / G
    torch.testing.assert_close(out[0, 0], c[None, :].expand(G, G))
    torch.testing.assert_close(out[0, 1], c[:, None].expand(G, G))


def test_knn_on_a_256px_full_grid_is_cheap_and_exact():
    R, G = 256, 16
    idx = torch.arange(R * R)[None]
    src, w = knn_stencil(idx, R, G, 3)
    assert src.shape[:2] == (1, G * G) and torch.allclose(w.sum(-1), torch.ones(1, G * G))
    # Nodes sit on pixel corners: 4 equidistant pixels, the ones around the node centre.
    used = src[0][w[0] > 0].view(G * G, 4)
    rows, cols = used // R, used % R
    node_r = torch.arange(G).repeat_interleave(G) * (R // G) + R // (2 * G)
    assert (rows.min(1).values == node_r - 1).all() and (rows.max(1).values == node_r).all()
    assert ((cols.max(1).values - cols.min(1).values) == 1).all()


@pytest.mark.parametrize("ratio", [0.3, 1.0])          # 1.0: the full grid in raster order, contracted in place
def test_gaussian_interp_matches_brute_force_and_is_differentiable(ratio):
    R, G = 24, 8
    idx = _subset(2, R, 0.3, seed=9) if ratio < 1 else torch.arange(R * R).expand(2, -1)
    v = torch.randn(2, idx.shape[1], 3, dtype=torch.float64, requires_grad=True)
    out = points_to_grid(v, idx, R, G, mode="gaussian")
    # Brute force: w = exp(-d^2 / 2h^2), h = 1/G, within 3h per axis, normalised over the points.
    px = ((idx % R).double() + 0.5) / R
    py = ((idx // R).double() + 0.5) / R
    n = (torch.arange(G).double() + 0.5) / G
    dx = (n.view(1, 1, G, 1) - px.view(2, -1, 1, 1)) * G                   # [B, N, G(x), 1]
    dy = (n.view(1, 1, 1, G) - py.view(2, -1, 1, 1)) * G                   # [B, N, 1, G(y)]
    w = torch.exp(-0.5 * (dx ** 2 + dy ** 2)) * (dx.abs() <= 3) * (dy.abs() <= 3)   # [B, N, Gx, Gy]
    ref = torch.einsum("bnxy,bnc->bcyx", w, v) / w.sum(1).transpose(1, 2).unsqueeze(1)
    torch.testing.assert_close(out, ref)
    assert torch.autograd.gradcheck(lambda v: points_to_grid(v, idx[:, :20], R, G, mode="gaussian"),
                                    (v[:, :20].detach().requires_grad_(),))


def test_knn_interp_is_differentiable():
    idx = _subset(2, 16, 0.3, seed=3)
    v = torch.randn(2, idx.shape[1], 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: points_to_grid(v, idx, 16, 8, mode="knn"), (v,))


def test_interpolations_reproduce_a_constant():
    for mode in ("knn", "gaussian"):
        for R, ratio in ((32, 0.25), (64, 1.0)):
            idx = _subset(2, R, ratio)
            out = points_to_grid(torch.full((2, idx.shape[1], 1), -0.4), idx, R, 16, mode=mode)
            assert math.isclose(out.min().item(), -0.4, abs_tol=1e-6)
            assert math.isclose(out.max().item(), -0.4, abs_tol=1e-6)
