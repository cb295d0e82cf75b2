"""The one atomic writer (infdiff.io): complete-or-nothing files, fsync, and no second writer anywhere."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infdiff import io as io_mod
from infdiff.io import (atomic_write, load_checkpoint, save_checkpoint, save_png, savez, savez_compressed,
                        write_json, write_text)

REPO = Path(__file__).resolve().parents[1]


def _listing(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative, sorted): a leftover temporary shows up here."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------------
# complete or nothing
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_inside_block_keeps_old_file_and_leaves_no_temp(tmp_path, error):
    target = tmp_path / "result.bin"
    target.write_bytes(b"old, complete")
    with pytest.raises(error):
        with atomic_write(target) as f:
            f.write(b"new but only half")
            f.flush()
            raise error("killed mid-write")
    assert target.read_bytes() == b"old, complete"
    assert _listing(tmp_path) == ["result.bin"]


def test_file_appears_only_when_complete(tmp_path):
    new, old = tmp_path / "sub" / "new.txt", tmp_path / "old.txt"
    old.write_text("v1")
    with atomic_write(new, "w") as f, atomic_write(old, "w") as g:
        f.write("first half ")
        g.write("v2")
        f.flush()
        g.flush()
        # While the block runs, readers see no new file and the old content of an existing one.
        assert not new.exists() and old.read_text() == "v1"
        f.write("second half")
    assert new.read_text() == "first half second half" and old.read_text() == "v2"
    assert _listing(tmp_path) == ["old.txt", "sub/new.txt"]


def test_failed_publish_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    write_json(target, {"v": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert _listing(tmp_path) == ["m.json"]


def test_file_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.samestat(os.fstat(fd), os.stat(tmp_path))))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "fsync", fsync)
    monkeypatch.setattr(io_mod.os, "replace", replace)
    with atomic_write(tmp_path / "a.bin") as f:
        f.write(b"data")
        assert events == []  # nothing is synced or published while the caller still writes
    # ("fsync", False): the file itself; ("fsync", True): its directory, so the rename is durable too
    assert events == [("fsync", False), ("replace", "a.bin"), ("fsync", True)]


def test_new_files_get_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o644


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "a"):
            pass
    with pytest.raises(ValueError, match="text mode"):
        with atomic_write(tmp_path / "x", "wb", encoding="utf-8"):
            pass
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------------------------------------
# the helpers keep their formats
# ----------------------------------------------------------------------------------------------------


def test_write_json_format(tmp_path):
    target = tmp_path / "deep" / "dir" / "metric.json"
    write_json(target, {"b": 1, "a": [1.5, None, float("inf")], "c": {"z": np.float64(2.0), "nan": float("nan")},
                        "u": "∞"})
    # indent 2, sorted keys, NaN -> null, inf -> "inf", UTF-8 kept as is, trailing newline
    assert target.read_bytes() == ('{\n  "a": [\n    1.5,\n    null,\n    "inf"\n  ],\n  "b": 1,\n  "c": {\n'
                                   '    "nan": null,\n    "z": 2.0\n  },\n  "u": "∞"\n}\n').encode()


def test_write_text_writes_utf8_with_unix_newlines(tmp_path):
    write_text(tmp_path / "t.md", "a\nb ∞\n")
    assert (tmp_path / "t.md").read_bytes() == "a\nb ∞\n".encode()


def test_array_image_and_checkpoint_helpers_round_trip(tmp_path):
    import torch
    from PIL import Image

    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    savez(tmp_path / "a.npz", a=a, meta=np.array("{}"))
    savez_compressed(tmp_path / "c.npz", a=a)
    with np.load(tmp_path / "a.npz") as z, np.load(tmp_path / "c.npz") as zc:
        assert np.array_equal(z["a"], a) and str(z["meta"]) == "{}" and np.array_equal(zc["a"], a)
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    save_png(tmp_path / "g.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), img)
    ckpt = {"model": {"w": torch.ones(2)}, "ema": {"w": torch.zeros(2)}, "step": 3, "config_json": "{}"}
    save_checkpoint(tmp_path / "ck.pt", ckpt)
    back = load_checkpoint(tmp_path / "ck.pt")
    assert back["step"] == 3 and torch.equal(back["model"]["w"], torch.ones(2))
    assert _listing(tmp_path) == ["a.npz", "c.npz", "ck.pt", "g.png"]


def test_importing_the_writer_does_not_import_torch():
    # tables, the regression report and provenance write through infdiff.io: they must stay torch-free
    code = "import sys, infdiff.io, infdiff.report.tables, infdiff.regress; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------------
# every publishing site goes through the one writer
# ----------------------------------------------------------------------------------------------------

# A rename, move or hand-made temporary file outside infdiff/io.py is a second atomic writer.
_WRITER_PATTERN = re.compile(r"\bos\.(replace|rename)\b|\bshutil\.move\b|\bmkstemp\b|\bNamedTemporaryFile\b")


def test_no_module_other_than_io_renames_files():
    offenders = []
    for folder in ("infdiff", "baselines", "benchmarks", "workflow/scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "infdiff" / "io.py":
                continue
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if _WRITER_PATTERN.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert not offenders, "write files with infdiff.io.atomic_write (or its helpers) instead:\n" + "\n".join(offenders)


def _published(monkeypatch) -> list[Path]:
    """Record every target infdiff.io publishes."""
    seen, real = [], os.replace

    def replace(src, dst):
        seen.append(Path(dst))
        real(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", replace)
    return seen


def _write_samples(out):
    from infdiff.sample import save_samples

    save_samples(np.zeros((2, 3, 4, 4), np.uint8), [0, 1], out / "s" / "samples.npz", out / "s" / "grid.png")


def _write_table(out):
    from infdiff.report.tables import build_table, write_table

    write_table(build_table([{"table": "t", "method": "m", "value": 1.0, "source": "measured"}]), out / "t1")


def _write_pdf(out):
    from matplotlib.figure import Figure

    from infdiff.report.figures import save_pdf

    save_pdf(Figure(), out / "f.pdf")


def _write_prepared(out):
    from infdiff.data import prepare

    prepare({"kind": "shapes"}, "ref", 8, 2, out / "ref.npy")


def _write_neighbours(out):
    from infdiff.metrics.lpips_nn import save_neighbours

    s = np.zeros((1, 3, 4, 4), np.uint8)
    save_neighbours(out / "nn.npz", out / "nn.png", s, s,
                    {"indices": [[0]], "distances": [[0.0]], "distance": "l2", "prefilter": 1}, {})


def _write_reference_stats(out):
    from infdiff.metrics.fid import save_reference_stats

    save_reference_stats(out / "stats.npz", np.zeros((3, 2)), {"n": 3})


@pytest.mark.parametrize("writer", [_write_samples, _write_table, _write_pdf, _write_prepared, _write_neighbours,
                                    _write_reference_stats])
def test_library_writers_publish_through_io(tmp_path, monkeypatch, writer):
    published = _published(monkeypatch)
    writer(tmp_path)
    assert sorted(published) == sorted(p for p in tmp_path.rglob("*") if p.is_file())


def test_training_publishes_through_io(tmp_path, monkeypatch, tiny_cfg, tiny_data):
    from infdiff.train import train

    tiny_cfg["train"]["steps"] = 2
    published = _published(monkeypatch)
    train(tiny_cfg, tiny_data, tmp_path, progress=False)
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    # The one file not published atomically: the state folder's stats log, appended line by line while
    # training runs (a resume truncates it, through write_text, to the last checkpoint).
    (log,) = tmp_path.glob("state/*/stats.jsonl")
    assert set(published) == written - {log}
    assert {p.name for p in published} == {"latest.pt", "checkpoint.pt", "stats.jsonl", "config.json"}


def test_write_csv_round_trips_rows_in_the_first_rows_key_order(tmp_path):
    """The benchmarks' CSV writer: a header in the first row's key order, one line per row, RFC 4180 row ends;
    no rows is an error, not an empty file."""
    import csv

    from infdiff.io import write_csv

    path = tmp_path / "sub" / "rows.csv"
    rows = [{"run": "a", "ms": 1.5}, {"run": "b,c", "ms": 2}]
    write_csv(path, rows)
    assert path.read_bytes().startswith(b"run,ms\r\n")
    with open(path, newline="") as f:
        assert list(csv.DictReader(f)) == [{"run": "a", "ms": "1.5"}, {"run": "b,c", "ms": "2"}]
    with pytest.raises(ValueError, match="no rows"):
        write_csv(tmp_path / "empty.csv", [])
    assert not (tmp_path / "empty.csv").exists()
