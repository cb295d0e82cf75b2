"""∞-Diff: mollified diffusion (Sec. 3.2) parameterised by a sparse neural operator (Sec. 4.2)."""

from __future__ import annotations

from torch import Tensor

from infdiff import coords as C
from infdiff.methods.mollified import MollifiedPointMethod
from infdiff.nets import InfDiffNet

__all__ = ["InfDiff"]


class InfDiff(MollifiedPointMethod):
    """∞-Diff: the network sees only the values of x_t at the sampled pixels.

    A function evaluated on an irregular point set; see :class:`MollifiedPointMethod` for the process it
    is trained and sampled with. Reads the run's ``model`` section (schema ``$defs/model``), passed to
    :class:`~infdiff.nets.InfDiffNet` as it is.
    """

    name = "infdiff"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.net = InfDiffNet(in_channels=3, train_res=self.train_res, **cfg["model"])

    def denoise(self, x_t: Tensor, idx: Tensor, t: Tensor) -> Tensor:
        """The sparse operator sees x_t at the points only: [B, N, 3] values at ``idx`` -> T xi estimate."""
        return self.net(C.gather_points(x_t, idx), idx, x_t.shape[-1], t)
