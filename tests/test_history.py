"""Metric history: concurrent appends, corrupt-line errors, and the history plot."""

import json
import multiprocessing as mp

import pytest

from infdiff.history import HISTORY_FIELDS, append_history, commit_label, history_record, read_history
from infdiff.report.history_plot import _frame, plot_history


def _metric_record(value=1.5, commit="a" * 40, dirty=False, run="infdiff", res=32, metric="swd", **extra):
    """A metric JSON as infdiff.evaluate.evaluate_files writes it (the keys history_record reads)."""
    return {
        "metric": metric, "value": value, "ci_low": value - 0.1, "ci_high": value + 0.2, "n_boot": 10,
        "kind": "samples", "run": run, "method": "infdiff", "dataset": "shapes", "resolution": res,
        "steps": 3, "n_samples": 8, "n_ref": 8, "seed_range": [0, 7], "settings": {},
        "provenance": {"git_commit": commit, "git_dirty": dirty, "config_sha256": "c" * 64,
                       "versions": {"torch": "2.14.1"}, "device": "cpu", "timestamp_utc": "2026-01-01T00:00:00+00:00",
                       "wall_time_s": 1.0, "hostname": "h"},
        **extra,
    }  # fmt: skip


def test_history_record_is_flat():
    rec = history_record(_metric_record(value=2.0, dirty=True))
    assert tuple(rec) == HISTORY_FIELDS
    assert rec["value"] == 2.0 and rec["ci_low"] == pytest.approx(1.9) and rec["ci_high"] == pytest.approx(2.2)
    assert (rec["git_commit"], rec["git_dirty"], rec["config_sha256"]) == ("a" * 40, True, "c" * 64)
    assert rec["time"] == "2026-01-01T00:00:00+00:00" and rec["versions"] == {"torch": "2.14.1"}
    assert (rec["run"], rec["kind"], rec["dataset"], rec["resolution"], rec["steps"], rec["n_samples"]) == (
        "infdiff", "samples", "shapes", 32, 3, 8)
    # an old record without provenance still gives a full (None-filled) line
    assert history_record({"metric": "swd", "value": 1.0})["git_commit"] is None


def test_commit_label():
    assert commit_label("abcdef0123", False) == "abcdef0123"
    assert commit_label("abcdef0123", True, short=7) == "abcdef0+dirty"
    assert commit_label(None, None) == "unknown"


def _append_many(path, tag, n, start):
    start.wait()  # both writers begin together, so their appends really overlap
    for i in range(n):
        # ~20 kB lines: larger than Python's write buffer, so one line may take several write() calls
        append_history(path, {"tag": tag, "i": i, "pad": "x" * 20000})


def test_parallel_appends_give_whole_lines(tmp_path):
    path = tmp_path / "sub" / "history.jsonl"  # the parent folder does not exist yet
    ctx = mp.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(path, tag, 50, start)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 100
    recs = read_history(path)
    assert sorted((r["tag"], r["i"]) for r in recs) == sorted((t, i) for t in "ab" for i in range(50))
    # each writer's lines stay in its own order
    for tag in "ab":
        assert [r["i"] for r in recs if r["tag"] == tag] == list(range(50))


def test_append_waits_for_the_lock(tmp_path):
    """An append must block while another process holds the file's lock (what keeps parallel lines whole)."""
    import fcntl
    import time

    path = tmp_path / "history.jsonl"
    path.write_text("")
    ctx = mp.get_context("fork")
    with open(path, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        p = ctx.Process(target=append_history, args=(path, {"metric": "swd", "value": 1.0}))
        p.start()
        time.sleep(0.5)
        blocked = path.read_text() == "" and p.is_alive()
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    p.join(30)
    assert blocked and p.exitcode == 0
    assert read_history(path) == [{"metric": "swd", "value": 1.0}]


def test_corrupt_line_is_named(tmp_path):
    path = tmp_path / "history.jsonl"
    append_history(path, {"metric": "swd", "value": 1.0})
    with open(path, "a") as f:
        f.write("\n")  # blank lines are allowed
        f.write('{"metric": "swd", "val')  # a writer killed mid-line: no newline
    # the next append starts a fresh line, so only the torn line (3) is corrupt
    append_history(path, {"metric": "swd", "value": 2.0})
    assert path.read_text().splitlines()[3] == '{"metric":"swd","value":2.0}'
    with pytest.raises(ValueError, match=r"line 3 "):
        read_history(path)

    other = tmp_path / "list.jsonl"
    other.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"line 2 is a JSON list"):
        read_history(other)


def test_nonfinite_values_stay_strict_json(tmp_path):
    path = tmp_path / "h.jsonl"
    append_history(path, {"metric": "psnr", "value": float("inf"), "ci_low": float("nan")})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict parsers (jq) can read it
    assert read_history(path) == [{"ci_low": None, "metric": "psnr", "value": "inf"}]


def _history(path, entries):
    for commit, dirty, value, run, res, metric in entries:
        append_history(path, history_record(_metric_record(value, commit, dirty, run, res, metric)))


def test_history_frame_keeps_latest_per_commit(tmp_path):
    path = tmp_path / "h.jsonl"
    c1, c2 = "1" * 40, "2" * 40
    _history(path, [(c2, False, 5.0, "infdiff", 32, "swd"), (c1, False, 1.0, "infdiff", 32, "swd"),
                    (c2, False, 6.0, "infdiff", 32, "swd"), (c2, True, 7.0, "infdiff", 32, "swd")])
    df = _frame(read_history(path))
    # commits in order of first appearance (not sorted), the dirty tree separately, latest value kept
    assert list(df["commit"]) == ["1111111", "2222222", "2222222+dirty"]
    assert list(df["value"]) == [1.0, 6.0, 7.0]


def test_plot_history_writes_pdf(tmp_path):
    path = tmp_path / "h.jsonl"
    c1, c2 = "1" * 40, "2" * 40
    _history(path, [
        (c1, False, 10.0, "infdiff", 16, "swd"), (c1, False, 12.0, "mlp_pixel", 16, "swd"),
        (c1, False, 25.0, "infdiff", 16, "psnr"), (c2, True, 11.0, "infdiff", 16, "swd"),
        (c2, True, 9.0, "infdiff", 32, "swd"), (c2, True, 26.0, "infdiff", 16, "psnr"),
    ])
    # a record without an interval, and one with an infinite value (not plottable, skipped)
    append_history(path, history_record(_metric_record(3.0, c2, run="_noise", ci_low=None, ci_high=None)))
    append_history(path, history_record(_metric_record(float("inf"), c2, metric="psnr", res=32)))
    out = tmp_path / "figs" / "history.pdf"
    plot_history(path, out)
    data = out.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 1000
    assert not [p for p in out.parent.iterdir() if p.name != "history.pdf"]  # no temp file left


def test_plot_history_empty_or_absent(tmp_path):
    with pytest.raises(ValueError, match="no metric history"):
        plot_history(tmp_path / "absent.jsonl", tmp_path / "x.pdf")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_history(empty, tmp_path / "x.pdf")
    only_null = tmp_path / "null.jsonl"
    only_null.write_text(json.dumps({"metric": "swd", "value": None}) + "\n")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_history(only_null, tmp_path / "x.pdf")
    assert not (tmp_path / "x.pdf").exists()
