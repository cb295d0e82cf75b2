"""Sample-quality metrics (docs/architecture.md, "Metrics"). Weights-free metrics live here; ``swd`` is the embedded default's main metric.

This package also names what every metric is read as, torch-free so that tables and the regression
check can use it without loading a network:

* :data:`LOWER_IS_BETTER` / :data:`HIGHER_IS_BETTER` and :func:`direction`: the regression check's verdicts,
  the tables' "best row" (``n.s.`` marks) and the history plot's axis labels all read the direction here;
* :data:`PAIRED_METRICS`: metrics that compare a run's samples with its *own* samples at its training
  resolution, seed by seed (:mod:`infdiff.metrics.consistency`), not with data; they have no value at the
  training resolution itself, for the noise and real-vs-real rows, or for a method that samples only at
  its training resolution;
* :data:`FEATURE_METRICS`: metrics that embed images with a pretrained network and compare feature
  statistics (their bias depends on the sample count, which the tables therefore name).
"""

from infdiff.metrics.swd import swd

__all__ = ["swd", "LOWER_IS_BETTER", "HIGHER_IS_BETTER", "PAIRED_METRICS", "FEATURE_METRICS", "direction"]

LOWER_IS_BETTER = {"swd", "fid", "fid_clip", "kid"}
# consistency: PSNR (dB) between a k x sample area-downsampled by k and the training-resolution sample
HIGHER_IS_BETTER = {"psnr", "ssim", "consistency"}
PAIRED_METRICS = ("consistency",)
FEATURE_METRICS = ("fid", "fid_clip", "kid")


def direction(metric: str) -> int:
    """+1 when a larger value is worse (lower is better), -1 when a smaller one is; ValueError otherwise."""
    if metric in LOWER_IS_BETTER:
        return 1
    if metric in HIGHER_IS_BETTER:
        return -1
    raise ValueError(f"metric '{metric}' has no known direction: add it to LOWER_IS_BETTER or HIGHER_IS_BETTER "
                     "in infdiff/metrics/__init__.py")
