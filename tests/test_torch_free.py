"""What must run without importing torch, because torch's import costs seconds per process: Snakemake
names reference-statistics files while it reads the workflow, and the jobs scoring SWD and resolution
consistency (a table's most numerous jobs) compute in numpy. Each check runs in a fresh interpreter."""

import subprocess
import sys
import textwrap

from tests.conftest import REPO

_SCORE_WITHOUT_TORCH = """
    import sys
    import numpy as np
    from infdiff.config import load_config
    from infdiff.evaluate import compute_metric, metric_device
    from infdiff.metrics.stats_key import configured_stats_key

    config = load_config("{config}")
    settings = config["evaluate"]
    weights = "{tmp}/inception-standin.pt"
    open(weights, "wb").write(b"not read: only hashed")
    key = configured_stats_key({{"name": "shapes", **config["datasets"]["shapes"]}}, "ref", 16, 64, "inception",
                               {{**config["metrics"], "weights": {{"inception": weights}}}})
    assert len(key) == 16, key
    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    high = np.repeat(np.repeat(low, 2, axis=2), 2, axis=3)          # exactly consistent 2x samples
    seeds = np.arange(4)
    assert metric_device("swd") == metric_device("consistency") == "cpu"
    swd = compute_metric("swd", low, low[::-1].copy(), {{**settings, "swd": {{**settings["swd"], "min_samples": 1,
                         "min_res": 8, "n_boot": 3}}}})
    c = compute_metric("consistency", high, low, {{**settings, "consistency": {{**settings["consistency"],
                       "min_samples": 1}}}}, seeds=seeds, ref_seeds=seeds)
    assert c["value"] == settings["consistency"]["max_db"], c["value"]      # identical after pooling: the cap
    assert np.isfinite(swd["value"])
    from infdiff.c_kernels import c_available
    from infdiff.provenance import _cpu_info
    # the bootstrap's compiled passes (ctypes, no torch) where a C compiler is, and provenance says which ran
    assert _cpu_info()["swd_kernels"] == (["c"] if c_available()[0] else ["numpy"]), _cpu_info()
    assert "torch" not in sys.modules, "torch was imported"
"""


def test_stats_key_swd_and_consistency_never_import_torch(tmp_path):
    code = textwrap.dedent(_SCORE_WITHOUT_TORCH.format(config=REPO / "config.yaml", tmp=tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
