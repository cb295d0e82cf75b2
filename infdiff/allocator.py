"""The C heap's thresholds, set once per process when :mod:`infdiff` is imported (glibc only).

PyTorch's CPU tensors come from ``malloc``. glibc serves requests above its mmap threshold (128 KiB,
rising to at most 32 MiB as such blocks are freed) with fresh ``mmap`` pages, and returns the top of
its heap to the kernel when more than the trim threshold is free. A sampling or training step frees and
reallocates the same multi-megabyte activations every call, so by default each of them is page-faulted
and zeroed again by the kernel, every step. Raising both thresholds to :data:`THRESHOLD_BYTES` keeps
that memory in the process and reuses it: the same arithmetic, faster (README, "Performance": sampling
1.15-1.6x, the MLP's bf16 training step ~1.1x, on the AMX Xeon), for a higher resident set (it stays at
the peak instead of shrinking between steps).

``INFDIFF_MALLOC=system`` leaves glibc's defaults (e.g. to measure the difference:
``INFDIFF_MALLOC=system python benchmarks/bench_sample.py``). What was applied is recorded in every
result's provenance (``malloc``, :func:`state`).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["THRESHOLD_BYTES", "configure", "state"]

THRESHOLD_BYTES = 1 << 30  # 1 GiB: above every activation of the embedded default (1024 px: 128 MiB)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h> mallopt parameters
_STATE = "system"


def configure() -> str:
    """Raise glibc's mmap and trim thresholds unless ``INFDIFF_MALLOC=system``; returns :func:`state`.

    Idempotent. Anything other than Linux with glibc (musl, macOS, Windows) keeps its allocator.
    """
    global _STATE
    if os.environ.get("INFDIFF_MALLOC", "tuned") == "system" or not sys.platform.startswith("linux"):
        return _STATE
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no such symbol)
    except (OSError, AttributeError):
        return _STATE
    if libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, THRESHOLD_BYTES):
        _STATE = f"glibc mmap/trim threshold {THRESHOLD_BYTES >> 20} MiB"
    return _STATE


def state() -> str:
    """What :func:`configure` applied: ``"system"`` or e.g. ``"glibc mmap/trim threshold 1024 MiB"``."""
    return _STATE
