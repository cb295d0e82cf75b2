"""Grid U-Net of the ∞-Diff hierarchy (Sec. 4.2, App. A): Nichol & Dhariwal (2021) style.

The sparse levels interpolate their features onto a fixed G x G grid; this dense U-Net then captures
global structure. It never changes resolution with the sampling resolution R (App. A: "fixed at a
resolution of 128 x 128"; 16 x 16 in the CPU default), so all resolution handling happens in the
sparse operators.

Components (as in improved DDPM):
* ResBlock: GroupNorm-SiLU-conv3x3, time "scale-shift" norm (GroupNorm(h) * (1 + s) + b), SiLU,
  dropout, zero-initialised conv3x3, residual (1x1 conv when channels change).
* AttentionBlock: multi-head self-attention over the G_l x G_l positions, zero-initialised output.
* Down: stride-2 conv; Up: nearest x2 then conv3x3.
* Dropout only at resolutions <= max(attn_res) (App. A, after Hoogeboom et al. 2023: "attention is
  applied at resolutions 16 and 8, as is dropout").

Tensors: ``x [B, C, G, G]``, ``temb [B, time_dim]``. Everything is per sample (GroupNorm, attention),
so outputs do not depend on batch composition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infdiff.group_norm import group_norm
from infdiff.nets.blocks import latent_scale

__all__ = ["norm_groups", "GroupNorm32", "attention", "ResBlock", "AttentionBlock", "GridUNet"]


def norm_groups(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """Largest group count <= max_groups dividing ``channels`` with >= min_per_group channels each.

    N&D use 32 groups at 128+ channels; at the CPU widths (8-64 channels) 32 groups would be an
    instance norm of single channels, so groups shrink to keep ~4 channels per group.
    """
    for g in range(min(max_groups, max(1, channels // min_per_group)), 0, -1):
        if channels % g == 0:
            return g
    return 1


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics, returned in the input's dtype (N&D's GroupNorm32), optionally followed
    by a per-image scale-shift: ``GN(x) * gain + shift`` (a ResBlock's time modulation).

    x [B, C, H, W] in any float dtype -> the same shape, dtype and layout; gain, shift [B, C]. On a CPU this is
    one C++ pass forward and one backward (:func:`infdiff.group_norm.group_norm`): under bf16 autocast, torch's
    CPU group norm of the channels-last bf16 activations, or of a float32 copy, took 4-5x as long, forward and
    backward, with the ``addcmul`` of the modulation (AMX Xeon, 1 thread, README "Performance"). Elsewhere it
    is torch's group norm of a float32 copy. Its parameters and state-dict names are those of
    :class:`torch.nn.GroupNorm`.
    """

    def forward(self, x: Tensor, gain: Tensor | None = None, shift: Tensor | None = None, silu: bool = False) -> Tensor:
        """``silu``: SiLU of the result, in the same pass (a ResBlock's activation)."""
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, gain, shift, silu)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention softmax(q k^T / sqrt(d)) v; q, k, v [B, heads, N, d] -> [B, heads, N, d].

    On CPU under bf16 autocast it runs in float32 (output float32): torch's bf16 flash-attention backward
    on CPU is 7x slower than its float32 one at the embedded U-Net's sizes (AMX Xeon, 1 thread). On CUDA,
    and without autocast, it is ``F.scaled_dot_product_attention`` in the inputs' dtype.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return F.scaled_dot_product_attention(q, k, v)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer so a residual branch starts as the identity (N&D's zero_module)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with time scale-shift conditioning (and, with ``z_dim > 0``, a latent scale).

    x [B, C_in, H, W], temb [B, T], z [B, z_dim] -> [B, C_out, H, W].
    """

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, dropout: float = 0.0, z_dim: int = 0):
        super().__init__()
        self.norm1 = GroupNorm32(norm_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(time_dim, 2 * out_ch)
        self.norm2 = GroupNorm32(norm_groups(out_ch), out_ch, affine=False)
        self.drop = nn.Dropout(dropout)   # nn.Dropout is the identity in eval mode (sampling)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)
        self.zproj = latent_scale(z_dim, out_ch)  # autoencoder framework only (None otherwise)

    def forward(self, x: Tensor, temb: Tensor, z: Tensor | None = None) -> Tensor:
        h = self.conv1(self.norm1(x, silu=True))
        scale, shift = self.emb(F.silu(temb)).chunk(2, dim=1)             # [B, C_out] each
        gain = 1 + scale
        if self.zproj is not None:
            # DiffAE's ResBlock: the t-modulated activations are scaled by (1 + s_z(z)).
            if z is None:
                raise ValueError("this ResBlock is conditioned on z (autoencoder framework): pass z [B, z_dim]")
            s_z = 1 + self.zproj(z)
            gain, shift = gain * s_z, shift * s_z
        # Scale-shift norm (N&D "use_scale_shift_norm"): t modulates the normalised activations,
        # GN(h) * (1 + scale) + shift, in the same pass as the norm.
        h = self.conv2(self.drop(self.norm2(h, gain, shift, silu=True)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions. x [B, C, H, W] -> same."""

    def __init__(self, ch: int, head_channels: int = 32):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        if ch % self.heads:
            raise ValueError(f"attention channels {ch} not divisible by {self.heads} heads")
        self.norm = GroupNorm32(norm_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)                             # [B, heads, HW, d]
        a = attention(q, k, v)                                               # [B, heads, HW, d]
        a = a.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(a)


class _Down(nn.Module):
    """Stride-2 3x3 conv (N&D's conv_resample): learnt, unlike pooling, and halves G exactly."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Up(nn.Module):
    """Nearest x2 then 3x3 conv: no checkerboard artefacts (unlike a transposed conv)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class GridUNet(nn.Module):
    """N&D U-Net on a fixed G x G grid.

    Args:
        in_channels / out_channels: feature channels coming from / going back to the sparse levels.
        base: channels at the finest level; mults: channel multiplier per level (one level per entry,
            halving the resolution between levels); num_blocks: ResBlocks per level on the way down
            (num_blocks + 1 on the way up, as N&D); attn_res: grid resolutions with attention (and the
            largest of them bounds where dropout is used); grid_res: G.
        z_dim: > 0 scales every ResBlock by a latent z as well (autoencoder framework).
        down_only: build only the down path and the middle (the encoder's half, :meth:`encode`).
    Forward: x [B, in_channels, G, G], temb [B, time_dim], z [B, z_dim] -> [B, out_channels, G, G].
    """

    def __init__(self, in_channels: int, out_channels: int, base: int = 32, mults=(1, 2, 2),
                 num_blocks: int = 1, attn_res=(8, 4), dropout: float = 0.1, time_dim: int = 128,
                 grid_res: int = 16, z_dim: int = 0, down_only: bool = False):
        super().__init__()
        if grid_res % (2 ** (len(mults) - 1)):
            raise ValueError(f"grid_res {grid_res} not divisible by 2^{len(mults) - 1} (levels {mults})")
        attn_res = tuple(attn_res)
        drop_max = max(attn_res) if attn_res else 0

        def p_at(res: int) -> float:
            return dropout if res <= drop_max else 0.0

        self.inp = nn.Conv2d(in_channels, base, 3, padding=1)
        # Down path: record the channels of every output that feeds a skip connection.
        self.down = nn.ModuleList()
        skip_ch, ch, res = [base], base, grid_res
        for level, m in enumerate(mults):
            for _ in range(num_blocks):
                layers = [ResBlock(ch, base * m, time_dim, p_at(res), z_dim)]
                ch = base * m
                if res in attn_res:
                    layers.append(AttentionBlock(ch))
                self.down.append(nn.ModuleList(layers))
                skip_ch.append(ch)
            if level != len(mults) - 1:
                self.down.append(nn.ModuleList([_Down(ch)]))
                skip_ch.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, time_dim, p_at(res), z_dim), AttentionBlock(ch),
                                  ResBlock(ch, ch, time_dim, p_at(res), z_dim)])
        #: channels of the middle's output (what :meth:`encode` returns)
        self.mid_channels = ch
        if down_only:
            return
        # Up path: each block consumes one skip (concatenated on channels).
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mults))):
            for i in range(num_blocks + 1):
                layers = [ResBlock(ch + skip_ch.pop(), base * m, time_dim, p_at(res), z_dim)]
                ch = base * m
                if res in attn_res:
                    layers.append(AttentionBlock(ch))
                if level != 0 and i == num_blocks:
                    layers.append(_Up(ch))
                    res *= 2
                self.up.append(nn.ModuleList(layers))
        self.out = nn.Sequential(GroupNorm32(norm_groups(ch), ch), nn.SiLU(),
                                 nn.Conv2d(ch, out_channels, 3, padding=1))

    @staticmethod
    def _run(layers: nn.ModuleList, h: Tensor, temb: Tensor, z: Tensor | None) -> Tensor:
        # Only ResBlocks take the time embedding and z (attention and resampling are unconditioned, as N&D).
        for layer in layers:
            h = layer(h, temb, z) if isinstance(layer, ResBlock) else layer(h)
        return h

    def _down_mid(self, x: Tensor, temb: Tensor, z: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        """The down path and the middle: (h [B, mid_channels, G_min, G_min], the skips)."""
        # channels_last lets oneDNN pick its fastest 3x3 kernels: -15% U-Net train time on 2 CPU cores.
        h = self.inp(x.contiguous(memory_format=torch.channels_last))
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, temb, z)
            hs.append(h)
        return self._run(self.mid, h, temb, z), hs

    def encode(self, x: Tensor, temb: Tensor) -> Tensor:
        """The first half (down path and middle): x [B, in_channels, G, G] -> [B, mid_channels, G_min, G_min]."""
        return self._down_mid(x, temb, None)[0]

    def forward(self, x: Tensor, temb: Tensor, z: Tensor | None = None) -> Tensor:
        h, hs = self._down_mid(x, temb, z)
        for layers in self.up:
            h = self._run(layers, torch.cat([h, hs.pop()], 1), temb, z)
        return self.out(h).contiguous()
