"""Plain C kernels (``infdiff/csrc/*.c``, no torch) built with the system C compiler and loaded with ctypes.

For code that runs in the torch-free jobs (evaluation: the SWD bootstrap), which must not pay torch's import
(seconds, README "Job start-up") to get a compiled loop. A kernel is compiled on first use (well under a
second: it includes only libc headers) into ``INFDIFF_C_CACHE`` (default ``~/.cache/infdiff-bench``) as
``<stem>-<hash>.so``, the hash covering the source, the compiler and the flags, and loaded from there
afterwards; concurrent jobs wait on a file lock while one of them compiles. The flags target the
baseline x86-64 vector ISA plus AVX2 where the CPU has it; with ``-ffp-contract=off`` (no fused multiply-add)
every float32 value is the same on every machine, only the order of vectorised double-precision sums follows
the vector width (differences near 1e-16 relative). Where no C compiler is found, :func:`c_available` says
why and callers run their numpy path, recording which ran (e.g. ``swd_kernels`` in a metric's provenance).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["CSRC", "c_available", "cache_dir", "load_c"]

CSRC = Path(__file__).resolve().parent / "csrc"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _flags() -> list[str]:
    flags = ["-O3", "-shared", "-fPIC", "-fopenmp-simd", "-ffp-contract=off"]
    try:
        cpu = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpu = ""
    if " avx2" in cpu:
        flags.append("-mavx2")
    return flags


@functools.cache
def c_available() -> tuple[bool, str]:
    """(True, "") if the C kernels can be built here, else (False, why)."""
    if _compiler() is None:
        return False, "building the C kernels needs a C compiler (cc or gcc on PATH, or $CC)"
    return True, ""


def cache_dir() -> Path:
    """Where built kernels (and infdiff/cpp_build.py's generated translation units) are kept: ``INFDIFF_C_CACHE``,
    default ``~/.cache/infdiff-bench``."""
    root = os.environ.get("INFDIFF_C_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "infdiff-bench")
    return Path(root)


@functools.cache
def load_c(stem: str) -> ctypes.CDLL:
    """Build (first use) or load ``csrc/<stem>.c``; returns the library (declare argtypes before calling).

    Builds and loads hold an exclusive ``flock`` on ``<name>.lock`` beside the library (as torch's extension
    builds hold theirs), so concurrent jobs build once and never load a half-written file; a library left
    unloadable by a killed build is rebuilt.
    """
    ok, why = c_available()
    if not ok:
        raise RuntimeError(why)
    cc, flags = _compiler(), _flags()
    src = CSRC / f"{stem}.c"
    key = hashlib.sha256(src.read_bytes() + "\0".join([cc, *flags]).encode()).hexdigest()[:16]
    out = cache_dir() / f"{stem}-{key}.so"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for attempt in range(2):
            if not out.exists():
                try:
                    subprocess.run([cc, *flags, str(src), "-o", str(out), "-lm"], check=True, capture_output=True,
                                   text=True)
                except subprocess.CalledProcessError as e:
                    out.unlink(missing_ok=True)
                    raise RuntimeError(f"compiling {src.name} failed:\n{e.stderr}") from e
            try:
                return ctypes.CDLL(str(out))
            except OSError:
                if attempt:
                    raise
                out.unlink()                    # truncated by a killed build: build it again
