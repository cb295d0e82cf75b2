"""Building the project's C++ CPU kernels (``infdiff/csrc/``) with ``torch.utils.cpp_extension``.

Each kernel file is its own extension, built on first use with g++ and ninja (~4 s on 2 cores: the files
include ATen and ``torch/library.h`` only, not ``torch/extension.h``, which took ~25 s) into
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and loaded from there afterwards. An
extension's name carries the CPU capability it was built for, so a home directory shared by AVX-512 and
AVX2 machines keeps one build of each. Users: :mod:`infdiff.sparse_cpp` (the sparse operator's gathers),
:mod:`infdiff.fused_norm` (the sampling path's modulated LayerNorm), :mod:`infdiff.group_norm` and
:mod:`infdiff.layer_norm` (the norms of training) and :mod:`infdiff.fft_pairs` (the sampling FFT).
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import torch

__all__ = ["CSRC", "ISA_FLAGS", "cpp_available", "load_extension"]

CSRC = Path(__file__).resolve().parent / "csrc"
# Instruction sets per torch CPU capability: the build targets what torch itself dispatches to here, not
# -march=native (a build must stay valid on every machine of the same capability).
ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma"],
             "AVX2": ["-mavx2", "-mfma"]}


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


@functools.cache
def load_extension(stem: str):
    """Build (first use) or load ``csrc/<stem>.cpp`` for this CPU capability; returns its operators,
    ``torch.ops.infdiff_<stem>`` (the file registers them with ``TORCH_LIBRARY``; no Python module)."""
    from torch.utils.cpp_extension import load

    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp", *ISA_FLAGS.get(capability, [])]
    load(name=f"infdiff_{stem}_{capability.lower()}", sources=[str(CSRC / f"{stem}.cpp")],
         extra_cflags=flags, extra_ldflags=["-fopenmp"], is_python_module=False)
    return getattr(torch.ops, f"infdiff_{stem}")
