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


def _mlp(C, H, seed):
    torch.manual_seed(seed)
    fc1, fc2 = torch.nn.Linear(C, H), torch.nn.Linear(H, C)
    with torch.no_grad():
        for p in (*fc1.parameters(), *fc2.parameters()):
            p.normal_(0, 0.3)
    return fc1, fc2


def _residual_mlp_reference(v, mod, fc1, fc2, h=None, cbias=None):
    """u + fc2(GELU(fc1(LN_t(u)))), u = v + h + cbias, in float64 from the same input values."""
    u = v.double() + (0 if h is None else h.double()) + (0 if cbias is None else cbias.double())
    n = _reference(u, *mod)
    a = torch.nn.functional.gelu(n @ fc1.weight.double().t() + fc1.bias.double())
    return u + a @ fc2.weight.double().t() + fc2.bias.double()


@needs_cpp
@pytest.mark.parametrize("B, N, C, H", [(3, 70, 32, 64), (2, 9, 256, 512), (1, 5, 7, 3)])
@pytest.mark.parametrize("h_layout", [None, "point-major", "channel-major"])
@pytest.mark.parametrize("with_z", [False, True])
def test_residual_mlp_matches_the_formula_in_any_task_size(B, N, C, H, h_layout, with_z, monkeypatch):
    g = torch.Generator().manual_seed(B * N + C)
    v = torch.randn(B, N, C, generator=g) * 2 + 0.5
    h = {None: None, "point-major": torch.randn(B, N, C, generator=g),
         "channel-major": torch.randn(B, C, N, generator=g).transpose(1, 2)}[h_layout]
    cbias = None if h is None else torch.randn(C, generator=g)
    mod = (1 + 0.3 * torch.randn(B, 1, C, generator=g), torch.randn(B, 1, C, generator=g),
           1 + 0.3 * torch.randn(B, 1, C, generator=g) if with_z else None)
    fc1, fc2 = _mlp(C, H, seed=N)
    ref = _residual_mlp_reference(v, mod, fc1, fc2, h, cbias)
    with torch.no_grad():
        out = fused_norm.residual_mlp(v, mod, fc1, fc2, h=h, cbias=cbias)
        # Tasks of 16 points (the minimum): they span images and end mid-image; the same values.
        monkeypatch.setattr(fused_norm, "RESIDUAL_MLP_TASK_BYTES", 1)
        small = fused_norm.residual_mlp(v, mod, fc1, fc2, h=h, cbias=cbias)
    assert out.dtype == torch.float32 and out.shape == v.shape and out.is_contiguous()
    scale = ref.abs().max().item()                      # float32 sums of up to H terms of this size
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6 * scale)
    # (the products of a few rows take other BLAS kernels: float rounding, not bit-identical)
    torch.testing.assert_close(small.double(), ref, rtol=1e-5, atol=1e-6 * scale)


@needs_cpp
@pytest.mark.parametrize("stream", [torch.float32, torch.bfloat16])
def test_residual_mlp_under_bf16_autocast_gives_the_eager_ops_values_and_dtype(stream):
    # The sampling path's arithmetic: u and the norm in float32, the products in bf16 (the normalised rows
    # rounded once, as autocast's cast), the result in the eager ops' dtype: float32 beside a float32
    # conv bias (∞-Diff), bf16 for a bf16 stream without one (the MLP baseline's blocks).
    B, N, C = 2, 300, 32
    g = torch.Generator().manual_seed(1)
    v = torch.randn(B, N, C, generator=g).to(stream)
    norm = ModulatedLayerNorm(C, 8)
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_(0, 0.3, generator=g)
    fc1, fc2 = _mlp(C, 2 * C, seed=2)
    h = torch.randn(B, C, N, generator=g).transpose(1, 2) if stream == torch.float32 else None
    cbias = torch.randn(C, generator=g) if h is not None else None
    temb = torch.randn(B, 8, generator=g)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mod = norm.modulation(temb)
        u = v if h is None else v + h + cbias
        eager = u + fc2(torch.nn.functional.gelu(fc1(norm.modulate(u, mod))))
        out = fused_norm.residual_mlp(v, mod, fc1, fc2, h=h, cbias=cbias)
    assert out.dtype == eager.dtype == stream
    # Both products read bf16 operands (the normalised rows, the weights, the hidden layer); the eager ops also
    # round fc1's output to bf16 before the GELU, where the C++ path (oneDNN's epilogue) applies the bias and
    # GELU to the float32 accumulator. So the two agree to the rounding of the hidden layer, not bit for bit:
    # each is held to the float64 formula computed from the same bf16 operands, to a bound the eager ops meet.
    bf = lambda t: t.bfloat16().double()                                  # noqa: E731
    u64 = v.double() + (0 if h is None else h.double() + cbias.double())
    n = bf(_reference(u64, *(m if m is None else m.float() for m in mod)))
    a = torch.nn.functional.gelu(n @ bf(fc1.weight).t() + bf(fc1.bias))
    ref = u64 + bf(a) @ bf(fc2.weight).t() + bf(fc2.bias)
    scale = ref.abs().max().item()
    for y in (out, eager):
        assert (y.double() - ref).abs().max().item() < 0.01 * scale     # bf16 carries 8 bits: 0.4% a rounding


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_norm_writes_channel_major_planes_and_float32_on_request(dtype):
    # The ∞-Diff blocks' first norm feeds the FFT convolution: float32 planes, whatever the stream's dtype.
    B, N, C = 2, 200, 32
    g = torch.Generator().manual_seed(3)
    v = torch.randn(B, N, C, generator=g).to(dtype)
    gain, shift = (1 + 0.3 * torch.randn(B, 1, C, generator=g)).bfloat16(), torch.randn(B, 1, C, generator=g)
    with torch.no_grad():
        rows = fused_norm.modulated_norm(v, gain, shift, dtype=torch.float32)
        planes = fused_norm.modulated_norm(v, gain, shift, dtype=torch.float32, channel_major=True)
    assert rows.dtype == planes.dtype == torch.float32
    assert planes.shape == v.shape and planes.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(planes, rows, rtol=0, atol=0)
    torch.testing.assert_close(rows.double(), _reference(v, gain, shift), rtol=1e-5, atol=1e-5)


@needs_cpp
@pytest.mark.parametrize("autocast", [False, True])
def test_merge_is_the_linear_of_the_concatenation_in_any_task_size(autocast, monkeypatch):
    # An up block's skip merge, W [u; skip] + b: u channel-major (the grid's read), skip point-major, tasks
    # spanning images; float32, or under bf16 autocast the eager Linear's dtype with inputs rounded once.
    B, N, C, Co = 3, 70, 32, 32
    g = torch.Generator().manual_seed(4)
    u = torch.randn(B, C, N, generator=g).transpose(1, 2)
    skip = torch.randn(B, N, C, generator=g)
    linear = torch.nn.Linear(2 * C, Co)
    ref = torch.cat([u, skip], -1).double() @ linear.weight.double().t() + linear.bias.double()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fused_norm.merge(u, skip, linear)
        eager = linear(torch.cat([u, skip], -1))
        monkeypatch.setattr(fused_norm, "RESIDUAL_MLP_TASK_BYTES", 1)         # tasks of 16 points
        small = fused_norm.merge(u, skip, linear)
    assert out.dtype == eager.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert out.shape == (B, N, Co) and out.is_contiguous()
    tol = dict(rtol=1e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    for y in (out, small):
        torch.testing.assert_close(y.double(), ref, **tol)
    torch.testing.assert_close(out.float(), eager.float(), **tol)


@pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_linear_pointwise") or not torch.backends.mkldnn.is_available(),
                    reason="torch without oneDNN's fused linear")
def test_point_mlp_samples_with_onednn_gelu_as_the_eager_ops_compute(monkeypatch):
    """Without autograd under bf16 autocast the pointwise MLP is two oneDNN products with the GELU fused:
    fc2(GELU(fc1(v))) to bf16 rounding, computed from the same bf16 operands."""
    from infdiff.nets.blocks import PointMLP

    torch.manual_seed(0)
    mlp = PointMLP(64, 128)
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.2)
    v = torch.randn(3, 50, 64)
    calls = []
    real = fused_norm.gelu_mlp
    monkeypatch.setattr(fused_norm, "gelu_mlp", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(v)
    assert calls == [1] and out.dtype == torch.bfloat16 and out.shape == v.shape
    assert "onednn_gelu" in fused_norm.kernels_used()
    bf = lambda t: t.bfloat16().double()                              # noqa: E731
    h = torch.nn.functional.gelu(bf(v) @ bf(mlp.fc1.weight).t() + bf(mlp.fc1.bias))
    ref = bf(h) @ bf(mlp.fc2.weight).t() + bf(mlp.fc2.bias)
    scale = ref.abs().max().item()
    assert (out.double() - ref).abs().max().item() < 0.01 * scale
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = mlp(v)                                               # with autograd: the eager ops
    assert calls == [1]
    # the eager ops round fc1's output and the GELU's to bf16 as well
    assert (out.double() - eager.detach().double()).abs().max().item() < 0.02 * scale


@pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_linear_pointwise") or not torch.backends.mkldnn.is_available(),
                    reason="torch without oneDNN's fused linear")
def test_point_mlp_residual_and_kept_bf16_params_follow_the_weights():
    """The sampling path adds the residual inside the second product (v + fc2(GELU(fc1(x))), rounded once), and
    the bf16 copies of the parameters it keeps between calls are re-made when a parameter changes in place
    (an optimiser step, a loaded state dict): a stale copy would sample with the old weights."""
    from infdiff.nets.blocks import PointMLP

    torch.manual_seed(1)
    mlp = PointMLP(64, 128)
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.2)
    x, res = torch.randn(2, 40, 64), torch.randn(2, 40, 64).bfloat16()

    def reference():
        bf = lambda t: t.bfloat16().double()                          # noqa: E731
        h = torch.nn.functional.gelu(bf(x) @ bf(mlp.fc1.weight).t() + bf(mlp.fc1.bias))
        return res.double() + bf(h) @ bf(mlp.fc2.weight).t() + bf(mlp.fc2.bias)

    for _ in range(2):                                  # the second call reads the kept bf16 copies
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = mlp(x, residual=res)
        ref = reference()
        assert out.dtype == torch.bfloat16 and out.shape == x.shape
        assert (out.double() - ref).abs().max().item() < 0.01 * ref.abs().max().item()
        with torch.no_grad():
            mlp.fc2.weight.mul_(-2.0)                   # in place, as an optimiser step: new version
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = mlp(x, residual=res)                    # with autograd: the eager ops and sum
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x, residual=res)
    assert (out.double() - eager.detach().double()).abs().max().item() < 0.02 * eager.abs().max().item()
