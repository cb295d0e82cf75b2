"""The Method interface: unknown-method errors, seeded sampling independent of batch size, any resolution."""

import pytest
import torch

from infdiff.methods import build_method


def test_unknown_method_lists_known():
    with pytest.raises(ValueError, match="known: .*infdiff"):
        build_method({"method": "gan"})


def test_same_seed_same_sample_across_batch_sizes(tiny_cfg):
    torch.manual_seed(0)
    method = build_method(tiny_cfg).eval()
    seeds = [11, 12, 13, 14]
    together = method.sample(seeds, 16, steps=3, progress=False, batch_size=4)
    alone = method.sample(seeds, 16, steps=3, progress=False, batch_size=1)
    shuffled = method.sample(seeds[::-1], 16, steps=3, progress=False, batch_size=3)
    assert together.shape == (4, 3, 16, 16)
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together, shuffled.flip(0), atol=1e-5)
    # different seeds, different images
    assert (together[0] - together[1]).abs().max() > 1e-3


def test_sampling_at_other_resolutions_and_range(tiny_cfg):
    torch.manual_seed(0)
    method = build_method(tiny_cfg).eval()
    for R in (16, 32, 64):
        x = method.sample([1, 2], R, steps=2, progress=False)
        assert x.shape == (2, 3, R, R) and x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()


def test_training_loss_is_scalar_and_differentiable(tiny_cfg):
    torch.manual_seed(0)
    method = build_method(tiny_cfg)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    loss = method.training_loss(x0, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is not None for p in method.parameters() if p.requires_grad)


def test_qmc_coords_switch_uses_low_discrepancy_subsets(tiny_cfg, monkeypatch):
    from infdiff import coords as C

    drawn = []
    real = C.qmc_subset
    monkeypatch.setattr(C, "qmc_subset", lambda *a, **k: drawn.append(1) or real(*a, **k))
    tiny_cfg["coords"] = "qmc"
    torch.manual_seed(0)
    loss = build_method(tiny_cfg).training_loss(torch.zeros(2, 3, 16, 16), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and drawn == [1]
    tiny_cfg["coords"] = "sobolev"
    with pytest.raises(ValueError, match="known: uniform, qmc"):
        build_method(tiny_cfg)
