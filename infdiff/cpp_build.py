"""Building the project's C++ CPU kernels (``infdiff/csrc/*.cpp``) with ``torch.utils.cpp_extension``.

All kernel files are one extension, ``infdiff_kernels_<capability>``, built on first use with g++ and ninja
into ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and loaded from there afterwards; its
name carries the CPU capability it was built for, so a home directory shared by AVX-512 and AVX2 machines
keeps one build of each. The files include ATen and ``torch/library.h`` only (not ``torch/extension.h``,
~25 s) and register operators, ``torch.ops.infdiff_<stem>``. Parsing those headers is still ~4 s of every
compile on these CPUs, so the files are not compiled one by one: :data:`UNITS` generated translation units
(:func:`unit_sources`) each include the headers once and then several kernel files, each inside a namespace
of its own, and ninja compiles the units in parallel (README, "Performance": a cold build of the six files
took ~43 core-s one by one, ~19 core-s and ~10 s on 2 cores as two units). The units are generated into
``INFDIFF_C_CACHE`` (:func:`infdiff.c_kernels.cache_dir`), named by their content. Users:
:mod:`infdiff.sparse_cpp` (the sparse operator's gathers), :mod:`infdiff.fused_norm` (the sampling path's
modulated LayerNorm), :mod:`infdiff.group_norm` and :mod:`infdiff.layer_norm` (the norms of training),
:mod:`infdiff.point_mlp` (training's GELU) and :mod:`infdiff.fft_pairs` (the sampling FFT).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
from pathlib import Path

import torch

__all__ = ["CSRC", "ISA_FLAGS", "UNITS", "cpp_available", "kernel_files", "unit_sources", "load_extension"]

CSRC = Path(__file__).resolve().parent / "csrc"
# Instruction sets per torch CPU capability: the build targets what torch itself dispatches to here, not
# -march=native (a build must stay valid on every machine of the same capability).
ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma"],
             "AVX2": ["-mavx2", "-mfma"]}
# Translation units of the extension: the cores of the 2-core machines it is measured on. A constant, not
# the machine's core count, so that machines sharing a cache directory generate the same units.
UNITS = 2
_INCLUDE = re.compile(r"^\s*#\s*include\s*[<\"][^>\"]+[>\"]", re.MULTILINE)


def cpp_available(device: torch.device | str) -> tuple[bool, str]:
    """(True, "") if the C++ kernels can be built and run on ``device``, else (False, why)."""
    return _available(torch.device(device).type)


@functools.cache
def _available(device_type: str) -> tuple[bool, str]:
    from torch.utils.cpp_extension import is_ninja_available

    if device_type != "cpu":
        return False, f"the C++ kernels run on the CPU only, not on '{device_type}'"
    if shutil.which("g++") is None:
        return False, "building the C++ kernels needs g++ on PATH (e.g. `apt-get install g++`)"
    if not (is_ninja_available() or _ninja_from_wheel()):
        return False, "building the C++ kernels needs ninja (`pip install ninja`, in the lock)"
    return True, ""


def _ninja_from_wheel() -> bool:
    """Put the ``ninja`` wheel's binary on PATH (a virtual environment that is not activated has it off
    PATH) for torch.utils.cpp_extension, which runs ``ninja`` by name; True if it is usable then."""
    from torch.utils.cpp_extension import is_ninja_available

    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return is_ninja_available()


def kernel_files() -> list[Path]:
    """Every kernel file, ``csrc/*.cpp``, by name."""
    return sorted(CSRC.glob("*.cpp"))


def unit_sources(files: list[Path] | None = None, units: int = UNITS) -> list[str]:
    """The text of each generated translation unit of ``files`` (default: :func:`kernel_files`).

    Files go to the unit with the fewest bytes so far, largest first (deterministic). A unit first includes
    every header its files include (hoisted, each once), then each file inside ``namespace
    infdiff_unit_<stem>``: the file's own ``#include`` lines are then no-ops (include guards), its anonymous
    namespace and helper names stay its own, and its ``TORCH_LIBRARY`` registers as in a build of its own.
    """
    files = kernel_files() if files is None else list(files)
    groups: list[list[Path]] = [[] for _ in range(max(1, min(units, len(files))))]
    sizes = [0] * len(groups)
    for f in sorted(files, key=lambda f: (-f.stat().st_size, f.name)):
        k = sizes.index(min(sizes))
        groups[k].append(f)
        sizes[k] += f.stat().st_size
    texts = []
    for k, group in enumerate(groups):
        group = sorted(group)
        headers = sorted({m.group(0).strip() for f in group for m in _INCLUDE.finditer(f.read_text())})
        body = [f"namespace infdiff_unit_{f.stem} {{\n#include \"{f.name}\"\n}}  // namespace infdiff_unit_{f.stem}"
                for f in group]
        title = (f"// Generated by infdiff/cpp_build.py: unit {k + 1} of {len(groups)} of the C++ kernels "
                 f"({', '.join(f.name for f in group)}).")
        texts.append("\n".join([title, *headers, *body]) + "\n")
    return texts


def _write_units() -> list[str]:
    """Write the units (once per content, under a lock: concurrent jobs must not touch a file ninja is
    compiling, whose newer time would rebuild it); returns their paths."""
    from infdiff.c_kernels import cache_dir

    texts = unit_sources()
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    folder = cache_dir() / f"cpp-units-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"unit_{k}.cpp" for k in range(len(texts))]
    with open(folder / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for path, text in zip(paths, texts):
            if not path.exists() or path.read_text() != text:
                path.write_text(text)    # under the lock; a file cut short by a kill differs: rewritten
    return [str(p) for p in paths]


@functools.cache
def _load_all() -> None:
    """Build (first use) or load the extension of every kernel file for this CPU capability."""
    from torch.utils.cpp_extension import load

    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp", *ISA_FLAGS.get(capability, [])]
    load(name=f"infdiff_kernels_{capability.lower()}", sources=_write_units(), extra_cflags=flags,
         extra_ldflags=["-fopenmp"], extra_include_paths=[str(CSRC)], is_python_module=False)


@functools.cache
def load_extension(stem: str):
    """The operators of ``csrc/<stem>.cpp``, ``torch.ops.infdiff_<stem>`` (the file registers them with
    ``TORCH_LIBRARY``), building or loading the extension of all kernel files first. Cached: the kernels'
    callers look their operators up on every call."""
    if not (CSRC / f"{stem}.cpp").is_file():
        raise ValueError(f"no kernel file csrc/{stem}.cpp (known: {', '.join(f.stem for f in kernel_files())})")
    _load_all()
    return getattr(torch.ops, f"infdiff_{stem}")
