"""Tiny randomly initialised stand-ins for the metric networks (tests only; the real weights cannot be
downloaded here). They have the real files' formats, so they go through the same loading code."""

import torch
from torch import nn

from infdiff.metrics import fid as F


class _Layers(nn.Module):
    """Inception stand-in trunk: conv stride 8 + nonlinearity + global pool -> [B, dim]."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


class _Inception(nn.Module):
    """Same outer shape as clean-fid's TorchScript Inception: a module whose `layers` take [-1, 1] input."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = _Layers(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers((x - 128) / 128)


def save_inception(path, dim: int, seed: int = 0) -> _Inception:
    """Write a random stand-in Inception (TorchScript, `layers` submodule, ``dim`` features) to ``path``."""
    torch.manual_seed(seed)
    net = _Inception(dim).eval()
    with F._quiet_torchscript():
        torch.jit.script(net).save(str(path))
    return net
