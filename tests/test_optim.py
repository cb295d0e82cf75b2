"""The optimiser of the training loops (infdiff.optim): fused where the device has the kernel, the same update
rule as torch's per-tensor Adam/AdamW, checkpoints interchangeable; the EMA update's formula."""

import copy

import pytest
import torch
from torch import nn

from infdiff.optim import adam, ema_update


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.GELU(), nn.Linear(16, 3), nn.LayerNorm(3))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, first: int = 0) -> None:
    for s in range(first, first + steps):
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)
        opt.zero_grad(set_to_none=True)
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.04])
def test_fused_adam_follows_the_per_tensor_update_rule(weight_decay):
    """30 steps of adam() (fused on CPU) stay with torch's per-tensor Adam / AdamW of the same settings."""
    kw = dict(lr=3e-2, betas=(0.9, 0.99))
    a, b = _model(), _model()
    opt_a = adam(a.parameters(), weight_decay=weight_decay, **kw)
    ref = torch.optim.AdamW if weight_decay else torch.optim.Adam
    opt_b = ref(b.parameters(), foreach=False, **(dict(weight_decay=weight_decay) if weight_decay else {}), **kw)
    assert opt_a.defaults["fused"] and type(opt_a) is ref
    _train(a, opt_a, 30)
    _train(b, opt_b, 30)
    moved = max((pa - pb0).abs().max().item() for pa, pb0 in zip(a.parameters(), _model().parameters()))
    assert moved > 0.1  # the weights did move: the comparison below is not of two untouched models
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_implementations_share_one_state_dict():
    """A checkpoint of the per-tensor loop resumes in the fused optimiser (and back) as if never stopped."""
    kw = dict(lr=1e-2, betas=(0.9, 0.99))
    whole = _model()
    opt = adam(whole.parameters(), implementation="loop", **kw)
    assert not opt.defaults["fused"] and not opt.defaults["foreach"]
    _train(whole, opt, 20)

    first = _model()
    opt1 = adam(first.parameters(), implementation="loop", **kw)
    _train(first, opt1, 10)
    second = copy.deepcopy(first)
    opt2 = adam(second.parameters(), implementation="fused", **kw)
    opt2.load_state_dict(opt1.state_dict())
    _train(second, opt2, 10, first=10)
    for pw, ps in zip(whole.parameters(), second.parameters()):
        torch.testing.assert_close(pw, ps, rtol=1e-5, atol=1e-6)


def test_unknown_implementation_is_an_error():
    with pytest.raises(ValueError, match="unknown optimiser implementation"):
        adam(_model().parameters(), lr=1e-3, implementation="fast")


def test_ema_update_is_the_moving_average():
    """ema <- decay ema + (1 - decay) model for every parameter; buffers copied."""
    model, ema = nn.BatchNorm1d(4), nn.BatchNorm1d(4)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)
        model.running_mean.uniform_(-1, 1)
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, model, 0.9)
    for pe, p0, pm in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(pe, 0.9 * p0 + 0.1 * pm)
    assert torch.equal(ema.running_mean, model.running_mean)
