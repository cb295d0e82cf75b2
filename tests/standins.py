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


def save_clip_standin(path, arch: str = "ViT-B-32-quickgelu", seed: int = 0) -> None:
    """A randomly initialised open_clip ``arch`` (the real architecture metrics.clip_arch names) saved as a
    state dict: what fid_clip loads from metrics.weights.clip_vit_b_32, minus the training (~350 MB)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(arch).eval()
    torch.save(model.state_dict(), str(path))


def write_standin_weights(folder, inception_dim: int = 64) -> dict:
    """Stand-in Inception (TorchScript) and CLIP (open_clip state dict) files in ``folder``: the
    metrics.weights entries a run with fid / fid_clip needs (`python -m tests.standins <folder>`)."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"inception": folder / "inception-standin.pt", "clip_vit_b_32": folder / "clip-vit-b-32-standin.pt"}
    if not paths["inception"].exists():
        save_inception(paths["inception"], inception_dim)
    if not paths["clip_vit_b_32"].exists():
        save_clip_standin(paths["clip_vit_b_32"])
    return {k: str(v) for k, v in paths.items()}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(write_standin_weights(sys.argv[1])))
