"""The optimiser of every training loop and the exponential moving average (EMA) of its weights.

* :func:`adam`: Adam (Kingma & Ba), or AdamW (decoupled weight decay, Loshchilov & Hutter) when
  ``weight_decay > 0``, with torch's *fused* kernel wherever the parameters' device has one (CPU and CUDA):
  one pass over all parameters per step instead of ~6 elementwise kernels per parameter tensor. Same update
  rule (it agrees with the per-tensor loop to float rounding; tests/test_optim.py). The per-tensor loop is
  a fixed cost of every step whatever the batch, which weighs most where the model is big and the batch
  small (the FFHQ-128 architecture, 94M parameters, on a CPU; README "Performance").
* :func:`ema_update`: ``ema <- decay * ema + (1 - decay) * model``, as one multi-tensor lerp.

``python benchmarks/bench_train_step.py --optimizer loop`` measures the step with the per-tensor loop.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["FUSED_DEVICE_TYPES", "IMPLEMENTATIONS", "adam", "ema_update"]

# Device types with torch's fused Adam/AdamW kernel that this project runs on.
FUSED_DEVICE_TYPES = ("cpu", "cuda")
# "fused": torch's fused kernel where the device has one, else "foreach"; "foreach": multi-tensor kernels;
# "loop": one set of elementwise kernels per parameter tensor (torch's default on CPU before this module).
IMPLEMENTATIONS = ("fused", "foreach", "loop")


def adam(params: Iterable[nn.Parameter], lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0,
         implementation: str = "fused") -> torch.optim.Optimizer:
    """Adam over ``params`` (AdamW when ``weight_decay > 0``), fused where the device has the kernel.

    The state dict is the same whatever the implementation, so a checkpoint written by one resumes in another.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown optimiser implementation '{implementation}' (known: {', '.join(IMPLEMENTATIONS)})")
    params = list(params)
    fused = implementation == "fused" and all(p.device.type in FUSED_DEVICE_TYPES for p in params)
    kind = dict(fused=True) if fused else dict(foreach=implementation != "loop")
    if weight_decay:
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **kind)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), **kind)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters (one multi-tensor lerp); buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
