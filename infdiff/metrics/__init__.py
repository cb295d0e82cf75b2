"""Sample-quality metrics (docs/architecture.md, "Metrics"). Weights-free metrics live here; ``swd`` is the embedded default's main metric."""

from infdiff.metrics.swd import swd

__all__ = ["swd"]
