"""The ∞-Diff network (Sec. 4.2): sparse neural operator blocks on the points, a grid U-Net on a fixed
G x G grid, and interpolation between the two. See :class:`InfDiffNet`."""

from infdiff.nets.infdiff_net import InfDiffNet

__all__ = ["InfDiffNet"]
