"""Device choice, checkpoint load/save and the one atomic file writer (docs/architecture.md, "The library", "Style and safety").

Every file the library, the benchmarks and the workflow scripts publish goes through
:func:`atomic_write`: the bytes go to a temporary file beside the target, are flushed and fsynced, and
only then ``os.replace`` puts the file under its final name (followed by a best-effort fsync of the
directory, so the rename itself survives a power cut). A reader, Snakemake or a resumed run therefore
sees either the old file or the complete new one, never a half-written one, and a failure (full disk,
an exception in the caller, KeyboardInterrupt, SIGTERM turned into an exception) leaves no temporary
behind. ``tests/test_io.py`` checks that no other module calls ``os.replace``, so a second writer
with weaker guarantees cannot creep back in.

:func:`atomic_path` is the same guarantee for writers that need a file *name* rather than an open file
(``numpy.lib.format.open_memmap`` creating a prepared data split that is then filled chunk by chunk).

The helpers on top (:func:`write_text`, :func:`write_json`, :func:`savez`, :func:`savez_compressed`,
:func:`save_png`, :func:`save_checkpoint`) only choose the serialiser; PDFs go through
:func:`infdiff.report.figures.save_pdf`, which owns the PDF settings and calls :func:`atomic_write`.

Heavy dependencies (torch, numpy, PIL, the methods) are imported inside the functions that need them:
tables, the regression report and provenance write files through this module, and must not pay for
(or depend on) importing torch.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator

from infdiff.provenance import jsonable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from infdiff.methods.base import Method

__all__ = [
    "atomic_write", "atomic_path", "write_text", "write_csv", "write_json", "savez", "savez_compressed", "save_png",
    "save_checkpoint", "load_checkpoint", "load_method", "pick_device", "device_name",
]  # fmt: skip

# Keys every infdiff checkpoint has; a file without them is some other .pt and refused by name.
_CHECKPOINT_KEYS = ("model", "ema", "step", "config_json")


# ----------------------------------------------------------------------------------------------------
# The atomic writer
# ----------------------------------------------------------------------------------------------------


def _open_temp(path: Path) -> tuple[int, Path]:
    """Create a fresh temporary file beside ``path``; returns (fd, temp path).

    The name is hidden (leading dot) and random, so parallel writers of the same target never share a
    temporary and output globs (``*.npz``) never match one. ``os.open(..., 0o666)`` lets the umask set
    the permissions a plain ``open()`` would give (``tempfile.mkstemp`` would make every result 0600).
    """
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # a leftover of a killed process with the same pid: draw again
            continue


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable (unsupported on some platforms)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit, publish it as ``path`` atomically.

    Args:
        path: the target; its parent folders are created.
        mode: ``"wb"`` (bytes) or ``"w"`` (text; ``encoding`` defaults to UTF-8).
        encoding, newline: as for :func:`open`, text mode only.

    Yields the open file. After the ``with`` block: flush, ``os.fsync`` of the file (otherwise a crash
    can leave a renamed but empty file), ``os.replace`` onto ``path``, fsync of the directory. Any
    exception inside the block or while publishing (including KeyboardInterrupt) removes the temporary
    and leaves an existing ``path`` untouched. The caller must not close the file itself.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    if mode == "wb" and (encoding is not None or newline is not None):
        raise ValueError("encoding and newline apply to text mode ('w') only")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(path)
    try:
        text = {"encoding": encoding or "utf-8", "newline": newline} if mode == "w" else {}
        try:
            f = os.fdopen(fd, mode, **text)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave temp files behind, also on KeyboardInterrupt; the old target stays as it was.
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield the name of a fresh empty temporary file beside ``path``; on a clean exit, publish it as ``path``.

    For writers that open the file themselves (``open_memmap``, which maps it, or ``open`` to fill it
    in place): they must have closed every file and mapping when the ``with`` block ends. Then, as :func:`atomic_write`: fsync of the
    file, ``os.replace`` onto ``path``, fsync of the directory; any exception removes the temporary
    and leaves an existing ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(path)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 with ``\\n`` line ends to ``path`` atomically (parents created)."""
    with atomic_write(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write ``rows`` (dicts with the same keys, the first one's order) as a CSV with a header, atomically.

    ``newline=""``: the csv module writes its own ``\r\n`` row ends (RFC 4180), as it asks of every file.
    """
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with atomic_write(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (indent 2, sorted keys, trailing newline) atomically to ``path``.

    Values are first converted to plain JSON types (:func:`infdiff.provenance.jsonable`: numpy/torch
    scalars by value, NaN as null, +-inf as strings), so strict parsers can read every result file.
    """
    text = json.dumps(jsonable(obj), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    write_text(path, text + "\n")


def savez(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez(path, **arrays)`` atomically (uncompressed: image sets that are read often)."""
    import numpy as np

    with atomic_write(path) as f:
        np.savez(f, **arrays)


def savez_compressed(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed(path, **arrays)`` atomically."""
    import numpy as np

    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """uint8 picture ``[H, W, 3]`` (or ``[H, W]`` grey) as a PNG at ``path``, atomically."""
    from PIL import Image

    with atomic_write(path) as f:
        Image.fromarray(image).save(f, format="PNG")


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> None:
    """``torch.save(ckpt, path)`` atomically: a kill mid-save never leaves a truncated checkpoint.

    ``ckpt`` should hold only tensors and plain types, so that :func:`load_checkpoint` can read it
    with ``weights_only=True`` (docs/architecture.md, "Style and safety").
    """
    import torch

    with atomic_write(path) as f:
        torch.save(ckpt, f)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint safely (``weights_only=True``); a missing or corrupt file is a clear error."""
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train the run first "
                                "(snakemake ... or python -m infdiff train)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, wrong format, pickled objects ...
        raise RuntimeError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}); "
                           "delete it and train again") from e
    for key in _CHECKPOINT_KEYS:
        if key not in ckpt:
            raise RuntimeError(f"checkpoint {path} is not an infdiff checkpoint (missing '{key}')")
    return ckpt


WEIGHTS = ("last", "best")


def checkpoint_weights(ckpt: dict, weights: str = "last", where: str = "") -> tuple[dict, dict]:
    """(EMA state dict, what it is) of a training checkpoint: the last EMA weights, or the best ones by
    validation loss (kept when the run validated). "What it is": {"weights", "step", "trained_steps",
    "val_loss"} — what the tables print beside a score."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    info = {"weights": weights, "trained_steps": int(ckpt["step"])}
    if weights == "last":
        return ckpt["ema"], {**info, "step": int(ckpt["step"]), "val_loss": None}
    if "best" not in ckpt:
        raise ValueError(f"checkpoint {where} has no best weights: its run trained without validation. Set "
                         "train.validation.every > 0 for the run (it retrains), or sample.checkpoint: last")
    best = ckpt["best"]
    return best["ema"], {**info, "step": int(best["step"]), "val_loss": float(best["val_loss"])}


def load_method(path: str | os.PathLike, device: torch.device | str = "cpu",
                ema: bool = True, latent: str | os.PathLike | None = None,
                weights: str = "last") -> tuple[Method, dict]:
    """Rebuild the method of a checkpoint (EMA weights by default) in eval mode, with its config.

    ``weights``: "last" or "best" (the EMA weights of the lowest validation loss; ``ema`` must be True).
    ``latent``: the stage-2 checkpoint of an autoencoder run (``train_latent``), attached so that the
    method samples unconditionally; it must have been trained from this very stage-1 checkpoint.
    """
    # Imported here: the methods pull in torch and the networks, which the writers above must not need.
    from infdiff.methods import build_method

    ckpt = load_checkpoint(path)
    cfg = json.loads(ckpt["config_json"])
    method = build_method(cfg)
    if not ema and weights != "last":
        raise ValueError("the best weights are EMA weights: load them with ema=True")
    method.load_state_dict(checkpoint_weights(ckpt, weights, str(path))[0] if ema else ckpt["model"])
    method = method.to(device).eval()
    if latent is not None:
        from infdiff.latent import latent_from_checkpoint

        method.attach_latent(latent_from_checkpoint(load_checkpoint(latent), ckpt, where=str(latent), weights=weights))
    return method, cfg


# ----------------------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------------------


# Device nodes of a GPU that torch.cuda can use: NVIDIA's, and AMD's (ROCm builds of torch).
GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd")


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, without importing torch on a machine with no GPU device node: the
    workflow asks this while it builds the DAG, and a CPU-only machine then saves torch's import (~2 s per
    snakemake call)."""
    import glob

    if not any(glob.glob(pattern) for pattern in GPU_DEVICE_NODES):
        return False
    import torch

    return torch.cuda.is_available()


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False; "
                           "use device: auto or cpu")
    return torch.device(name)


def device_name(device: str = "auto") -> str:
    """Human-readable device string for provenance (GPU model name on CUDA)."""
    import torch

    dev = pick_device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return "cpu"
