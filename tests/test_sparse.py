"""The sparse operator of Eq. 20: reference semantics, backend agreement, gradients, resolution scaling."""

import math

import pytest
import torch
import torch.nn.functional as F

from infdiff import sparse as S
from infdiff.sparse import (FFT_MIN_KERNEL, SparseGeometry, box_count, depthwise_conv2d, kernel_size_at,
                            resize_kernel, sparse_depthwise_conv)
from infdiff.sparse_compiled import compiled_available
from infdiff.sparse_cpp import cpp_available

# The compiled backend needs a C++ compiler (CPU), the cpp backend g++ and ninja; every test that runs one
# says so when it cannot.
needs_compiler = pytest.mark.skipif(not compiled_available("cpu")[0], reason=compiled_available("cpu")[1])
needs_cpp = pytest.mark.skipif(not cpp_available("cpu")[0], reason=cpp_available("cpu")[1])


def _subset(B, R, ratio, seed=0):
    """idx [B, N]: distinct sorted random pixels per row (N = round(ratio R^2))."""
    g = torch.Generator().manual_seed(seed)
    N = max(1, round(ratio * R * R))
    return torch.stack([torch.randperm(R * R, generator=g)[:N].sort().values for _ in range(B)])


def _dense_reference(x, w):
    """F.conv2d(groups=C, zero padding) divided by the fraction of the k x k window inside the image."""
    C, k = w.shape[0], w.shape[-1]
    y = F.conv2d(x, w.unsqueeze(1), padding=k // 2, groups=C)
    ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype)
    frac = F.conv2d(ones, torch.ones(1, 1, k, k, dtype=x.dtype), padding=k // 2) / k ** 2
    return y / frac


def _to_points(x):
    """[B, C, R, R] -> [B, R*R, C] in raster order."""
    return x.flatten(2).transpose(1, 2)


def _naive(v, geom, w):
    """Autograd reference: one big gather of the [B, N, k*k] table, plain tensor ops."""
    B, N, C = v.shape
    vp = torch.cat([v, v.new_zeros(B, 1, C)], 1)
    nb = geom.nbr                                                    # [B, N, K], N = missing
    G = torch.stack([vp[b][nb[b]] for b in range(B)])                # [B, N, K, C]
    out = (G * w.reshape(C, -1).t()).sum(2)
    return out * (geom.K / geom.count.to(v.dtype)).unsqueeze(-1)


# ---------------------------------------------------------------------------------------------- sizes
def test_kernel_size_at():
    assert kernel_size_at(7, 32, 32) == 7
    assert kernel_size_at(7, 64, 32) == 15          # 14 -> nearest odd, halves up
    assert kernel_size_at(7, 256, 32) == 57         # 56 -> 57 (~57 taps at 256 px)
    assert kernel_size_at(7, 1024, 32) == 225
    assert kernel_size_at(7, 8, 32) == 1            # 1.75 -> 1 (never 0)
    for R in range(1, 300, 7):
        k = kernel_size_at(7, R, 32)
        assert k % 2 == 1 and k >= 1 and abs(k - 7 * R / 32) <= 1.0 + 1e-9
    with pytest.raises(ValueError):
        kernel_size_at(6, 32, 32)


@pytest.mark.parametrize("k_new", [7, 15, 29, 57])
def test_resize_kernel_keeps_constant_integral_exactly(k_new):
    w = torch.full((3, 7, 7), 0.37, dtype=torch.float64)
    r = resize_kernel(w, k_new)
    assert r.shape == (3, k_new, k_new)
    torch.testing.assert_close(r.sum((-1, -2)), w.sum((-1, -2)), rtol=1e-12, atol=0)
    # A constant stays constant (bilinear is exact on constants): value scaled by the area ratio.
    torch.testing.assert_close(r, torch.full_like(r, 0.37 * 49 / k_new ** 2))
    # Regular [C_out, C_in, k, k] kernels are resized the same way.
    wr = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    assert resize_kernel(wr, k_new).shape == (2, 3, k_new, k_new)


def test_resize_kernel_smooth_integral_approximately():
    # A smooth bump sampled at 7 taps; its resized versions keep the Riemann sum of the integral.
    a = torch.arange(7, dtype=torch.float64) - 3
    for sigma in (1.0, 1.5, 3.0):
        w = torch.exp(-(a[:, None] ** 2 + a[None] ** 2) / (2 * sigma ** 2)).unsqueeze(0)
        for k_new in (15, 29, 57, 225):
            rel = (resize_kernel(w, k_new).sum() / w.sum() - 1).abs().item()
            assert rel < 0.02, (sigma, k_new, rel)
    # ... not the plain sum of taps: without the area division it would grow by (k_new / k)^2.
    assert resize_kernel(w, 57).max() < w.max() / 10


def test_resize_kernel_puts_taps_at_their_continuous_offsets():
    # A kernel linear in the row offset (dy = i - 3 old taps) resized to 15 taps: tap j sits at
    # dy' = (j - 7) * 7 / 15 old taps, so (away from the clamped outermost taps) the value is
    # dy' * (7 / 15)^2. align_corners=True would put it at (j - 7) * 6 / 14 instead.
    w = (torch.arange(7, dtype=torch.float64) - 3)[:, None].expand(7, 7)[None]
    r = resize_kernel(w, 15)[0, :, 7]
    j = torch.arange(2, 13)
    torch.testing.assert_close(r[j], (j - 7).double() * 7 / 15 * (7 / 15) ** 2)


# ------------------------------------------------------------------------------------ reference maths
def test_geometry_tables_small_example(table_code):
    # 3 x 3 grid, the diagonal sampled, k = 3.
    idx = torch.tensor([[0, 4, 8]])
    g = SparseGeometry(idx, 3, 3)
    assert g.count.tolist() == [[2, 3, 2]]
    N = 3
    # Point 0 at (0, 0): only the centre (offset 4) and (+1, +1) (offset 8) hold points.
    assert g.nbr[0, 0].tolist() == [N, N, N, N, 0, N, N, N, 1]
    assert g.nbr[0, 1].tolist() == [0, N, N, N, 1, N, N, N, 2]
    assert not g.dense and SparseGeometry(torch.arange(9)[None], 3, 3).dense
    # The compact table lists each point's sampled neighbours first, in offset order, then "none" (Z, K).
    nb, off = g.compact_table()
    Z, K = 3, 9
    assert nb.tolist() == [[0, 1, Z], [0, 1, 2], [1, 2, Z]]
    assert off.tolist() == [[4, 8, K], [0, 4, 8], [0, 4, K]]


@pytest.fixture(params=["cpp", "torch"])
def table_code(request, monkeypatch):
    """Who builds the compact table: the C++ pass (csrc/sparse_gather.cpp, where it builds) or the torch ops."""
    import infdiff.sparse as S

    if request.param == "torch":
        monkeypatch.setattr(S, "cpp_available", lambda device: (False, "off for the test"))
    elif not S.cpp_available("cpu")[0]:
        pytest.skip("no C++ build here")
    return request.param


@pytest.mark.parametrize("ratio", [1.0, 0.3])
def test_compact_table_lists_each_points_sampled_neighbours_in_offset_order(ratio, table_code):
    g = SparseGeometry(_subset(3, 16, ratio) if ratio < 1 else torch.arange(256).expand(3, -1), 16, 5)
    nb, off = g.compact_table()
    full = g._global_nbr()                                              # [Z, K], -1 = missing
    Z, K = full.shape
    assert nb.shape == off.shape == (Z, int((full >= 0).sum(1).max()))
    for z in range(Z):
        have = (full[z] >= 0).nonzero().flatten()                       # sampled offsets, ascending
        n = len(have)
        assert off[z, :n].tolist() == have.tolist() and nb[z, :n].tolist() == full[z, have].tolist()
        assert (off[z, n:] == K).all() and (nb[z, n:] == Z).all()


def test_neighbour_relation_is_symmetric():
    # The custom backward relies on: m at offset o from n  <=>  n at offset -o (index K-1-o) from m.
    g = SparseGeometry(_subset(2, 16, 0.3), 16, 5)
    nbr, N, K = g.nbr, g.N, g.K
    for b in range(2):
        n, o = (nbr[b] < N).nonzero(as_tuple=True)
        m = nbr[b][n, o]
        assert torch.equal(nbr[b][m, K - 1 - o], n)


@pytest.mark.parametrize("backend", ["torch", "dense"])
@pytest.mark.parametrize("k", [3, 7])
def test_ratio_one_equals_dense_conv_over_window_fraction(backend, k):
    torch.manual_seed(0)
    B, C, R = 2, 3, 13
    x = torch.randn(B, C, R, R, dtype=torch.float64)
    w = torch.randn(C, k, k, dtype=torch.float64)
    geom = SparseGeometry(torch.arange(R * R).expand(B, -1), R, k)
    out = sparse_depthwise_conv(_to_points(x), geom, w, backend)
    torch.testing.assert_close(out, _to_points(_dense_reference(x, w)), rtol=0, atol=1e-10)


def test_full_grid_in_shuffled_order_and_float32():
    torch.manual_seed(1)
    B, C, R, k = 2, 4, 16, 7
    x = torch.randn(B, C, R, R)
    w = torch.randn(C, k, k)
    perm = torch.stack([torch.randperm(R * R) for _ in range(B)])    # all pixels, not raster order
    geom = SparseGeometry(perm, R, k)
    v = torch.stack([_to_points(x)[b, perm[b]] for b in range(B)])
    ref = torch.stack([_to_points(_dense_reference(x, w))[b, perm[b]] for b in range(B)])
    for backend in ("torch", "dense", "auto"):
        torch.testing.assert_close(sparse_depthwise_conv(v, geom, w, backend), ref, rtol=0, atol=1e-5)


@needs_compiler
@pytest.mark.parametrize("ratio", [1.0, 0.25, 0.125])
def test_compiled_backend_agrees_with_dense_reference_forward_and_backward(ratio):
    # float32 (the dtype training runs the operator in): values and both gradients to 1e-5 of the dense
    # reference, on a full grid in shuffled order and on random subsets with image borders.
    torch.manual_seed(11)
    B, C, R, k = 3, 8, 24, 7
    if ratio == 1.0:
        idx = torch.stack([torch.randperm(R * R) for _ in range(B)])
    else:
        idx = _subset(B, R, ratio, seed=3)
    geom = SparseGeometry(idx, R, k)
    v = torch.randn(B, geom.N, C, requires_grad=True)
    w = (torch.randn(C, k, k) / k).requires_grad_()
    g = torch.randn(B, geom.N, C)
    outs, grads = {}, {}
    for backend in ("compiled", "dense"):
        outs[backend] = sparse_depthwise_conv(v, geom, w, backend)
        grads[backend] = torch.autograd.grad(outs[backend], (v, w), g)
    torch.testing.assert_close(outs["compiled"], outs["dense"], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads["compiled"], grads["dense"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    # and the eager gathers, which the custom backward of the "torch" backend is tested against elsewhere
    torch.testing.assert_close(outs["compiled"], sparse_depthwise_conv(v, geom, w, "torch"), rtol=1e-5, atol=1e-5)


@needs_compiler
def test_compiled_backend_reuses_one_kernel_for_every_point_count():
    # Dynamic shapes: batches and point counts change from chunk to chunk, and neither may recompile
    # (each compile is ~30 s on 2 cores) nor change the result.
    from infdiff import sparse_compiled as SC

    torch.manual_seed(12)
    C, R, k = 4, 16, 5
    for B, ratio in ((1, 0.25), (2, 0.3), (3, 0.125)):
        geom = SparseGeometry(_subset(B, R, ratio, seed=B), R, k)
        v, w = torch.randn(B, geom.N, C), torch.randn(C, k, k)
        torch.testing.assert_close(sparse_depthwise_conv(v, geom, w, "compiled"),
                                   sparse_depthwise_conv(v, geom, w, "torch"), rtol=1e-5, atol=1e-5)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    sparse_depthwise_conv(torch.randn(5, 40, C), SparseGeometry(_subset(5, R, 40 / R ** 2), R, k),
                          torch.randn(C, k, k), "compiled")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
    assert SC._kernel.cache_info().currsize >= 1


@needs_cpp
@pytest.mark.parametrize("ratio", [1.0, 0.25, 0.125])
def test_cpp_backend_agrees_with_dense_reference_forward_and_backward(ratio):
    # As the compiled backend's test: float32 values and both gradients against the dense reference, on a
    # full grid in shuffled order and on random subsets with image borders; 64 channels exercise the
    # vectorised channel loop with no remainder, 13 with one.
    for C, seed in ((13, 21), (64, 22)):
        torch.manual_seed(seed)
        B, R, k = 3, 24, 7
        idx = torch.stack([torch.randperm(R * R) for _ in range(B)]) if ratio == 1.0 else _subset(B, R, ratio, seed)
        geom = SparseGeometry(idx, R, k)
        v = torch.randn(B, geom.N, C, requires_grad=True)
        w = (torch.randn(C, k, k) / k).requires_grad_()
        g = torch.randn(B, geom.N, C)
        outs, grads = {}, {}
        for backend in ("cpp", "dense", "torch"):
            outs[backend] = sparse_depthwise_conv(v, geom, w, backend)
            grads[backend] = torch.autograd.grad(outs[backend], (v, w), g)
        torch.testing.assert_close(outs["cpp"], outs["dense"], rtol=1e-5, atol=1e-5)
        for a, b in zip(grads["cpp"], grads["dense"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(outs["cpp"], outs["torch"], rtol=1e-5, atol=1e-5)


@needs_cpp
def test_cpp_backend_does_not_depend_on_the_thread_count():
    # The weight gradient sums fixed chunks of points in order, so 1 and 2 threads give the same bits
    # (seeded training must not change with the machine's core count). 3000 points span several chunks.
    torch.manual_seed(23)
    geom = SparseGeometry(_subset(3, 64, 0.25, seed=4), 64, 7)
    v = torch.randn(3, geom.N, 16, requires_grad=True)
    w = torch.randn(16, 7, 7, requires_grad=True)
    g = torch.randn(3, geom.N, 16)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = sparse_depthwise_conv(v, geom, w, "cpp")
            results.append((out, *torch.autograd.grad(out, (v, w), g)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_auto_uses_the_fastest_buildable_gather_kernels_only_on_big_sparse_operators(monkeypatch):
    geom_small = SparseGeometry(_subset(1, 16, 0.25), 16, 7)
    geom_big = SparseGeometry(_subset(32, 32, 0.25), 32, 7)            # the embedded default's training
    monkeypatch.setattr(S, "compiled_available", lambda device: (True, ""))
    monkeypatch.setattr(S, "cpp_available", lambda device: (True, ""))
    assert S._check_backend(geom_small, "auto", 32) == "torch"
    assert S._check_backend(geom_big, "auto", 32) == "cpp"
    full = SparseGeometry(torch.arange(1024).expand(32, -1), 32, 7)
    assert S._check_backend(SparseGeometry(torch.arange(256)[None], 16, 7), "auto", 32) == "dense"
    # In training the C++ backward beats the dense conv on full grids with small windows, not with wide ones,
    # and not on small full grids (channels-last dense kernels).
    assert S._check_backend(full, "auto", 32) == "dense"
    assert full.B * full.N * 32 <= S.DENSE_GRAD_MAX_VALUES
    assert S._check_backend(full, "auto", 32, grad=True) == "dense"
    assert S._check_backend(full, "auto", 64, grad=True) == "cpp"
    assert S._check_backend(SparseGeometry(_subset(32, 32, 0.75), 32, 7), "auto", 32, grad=True) == "cpp"
    assert S._check_backend(SparseGeometry(full.idx, 32, 15), "auto", 32, grad=True) == "dense"
    assert S._check_backend(SparseGeometry(_subset(32, 32, 0.5), 32, 15), "auto", 32, grad=True) == "cpp"
    monkeypatch.setattr(S, "cpp_available", lambda device: (False, "no ninja"))
    assert S._check_backend(full, "auto", 32, grad=True) == "dense"
    assert S._check_backend(geom_big, "auto", 32) == "compiled"
    monkeypatch.setattr(S, "compiled_available", lambda device: (False, "no compiler"))
    assert S._check_backend(geom_big, "auto", 32) == "torch"


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_backends_agree_at_quarter_ratio(dtype, tol):
    torch.manual_seed(2)
    B, C, R, k = 3, 8, 32, 7
    idx = _subset(B, R, 0.25)
    geom = SparseGeometry(idx, R, k)
    v = torch.randn(B, idx.shape[1], C, dtype=dtype)
    w = torch.randn(C, k, k, dtype=dtype) / k
    a = sparse_depthwise_conv(v, geom, w, "torch")
    b = sparse_depthwise_conv(v, geom, w, "dense")
    torch.testing.assert_close(a, b, rtol=0, atol=tol)
    # And both are the Monte-Carlo formula written out with the [B, N, k*k] table.
    torch.testing.assert_close(a, _naive(v, geom, w), rtol=0, atol=tol)


@pytest.mark.parametrize("k", [3, 9, FFT_MIN_KERNEL, 21])
def test_fft_and_direct_conv_agree(k):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    w = torch.randn(3, k, k, dtype=torch.float64)
    direct = depthwise_conv2d(x, w, "direct")
    torch.testing.assert_close(depthwise_conv2d(x, w, "fft"), direct, rtol=0, atol=1e-10)
    torch.testing.assert_close(direct, F.conv2d(x, w.unsqueeze(1), padding=k // 2, groups=3))


@pytest.mark.parametrize("H, W, k", [(20, 27, 9),    # H + k // 2 = 24 is a fast FFT length: no slack
                                     (24, 24, 57),   # kernel wider than the image plus its half-width
                                     (31, 17, 15)])
def test_fft_conv_is_not_wrapped_around(H, W, k):
    # The FFT is circular; its length must keep the wrapped tail of the linear convolution out of the
    # 'same' crop, in each axis, also when the kernel is wider than the image.
    torch.manual_seed(5)
    x = torch.randn(1, 2, H, W, dtype=torch.float64)
    w = torch.randn(2, k, k, dtype=torch.float64)
    ref = F.conv2d(x, w.unsqueeze(1), padding=k // 2, groups=2)
    torch.testing.assert_close(depthwise_conv2d(x, w, "fft"), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("B, C, chunk_planes", [(5, 2, 2), (1, 5, 2)])
def test_fft_conv_without_autograd_equals_the_differentiable_path_in_chunks(B, C, chunk_planes, monkeypatch):
    # Sampling reuses one zero-padded buffer for every chunk of planes, multiplies the spectra in place and
    # writes out * out_scale directly; chunks of 2 planes over 5 images (or 5 channels) end with a short one.
    torch.manual_seed(7)
    H, W, k = 20, 23, 9
    Mh, Mw = S.fft_length(H, k), S.fft_length(W, k)
    monkeypatch.setattr(S, "FFT_CHUNK", chunk_planes * Mh * (Mw // 2 + 1) + 1)
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    w = torch.randn(C, k, k, dtype=torch.float64)
    scale = torch.rand(1, 1, H, W, dtype=torch.float64) + 0.5
    ref = F.conv2d(x, w.unsqueeze(1), padding=k // 2, groups=C) * scale
    differentiable = S._fft_depthwise(x, w, scale)
    with torch.no_grad():
        sampling = S._fft_depthwise(x, w, scale, spectra={})
        unscaled = S._fft_depthwise(x, w, None, spectra={})
    torch.testing.assert_close(differentiable, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(sampling, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(unscaled * scale, ref, rtol=0, atol=1e-10)


def test_dense_backend_large_kernel_uses_fft_and_agrees_with_gathers():
    # k >= FFT_MIN_KERNEL routes the dense backend through the FFT; it must match the gather backend.
    torch.manual_seed(4)
    B, C, R, k = 2, 3, 24, 17
    w = torch.randn(C, k, k, dtype=torch.float64)
    for idx in (torch.arange(R * R).expand(B, -1), _subset(B, R, 0.5)):
        geom = SparseGeometry(idx, R, k)
        v = torch.randn(B, idx.shape[1], C, dtype=torch.float64)
        torch.testing.assert_close(sparse_depthwise_conv(v, geom, w, "dense"),
                                   sparse_depthwise_conv(v, geom, w, "torch"), rtol=0, atol=1e-10)


def test_box_count_matches_conv_of_mask():
    m = (torch.rand(2, 1, 19, 19, generator=torch.Generator().manual_seed(5)) < 0.3).double()
    for k in (1, 5, 9):
        ref = F.conv2d(m, torch.ones(1, 1, k, k, dtype=torch.float64), padding=k // 2)
        assert torch.equal(box_count(m, k).double(), ref)


# -------------------------------------------------------------------------------------------- gradients
def test_custom_backward_gradcheck():
    torch.manual_seed(6)
    B, C, R, k = 2, 2, 7, 3
    geom = SparseGeometry(_subset(B, R, 0.5), R, k)
    v = torch.randn(B, geom.N, C, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, k, k, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, w: sparse_depthwise_conv(v, geom, w, "torch"), (v, w))


def test_custom_backward_equals_autograd_of_naive_gathers():
    torch.manual_seed(7)
    B, C, R, k = 3, 5, 16, 7
    geom = SparseGeometry(_subset(B, R, 0.3), R, k)
    v = torch.randn(B, geom.N, C, requires_grad=True)
    w = torch.randn(C, k, k, requires_grad=True)
    g = torch.randn(B, geom.N, C)
    fast = torch.autograd.grad(sparse_depthwise_conv(v, geom, w, "torch"), (v, w), g)
    slow = torch.autograd.grad(_naive(v, geom, w), (v, w), g)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # The dense backend differentiates through F.conv2d / FFT: the same gradients.
    dense = torch.autograd.grad(sparse_depthwise_conv(v, geom, w, "dense"), (v, w), g)
    for a, b in zip(fast, dense):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- resolution consistency
@pytest.mark.parametrize("R", [32, 64, 128, 256])
@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25, 0.125])
def test_constant_image_is_preserved_by_box_kernel_at_every_resolution(R, ratio):
    # Box kernel of integral 1 at the training resolution, resized to R: the Monte-Carlo estimate of
    # the average of a constant is that constant, whatever the sampled subset, border or resolution.
    k = kernel_size_at(7, R, 32)
    w = resize_kernel(torch.full((2, 7, 7), 1 / 49), k)
    idx = torch.arange(R * R)[None] if ratio == 1.0 else _subset(1, R, ratio, seed=R)
    geom = SparseGeometry(idx, R, k)
    v = torch.full((1, idx.shape[1], 2), 0.731)
    backends = ["dense"] + (["torch"] if geom.N * geom.K <= 2 ** 21 else [])
    for backend in backends:
        out = sparse_depthwise_conv(v, geom, w, backend)
        torch.testing.assert_close(out, v, rtol=0, atol=1e-5)


def test_errors():
    geom = SparseGeometry(torch.arange(16)[None], 4, 3)
    v, w = torch.zeros(1, 16, 2), torch.zeros(2, 3, 3)
    with pytest.raises(ValueError, match="unknown sparse backend"):
        sparse_depthwise_conv(v, geom, w, "cuda-magic")
    with pytest.raises(ValueError, match="weight must be"):
        sparse_depthwise_conv(v, geom, torch.zeros(2, 5, 5))
    with pytest.raises(ValueError):
        SparseGeometry(torch.arange(16)[None], 4, 4)
    assert math.isfinite(sparse_depthwise_conv(v, geom, w).sum().item())


def test_sampling_path_caches_kernel_spectra_exactly_and_follows_the_weight():
    # The full-grid FFT path at sampling resolutions (k = 15 at 64 px from 7 taps at 32 px): the kernel
    # spectra kept between no-grad calls give the uncached result bit for bit, an in-place weight update
    # empties the cache, and with gradients nothing is cached. 2 x 4096 points x 40 channels also takes
    # the blocked transpose of big grids.
    from infdiff.nets.blocks import SparseDepthwiseConv

    torch.manual_seed(13)
    B, C, R = 2, 40, 64
    conv = SparseDepthwiseConv(C, 7)
    geom = SparseGeometry(torch.arange(R * R).expand(B, -1), R, kernel_size_at(7, R, 32))
    assert geom.k >= FFT_MIN_KERNEL and B * geom.N * C > S.TRANSPOSE_BLOCK
    x = torch.randn(B, C, R, R)
    v = _to_points(x)
    ref = _to_points(_dense_reference(x.double(), resize_kernel(conv.weight.detach().double(), geom.k))).float()
    with torch.no_grad():
        first = conv.operator(v, geom)
        assert len(conv._spectra) > 1
        torch.testing.assert_close(first, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(conv.operator(v, geom), first)
        conv.weight.mul_(2)
        torch.testing.assert_close(conv.operator(v, geom), 2 * first, rtol=1e-5, atol=1e-5)
    cached = dict(conv._spectra)
    out = conv.operator(v.requires_grad_(), geom)
    assert out.requires_grad and conv._spectra.keys() == cached.keys()
    torch.testing.assert_close(out.detach(), 2 * first, rtol=1e-5, atol=1e-5)
