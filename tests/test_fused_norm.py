"""The sampling path's modulated LayerNorm in one C++ pass (infdiff.fused_norm) against the eager ops."""

import pytest
import torch

from infdiff import fused_norm
from infdiff.cpp_build import cpp_available
from infdiff.nets.blocks import ModulatedLayerNorm

needs_cpp = pytest.mark.skipif(not cpp_available("cpu")[0], reason=cpp_available("cpu")[1])


def _reference(v, gain, shift, zgain=None):
    """(LN(v) * gain + shift) * zgain in float64 from the same input values."""
    x = v.double()
    ln = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    out = ln * gain.double() + shift.double()
    return out if zgain is None else out * zgain.double()


@needs_cpp
@pytest.mark.parametrize("B, N, C", [(3, 70, 32), (2, 5, 256), (1, 9, 7)])
@pytest.mark.parametrize("with_z", [False, True])
def test_fused_norm_matches_the_formula_per_image(B, N, C, with_z):
    g = torch.Generator().manual_seed(B * N + C)
    v = torch.randn(B, N, C, generator=g) * 2 + 0.5
    gain, shift = 1 + 0.3 * torch.randn(B, 1, C, generator=g), torch.randn(B, 1, C, generator=g)
    zgain = 1 + 0.3 * torch.randn(B, 1, C, generator=g) if with_z else None
    with torch.no_grad():
        out = fused_norm.modulated_norm(v, gain, shift, zgain)
        strided = fused_norm.modulated_norm(v.transpose(1, 2).contiguous().transpose(1, 2), gain, shift, zgain)
        vb = v.bfloat16()
        out_b = fused_norm.modulated_norm(vb, gain.bfloat16(), shift.bfloat16(), zgain)
    ref = _reference(v, gain, shift, zgain)
    assert out.dtype == torch.float32 and out.shape == v.shape
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(strided, out, rtol=0, atol=0)
    # bf16 input: statistics in float32 from the bf16 values; the result in the eager ops' dtype
    eager_dtype = torch.addcmul(shift.bfloat16(), vb, gain.bfloat16()).dtype
    if zgain is not None:
        eager_dtype = torch.promote_types(eager_dtype, zgain.dtype)
    assert out_b.dtype == eager_dtype
    ref_b = _reference(vb, gain.bfloat16(), shift.bfloat16(), zgain)
    torch.testing.assert_close(out_b.double(), ref_b, rtol=1e-2, atol=2e-2)


@needs_cpp
def test_modulated_layer_norm_uses_the_fused_pass_without_autograd_only(monkeypatch):
    torch.manual_seed(0)
    norm = ModulatedLayerNorm(16, 8, z_dim=4)
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_(0, 0.3)
    v, temb, z = torch.randn(2, 300, 16), torch.randn(2, 8), torch.randn(2, 4)
    calls = []
    real = fused_norm.modulated_norm
    monkeypatch.setattr(fused_norm, "modulated_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    with_grad = norm(v, temb, z)                          # training: eager ops, differentiable
    assert with_grad.requires_grad and not calls
    with torch.no_grad():
        without = norm(v, temb, z)
    assert calls == [1]
    torch.testing.assert_close(without, with_grad.detach(), rtol=1e-5, atol=1e-5)
    assert "cpp" in fused_norm.kernels_used()


def test_provenance_names_the_norm_kernels_that_ran(monkeypatch):
    # "cpp" where the extension builds, "torch" where it cannot (no g++/ninja): the same values, recorded.
    from infdiff import cpp_build
    from infdiff.provenance import provenance

    monkeypatch.setattr(fused_norm, "_USED", set())
    norm = ModulatedLayerNorm(8, 4)
    v, temb = torch.randn(1, 5, 8), torch.randn(1, 4)
    norm(v, temb)                                          # with autograd: not the sampling path, not recorded
    assert "norm_kernels" not in provenance(device="cpu")
    monkeypatch.setattr(cpp_build, "_available", lambda device_type: (False, "no compiler (test)"))
    monkeypatch.setattr(fused_norm, "cpp_available", cpp_build.cpp_available)
    with torch.no_grad():
        eager = norm(v, temb)
    assert provenance(device="cpu")["norm_kernels"] == ["torch"]
    torch.testing.assert_close(eager, norm(v, temb).detach(), rtol=0, atol=0)
