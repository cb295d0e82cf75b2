"""The ∞-Diff network f_theta(x_t, t) -> estimate of T xi (Sec. 4.2, Fig. 4, App. A).

Hierarchy (Fig. 4):

    points x_t(c)  [B, N, 3]
      -> pointwise lift to C channels
      -> `sparse_blocks` sparse residual operator blocks (Eq. 20), keeping a skip after each
      -> points-to-grid interpolation onto a fixed G x G grid (k-NN, paper default; or Gaussian)
      -> grid U-Net (N&D) conditioned on t
      -> bilinear read of the grid at the points
      -> `sparse_blocks` blocks, each after concatenating the matching skip and a linear merge
      -> modulated LayerNorm -> zero-initialised linear to 3 channels (T xi at the points).

Any resolution R works with the same weights: the sparse kernels are resized to an odd size near
``k * R / train_res`` with their integral kept (the operator is defined in continuous units), the
interpolation works in continuous coordinates, and the grid stays G x G.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from infdiff import fused_norm
from infdiff.nets.blocks import ModulatedLayerNorm, SparseResBlock, TimeEmbedding, pointwise
from infdiff.nets.interp import INTERP_MODES, grid_to_points, points_to_grid
from infdiff.nets.sparse_downsample import SparseDownsampleMiddle
from infdiff.nets.unet import GridUNet
from infdiff.sparse import BACKENDS, SparseGeometry, kernel_size_at

__all__ = ["InfDiffNet"]


class InfDiffNet(nn.Module):
    """∞-Diff sparse-operator / grid U-Net hybrid.

    Args:
        in_channels: image channels (3).
        channels: width C of the sparse levels; sparse_blocks: blocks before and after the grid level.
        kernel_size: depthwise kernel size k at ``train_res``.
        grid_res: G of the fixed U-Net grid; unet_channels, unet_mults, unet_blocks, attn_res, dropout:
            see :class:`GridUNet`.
        time_dim: timestep embedding size; mlp_ratio: hidden width of the block MLPs in units of C.
        interp: "knn" or "gaussian" (points -> grid); knn: neighbours for "knn".
        backend: sparse conv backend ("auto", "torch", "dense").
        regular_conv: ablation (Table 2 "Regular Convs"): the sparse blocks' operator uses a full C x C
            kernel [C, C, k, k] instead of the depthwise [C, k, k] one.
        nonlinear_kernel: ablation (Table 2 "Nonlinear Kernel", Eq. 18 made nonlinear): the operator is
            depthwise conv -> GELU -> depthwise conv inside the same residual block.
        Both default to False (the paper's architecture); each changes only the sparse blocks' spatial
        operator K: every other parameter keeps its name, shape and (for one seed) initial value.
        z_dim: > 0 conditions every modulated LayerNorm and grid ResBlock on a latent z [B, z_dim] as well
            (the autoencoder framework; :func:`~infdiff.nets.blocks.latent_scale`). 0 (unconditional) builds
            exactly the network without it: same parameter names and, for one seed, the same values.
        sparse_downsample: ablation (Table 2 "Sparse Downsample", Sec. 4.2 approach (1)): the grid path
            (points -> grid -> U-Net -> points) is replaced by a sparse U-Net that downsamples by random
            point subsets (:class:`SparseDownsampleMiddle`), with as many levels as the grid U-Net has
            (coarsest lattice = grid_res / 2^(len(unet_mults) - 1)) and unet_blocks blocks per level.
    """

    def __init__(self, *, in_channels: int, train_res: int, channels: int, sparse_blocks: int, kernel_size: int,
                 grid_res: int, unet_channels: int, unet_mults, unet_blocks: int, attn_res, dropout: float,
                 time_dim: int, mlp_ratio: int, interp: str, knn: int, regular_conv: bool,
                 nonlinear_kernel: bool, sparse_downsample: bool, backend: str = "auto", z_dim: int = 0):
        super().__init__()
        if interp not in INTERP_MODES:
            raise ValueError(f"unknown interpolation '{interp}' (known: {', '.join(INTERP_MODES)})")
        if backend not in BACKENDS:
            raise ValueError(f"unknown sparse backend '{backend}' (known: {', '.join(BACKENDS)})")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.in_channels, self.kernel_size, self.train_res = in_channels, kernel_size, train_res
        self.grid_res, self.interp, self.knn = grid_res, interp, knn
        self.regular_conv, self.nonlinear_kernel = bool(regular_conv), bool(nonlinear_kernel)
        self.z_dim = int(z_dim)
        if self.z_dim and sparse_downsample:
            raise ValueError("z-conditioning (autoencoder framework) is built for the grid path, not sparse_downsample")
        ablate = dict(regular_conv=self.regular_conv, nonlinear_kernel=self.nonlinear_kernel, z_dim=self.z_dim)

        self.time_embed = TimeEmbedding(time_dim)
        self.lift = nn.Linear(in_channels, channels)
        self.down = nn.ModuleList([SparseResBlock(channels, kernel_size, time_dim, mlp_ratio, backend, **ablate)
                                   for _ in range(sparse_blocks)])
        self.sparse_downsample = bool(sparse_downsample)
        if self.sparse_downsample:
            # Same depth as the grid U-Net it replaces: its coarsest grid is grid_res / 2^(levels - 1).
            coarsest = max(1, grid_res // 2 ** (len(unet_mults) - 1))
            self.middle = SparseDownsampleMiddle(channels, time_dim, kernel_size=kernel_size, train_res=train_res,
                                                 grid_res=coarsest, blocks_per_level=unet_blocks,
                                                 mlp_ratio=mlp_ratio, backend=backend)
        else:
            self.unet = GridUNet(channels, channels, base=unet_channels, mults=tuple(unet_mults),
                                 num_blocks=unet_blocks, attn_res=tuple(attn_res), dropout=dropout,
                                 time_dim=time_dim, grid_res=grid_res, z_dim=self.z_dim)
        # Skip merge: concatenation (as U-Net skips) followed by a pointwise linear back to C.
        self.merge = nn.ModuleList([nn.Linear(2 * channels, channels) for _ in range(sparse_blocks)])
        self.up = nn.ModuleList([SparseResBlock(channels, kernel_size, time_dim, mlp_ratio, backend, **ablate)
                                 for _ in range(sparse_blocks)])
        self.out_norm = ModulatedLayerNorm(channels, time_dim, self.z_dim)
        # Zero-initialised output: the untrained model predicts T xi = 0, the MSE-optimal constant.
        self.out = nn.Linear(channels, in_channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, idx: Tensor, R: int, t: Tensor, z: Tensor | None = None) -> Tensor:
        """Predict T xi at the points.

        Args:
            x: [B, N, in_channels] noisy values x_t at the points.
            idx: [B, N] int64 distinct pixel indices (row * R + col) of the R x R grid.
            R: resolution the points live on (any R; kernels are resized from train_res).
            t: [B] diffusion timestep in [0, 1000) (int or float).
            z: [B, z_dim] the image's latent (autoencoder framework; required iff z_dim > 0).
        Returns:
            [B, N, in_channels].
        """
        if x.ndim != 3 or x.shape[:2] != idx.shape or x.shape[2] != self.in_channels:
            raise ValueError(f"x must be [B, N, {self.in_channels}] matching idx {tuple(idx.shape)}, "
                             f"got {tuple(x.shape)}")
        temb = self.time_embed(t.to(x.device))
        # One geometry per forward: all sparse blocks share the neighbour tables and window counts.
        geom = SparseGeometry(idx, R, kernel_size_at(self.kernel_size, R, self.train_res))
        v = pointwise(self.lift, x)
        skips = []
        if z is not None:
            z = z.to(device=x.device, dtype=temb.dtype)
        for blk in self.down:
            v = blk(v, geom, temb, z)
            skips.append(v)
        # The grid is G x G at every R (App. A): global structure is learnt once, in continuous
        # coordinates, and only the sparse levels see the resolution of the points.
        if self.sparse_downsample:
            u = self.middle(v, idx, R, temb)                                               # [B, N, C]
        else:
            g = points_to_grid(v, idx, R, self.grid_res, mode=self.interp, knn=self.knn)  # [B, C, G, G]
            u = grid_to_points(self.unet(g, temb, z), idx, R)                              # [B, N, C]
        for merge, blk in zip(self.merge, self.up):
            skip = skips.pop()
            if fused_norm.residual_mlp_usable(u, merge):          # sampling on a CPU: one C++ pass
                u = blk(fused_norm.merge(u, skip, merge), geom, temb, z)
            else:
                u = blk(pointwise(lambda a, b: self._merge(merge, a, b), u, skip), geom, temb, z)
        mod = self.out_norm.modulation(temb, z)
        return pointwise(lambda a: self.out(self.out_norm.modulate(a, mod)), u)

    @staticmethod
    def _merge(merge: nn.Linear, u: Tensor, skip: Tensor) -> Tensor:
        """merge(cat([u, skip])) without materialising the concatenation: W [u; s] = W_u u + W_s s."""
        C = u.shape[-1]
        h = torch.addmm(merge.bias, u.reshape(-1, C), merge.weight[:, :C].t())
        # Out of place (not addmm_): autocast casts the operands of out-of-place ops only.
        return torch.addmm(h, skip.reshape(-1, C), merge.weight[:, C:].t()).view(*u.shape[:-1], -1)
