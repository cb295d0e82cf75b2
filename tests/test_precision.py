"""Precision policy: bf16 autocast for networks only; the mollifier and Wiener filter stay float32."""

import pytest
import torch

from infdiff import precision as P
from infdiff.mollifier import Mollifier


def test_explicit_precisions_and_unknown():
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    assert P.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        P.resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)
    assert P.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    with P.autocast("auto", "cpu"):
        y = torch.nn.Linear(8, 8)(torch.randn(2, 8))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)


def test_mollifier_and_wiener_stay_float32_under_autocast():
    """Without the local autocast-off, the DCT products would be bf16 (errors ~1e-2, x20 in Wiener)."""
    m = Mollifier(std_px=1.0, train_res=32)
    x = torch.randn(2, 3, 32, 32)
    ref_T, ref_W = m(x), m.wiener(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        T, W = m(x), m.wiener(x)
        # what the products would have been without the guard: visibly wrong
        D = m._matrix("T", 32, x.device, torch.float32)
        unguarded = D @ x @ D.T
    assert T.dtype == W.dtype == torch.float32
    torch.testing.assert_close(T, ref_T, rtol=0, atol=1e-5)
    torch.testing.assert_close(W, ref_W, rtol=0, atol=1e-5)
    assert (unguarded.float() - ref_T).abs().max() > 1e-3


def test_groupnorm32_is_groupnorm_in_float32_and_keeps_the_input_dtype():
    """fp32: nn.GroupNorm to float32 rounding (the mean here is large against the spread). bf16 (channels-last,
    as the U-Net's convs give it): normalised in float32 and rounded once to bf16, in the input's layout."""
    from infdiff.nets.unet import GroupNorm32

    torch.manual_seed(0)
    g = GroupNorm32(8, 32)
    torch.nn.init.normal_(g.weight), torch.nn.init.normal_(g.bias)
    x = torch.randn(4, 32, 8, 8) * 3 + 50
    torch.testing.assert_close(g(x), torch.nn.functional.group_norm(x, 8, g.weight, g.bias, g.eps), rtol=0, atol=2e-5)
    xb = x.bfloat16().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = g(xb)
    ref = torch.nn.functional.group_norm(xb.float(), 8, g.weight, g.bias, g.eps)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.float(), ref, rtol=0, atol=0.02)   # bf16 rounding of the output only
    # at most one bf16 rounding step from the float32 result
    assert ((y.float() - ref.bfloat16().float()).abs() <= ref.abs() * 2 ** -7 + 1e-6).all()


def test_attention_runs_in_float32_under_cpu_autocast_and_is_plain_sdpa_otherwise():
    from infdiff.nets.unet import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 32) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(attention(q, k, v), ref)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = attention(qb, kb, vb)
    assert a.dtype == torch.float32
    exact = torch.nn.functional.scaled_dot_product_attention(qb.float(), kb.float(), vb.float())
    torch.testing.assert_close(a, exact, rtol=0, atol=1e-6)
