"""Architecture ablation switches of Table 2: the full-kernel sparse conv (`regular_conv`) and the
spatially nonlinear kernel (`nonlinear_kernel`, conv -> GELU -> conv): operator maths, backend agreement,
and that each switch changes the network only inside the sparse blocks' spatial operator."""

import zlib

import pytest
import torch
import torch.nn.functional as F

from infdiff.nets import InfDiffNet
from tests.conftest import net_kwargs
from infdiff.nets.blocks import SparseNonlinearKernel
from infdiff.sparse import SparseGeometry, kernel_size_at, resize_kernel, sparse_conv, sparse_depthwise_conv

# The small network of tests/test_nets.py: every component of the default, fast on 2 CPU cores.
SMALL = net_kwargs(channels=16, sparse_blocks=2, kernel_size=7, train_res=32, grid_res=8, unet_channels=16,
                   unet_mults=(1, 2), unet_blocks=1, attn_res=(4,), dropout=0.1, time_dim=32, interp="knn")
# The schema's `model` defaults with the paper's k-NN points -> grid step.
PAPER = net_kwargs(interp="knn")
SWITCHES = ("regular_conv", "nonlinear_kernel")


def _subset(B, R, ratio, seed=0):
    """idx [B, N]: distinct sorted random pixels per row (N = round(ratio R^2))."""
    g = torch.Generator().manual_seed(seed)
    N = max(1, round(ratio * R * R))
    return torch.stack([torch.randperm(R * R, generator=g)[:N].sort().values for _ in range(B)])


def _dense_reference(x, w):
    """F.conv2d (full kernel, zero padding) divided by the fraction of the k x k window inside the image."""
    k = w.shape[-1]
    y = F.conv2d(x, w, padding=k // 2)
    ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype)
    frac = F.conv2d(ones, torch.ones(1, 1, k, k, dtype=x.dtype), padding=k // 2) / k ** 2
    return y / frac


def _to_points(x):
    """[B, C, R, R] -> [B, R*R, C] in raster order."""
    return x.flatten(2).transpose(1, 2)


# ------------------------------------------------------------------------------ full-kernel sparse conv
@pytest.mark.parametrize("backend", ["torch", "dense"])
@pytest.mark.parametrize("k", [3, 7])
def test_full_kernel_at_ratio_one_equals_conv2d_over_window_fraction(backend, k):
    torch.manual_seed(1)
    B, C_in, C_out, R = 2, 3, 4, 9
    x = torch.randn(B, C_in, R, R, dtype=torch.float64)
    w = torch.randn(C_out, C_in, k, k, dtype=torch.float64)
    # A shuffled full grid exercises the scatter path; raster order the reshape fast path.
    for idx in (torch.arange(R * R).expand(B, -1), torch.stack([torch.randperm(R * R) for _ in range(B)])):
        geom = SparseGeometry(idx, R, k)
        v = _to_points(x).gather(1, idx.unsqueeze(-1).expand(-1, -1, C_in))
        ref = _to_points(_dense_reference(x, w)).gather(1, idx.unsqueeze(-1).expand(-1, -1, C_out))
        torch.testing.assert_close(sparse_conv(v, geom, w, backend), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_full_kernel_backends_agree_at_quarter_ratio_with_gradients(dtype, tol):
    torch.manual_seed(2)
    B, C_in, C_out, R, k = 3, 5, 6, 16, 7
    geom = SparseGeometry(_subset(B, R, 0.25), R, k)
    v = torch.randn(B, geom.N, C_in, dtype=dtype, requires_grad=True)
    w = torch.randn(C_out, C_in, k, k, dtype=dtype, requires_grad=True)
    g = torch.randn(B, geom.N, C_out, dtype=dtype)
    outs = {b: sparse_conv(v, geom, w, b) for b in ("torch", "dense")}
    torch.testing.assert_close(outs["torch"], outs["dense"], rtol=tol, atol=tol)
    grads = {b: torch.autograd.grad(o, (v, w), g) for b, o in outs.items()}
    for a, b in zip(grads["torch"], grads["dense"]):
        torch.testing.assert_close(a, b, rtol=tol, atol=10 * tol)


def test_full_kernel_gradcheck():
    torch.manual_seed(3)
    B, C_in, C_out, R, k = 2, 2, 3, 6, 3
    geom = SparseGeometry(_subset(B, R, 0.5), R, k)
    v = torch.randn(B, geom.N, C_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C_out, C_in, k, k, dtype=torch.float64, requires_grad=True)
    for backend in ("torch", "dense"):
        assert torch.autograd.gradcheck(lambda v, w: sparse_conv(v, geom, w, backend), (v, w))


def test_diagonal_full_kernel_equals_depthwise_conv():
    # kappa = diag(w_c): the full operator must reduce to the depthwise one (same normaliser, same taps).
    torch.manual_seed(4)
    B, C, R, k = 2, 4, 12, 5
    geom = SparseGeometry(_subset(B, R, 0.3), R, k)
    v = torch.randn(B, geom.N, C, dtype=torch.float64)
    w = torch.randn(C, k, k, dtype=torch.float64)
    full = torch.diag_embed(w.permute(1, 2, 0)).permute(2, 3, 0, 1)            # [C, C, k, k]
    for backend in ("torch", "dense"):
        torch.testing.assert_close(sparse_conv(v, geom, full, backend),
                                   sparse_depthwise_conv(v, geom, w, backend), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("R", [32, 64, 128])
@pytest.mark.parametrize("ratio", [1.0, 0.25])
def test_constant_is_preserved_by_identity_box_kernel_at_every_resolution(R, ratio):
    # Identity in channels, box of integral 1 in space, resized with its integral kept: the Monte-Carlo
    # average of a constant field is that constant at every resolution, subset and border.
    C, k = 2, kernel_size_at(7, R, 32)
    # float64: float32 rounding alone reaches ~2e-5 over the 57 x 57 x C taps at 256 px (not run here:
    # the direct full-kernel conv at k = 57 costs seconds, see _dense_full_backend).
    w = resize_kernel(torch.eye(C, dtype=torch.float64)[:, :, None, None].expand(C, C, 7, 7) / 49, k)
    idx = torch.arange(R * R)[None] if ratio == 1.0 else _subset(1, R, ratio, seed=R)
    geom = SparseGeometry(idx, R, k)
    v = torch.tensor([0.731, -0.25], dtype=torch.float64).expand(1, idx.shape[1], C)
    backends = ["dense"] + (["torch"] if geom.N * geom.K <= 2 ** 21 else [])
    for backend in backends:
        torch.testing.assert_close(sparse_conv(v, geom, w, backend), v, rtol=0, atol=1e-10)


def test_full_kernel_errors():
    geom = SparseGeometry(torch.arange(16)[None], 4, 3)
    v = torch.zeros(1, 16, 2)
    with pytest.raises(ValueError, match="weight must be"):
        sparse_conv(v, geom, torch.zeros(3, 2, 5, 5))
    with pytest.raises(ValueError, match="does not match"):
        sparse_conv(v, geom, torch.zeros(3, 4, 3, 3))
    with pytest.raises(ValueError, match="unknown sparse backend"):
        sparse_conv(v, geom, torch.zeros(3, 2, 3, 3), "cuda-magic")


def test_nonlinear_kernel_is_conv_gelu_conv():
    torch.manual_seed(5)
    op = SparseNonlinearKernel(4, 7).double()
    with torch.no_grad():
        op.conv1.bias.normal_()
        op.conv2.bias.normal_()
    R = 64  # != train size of the kernel's definition: both convs see the resized kernel
    geom = SparseGeometry(_subset(2, R, 0.25), R, kernel_size_at(7, R, 32))
    v = torch.randn(2, geom.N, 4, dtype=torch.float64)
    w1, w2 = resize_kernel(op.conv1.weight, geom.k), resize_kernel(op.conv2.weight, geom.k)
    h = F.gelu(sparse_depthwise_conv(v, geom, w1) + op.conv1.bias)
    ref = sparse_depthwise_conv(h, geom, w2) + op.conv2.bias
    torch.testing.assert_close(op(v, geom), ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------- the network
def _net(**kw):
    torch.manual_seed(0)
    net = InfDiffNet(**{**SMALL, **kw})
    # Zero-initialised layers (output, modulations, biases) get random values keyed by their name, so
    # every path affects the output and the default and ablated nets share all values outside K.
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not p.abs().gt(0).any():
                g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def _is_operator(name: str) -> bool:
    """Parameters of the sparse blocks' spatial operator K: {down,up}.<i>.conv.*"""
    parts = name.split(".")
    return parts[0] in ("down", "up") and parts[2] == "conv"


def _inputs(R, ratio, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = _subset(B, R, ratio, seed) if ratio < 1 else torch.arange(R * R).expand(B, -1)
    return torch.randn(B, idx.shape[1], 3, generator=g), idx, torch.tensor([17, 640])


def test_switches_default_to_the_papers_network():
    """The schema (the one home of defaults) leaves every ablation off: a run that names none of them
    builds the paper's architecture (depthwise kernels, a grid U-Net path)."""
    from infdiff.config import section_defaults

    defaults = section_defaults("model")
    assert [defaults[k] for k in (*SWITCHES, "sparse_downsample")] == [False, False, False]
    torch.manual_seed(0)
    names = [n for n, _ in InfDiffNet(**PAPER).named_parameters()]
    assert any(n.startswith("unet.") for n in names) and not any(n.startswith("middle.") for n in names)
    operator = {n: p.shape for n, p in InfDiffNet(**PAPER).named_parameters() if _is_operator(n)}
    C, k = PAPER["channels"], PAPER["kernel_size"]
    assert {s for n, s in operator.items() if n.endswith("weight")} == {(C, k, k)}   # depthwise, linear


@pytest.mark.parametrize("switch", SWITCHES)
def test_switch_changes_only_the_spatial_operator(switch):
    base, abl = _net().state_dict(), _net(**{switch: True}).state_dict()
    outside = lambda sd: {k: v for k, v in sd.items() if not _is_operator(k)}   # noqa: E731
    b_out, a_out = outside(base), outside(abl)
    # Same names, shapes and, thanks to the RNG-neutral init of K, the same initial values outside K.
    assert list(b_out) == list(a_out)
    for k in b_out:
        assert torch.equal(b_out[k], a_out[k]), k
    C, k = SMALL["channels"], SMALL["kernel_size"]
    ops = {n: tuple(v.shape) for n, v in abl.items() if _is_operator(n)}
    blocks = [f"{s}.{i}.conv" for s in ("down", "up") for i in range(SMALL["sparse_blocks"])]
    if switch == "regular_conv":
        expect = {f"{b}.{p}": s for b in blocks for p, s in (("weight", (C, C, k, k)), ("bias", (C,)))}
    else:
        expect = {f"{b}.{c}.{p}": s for b in blocks for c in ("conv1", "conv2")
                  for p, s in (("weight", (C, k, k)), ("bias", (C,)))}
    assert ops == expect
    assert {n: tuple(v.shape) for n, v in base.items() if _is_operator(n)} == \
        {f"{b}.{p}": s for b in blocks for p, s in (("weight", (C, k, k)), ("bias", (C,)))}


@pytest.mark.parametrize("switch", SWITCHES)
def test_switch_changes_the_output(switch):
    base, abl = _net().eval(), _net(**{switch: True}).eval()
    x, idx, t = _inputs(32, 0.25)
    with torch.no_grad():
        y0, y1 = base(x, idx, 32, t), abl(x, idx, 32, t)
    assert torch.isfinite(y1).all()
    assert (y0 - y1).abs().max() > 1e-3 * y0.abs().max()


@pytest.mark.parametrize("switches", [{"regular_conv": True}, {"nonlinear_kernel": True},
                                      {"regular_conv": True, "nonlinear_kernel": True}])
def test_ablated_net_trains_at_quarter_ratio_and_samples_at_twice_the_resolution(switches):
    net = _net(**switches)
    net.train()
    x, idx, t = _inputs(32, 0.25)
    net(x, idx, 32, t).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().gt(0).any()]
    assert not missing, f"no gradient reached {missing}"
    # The full grid at 2x the training resolution: kernels resized to 15 taps, dense backend.
    net.eval()
    x, idx, t = _inputs(64, 1.0)
    with torch.no_grad():
        y = net(x, idx, 64, t)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_sparse_downsample_replaces_only_the_grid_path():
    torch.manual_seed(0)
    ref = InfDiffNet(**PAPER)
    torch.manual_seed(0)
    net = InfDiffNet(**{**PAPER, "sparse_downsample": True})
    a, b = dict(ref.named_parameters()), dict(net.named_parameters())
    # Only the grid path differs: unet.* is gone, middle.* is new, everything else is the same shape.
    assert {k for k in a if not k.startswith("unet.")} == {k for k in b if not k.startswith("middle.")}
    assert not any(k.startswith("unet.") for k in b) and any(k.startswith("middle.") for k in b)
    assert net.middle.levels == 3  # as deep as the grid U-Net it replaces (16 -> 8 -> 4)
    x, idx, t = _inputs(32, 0.25)
    out = net(x, idx, 32, t)
    assert out.shape == x.shape
    out.square().sum().backward()
    full = torch.arange(64 * 64).expand(2, -1)
    net.eval()
    assert net(torch.randn(2, 64 * 64, 3), full, 64, t).shape == (2, 64 * 64, 3)
