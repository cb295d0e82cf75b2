"""The modulated LayerNorm of training in one C++ pass each way (infdiff.layer_norm), against float64 references
and the eager ops it replaces."""

import pytest
import torch

from infdiff import layer_norm as LN
from infdiff.cpp_build import cpp_available
from infdiff.nets.blocks import ModulatedLayerNorm

needs_cpp = pytest.mark.skipif(not cpp_available("cpu")[0], reason=cpp_available("cpu")[1])


def _inputs(B, N, C, seed, with_z):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, N, C, generator=g) * 2 + 0.5
    gain, shift = 1 + 0.3 * torch.randn(B, 1, C, generator=g), torch.randn(B, 1, C, generator=g)
    zgain = 1 + 0.3 * torch.randn(B, 1, C, generator=g) if with_z else None
    dy = torch.randn(B, N, C, generator=g)
    return [v, gain, shift, zgain], dy


def _grads(fn, tensors, dy):
    leaves = [None if t is None else t.detach().requires_grad_() for t in tensors]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, [t for t in leaves if t is not None], dy)


def _one_rounding(a, ref32):
    """a (bf16) is ref32 (float32) rounded to bf16, up to one bf16 step (float sums in another order)."""
    return bool(((a.float() - ref32).abs() <= ref32.abs() * 2 ** -7 + 1e-6).all())


def _reference(v, gain, shift, zgain=None):
    """(LN(v) * gain + shift) * zgain in float64."""
    ln = (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-5)
    out = ln * gain + shift
    return out if zgain is None else out * zgain


@needs_cpp
@pytest.mark.parametrize("B, N, C", [(3, 300, 32), (2, 5, 256), (1, 130, 7)])
@pytest.mark.parametrize("with_z", [False, True])
def test_forward_and_backward_match_float64(B, N, C, with_z):
    tensors, dy = _inputs(B, N, C, seed=B * N + C, with_z=with_z)
    y, grads = _grads(LN.modulated_layer_norm, tensors, dy)
    y_ref, grads_ref = _grads(_reference, [None if t is None else t.double() for t in tensors], dy.double())
    assert y.dtype == torch.float32 and y.shape == (B, N, C)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, grads_ref):
        assert (g.double() - r).abs().max().item() <= 1e-5 * max(1.0, r.abs().max().item())


@needs_cpp
def test_bf16_is_the_float32_arithmetic_rounded_once():
    tensors, dy = _inputs(2, 200, 64, seed=5, with_z=False)
    v, gain, shift, _ = tensors
    vb, gb, sb = v.bfloat16(), gain.bfloat16(), shift.bfloat16()
    y, grads = _grads(LN.modulated_layer_norm, [vb, gb, sb], dy.bfloat16())
    y32, grads32 = _grads(LN.modulated_layer_norm, [vb.float(), gb.float(), sb.float()], dy.bfloat16().float())
    assert y.dtype == torch.bfloat16                       # the eager ops' dtype: addcmul of three bf16 tensors
    assert _one_rounding(y, y32)
    assert grads[0].dtype == torch.bfloat16 and _one_rounding(grads[0], grads32[0])
    for g, g32 in zip(grads[1:], grads32[1:]):
        assert g.dtype == torch.bfloat16 and _one_rounding(g, g32)   # the modulation's dtype, from float32 sums


@needs_cpp
def test_modulated_layer_norm_with_autograd_uses_the_kernel_and_matches_the_eager_ops(monkeypatch):
    torch.manual_seed(0)
    norm = ModulatedLayerNorm(16, 8, z_dim=4)
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_(0, 0.3)
    v, temb, z = torch.randn(2, 300, 16), torch.randn(2, 8), torch.randn(2, 4)
    calls = []
    real = LN.modulated_layer_norm
    monkeypatch.setattr(LN, "modulated_layer_norm", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run():
        vv = v.clone().requires_grad_()
        out = norm(vv, temb, z)
        out.square().sum().backward()
        grads = [vv.grad] + [p.grad.clone() for p in norm.parameters()]
        norm.zero_grad()
        return out, grads

    out, grads = run()
    assert calls == [1] and "cpp" in LN.kernels_used()
    monkeypatch.setattr(LN, "usable", lambda *a: False)
    out_eager, grads_eager = run()
    assert calls == [1]
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, grads_eager):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@needs_cpp
def test_parameter_gradients_do_not_depend_on_the_thread_count():
    tensors, dy = _inputs(2, 1000, 32, seed=1, with_z=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, one = _grads(LN.modulated_layer_norm, tensors, dy)
        torch.set_num_threads(2)
        _, two = _grads(LN.modulated_layer_norm, tensors, dy)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_provenance_names_the_layer_norm_kernels_that_ran(monkeypatch):
    from infdiff import cpp_build
    from infdiff.provenance import provenance

    monkeypatch.setattr(LN, "_USED", set())
    norm = ModulatedLayerNorm(8, 4)
    v, temb = torch.randn(1, 5, 8), torch.randn(1, 4)
    with torch.no_grad():
        norm(v, temb)                                      # without autograd: the sampling pass, not this one
    assert "layer_norm_kernels" not in provenance(device="cpu")
    monkeypatch.setattr(cpp_build, "_available", lambda device_type: (False, "no compiler (test)"))
    monkeypatch.setattr(LN, "cpp_available", cpp_build.cpp_available)
    norm(v, temb)
    assert provenance(device="cpu")["layer_norm_kernels"] == ["torch"]
