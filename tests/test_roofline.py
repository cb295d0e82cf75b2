"""benchmarks/roofline.py --floor: a target's counted FLOPs at the measured matmul peak (the least time any run
of it can take on that CPU), per run and in total."""

import copy
import sys

import pytest

from infdiff import cost
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import roofline  # noqa: E402


@pytest.fixture(scope="module")
def two_rows():
    """The embedded default with Table 1 cut to two rows at 32 px (a fast cost estimate)."""
    config = copy.deepcopy(cost.load_workflow_config([], base=REPO / "config.yaml"))
    config["tables"]["table1"]["rows"] = [{"run": "infdiff", "resolutions": [32]},
                                          {"run": "mlp_pixel", "resolutions": [32]}]
    return config


def test_floor_is_the_counted_flops_at_the_peak(two_rows):
    """Seconds = each run's train + sample FLOPs / the matmul peak of its precision; --precision prices
    every run in that one."""
    peak = {"matmul_fp32": 100.0, "matmul_bf16": 400.0}          # GFLOP/s, stand-ins for measured peaks
    jobs = cost.estimate(two_rows, "table1")["jobs"]
    flops = {run: sum(j["total_flops"] for j in jobs if j["run"] == run) for run in ("infdiff", "mlp_pixel")}
    fp32 = roofline.floor(two_rows, "table1", peak, precision="fp32")
    for run, f in flops.items():
        assert fp32["runs"][run]["seconds"] == pytest.approx(f / 100e9)
        assert fp32["runs"][run]["precision"] == "fp32"
    assert fp32["seconds"] == pytest.approx(sum(flops.values()) / 100e9)
    bf16 = roofline.floor(two_rows, "table1", peak, precision="bf16")
    assert bf16["seconds"] == pytest.approx(fp32["seconds"] / 4)
    train = sum(j["total_flops"] for j in jobs if j["run"] == "mlp_pixel" and j["kind"] == "train")
    assert fp32["runs"]["mlp_pixel"]["train_tflop"] == pytest.approx(train / 1e12)
