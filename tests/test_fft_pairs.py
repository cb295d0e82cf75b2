"""Tests for infdiff.fft_pairs: two real channel planes per complex transform in the FFT convolution."""

import pytest
import torch
import torch.nn.functional as F

from infdiff import cpp_build, fft_pairs
from infdiff import sparse as S

needs_cpp = pytest.mark.skipif(not cpp_build.cpp_available("cpu")[0], reason="needs g++ and ninja")


def _reference(x, w, scale):
    """'Same' depthwise cross-correlation in float64 by F.conv2d, times the normaliser."""
    k = w.shape[-1]
    y = F.conv2d(x.double(), w.double().unsqueeze(1), padding=k // 2, groups=x.shape[1])
    return y if scale is None else y * scale.double()


def _spy(monkeypatch) -> list:
    calls = []
    real = fft_pairs.depthwise
    monkeypatch.setattr(fft_pairs, "depthwise", lambda x, *a, **kw: calls.append(tuple(x.shape)) or real(x, *a, **kw))
    return calls


@needs_cpp
@pytest.mark.parametrize("B, C, H, W, k, chunk_pairs", [
    (3, 5, 20, 23, 9, 1),      # odd C (the last pair's second plane is zero), H != W, one pair per call
    (2, 4, 40, 40, 11, 1),     # M = N = 45: odd transform lengths, no self-paired middle row or column
    (2, 6, 16, 16, 15, 5),     # several images and pairs per call, a short last chunk of channels
    (1, 2, 24, 24, 57, 1),     # kernel wider than the image plus its half-width
])
def test_pairs_equal_the_linear_convolution(B, C, H, W, k, chunk_pairs, monkeypatch):
    torch.manual_seed(11)
    M, N = S.fft_length(H, k), S.fft_length(W, k)
    monkeypatch.setattr(fft_pairs, "PAIR_CHUNK", chunk_pairs * M * N)
    calls = _spy(monkeypatch)
    # A channel-strided view (every other channel of a bigger tensor): the kernels read rows in place.
    x = torch.randn(B, 2 * C, H, W)[:, ::2]
    w = torch.randn(C, k, k) / k
    scale = torch.rand(1, 1, H, W) + 0.5
    with torch.no_grad():
        scaled = S._fft_depthwise(x, w, scale, spectra={})
        plain = S._fft_depthwise(x, w)
    assert calls == [(B, C, H, W)] * 2
    torch.testing.assert_close(scaled.double(), _reference(x, w, scale), rtol=0, atol=2e-6)
    torch.testing.assert_close(plain.double(), _reference(x, w, None), rtol=0, atol=2e-6)
    assert "pairs" in fft_pairs.kernels_used()


@needs_cpp
def test_pairs_agree_with_the_real_transforms_and_only_without_autograd(monkeypatch):
    # The real-transform path stays for autograd (training) and where the extension cannot be built;
    # both give the convolution to float32 rounding, and provenance names the path that ran.
    from infdiff.provenance import provenance

    torch.manual_seed(12)
    x, w = torch.randn(2, 4, 32, 32), torch.randn(4, 15, 15) / 15
    calls = _spy(monkeypatch)
    monkeypatch.setattr(fft_pairs, "_USED", set())
    differentiable = S._fft_depthwise(x, w.requires_grad_())
    assert not calls and differentiable.requires_grad
    assert provenance(device="cpu")["fft_kernels"] == ["rfft"]
    with torch.no_grad():
        pairs = S._fft_depthwise(x, w)
        monkeypatch.setattr(fft_pairs, "cpp_available", lambda device: (False, "no compiler (test)"))
        real = S._fft_depthwise(x, w)
    assert len(calls) == 1
    ref = _reference(x, w.detach(), None)
    for y in (differentiable.detach(), pairs, real):
        torch.testing.assert_close(y.double(), ref, rtol=0, atol=2e-6)
    assert provenance(device="cpu")["fft_kernels"] == ["pairs", "rfft"]
