"""The U-Nets' group norm with its scale-shift, one C++ pass forward and backward (infdiff.group_norm), against
float64 references and the eager ops it replaces."""

import pytest
import torch
import torch.nn.functional as F

from infdiff import group_norm as GN
from infdiff.cpp_build import cpp_available
from infdiff.nets.unet import GroupNorm32, ResBlock

needs_cpp = pytest.mark.skipif(not cpp_available("cpu")[0], reason=cpp_available("cpu")[1])


def _inputs(B, C, H, dtype, layout, seed, mean=40.0):
    g = torch.Generator().manual_seed(seed)
    # by default a mean large against the spread: sums of squares taken about zero would lose the variance
    x = (torch.randn(B, C, H, H + 1, generator=g) * 3 + mean).to(dtype).contiguous(memory_format=layout)
    weight, bias = 1 + 0.3 * torch.randn(C, generator=g), torch.randn(C, generator=g)
    gain, shift = 1 + 0.3 * torch.randn(B, C, generator=g), torch.randn(B, C, generator=g)
    dy = torch.randn(B, C, H, H + 1, generator=g).to(dtype).contiguous(memory_format=layout)
    return x, weight, bias, gain, shift, dy


def _grads(fn, tensors, dy):
    leaves = [t.detach().requires_grad_() for t in tensors]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, dy)


def _reference(x, weight, bias, gain, shift, groups):
    """(GN(x) * weight + bias) * gain + shift in float64."""
    y = F.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-5)
    return y * gain.double()[:, :, None, None] + shift.double()[:, :, None, None]


@needs_cpp
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("B, C, H, groups", [(3, 32, 5, 8), (2, 12, 4, 1), (1, 8, 3, 8)])
def test_forward_and_backward_match_float64_in_float32(layout, B, C, H, groups):
    x, weight, bias, gain, shift, dy = _inputs(B, C, H, torch.float32, layout, seed=B * C + H)
    y, grads = _grads(lambda *t: GN.group_norm(t[0], groups, t[1], t[2], 1e-5, t[3], t[4]),
                      (x, weight, bias, gain, shift), dy)
    y_ref, grads_ref = _grads(lambda *t: _reference(*t, groups),
                              [t.double() for t in (x, weight, bias, gain, shift)], dy.double())
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=layout)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    for name, g, r in zip(("x", "weight", "bias", "gain", "shift"), grads, grads_ref):
        scale = r.abs().max().item()
        assert (g.double() - r).abs().max().item() <= 1e-5 * max(1.0, scale), name


@needs_cpp
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["channels_last", "nchw"])
def test_bf16_is_the_float32_arithmetic_rounded_once(layout):
    x, weight, bias, gain, shift, dy = _inputs(4, 16, 6, torch.bfloat16, layout, seed=7)
    y, grads = _grads(lambda *t: GN.group_norm(t[0], 4, t[1], t[2], 1e-5, t[3], t[4]), (x, weight, bias, gain, shift), dy)
    # the same bf16 values in float32: the C++ float32 path (tested above against float64)
    y32, grads32 = _grads(lambda *t: GN.group_norm(t[0], 4, t[1], t[2], 1e-5, t[3], t[4]),
                          (x.float(), weight, bias, gain, shift), dy.float())
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=layout)
    assert torch.equal(y, y32.bfloat16())                 # one rounding of the float32 result
    assert grads[0].dtype == torch.bfloat16
    assert torch.equal(grads[0], grads32[0].bfloat16())   # dx: the same
    for g, g32 in zip(grads[1:], grads32[1:]):            # parameter gradients stay float32
        torch.testing.assert_close(g, g32, rtol=1e-5, atol=1e-5)


@needs_cpp
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("spread", [1.0, 12.0], ids=["z~1", "z~12"])
def test_silu_forward_and_backward_match_float64_in_float32(layout, spread):
    # spread 12: z reaches about +-40, where SiLU is ~0 or ~z and sigma's exponential under- or overflows naively
    x, weight, bias, gain, shift, dy = _inputs(3, 16, 5, torch.float32, layout, seed=11)
    weight = weight * spread
    fn = lambda *t: GN.group_norm(t[0], 4, t[1], t[2], 1e-5, t[3], t[4], silu=True)   # noqa: E731
    y, grads = _grads(fn, (x, weight, bias, gain, shift), dy)
    y_ref, grads_ref = _grads(lambda *t: F.silu(_reference(*t, 4)),
                              [t.double() for t in (x, weight, bias, gain, shift)], dy.double())
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=layout)
    assert (y.double() - y_ref).abs().max().item() <= 1e-5 * max(1.0, y_ref.abs().max().item())
    for name, g, r in zip(("x", "weight", "bias", "gain", "shift"), grads, grads_ref):
        assert (g.double() - r).abs().max().item() <= 2e-5 * max(1.0, r.abs().max().item()), name


@needs_cpp
def test_silu_in_bf16_is_the_float32_arithmetic_rounded_once():
    x, weight, bias, gain, shift, dy = _inputs(4, 16, 6, torch.bfloat16, torch.channels_last, seed=5)
    fn = lambda *t: GN.group_norm(t[0], 4, t[1], t[2], 1e-5, t[3], t[4], silu=True)   # noqa: E731
    y, grads = _grads(fn, (x, weight, bias, gain, shift), dy)
    y32, grads32 = _grads(fn, (x.float(), weight, bias, gain, shift), dy.float())
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, y32.bfloat16())                 # SiLU before the one rounding, not after
    assert torch.equal(grads[0], grads32[0].bfloat16())
    for g, g32 in zip(grads[1:], grads32[1:]):
        torch.testing.assert_close(g, g32, rtol=1e-5, atol=1e-5)


@needs_cpp
def test_the_eager_path_computes_the_same(monkeypatch):
    # mean 0: torch's float32 group norm itself loses digits at a large mean (7e-5 here at mean 40)
    x, weight, bias, gain, shift, dy = _inputs(2, 16, 4, torch.float32, torch.channels_last, seed=3, mean=0.0)
    for silu in (False, True):
        fn = lambda *t: GN.group_norm(t[0], 4, t[1], t[2], 1e-5, t[3], t[4], silu=silu)   # noqa: E731
        with monkeypatch.context() as m:
            y, grads = _grads(fn, (x, weight, bias, gain, shift), dy)
            m.setattr(GN, "usable", lambda x: False)
            y_eager, grads_eager = _grads(fn, (x, weight, bias, gain, shift), dy)
        torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
        for g, e in zip(grads, grads_eager):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@needs_cpp
@pytest.mark.parametrize("z_dim", [0, 6])
def test_resblock_norms_as_n_and_d_wrote_them(monkeypatch, z_dim):
    """ResBlock = N&D's scale-shift norm, (GN(h) (1 + scale) + shift) (1 + s_z), written out with torch's ops."""
    torch.manual_seed(z_dim)
    blk = ResBlock(8, 16, time_dim=12, z_dim=z_dim)
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(3, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    temb, z = torch.randn(3, 12), (torch.randn(3, z_dim) if z_dim else None)

    def by_hand(x):
        h = blk.conv1(F.silu(F.group_norm(x, blk.norm1.num_groups, blk.norm1.weight, blk.norm1.bias, 1e-5)))
        scale, shift = blk.emb(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = F.group_norm(h, blk.norm2.num_groups, eps=1e-5) * (1 + scale) + shift
        if z_dim:
            h = h * (1 + blk.zproj(z))[:, :, None, None]
        return blk.skip(x) + blk.conv2(F.silu(h))

    xg = x.clone().requires_grad_()
    out = blk(xg, temb, z)
    out.square().sum().backward()
    ref_x = x.clone().requires_grad_()
    ref = by_hand(ref_x)
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xg.grad, ref_x.grad, rtol=1e-4, atol=1e-5)


def test_groupnorm32_keeps_torch_groupnorm_parameters():
    g = GroupNorm32(4, 16)
    assert set(g.state_dict()) == set(torch.nn.GroupNorm(4, 16).state_dict())


def test_gain_without_shift_is_refused():
    with pytest.raises(ValueError, match="both gain and shift"):
        GN.group_norm(torch.randn(1, 4, 2, 2), 2, gain=torch.ones(1, 4))


def test_provenance_names_the_group_norm_kernels_that_ran(monkeypatch):
    # "cpp" where the extension builds, "torch" where it cannot (no g++/ninja): the same values, recorded.
    from infdiff import cpp_build
    from infdiff.provenance import provenance

    monkeypatch.setattr(GN, "_USED", set())
    assert "group_norm_kernels" not in provenance(device="cpu")
    monkeypatch.setattr(cpp_build, "_available", lambda device_type: (False, "no compiler (test)"))
    monkeypatch.setattr(GN, "cpp_available", cpp_build.cpp_available)
    GroupNorm32(2, 8)(torch.randn(2, 8, 3, 3))
    assert provenance(device="cpu")["group_norm_kernels"] == ["torch"]
