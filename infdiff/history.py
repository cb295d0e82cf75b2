"""The metric history: one JSON line per metric record, appended by every evaluate job (docs/architecture.md, "Results and provenance").

The per-run metric JSONs are overwritten whenever a result is recomputed; the history keeps every value
that was ever measured, with the commit (and dirty flag) and config hash it came from, so that a slow
drift across commits can be seen (:func:`infdiff.report.history_plot.plot_history` draws it) and not
only the single step that ``regress`` compares.

Parallel Snakemake jobs append to the same file at once, so each append takes an exclusive
``fcntl.flock`` on the file, writes one complete line and fsyncs before releasing the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from infdiff.provenance import canonical_json

__all__ = ["HISTORY_FIELDS", "history_record", "append_history", "read_history", "commit_label"]

# The keys of a history line, in the order history_record builds them.
HISTORY_FIELDS = (
    "metric", "value", "ci_low", "ci_high", "run", "kind", "dataset", "resolution", "steps", "n_samples",
    "config_sha256", "git_commit", "git_dirty", "versions", "device", "time",
)  # fmt: skip


def commit_label(git_commit: str | None, git_dirty: bool | None, short: int | None = None) -> str:
    """``"<sha>"``, or ``"<sha>+dirty"`` when the tree had uncommitted changes; ``short`` truncates the sha.

    A dirty tree is marked because its numbers cannot be reproduced from the commit alone.
    """
    sha = str(git_commit or "unknown")
    if short is not None and sha != "unknown":
        sha = sha[:short]
    return f"{sha}+dirty" if git_dirty else sha


def history_record(rec: dict) -> dict:
    """Flat history line from a metric record (the dict :func:`infdiff.evaluate.evaluate_files` writes).

    Returns a dict with the keys :data:`HISTORY_FIELDS`: the metric's value and interval, what was scored
    (run, kind, dataset, resolution, steps, n_samples) and where it came from (config sha256, git commit
    and dirty flag, package versions, device, UTC timestamp ``time``). Missing entries become None.
    """
    prov = rec.get("provenance") or {}
    return {
        "metric": rec.get("metric"), "value": rec.get("value"),
        "ci_low": rec.get("ci_low"), "ci_high": rec.get("ci_high"),
        "run": rec.get("run"), "kind": rec.get("kind", "samples"), "dataset": rec.get("dataset"),
        "resolution": rec.get("resolution"), "steps": rec.get("steps"), "n_samples": rec.get("n_samples"),
        "config_sha256": prov.get("config_sha256"), "git_commit": prov.get("git_commit"),
        "git_dirty": prov.get("git_dirty"), "versions": prov.get("versions"), "device": prov.get("device"),
        "time": prov.get("timestamp_utc"),
    }  # fmt: skip


def append_history(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path`` (created with its parent folders if absent).

    The exclusive ``flock`` makes concurrent appends from parallel jobs (also on NFS, where Linux maps
    flock onto POSIX locks) land as whole lines; the fsync makes a line durable before the job reports
    success. The text is canonical JSON (sorted keys; NaN as null, inf as "inf"), which never contains a
    raw newline, so one record is exactly one line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (canonical_json(record) + "\n").encode("utf-8")
    # "a+b": O_APPEND puts every write at the end whatever the file position; "+" lets us read the last byte.
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                # A writer killed mid-line left no newline: start on a fresh line so that only the torn
                # line is corrupt (read_history names it), not this one as well.
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_history(path: str | os.PathLike) -> list[dict]:
    """All records of a history file, in the order they were appended; blank lines are skipped.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a line is not a JSON object; the message names the file and the line number (1-based)
            so the line can be removed by hand.
    """
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {lineno} is not valid JSON ({e.msg}); remove or repair that "
                                 "line (a job killed while appending can leave a torn line)") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: line {lineno} is a JSON {type(rec).__name__}, not a record (object)")
            records.append(rec)
    return records
