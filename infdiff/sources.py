"""Raw image sources: a folder, a .zip or an LMDB of encoded images (docs/architecture.md, "The library").

A source is a dataset kind and a path:

- ``folder``: a folder of png/jpg/jpeg/webp files (searched recursively; names are relative POSIX
  paths) or a .zip of such files (names are member names), as CelebA-HQ and FFHQ are distributed;
- ``lmdb``: an LMDB environment as LSUN is distributed (``church_outdoor_train_lmdb/`` holding
  ``data.mdb``): keys are image ids, values the encoded webp/jpeg/png bytes; names are the keys decoded
  as UTF-8. It is opened read-only without a lock file or readahead, so a read-only mount works and
  random reads do not pull the whole file through the page cache.

Names are returned sorted, so the order (hence the splits of `infdiff.data`) does not depend on where
the data is mounted. `decode_chunk` decodes a list of names to uint8 ``[k, 3, R, R]`` (centre crop to a
square, PIL's antialiased LANCZOS resize) and reports, instead of raising, each file that cannot be
read or decoded with its error: `infdiff.data.prepare` skips those files and lists them.
"""
from __future__ import annotations

import io
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
SOURCE_KINDS = ("folder", "lmdb")


@dataclass(frozen=True)
class ImageSource:
    """Encoded images under ``path`` of dataset kind ``kind`` (``folder`` or ``lmdb``); picklable, so
    worker processes open the source themselves."""

    kind: str
    path: str

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"unknown image source kind {self.kind!r}; known kinds: {list(SOURCE_KINDS)}")
        if not Path(self.path).exists():
            what = ("an LMDB environment (a folder holding data.mdb, e.g. church_outdoor_train_lmdb/, or "
                    "the data.mdb file itself)" if self.kind == "lmdb" else
                    f"a folder of images ({'/'.join(IMAGE_EXTENSIONS)}, searched recursively) or a .zip of such images")
            raise FileNotFoundError(f"image data not found: {self.path}. Put the dataset there as {what}.")

    def names(self) -> list[str]:
        """The sorted image names (relative paths, zip members or LMDB keys); an empty source is an error."""
        names = _lmdb_keys(self.path) if self.kind == "lmdb" else _folder_names(Path(self.path))
        if not names:
            raise ValueError(f"no images found in {self.path} ({self.kind})")
        return names

    def where(self, name: str) -> str:
        """A name as error messages give it."""
        if self.kind == "folder" and Path(self.path).is_dir():
            return str(Path(self.path) / name)
        return f"{name} (in {self.path})"

    @contextmanager
    def reader(self) -> Iterator[Callable[[str], object]]:
        """Open the source; yields ``read(name)`` -> something ``PIL.Image.open`` accepts (path or bytes)."""
        p = Path(self.path)
        if self.kind == "folder" and p.is_dir():
            yield lambda name: str(p / name)
        elif self.kind == "folder":
            with zipfile.ZipFile(p) as zf:
                yield lambda name: io.BytesIO(zf.read(name))
        else:
            env = _open_lmdb(p)
            try:
                with env.begin(buffers=False) as txn:
                    def read(name: str):
                        value = txn.get(name.encode("utf-8"))
                        if value is None:
                            raise KeyError(f"key {name!r} is not in the LMDB")
                        return io.BytesIO(value)
                    yield read
            finally:
                env.close()


def _folder_names(p: Path) -> list[str]:
    """Sorted image names of a folder (recursive) or .zip; macOS metadata ("__MACOSX/", "._*") is skipped."""
    if p.is_dir():
        names = [q.relative_to(p).as_posix() for q in p.rglob("*") if q.is_file()]
    elif zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    else:
        raise ValueError(f"{p} is neither a folder nor a .zip archive of images (an LMDB needs kind: lmdb)")
    return sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)
                  and not n.startswith("__MACOSX/") and not n.rsplit("/", 1)[-1].startswith("._"))


def _open_lmdb(p: Path):
    import lmdb

    try:
        # readonly + lock=False: no lock.mdb is written (read-only mounts, several readers);
        # readahead=False: reads are random, the OS should not prefetch the whole file.
        return lmdb.open(str(p), readonly=True, lock=False, readahead=False, subdir=p.is_dir())
    except lmdb.Error as e:
        raise ValueError(f"{p} is not a readable LMDB environment ({type(e).__name__}: {e})") from e


def _lmdb_keys(path: str) -> list[str]:
    """The sorted keys of an LMDB, decoded as UTF-8 (LSUN's keys are ASCII image ids)."""
    env = _open_lmdb(Path(path))
    try:
        with env.begin() as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
    finally:
        env.close()
    names = []
    for k in keys:
        try:
            names.append(bytes(k).decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"{path}: LMDB key {bytes(k)[:40]!r} is not UTF-8 text; image ids are expected "
                             "(as in LSUN's lmdb files)") from None
    return sorted(names)


def decode(data, name: str, R: int) -> np.ndarray:
    """One encoded image (path or file-like) -> centre-cropped, resized uint8 [3, R, R]; ValueError naming it."""
    from PIL import Image

    try:
        with Image.open(data) as im:
            im.load()                      # decode now, so truncated/corrupt data fails here, by name
            im = im.convert("RGB")
    except Exception as e:                 # PIL raises OSError, SyntaxError, struct.error, ... for bad files
        raise ValueError(f"cannot read image {name}: {type(e).__name__}: {e}") from e
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != R:
        # LANCZOS on the PIL image widens its support when downscaling, i.e. it is antialiased.
        im = im.resize((R, R), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def decode_chunk(source: ImageSource, names: Sequence[str], R: int) -> tuple[np.ndarray, list[dict]]:
    """Decode ``names`` of ``source`` at resolution R (also a worker-process task).

    Returns (uint8 [k, 3, R, R] of the names that decode, in the given order; [{"name", "error"}] of
    the k' others, k + k' = len(names)). A file that cannot be read (a bad zip member, a missing key, no
    permission) or decoded is reported, never raised.
    """
    out = np.empty((len(names), 3, R, R), dtype=np.uint8)
    errors, k = [], 0
    with source.reader() as read:
        for name in names:
            try:
                out[k] = decode(read(name), source.where(name), R)
                k += 1
            except Exception as e:  # noqa: BLE001 -- every failure of one file is that file's report line
                msg = str(e) if isinstance(e, ValueError) and str(e).startswith("cannot read image") else \
                    f"cannot read image {source.where(name)}: {type(e).__name__}: {e}"
                errors.append({"name": name, "error": msg})
    return out[:k], errors

