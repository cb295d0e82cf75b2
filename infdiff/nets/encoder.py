"""The encoder of the diffusion-autoencoder framework: the first half of the ∞-Diff architecture.

Paper Sec. 5: "To encode data we use the first half of our proposed architecture (Fig. 4), which still
operates on sparsely sampled coordinates"; official code: the same front end, the U-Net's down path and
middle, a 1x1 conv to z and a spatial mean pool, reading an independent 1/4 subset of the *clean* image.

    points x0(c)  [B, N, 3]        (a random subset of the clean image's pixels, any resolution R)
      -> pointwise lift to C channels
      -> ``sparse_blocks`` sparse residual operator blocks (Eq. 20)
      -> points-to-grid interpolation onto the fixed G x G grid
      -> grid U-Net down path and middle (:meth:`GridUNet.encode`)
      -> 1x1 conv to z_dim, mean over the coarsest grid
      -> z [B, z_dim]

The encoder has no diffusion time: its blocks are the denoiser's time-modulated blocks fed a constant
zero embedding, which leaves each modulation a learnt constant affine (as DiffAE's encoder, whose
ResBlocks run without a time embedding). Everything is in continuous coordinates, so the same function
rendered at any resolution is read the same way: only the sparse kernels are resized (integral kept).
"""

from __future__ import annotations

from torch import Tensor, nn

from infdiff.nets.blocks import SparseResBlock, pointwise
from infdiff.nets.interp import points_to_grid
from infdiff.nets.unet import GridUNet
from infdiff.sparse import SparseGeometry, kernel_size_at

__all__ = ["InfDiffEncoder"]


class InfDiffEncoder(nn.Module):
    """x0 at a point set -> z [B, z_dim].

    Args: ``z_dim`` and the keys of the run's ``model`` section (the denoiser's architecture; the encoder
    builds its first half with the same widths). ``sparse_downsample`` has no grid path and is refused
    (by the spec check before any job starts, and here).
    """

    def __init__(self, *, in_channels: int, train_res: int, z_dim: int, channels: int, sparse_blocks: int,
                 kernel_size: int, grid_res: int, unet_channels: int, unet_mults, unet_blocks: int, attn_res,
                 dropout: float, time_dim: int, mlp_ratio: int, interp: str, knn: int, regular_conv: bool,
                 nonlinear_kernel: bool, sparse_downsample: bool, backend: str = "auto"):
        super().__init__()
        if sparse_downsample:
            raise ValueError("the encoder is the grid path's first half; model.sparse_downsample has no grid path")
        self.in_channels, self.kernel_size, self.train_res = in_channels, kernel_size, train_res
        self.grid_res, self.interp, self.knn, self.time_dim = grid_res, interp, knn, time_dim
        self.lift = nn.Linear(in_channels, channels)
        self.blocks = nn.ModuleList([
            SparseResBlock(channels, kernel_size, time_dim, mlp_ratio, backend, regular_conv=regular_conv,
                           nonlinear_kernel=nonlinear_kernel) for _ in range(sparse_blocks)])
        self.unet = GridUNet(channels, channels, base=unet_channels, mults=tuple(unet_mults),
                             num_blocks=unet_blocks, attn_res=tuple(attn_res), dropout=dropout,
                             time_dim=time_dim, grid_res=grid_res, down_only=True)
        self.to_z = nn.Conv2d(self.unet.mid_channels, z_dim, 1)

    def forward(self, x: Tensor, idx: Tensor, R: int) -> Tensor:
        """Encode images read at a point set.

        Args:
            x: [B, N, in_channels] clean values x0 at the points.
            idx: [B, N] int64 distinct pixel indices (row * R + col) of the R x R grid.
            R: the resolution the points live on (any R).
        Returns:
            z [B, z_dim] float32.
        """
        if x.ndim != 3 or x.shape[:2] != idx.shape or x.shape[2] != self.in_channels:
            raise ValueError(f"x must be [B, N, {self.in_channels}] matching idx {tuple(idx.shape)}, "
                             f"got {tuple(x.shape)}")
        temb = x.new_zeros(x.shape[0], self.time_dim, dtype=self.lift.weight.dtype)  # no diffusion time
        geom = SparseGeometry(idx, R, kernel_size_at(self.kernel_size, R, self.train_res))
        v = pointwise(self.lift, x)
        for blk in self.blocks:
            v = blk(v, geom, temb)
        g = points_to_grid(v, idx, R, self.grid_res, mode=self.interp, knn=self.knn)   # [B, C, G, G]
        h = self.to_z(self.unet.encode(g, temb))                                       # [B, z_dim, g, g]
        return h.float().mean(dim=(-2, -1))

