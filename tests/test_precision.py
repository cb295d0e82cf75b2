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
