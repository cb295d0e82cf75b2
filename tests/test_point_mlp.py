"""The point MLP of training with its own backward (infdiff.point_mlp, csrc/gelu.cpp) against the formula and
the eager ops."""

import math

import pytest
import torch

from infdiff import point_mlp
from infdiff.cpp_build import cpp_available, load_extension
from infdiff.nets.blocks import PointMLP

needs_cpp = pytest.mark.skipif(not cpp_available("cpu")[0], reason=cpp_available("cpu")[1])
needs_onednn = pytest.mark.skipif(not (torch.backends.mkldnn.is_available()
                                       and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
                                  reason="torch without oneDNN's fused linear")


def _gelu64(x):
    """(GELU(x), GELU'(x)) in float64."""
    x = x.double()
    Phi = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    return x * Phi, Phi + x * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)


@needs_cpp
def test_gelu_with_grad_is_the_gelu_and_its_derivative():
    ops = load_extension("gelu")
    x = torch.cat([torch.linspace(-12, 12, 100_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0])])
    a, d = ops.gelu_with_grad(x)
    ra, rd = _gelu64(x)
    assert a.dtype == d.dtype == torch.float32
    torch.testing.assert_close(a.double(), ra, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(d.double(), rd, rtol=2e-6, atol=1e-6)
    # bf16: computed in float32 from the bf16 value, rounded once: within one bf16 step of the exact value
    xb = torch.randn(4096, 33, generator=torch.Generator().manual_seed(0)).mul(3).bfloat16()
    ab, db = ops.gelu_with_grad(xb)
    ra, rd = _gelu64(xb)
    assert ab.dtype == db.dtype == torch.bfloat16
    for got, ref in ((ab, ra), (db, rd)):
        assert ((got.double() - ref).abs() <= ref.abs() * 2.0 ** -8 + 1e-7).all()
        # rounded to nearest but near ties, where |x| <= 3 (beyond, the tail's 1e-7 absolute error is what counts)
        core = xb.abs() <= 3
        assert (got[core] == ref[core].bfloat16()).float().mean() > 0.999


def _mlp(C, H, seed):
    torch.manual_seed(seed)
    m = PointMLP(C, H)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 1 / math.sqrt(p.shape[-1]))
    return m


def _reference(m, v, residual):
    """Output and gradients (v, fc1.w, fc1.b, fc2.w, fc2.b) of sum(y * w_out) in float64 from the bf16-rounded
    operands, as autocast rounds them."""
    ps = [p.detach().bfloat16().double().requires_grad_() for p in
          (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)]
    x = v.detach().bfloat16().double().requires_grad_()
    h = x @ ps[0].t() + ps[1]
    y = h * 0.5 * (1 + torch.erf(h / math.sqrt(2)))
    y = y @ ps[2].t() + ps[3]
    if residual is not None:
        y = y + residual.detach().double()
    return y, x, ps


@needs_cpp
@needs_onednn
@pytest.mark.parametrize("C, H, residual", [(32, 64, None), (48, 96, "bf16"), (32, 64, "fp32")])
def test_gelu_mlp_output_and_gradients_match_the_formula(C, H, residual):
    m = _mlp(C, H, seed=C + H)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(4, point_mlp.MIN_ROWS // 4 + 3, C, generator=g).requires_grad_()
    w_out = torch.randn(v.shape, generator=g)
    res = None if residual is None else (v.bfloat16() if residual == "bf16" else v)
    with torch.autocast("cpu", torch.bfloat16):
        assert point_mlp.usable(v)
        y = point_mlp.gelu_mlp(v, m.fc1, m.fc2, res)
    # dtype as the eager ops give it: bf16, or float32 where a float32 residual is added
    assert y.dtype == (torch.float32 if residual == "fp32" else torch.bfloat16) and y.shape == v.shape
    (y.float() * w_out).sum().backward()
    ref_y, x, ps = _reference(m, v, None if res is None else res)
    (ref_y * w_out.double()).sum().backward()
    torch.testing.assert_close(y.double(), ref_y.detach(), rtol=2e-2, atol=2e-2)
    # the gradients of v, both weights and both biases; with a residual, v's gradient includes the skip path
    dv_ref = x.grad + (w_out.double() if res is not None else 0)
    got = [v.grad, m.fc1.weight.grad, m.fc1.bias.grad, m.fc2.weight.grad, m.fc2.bias.grad]
    ref = [dv_ref] + [p.grad for p in ps]
    for name, a, b in zip(["v", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], got, ref):
        assert a.dtype == torch.float32, name
        err = (a.double() - b).norm() / b.norm()
        assert err < 1e-2, (name, err.item())


@needs_cpp
@needs_onednn
def test_point_mlp_trains_through_it_under_bf16_autocast_only(monkeypatch):
    m = _mlp(16, 32, seed=0)
    monkeypatch.setattr(point_mlp, "_USED", set())
    calls = []
    real = point_mlp.gelu_mlp
    monkeypatch.setattr(point_mlp, "gelu_mlp", lambda *a, **k: calls.append(1) or real(*a, **k))
    big, small = torch.randn(2, point_mlp.MIN_ROWS, 16), torch.randn(2, point_mlp.MIN_ROWS // 2 - 1, 16)
    m(big)                                                  # float32: eager
    with torch.autocast("cpu", torch.bfloat16):
        m(small)                                            # too few points: eager
        with torch.no_grad():
            m(big)                                          # sampling: fused_norm's path, not this one
        assert not calls
        eager = m.fc2(torch.nn.functional.gelu(m.fc1(big)))
        out = m(big)
    assert calls == [1] and point_mlp.kernels_used() == ["onednn_gelu_grad"]
    torch.testing.assert_close(out.float(), eager.float(), rtol=2e-2, atol=2e-2)


def test_provenance_names_the_point_mlp_kernel_that_ran(monkeypatch):
    from infdiff.provenance import provenance

    monkeypatch.setattr(point_mlp, "_USED", set())
    assert "point_mlp_kernels" not in provenance(device="cpu")
    monkeypatch.setattr(point_mlp, "_USED", {"onednn_gelu_grad"})
    assert provenance(device="cpu")["point_mlp_kernels"] == ["onednn_gelu_grad"]
