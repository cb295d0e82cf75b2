"""infdiff: ∞-Diff (Bond-Taylor & Willcocks) — infinite-resolution diffusion with subsampled mollified states.

The library has one concept per module (see docs/architecture.md); the Snakemake workflow and the CLI
(`python -m infdiff`) only talk to it through :mod:`infdiff.methods` (the ``Method`` interface),
:mod:`infdiff.train`, :mod:`infdiff.sample` and :mod:`infdiff.io` (devices, checkpoints, atomic files).
"""

__version__ = "0.1.0"

from infdiff import allocator as _allocator

# Every job, test and benchmark imports this package first: its C heap then keeps its freed memory
# (infdiff/allocator.py; INFDIFF_MALLOC=system opts out).
_allocator.configure()
