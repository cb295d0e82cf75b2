"""U-ViT: the network of simple diffusion (Hoogeboom, Heek & Salimans 2023, Sec. 3.4 and Fig. 5).

A U-Net whose lowest level is a transformer: convolutional ResBlocks (with U-Net skips) only at the high
resolutions, where they are cheap, and all the scaling in a stack of transformer blocks at a low
resolution (16 x 16 at 256 px in the paper), where self-attention over every position is affordable::

    x [B, 3, R, R]
      -> stem: 5/3 wavelet (3 -> 12 channels at R/2) + conv3x3, or a stride-2 2x2 conv ("conv" stem)
      -> level i = 0..L-1 at R / 2^(i+1): ``blocks`` ResBlocks (channels[i]), each output kept as a skip,
         then a stride-2 conv
      -> transformer at R / 2^(L+1): tokens = positions, learned positional embedding, ``depth`` pre-LN
         blocks (self-attention + MLP), each LayerNorm modulated by the logSNR embedding (scale-shift)
      -> level i = L-1..0: nearest x2 + conv, ``blocks`` ResBlocks each fed [h, skip] (concatenated)
      -> GroupNorm-SiLU-conv3x3 to 12 channels + inverse wavelet (or a transposed 2x2 conv) -> v_hat

The network predicts v (Salimans & Ho 2022), conditioned on logSNR(t) rather than t. Dropout is used only
in layers at resolution <= ``dropout_max_res`` ("we only add dropout at the lower resolution layers").

Reused from the ∞-Diff network: the N&D ResBlock with time scale-shift norm and its stride-2 / nearest-up
resamplers (:mod:`infdiff.nets.unet`), the sinusoidal embedding + MLP (:class:`TimeEmbedding`) and the
modulated LayerNorm (:class:`ModulatedLayerNorm`) of :mod:`infdiff.nets.blocks`. Every operation is per
sample (GroupNorm, LayerNorm, attention), so outputs never depend on the batch composition.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from baselines.wavelet import dwt2, idwt2
from infdiff.nets.blocks import ModulatedLayerNorm, PointMLP, TimeEmbedding
from infdiff.nets.unet import GroupNorm32, ResBlock, _Down, _Up, _zero, attention, norm_groups

__all__ = ["TransformerBlock", "UViT"]


class TransformerBlock(nn.Module):
    """Pre-LN transformer block conditioned by adaptive scale-shift (zero-initialised branches).

    ``h + Attn(LN_t(h))`` then ``h + MLP(LN_t(h))``; LN_t is :class:`ModulatedLayerNorm`. Both branch
    outputs start at zero, so the block starts as the identity (N&D's zero_module, DiT's adaLN-Zero idea).
    Tokens: h [B, N, width], temb [B, time_dim] -> [B, N, width].
    """

    def __init__(self, width: int, heads: int, time_dim: int, dropout: float = 0.0, mlp_ratio: int = 4):
        super().__init__()
        if width % heads:
            raise ValueError(f"transformer_width {width} not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = ModulatedLayerNorm(width, time_dim)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = _zero(nn.Linear(width, width))
        self.norm2 = ModulatedLayerNorm(width, time_dim)
        self.mlp = PointMLP(width, mlp_ratio * width)
        _zero(self.mlp.fc2)
        self.drop = nn.Dropout(dropout)   # identity in eval mode (sampling)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        B, N, W = h.shape
        qkv = self.qkv(self.norm1(h, temb)).reshape(B, N, 3, self.heads, W // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                 # [B, heads, N, W / heads] each
        a = attention(q, k, v).transpose(1, 2).reshape(B, N, W)
        h = h + self.drop(self.proj(a))
        return h + self.drop(self.mlp(self.norm2(h, temb)))


class UViT(nn.Module):
    """U-ViT v-prediction network for images at one resolution.

    Args:
        resolution: R_train (must be divisible by 2^(len(channels) + 1)); the positional embedding has
            one entry per transformer position, so the network runs at this resolution only.
        channels: ResBlock widths of the conv levels, the first at the stem resolution R/2.
        blocks: ResBlocks per conv level on the way down (and up, one skip each).
        transformer_width / transformer_depth / heads: the transformer at R / 2^(len(channels) + 1).
        dropout / dropout_max_res: dropout probability, used in layers at resolution <= dropout_max_res.
        stem: "wavelet" (5/3 DWT, Hoogeboom's choice) or "conv" (stride-2 conv / transposed conv).
        logsnr_range: (logsnr_min, logsnr_max) mapped linearly onto the embedding's [0, 1000] range.
        time_dim: width of the logSNR embedding (default 4 * channels[0], N&D's convention).
    Forward: z [B, 3, R, R], logsnr [B] -> v_hat [B, 3, R, R] float32 (also under autocast).
    """

    def __init__(self, resolution: int, channels: Sequence[int], blocks: int, transformer_width: int,
                 transformer_depth: int, heads: int, dropout: float = 0.0, dropout_max_res: int = 0,
                 stem: str = "wavelet", logsnr_range: tuple[float, float] = (-15.0, 15.0),
                 time_dim: int | None = None):
        super().__init__()
        channels = [int(c) for c in channels]
        L = len(channels)
        if L < 1 or blocks < 1:
            raise ValueError(f"need at least one conv level and one block, got channels={channels}, "
                             f"blocks={blocks}")
        if resolution % 2 ** (L + 1):
            raise ValueError(f"resolution {resolution} not divisible by 2^{L + 1} (stem + {L} conv levels)")
        if stem not in ("wavelet", "conv"):
            raise ValueError(f"unknown stem '{stem}' (known: wavelet, conv)")
        self.resolution, self.stem_kind = int(resolution), stem
        self.logsnr_min, self.logsnr_max = map(float, logsnr_range)
        time_dim = int(time_dim or 4 * channels[0])
        self.time = TimeEmbedding(time_dim)

        def p_at(res: int) -> float:
            return float(dropout) if res <= dropout_max_res else 0.0

        res = resolution // 2
        c0 = channels[0]
        # Stem. The wavelet is parameter-free (12 subband channels at R/2); a 3x3 conv lifts them to c0.
        # The conv alternative folds both into one 2x2 stride-2 patch embedding (the paper's "simpler,
        # somewhat worse" option).
        self.stem = (nn.Conv2d(12, c0, 3, padding=1) if stem == "wavelet" else nn.Conv2d(3, c0, 2, stride=2))

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_ch, ch, level_res = [], c0, []
        for c in channels:
            level_res.append(res)
            blocks_i = nn.ModuleList()
            for _ in range(blocks):
                blocks_i.append(ResBlock(ch, c, time_dim, p_at(res)))
                ch = c
                skip_ch.append(ch)
            self.down.append(blocks_i)
            self.downsample.append(_Down(ch))
            res //= 2

        # Transformer at the lowest resolution: one token per position.
        self.tokens = res * res
        self.to_tokens = nn.Linear(ch, transformer_width)
        self.pos = nn.Parameter(torch.randn(1, self.tokens, transformer_width) * 0.02)
        self.transformer = nn.ModuleList(
            TransformerBlock(transformer_width, heads, time_dim, p_at(res)) for _ in range(transformer_depth))
        self.out_norm = nn.LayerNorm(transformer_width)
        self.from_tokens = nn.Linear(transformer_width, ch)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for c, r in zip(reversed(channels), reversed(level_res)):
            self.upsample.append(_Up(ch))
            blocks_i = nn.ModuleList()
            for _ in range(blocks):
                blocks_i.append(ResBlock(ch + skip_ch.pop(), c, time_dim, p_at(r)))
                ch = c
            self.up.append(blocks_i)

        # Head: zero-initialised, so v_hat = 0 at the start (then eps - eps_hat = alpha v: the loss starts
        # at E[alpha^2 v^2]); the layers below receive gradients once the head has moved (step 2 on).
        out = nn.Conv2d(ch, 12, 3, padding=1) if stem == "wavelet" else nn.ConvTranspose2d(ch, 3, 2, stride=2)
        self.head = nn.Sequential(GroupNorm32(norm_groups(ch), ch), nn.SiLU(), _zero(out))

    def embed_logsnr(self, logsnr: Tensor) -> Tensor:
        """logsnr [B] -> temb [B, time_dim]: sinusoidal embedding of logSNR mapped onto [0, 1000].

        The embedding's frequencies are designed for timesteps in [0, 1000) (N&D); logSNR_max maps to 0
        (clean) and logSNR_min to 1000 (noise), so it is resolved as finely as a 1000-step t.
        """
        c = (self.logsnr_max - logsnr.float()) / (self.logsnr_max - self.logsnr_min) * 1000.0
        return self.time(c)

    def forward(self, z: Tensor, logsnr: Tensor) -> Tensor:
        temb = self.embed_logsnr(logsnr)
        if self.stem_kind == "wavelet":
            h = self.stem(dwt2(z))
        else:
            h = self.stem(z)
        # channels_last lets oneDNN pick its fastest 3x3 kernels on CPU (as GridUNet).
        h = h.contiguous(memory_format=torch.channels_last)
        skips = []
        for blocks_i, down in zip(self.down, self.downsample):
            for block in blocks_i:
                h = block(h, temb)
                skips.append(h)
            h = down(h)

        B, C, H, W = h.shape
        tok = self.to_tokens(h.flatten(2).transpose(1, 2)) + self.pos      # [B, H*W, width]
        for block in self.transformer:
            tok = block(tok, temb)
        h = self.from_tokens(self.out_norm(tok)).transpose(1, 2).reshape(B, C, H, W)

        for up, blocks_i in zip(self.upsample, self.up):
            h = up(h)
            for block in blocks_i:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
        out = self.head(h).float()      # the inverse wavelet and the sampler maths run in float32
        return idwt2(out) if self.stem_kind == "wavelet" else out.contiguous()
