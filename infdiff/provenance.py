"""Provenance records, canonical JSON and config hashing (docs/architecture.md, "Results and provenance").

Every metric JSON carries where its numbers came from: the git commit and dirty flag of the checkout
holding this package, a sha256 of the configuration, package versions, device, seeds, wall time, host
and a UTC timestamp. Nothing here may make a run fail: missing git, a non-git install or an exotic
config value degrade to "unknown"/None/str, never to an exception.

Result files are written by :mod:`infdiff.io` (the one atomic writer), whose JSON formatting uses
:func:`jsonable` from here.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from infdiff import allocator

__all__ = [
    "provenance",
    "config_sha256",
    "canonical_json",
    "jsonable",
    "summarise_seeds",
    "package_versions",
]

# The directory of the `infdiff` package: git is asked about the checkout that contains *this* code,
# not about the current working directory (a Snakemake job may run anywhere).
PACKAGE_DIR = Path(__file__).resolve().parent
# Distributions whose versions are recorded; the optional ones may be absent (None then).
_VERSIONED = (
    "torch", "numpy", "snakemake", "pandas", "scipy", "torchvision", "clean-fid", "open_clip_torch", "lpips",
)  # fmt: skip
_GIT_TIMEOUT_S = 10


# ----------------------------------------------------------------------------------------------------
# Canonical JSON and hashing
# ----------------------------------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """Recursively convert obj into plain JSON types (dict with str keys, list, str, int, float, bool, None).

    numpy scalars/arrays and torch tensors are converted by value (``.item()`` / ``.tolist()``) so that
    ``np.int64(3)`` hashes like ``3``; anything else unknown becomes ``str(obj)``.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        # NaN/inf are not JSON: NaN means "missing" (null), +-inf keeps its meaning as a string, so the
        # files stay loadable by strict parsers (jq, JavaScript).
        if math.isnan(obj):
            return None
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        # Sets have no order; sort the converted items by their JSON text to make the output canonical.
        return sorted((jsonable(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    # numpy / torch, detected by duck typing so that neither has to be imported here.
    if hasattr(obj, "tolist") and callable(obj.tolist):
        try:
            return jsonable(obj.tolist())
        except Exception:  # noqa: BLE001 - provenance must never raise
            pass
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return jsonable(obj.item())
        except Exception:  # noqa: BLE001
            pass
    return str(obj)


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys (the text that :func:`config_sha256` hashes)."""
    return json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def config_sha256(config: Any) -> str:
    """sha256 hex digest of the canonical JSON of ``config``: independent of key order, sensitive to values."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------------
# Environment facts
# ----------------------------------------------------------------------------------------------------


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess | None:
    """Run a read-only git command; None when git is missing, hangs or fails to start."""
    try:
        return subprocess.run(
            # --no-optional-locks: `git status` must not take index.lock, since parallel jobs call this.
            ["git", "--no-optional-locks", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            # Never block on a credential or pager prompt.
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat"},
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _git_info(path: str | os.PathLike = PACKAGE_DIR) -> dict:
    """Commit and dirty flag of the git checkout containing ``path``.

    Returns ``{"commit": sha | "unknown", "dirty": bool | None}``; never raises. Untracked (not ignored)
    files count as dirty, since new modules change behaviour as much as edits do. A ``path`` that git
    ignores (e.g. a site-packages inside a ``.venv`` in the repo) is not this checkout's code: "unknown".
    """
    unknown = {"commit": "unknown", "dirty": None}
    path = Path(path)
    if not path.is_dir():
        return unknown
    inside = _git(["rev-parse", "--is-inside-work-tree"], path)
    if inside is None or inside.returncode != 0 or inside.stdout.strip() != "true":
        return unknown
    ignored = _git(["check-ignore", "-q", "."], path)
    if ignored is not None and ignored.returncode == 0:
        return unknown
    head = _git(["rev-parse", "--verify", "HEAD"], path)
    # A fresh repository without commits has no HEAD; its files can still be dirty.
    ok = head is not None and head.returncode == 0 and head.stdout.strip()
    commit = head.stdout.strip() if ok else "unknown"
    status = _git(["status", "--porcelain"], path)
    dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict:
    """Versions of python and key packages (None for those not installed). Reads metadata, imports nothing."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except Exception:  # noqa: BLE001 - PackageNotFoundError or broken metadata: record None
            out[name] = None
    # A torch imported from a source tree has no distribution metadata; fall back to the module if loaded.
    if out.get("torch") is None and "torch" in sys.modules:
        out["torch"] = str(getattr(sys.modules["torch"], "__version__", None))
    return out


def _device_info(device: Any) -> dict:
    """Device string and, for CUDA devices, the GPU name (only if torch is already imported)."""
    info: dict[str, Any] = {"device": None if device is None else str(device)}
    torch = sys.modules.get("torch")
    if torch is not None and device is not None and str(device).startswith("cuda"):
        try:
            info["device_name"] = torch.cuda.get_device_name(torch.device(str(device)))
            info["cuda"] = torch.version.cuda
        except Exception:  # noqa: BLE001
            pass
    return info


# Provenance key -> (module, its function naming what ran in this process): read only where the module was
# imported by the job, so provenance itself imports nothing.
_KERNEL_RECORDS = {
    "sparse_backends": ("infdiff.sparse", "backends_used"),
    "norm_kernels": ("infdiff.fused_norm", "kernels_used"),
    "group_norm_kernels": ("infdiff.group_norm", "kernels_used"),
    "layer_norm_kernels": ("infdiff.layer_norm", "kernels_used"),
    "point_mlp_kernels": ("infdiff.point_mlp", "kernels_used"),
    "fft_kernels": ("infdiff.fft_pairs", "kernels_used"),
    "swd_kernels": ("infdiff.metrics.swd", "kernels_used"),
}


def _cpu_info() -> dict:
    """The CPU kind a timing or a bf16 result depends on: model name, torch's vector capability (AVX512,
    AVX2, ...) and the backends the sparse operators ran in this process (``sparse_backends``; "auto" picks
    them by machine and operator size, :func:`infdiff.sparse.gather_backend`) and the kernels of the
    no-gradient modulated LayerNorms (``norm_kernels``, :mod:`infdiff.fused_norm`), the U-Nets' group norms
    (``group_norm_kernels``, :mod:`infdiff.group_norm`), the modulated LayerNorms of training
    (``layer_norm_kernels``, :mod:`infdiff.layer_norm`), the point MLPs of training (``point_mlp_kernels``,
    :mod:`infdiff.point_mlp`), the FFT convolution's path (``fft_kernels``,
    :mod:`infdiff.fft_pairs`) and the SWD bootstrap's passes (``swd_kernels``, :mod:`infdiff.metrics.swd`:
    "c" or "numpy"), present only where they ran. Only what is cheap to read: nothing is imported (torch
    alone takes seconds, its compiler more)."""
    info: dict[str, Any] = {"cpu_model": None}
    cpuinfo = Path("/proc/cpuinfo")
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    torch = sys.modules.get("torch")
    try:
        if torch is not None:
            info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        for key, (module, getter) in _KERNEL_RECORDS.items():
            mod = sys.modules.get(module)
            used = getattr(mod, getter)() if mod is not None else None
            if used:
                info[key] = used
    except Exception:  # noqa: BLE001 - provenance never raises
        pass
    return info


def summarise_seeds(seeds: Any) -> Any:
    """Compact description of the seeds used.

    ``None``/int/str/dict are returned as given (converted to JSON types); a sequence of ints becomes
    ``{"first", "last", "count", "contiguous", "sha256"}`` so that 50k seeds do not bloat every JSON while
    the exact list stays identifiable (sha256 of its canonical JSON).
    """
    if seeds is None or isinstance(seeds, (bool, int, str, dict)):
        return jsonable(seeds)
    try:
        # Any iterable of ints: list, tuple, range, numpy array, torch tensor.
        values = [int(s) for s in (seeds.tolist() if hasattr(seeds, "tolist") else seeds)]
    except (TypeError, ValueError):
        return jsonable(seeds)
    if not values:
        return {"first": None, "last": None, "count": 0, "contiguous": True, "sha256": config_sha256([])}
    contiguous = all(b - a == 1 for a, b in zip(values, values[1:]))
    return {
        "first": values[0],
        "last": values[-1],
        "count": len(values),
        "contiguous": contiguous,
        "sha256": config_sha256(values),
    }


def provenance(config: Any = None, seeds: Any = None, wall_time: float | None = None, device: Any = None,
               precision: str | None = None) -> dict:
    """Provenance record of a result. Never raises.

    Returns a dict with keys: git_commit, git_dirty, config_sha256, versions (dict), device (+ device_name
    and cuda for CUDA devices), cpu_model, cpu_capability, sparse_backends, norm_kernels and fft_kernels (the CPU kind
    and the kernels that ran, see :func:`_cpu_info`), malloc (the C heap's settings,
    :func:`infdiff.allocator.state`), precision (the network arithmetic
    actually used, e.g. "bf16"; None when no network ran), seeds (see :func:`summarise_seeds`), wall_time_s, hostname, platform,
    timestamp_utc (ISO 8601).
    """
    git = _git_info(PACKAGE_DIR)
    try:
        sha = config_sha256(config)
    except Exception:  # noqa: BLE001 - e.g. a cyclic config; record that it could not be hashed
        sha = "unknown"
    out = {
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "config_sha256": sha,
        "versions": package_versions(),
        **_device_info(device),
        **_cpu_info(),
        "malloc": allocator.state(),
        "precision": precision,
        "seeds": summarise_seeds(seeds),
        "wall_time_s": None if wall_time is None else float(wall_time),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return out
