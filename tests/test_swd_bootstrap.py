"""Tests of the bootstrap interval of the SWD (infdiff.metrics.swd.swd_bootstrap) and its metric JSON.

The replicate engine (per-channel partial projections, rescaled per resample) is checked against a
direct recomputation of the statistic on resampled descriptors; the interval against the properties a
reader relies on: it holds the estimate, narrows with more samples, separates different distributions
and not two draws of the same one.
"""

import importlib
import json
import math

import numpy as np
import pytest

from infdiff.config import config_defaults
from infdiff.evaluate import compute_metric, evaluate_files
from infdiff.metrics.swd import normalise_descriptors, sliced_wasserstein, swd, swd_bootstrap
from infdiff.report.rows import metric_row
from tests.test_swd import _blobs

# Small settings so that the whole file runs in seconds.
FAST = dict(patches_per_image=32, directions=128)
N_BOOT = 100
mod = importlib.import_module("infdiff.metrics.swd")


@pytest.fixture(scope="module")
def sets():
    """Disjoint draws of the blob distribution at 32 px, and a clearly different one (larger blobs)."""
    return {
        "a": _blobs(256, 32, seed=1),
        "a2": _blobs(256, 32, seed=3),
        "ref": _blobs(256, 32, seed=2),
        "bigger": _blobs(256, 32, seed=4, size=(0.1, 0.25)),
    }


@pytest.fixture(scope="module")
def boot(sets):
    """swd_bootstrap of each set against the fixed reference."""
    return {k: swd_bootstrap(sets[k], sets["ref"], n_boot=N_BOOT, **FAST) for k in ("a", "a2", "bigger")}


def _overlap(x: dict, y: dict) -> bool:
    return x["ci_low"] <= y["ci_high"] and y["ci_low"] <= x["ci_high"]


# ---------------------------------------------------------------------------------------------------
# Replicate engine
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(params=["c", "numpy"])
def engine(request, monkeypatch):
    """The bootstrap's per-replicate passes in C (csrc/swd_bootstrap.c; skipped without a C compiler) or numpy."""
    if request.param == "numpy":
        monkeypatch.setattr(mod, "_c_kernel", lambda: None)
    elif mod._c_kernel() is None:
        pytest.skip("no C compiler")
    return request.param


@pytest.mark.parametrize("m_images", [24, 17])  # equal and unequal set sizes (quantile pairing)
def test_replicates_equal_direct_recomputation(m_images, engine):
    a, b = _blobs(24, 32, seed=5), _blobs(m_images, 32, seed=6)
    xa, xb, res_list = mod._prepare(a, b, 16, 8, 7)
    rng = np.random.default_rng(0)
    index = np.stack([np.arange(24), rng.integers(0, 24, 24), rng.integers(0, 24, 24)])  # identity first
    for res, da, db, dirs in mod._levels(xa, xb, res_list, 0, 8, 7, 64):
        got = mod._bootstrap_level(da, db, dirs, index)
        for r, ix in enumerate(index):
            # The statistic on the resample, from scratch: whole images' patch blocks, normalised again
            # as a set of their own (normalising normalised descriptors == normalising raw ones).
            rows = (ix[:, None] * 8 + np.arange(8)).ravel()
            want = sliced_wasserstein(normalise_descriptors(da[rows]), db, dirs) * 1e3
            assert got[r] == pytest.approx(want, rel=2e-5)
        # The identity resample is the point estimate of the level.
        assert got[0] == pytest.approx(sliced_wasserstein(da, db, dirs) * 1e3, rel=2e-5)


@pytest.mark.parametrize("m", [32, 20])  # equal and unequal set sizes
def test_c_and_numpy_passes_give_the_same_replicates(sets, monkeypatch, m):
    """Same float32 roundings before each sum; the C passes sum in double, numpy in float32 pairs: the
    replicates agree to float32 summation error, and provenance names the passes that ran."""
    if mod._c_kernel() is None:
        pytest.skip("no C compiler")
    a, ref = sets["a"][:32], sets["ref"][:m]
    mod._USED.clear()
    c = swd_bootstrap(a, ref, n_boot=8, workers=1, **FAST)["replicates"]
    assert mod.kernels_used() == ["c"]
    monkeypatch.setattr(mod, "_c_kernel", lambda: None)
    mod._USED.clear()
    numpy = swd_bootstrap(a, ref, n_boot=8, workers=1, **FAST)["replicates"]
    assert mod.kernels_used() == ["numpy"]
    np.testing.assert_allclose(c, numpy, rtol=1e-6)
    assert not np.array_equal(c, swd_bootstrap(sets["a2"][:32], ref, n_boot=8, workers=1, **FAST)["replicates"])


def test_direction_chunking_and_workers_do_not_change_replicates(sets, monkeypatch):
    a, ref = sets["a"][:32], sets["ref"][:32]
    base = swd_bootstrap(a, ref, n_boot=8, workers=1, **FAST)["replicates"]
    two = swd_bootstrap(a, ref, n_boot=8, workers=2, **FAST)["replicates"]
    np.testing.assert_array_equal(two, base)
    monkeypatch.setattr(mod, "_TASK_BYTES", 1)  # one direction per task: other float summation order only
    np.testing.assert_allclose(swd_bootstrap(a, ref, n_boot=8, workers=2, **FAST)["replicates"], base, rtol=1e-6)
    monkeypatch.setattr(mod, "_BOOT_BYTES", 1)  # and one direction per chunk of partial projections
    np.testing.assert_allclose(swd_bootstrap(a, ref, n_boot=8, workers=1, **FAST)["replicates"], base, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# The interval
# ---------------------------------------------------------------------------------------------------


def test_point_estimate_is_exactly_swd(sets, boot):
    ref = swd(sets["a"], sets["ref"], **FAST)
    assert boot["a"]["avg"] == ref["avg"] and boot["a"]["levels"] == ref["levels"]
    assert boot["a"]["n_boot"] == N_BOOT and boot["a"]["replicates"].shape == (N_BOOT,)


def test_interval_contains_estimate_and_is_the_shifted_percentile_interval(sets, boot):
    for out in boot.values():
        assert out["ci_low"] < out["avg"] < out["ci_high"]
    raw = swd_bootstrap(sets["a"], sets["ref"], n_boot=N_BOOT, interval="percentile", **FAST)
    np.testing.assert_array_equal(raw["replicates"], boot["a"]["replicates"])
    lo, hi = np.quantile(raw["replicates"], [0.025, 0.975])
    assert (raw["ci_low"], raw["ci_high"]) == pytest.approx((lo, hi))
    shift = boot["a"]["shift"]
    assert shift == pytest.approx(boot["a"]["avg"] - np.median(raw["replicates"]))
    assert (boot["a"]["ci_low"], boot["a"]["ci_high"]) == pytest.approx((lo + shift, hi + shift))
    # Duplicated images bias the replicates upwards (why the default interval is shifted).
    assert shift < 0


def test_interval_narrows_with_more_samples(sets, boot):
    small = swd_bootstrap(sets["a"][:64], sets["ref"], n_boot=N_BOOT, **FAST)
    width = lambda o: o["ci_high"] - o["ci_low"]  # noqa: E731
    # Roughly 1 / sqrt(n): 4x the images should about halve the width.
    assert width(boot["a"]) < 0.75 * width(small)


def test_deterministic_for_a_seed(sets, boot):
    again = swd_bootstrap(sets["a"], sets["ref"], n_boot=N_BOOT, **FAST)
    assert again["ci_low"] == boot["a"]["ci_low"] and again["ci_high"] == boot["a"]["ci_high"]
    np.testing.assert_array_equal(again["replicates"], boot["a"]["replicates"])
    # Replicate r does not depend on how many replicates are drawn.
    np.testing.assert_array_equal(
        swd_bootstrap(sets["a"], sets["ref"], n_boot=10, **FAST)["replicates"], boot["a"]["replicates"][:10]
    )
    other = swd_bootstrap(sets["a"], sets["ref"], n_boot=10, seed=1, **FAST)
    assert not np.array_equal(other["replicates"], boot["a"]["replicates"][:10])


def test_different_distributions_separate_same_distribution_overlaps(boot):
    assert boot["bigger"]["avg"] > boot["a"]["avg"]
    assert not _overlap(boot["a"], boot["bigger"]) and not _overlap(boot["a2"], boot["bigger"])
    assert _overlap(boot["a"], boot["a2"])


def test_n_boot_zero_gives_nan_interval(sets):
    out = swd_bootstrap(sets["a"][:16], sets["ref"][:16], n_boot=0, **FAST)
    assert out["avg"] == swd(sets["a"][:16], sets["ref"][:16], **FAST)["avg"]
    assert math.isnan(out["ci_low"]) and math.isnan(out["ci_high"]) and out["n_boot"] == 0


def test_input_validation(sets):
    a = sets["a"][:4]
    for bad in (dict(n_boot=-1), dict(n_boot=2.5), dict(n_boot=True), dict(alpha=0), dict(alpha=1.5),
                dict(interval="bca"), dict(workers=0)):
        with pytest.raises(ValueError):
            swd_bootstrap(a, a, **bad, **FAST)
    with pytest.raises(ValueError, match="resolution"):
        swd_bootstrap(a, _blobs(2, 64, seed=1), n_boot=2)


# ---------------------------------------------------------------------------------------------------
# Metric records (infdiff.evaluate)
# ---------------------------------------------------------------------------------------------------

SETTINGS = {"swd": {**config_defaults()["evaluate"]["swd"], "patches_per_image": 16, "directions": 32, "n_boot": 20}}


def test_compute_metric_returns_interval(sets):
    a, ref = sets["a"][:32], sets["ref"][:32]
    out = compute_metric("swd", a, ref, SETTINGS)
    assert out["ci_low"] < out["value"] < out["ci_high"] and out["n_boot"] == 20
    assert out["value"] == swd(a, ref, min_res=16, patches_per_image=16, directions=32)["avg"]


@pytest.mark.parametrize("n_boot", [20, 0])
def test_metric_json_and_table_row_carry_the_interval(sets, tmp_path, n_boot):
    samples, ref = tmp_path / "samples.npz", tmp_path / "ref.npz"
    np.savez(samples, images=sets["a"][:32], seeds=np.arange(32))
    np.savez(ref, images=sets["ref"][:32])
    settings = {"swd": {**SETTINGS["swd"], "n_boot": n_boot}}
    out = tmp_path / "swd.json"
    evaluate_files("swd", samples, ref, out, settings, run="r", run_cfg=None, resolution=32, steps=10,
                   dataset="blobs")
    rec = json.loads(out.read_text())  # strict JSON: a missing interval is null, never NaN
    assert rec["n_boot"] == n_boot
    row = metric_row("table1", out)
    if n_boot:
        assert rec["ci_low"] < rec["value"] < rec["ci_high"]
        assert (row["ci_low"], row["ci_high"]) == (rec["ci_low"], rec["ci_high"])
    else:
        assert rec["ci_low"] is None and rec["ci_high"] is None
        assert row["ci_low"] is None and row["ci_high"] is None
