"""benchmarks/bench_table1.py times Table 1 for several commits with the same rows: a clone per commit, the
rows chosen by an override file, and a commit without those rows stopped before any run."""

import csv
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_table1  # noqa: E402


def test_clone_keeps_only_the_named_rows_and_snakemake_plans_only_them(tmp_path):
    sha = bench_table1.resolve("HEAD")
    clone = bench_table1.clone_at("HEAD", sha, 0, tmp_path)
    first, last = bench_table1.own_runs(clone)[0], bench_table1.own_runs(clone)[-1]
    bench_table1.write_rows(clone, (first, last))
    assert subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip() == sha
    rows = yaml.safe_load((clone / "bench_table1_rows.yaml").read_text())["tables"]["table1"]["rows"]
    own = {r["run"]: r for r in yaml.safe_load((clone / "config.yaml").read_text())["tables"]["table1"]["rows"]}
    # the commit's own rows (with their resolutions), in its order, only the named runs
    assert rows == [own[first], own[last]]
    # Snakemake reads the override: the dry run trains exactly those runs (config.yaml is not edited)
    plan = subprocess.run([sys.executable, "-m", "snakemake", "-n", "table1", "--configfile", "bench_table1_rows.yaml"],
                          cwd=clone, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(clone)))
    assert plan.returncode == 0, plan.stderr[-2000:]
    trained = {line.split("run=")[1].split(",")[0].strip() for line in plan.stdout.splitlines()
               if "wildcards: run=" in line and "res=" not in line}
    assert trained == {first, last}
    assert subprocess.run(["git", "-C", str(clone), "status", "--porcelain", "config.yaml"], capture_output=True,
                          text=True).stdout == ""


def test_a_commit_without_a_row_stops_before_any_run(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"tables": {"table1": {"rows": [{"run": "a", "resolutions": [32]}]}}}))
    with pytest.raises(SystemExit, match="no Table 1 row for b"):
        bench_table1.table1_rows(tmp_path, ("a", "b"))
    with pytest.raises(SystemExit, match="is not a commit"):
        bench_table1.resolve("no-such-commit-anywhere")


@pytest.mark.slow
def test_end_to_end_at_tiny_size(tmp_path):
    """The whole script on HEAD with the tests' tiny budget: a run from empty caches, its log read per rule."""
    from tests.conftest import TINY

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "table1.csv"
    first = TINY["tables"]["table1"]["rows"][0]["run"]
    assert bench_table1.main(["HEAD", "--rows", first, "--configfile", str(tiny), "--workdir", str(tmp_path / "w"),
                              "--out", str(out)]) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert row["sha"] == bench_table1.resolve("HEAD")[:10] and row["rows"] == first and float(row["vs_first"]) == 1.0
    assert float(row["wall_s"]) > 0 and int(row["work_core_s"]) > 0
    # the rule columns partition the work (each rounded on its own)
    parts = sum(int(row[f"{c}_core_s"]) for c in (*bench_table1.COLUMNS, "other"))
    assert abs(parts - int(row["work_core_s"])) <= len(bench_table1.COLUMNS) + 1
    clone = next((tmp_path / "w").iterdir())
    assert (clone / "results" / "tables" / "table1.md").exists()
    # the kernels were built inside the run, in the clone's own (initially empty) cache
    assert (clone / ".cache" / "torch_extensions").is_dir()


def test_avx2_emulation_dispatches_avx2_only_and_runs_float32(tmp_path):
    """--emulate-avx2: a job's torch reports the AVX2 capability (which the C++ kernels' flags follow) and
    numpy dispatches no AVX-512 code; the named runs train and sample in float32, the others keep theirs."""
    from infdiff import cost
    from infdiff.config import run_config

    name = bench_table1.write_fp32(tmp_path, ("mlp_pixel", "simple_diffusion"))
    config = cost.load_workflow_config([tmp_path / name], base=REPO / "config.yaml")
    assert run_config(config, "mlp_pixel")["precision"] == run_config(config, "simple_diffusion")["precision"] == "fp32"
    assert run_config(config, "infdiff")["precision"] == "auto"      # the run they inherit from is not named
    probe = ("import torch; from numpy._core._multiarray_umath import __cpu_features__ as f, __cpu_dispatch__ as d; "
             "print(torch.backends.cpu.get_cpu_capability(), [k for k in d if f[k]])")
    out = subprocess.run([sys.executable, "-c", probe], env=bench_table1.run_env(tmp_path, emulate_avx2=True),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "AVX2"
    assert all("AVX512" not in k and k != "X86_V4" for k in eval(" ".join(out[1:])))
