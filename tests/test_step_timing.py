"""The interleaved training-step timing (infdiff.step_timing) behind Table 3's speed-up column (no timing assertions)."""

from infdiff.step_timing import time_train_steps


def test_rows_per_ratio_and_memory_grows_with_points(tiny_cfg):
    rows = time_train_steps(tiny_cfg, [1.0, 0.5, 0.25], repeats=2, warmup=1, batch_size=2)
    assert [r["ratio"] for r in rows] == [1.0, 0.5, 0.25]
    assert rows[0]["speedup"] == 1.0
    assert [r["points"] for r in rows] == [256, 128, 64]
    # memory saved for backward scales with the number of points: a ratio that changed nothing fails
    assert rows[0]["saved_mb"] > rows[1]["saved_mb"] > rows[2]["saved_mb"] > 0
    assert all(r["median_ms"] > 0 and r["cuda_peak_mb"] is None for r in rows)


def test_each_timed_step_follows_a_step_at_its_own_ratio(tiny_cfg, monkeypatch):
    """After a switch of ratio, `settle` untimed steps run at the new ratio first (the first step after a
    switch page-faults fresh memory, which training at one ratio does not pay)."""
    import infdiff.step_timing as st

    seen, build = [], st.build_method

    def recording(cfg):
        method = build(cfg)
        loss = method.training_loss

        def training_loss(*a, **k):
            seen.append(method.ratio)
            return loss(*a, **k)

        method.training_loss = training_loss
        return method

    monkeypatch.setattr(st, "build_method", recording)
    rows = st.time_train_steps(tiny_cfg, [1.0, 0.5], repeats=2, warmup=0, batch_size=2, settle=1)
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0]   # rotated order, each ratio twice in a row
    assert all(r["settle"] == 1 for r in rows)
