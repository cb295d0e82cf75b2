"""The micro DAG through a real SLURM: `snakemake --profile workflow/profiles/slurm`, every job submitted
with sbatch (snakemake-executor-plugin-slurm) and seen by sacct.

Needs a running cluster: `.ci/slurm-up.sh` starts one on this machine (partitions "cpu" and "gpu" named like
the profile's, stand-in GPUs), then `pytest -m slurm tests/test_slurm.py`. Deselected from the default
pytest run (marker `slurm`); skipped when no SLURM controller answers, a failure instead when
INFDIFF_REQUIRE_SLURM=1 (CI, after starting the cluster).

The profile is used as written. The only command-line additions are for this 2-core machine and CI speed,
none of them a profile key: `--max-threads 1` (set-threads asks 8 CPUs per job; the node has 2) and
`--slurm-init-seconds-before-status-checks 5` (sacct polled after 5 s instead of 40).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from infdiff.config import deep_merge
from tests.conftest import REPO, TINY
from tests.standins import save_inception

pytestmark = pytest.mark.slurm

PROFILE = REPO / "workflow/profiles/slurm"


def _skip_or_fail(reason):
    if os.environ.get("INFDIFF_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason} (INFDIFF_REQUIRE_SLURM=1)")
    pytest.skip(reason)


def _cluster_up():
    if shutil.which("sbatch") is None or shutil.which("sacct") is None:
        _skip_or_fail("no SLURM client commands (sbatch, sacct): run .ci/slurm-up.sh")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        _skip_or_fail(f"no SLURM controller answers `scontrol ping` ({ping.stdout.strip()}): run .ci/slurm-up.sh")
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        _skip_or_fail('snakemake-executor-plugin-slurm is not installed: pip install -c requirements/lock.txt '
                      '-e ".[slurm]"')


def _sacct(run_id):
    """Jobs of one Snakemake run (the plugin names every job after the run's id), one dict per job."""
    fields = ["JobID", "State", "Partition", "AllocTRES", "ReqMem", "Timelimit", "Comment", "SubmitLine"]
    out = subprocess.run(["sacct", "-n", "-X", "-P", "--name", run_id, "-o", ",".join(fields)],
                         capture_output=True, text=True, check=True).stdout
    jobs = [dict(zip(fields, line.split("|", len(fields) - 1))) for line in out.splitlines() if line.strip()]
    for j in jobs:  # the plugin's --comment: rule_<name>[_wildcards_<values>]
        j["rule"] = j["Comment"].split("_wildcards_")[0].removeprefix("rule_")
    return jobs


def _brief(jobs):
    return [{k: j[k] for k in ("JobID", "State", "Partition", "AllocTRES", "Comment")} for j in jobs]


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    _cluster_up()
    work = tmp_path_factory.mktemp("slurm")
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    micro = deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), TINY)
    micro["runs"]["infdiff"]["train"]["steps"] = 3
    # one trained row: train, sample at two resolutions, SWD, FID (the reference_stats rule with a stand-in
    # Inception file) and consistency, beside the noise and real-vs-real rows
    save_inception(work / "inception-standin.pt", dim=3)
    micro["metrics"] = {"weights": {"inception": str(work / "inception-standin.pt")}}
    micro["tables"]["table1"]["rows"] = [{"run": "infdiff", "resolutions": [16, 32]}]
    micro["tables"]["table1"]["metrics"] = ["swd", "fid", "consistency"]
    (work / "micro.yaml").write_text(yaml.safe_dump(micro))
    # the jobs import this checkout's infdiff: sbatch exports the environment (--export=ALL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    # this interpreter's snakemake: the plugin runs the same interpreter (sys.executable) in every job
    cmd = [sys.executable, "-m", "snakemake", "table1", "--profile", str(PROFILE), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work), "--max-threads", "1", "--slurm-init-seconds-before-status-checks", "5",
           "--configfile", str(work / "micro.yaml")]  # targets first: --configfile takes several values
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env, cwd=work)
    wall = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-6000:]
    run_id = re.search(r"SLURM run ID: (\S+)", out.stderr).group(1)
    # the job stats table; target rules without outputs (table1) run in this process
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stderr.split("Job stats:")[1].split("\n\n")[0], re.M))
    local = set(re.findall(r"^localrule (\w+):", out.stderr, re.M))
    submitted = sum(int(n) for rule, n in counts.items() if rule != "total" and rule not in local)
    print(f"SLURM micro DAG: {submitted} jobs through sbatch ({counts['total']} with local rules {sorted(local)}) "
          f"in {wall:.0f} s (run {run_id})")
    return {"work": work, "log": out.stderr, "run_id": run_id, "submitted": submitted, "counts": counts,
            "wall": wall}


def test_every_job_ran_through_sbatch_and_sacct_lists_it(slurm_run):
    jobs = _sacct(slurm_run["run_id"])
    # every job of the DAG except the local target rule is one SLURM job, each COMPLETED
    assert len(jobs) == slurm_run["submitted"] > 10, _brief(jobs)
    assert {j["State"] for j in jobs} == {"COMPLETED"}, _brief(jobs)
    per_rule = {r: sum(j["rule"] == r for j in jobs) for r in {j["rule"] for j in jobs}}
    assert per_rule == {r: int(n) for r, n in slurm_run["counts"].items() if r in per_rule}
    assert {"prepare_data", "train", "sample", "evaluate", "evaluate_consistency", "reference_stats",
            "noise_samples", "evaluate_noise", "evaluate_floor", "table"} <= set(per_rule)
    # the profile's conventions: GPUs as --gpus, never a --gres in slurm_extra; the environment exported
    for j in jobs:
        assert " --export=ALL " in j["SubmitLine"] and "--gres" not in j["SubmitLine"], j["SubmitLine"]


def test_jobs_got_the_profiles_partitions_gpus_memory_and_time(slurm_run):
    jobs = _sacct(slurm_run["run_id"])
    by_rule = {}
    for j in jobs:
        by_rule.setdefault(j["rule"], []).append(j)
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    for rule, js in by_rule.items():
        want = profile["set-resources"].get(rule, {}).get("slurm_partition",
                                                          profile["default-resources"]["slurm_partition"])
        assert {j["Partition"] for j in js} == {want}, (rule, _brief(js))
    # networks get a GPU (--gpus from the `gpu` resource); the table and the SWD evaluations none
    for rule in ("train", "sample", "reference_stats"):
        assert all("gres/gpu=1" in j["AllocTRES"] for j in by_rule[rule]), _brief(by_rule[rule])
    fid = [j for j in by_rule["evaluate"] if "metric=fid," in j["SubmitLine"]]  # --target-jobs 'evaluate:...'
    swd = [j for j in by_rule["evaluate"] if "metric=swd," in j["SubmitLine"]]
    assert len(fid) == len(swd) == 2, _brief(by_rule["evaluate"])
    assert all("gres/gpu=1" in j["AllocTRES"] for j in fid), _brief(fid)
    assert not any("gres/gpu" in j["AllocTRES"] for j in swd), _brief(swd)
    assert not any("gres/gpu" in j["AllocTRES"] for j in by_rule["table"] + by_rule["prepare_data"])
    # the rules' memory and time limits reach sbatch (train: 64000 MB, 2880 min = 2 days)
    assert {j["Timelimit"] for j in by_rule["train"]} == {"2-00:00:00"}
    assert {j["ReqMem"] for j in by_rule["train"]} == {"62.50G"}  # --mem 64000 (MB)
    assert {j["ReqMem"] for j in by_rule["sample"]} == {"32000M"}


def test_jobs_ran_this_checkouts_code_and_made_the_table(slurm_run):
    work = slurm_run["work"]
    df = pd.read_csv(work / "results/tables/table1.csv")
    measured = df[(df.source == "measured") & (df.run == "infdiff")]
    assert set(zip(measured.metric, measured.resolution)) >= {("swd", 16), ("swd", 32), ("fid", 16), ("fid", 32),
                                                              ("consistency", 32)}
    rec = json.loads((work / "results/metrics/infdiff/fid-16px-3steps.json").read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert rec["provenance"]["git_commit"] == head.strip()
    # each job runs the Python that started snakemake (the plugin wraps sys.executable in the sbatch call)
    for j in _sacct(slurm_run["run_id"]):
        assert re.search(r"--wrap=(\S+) -m snakemake", j["SubmitLine"]), j["SubmitLine"]
        python = re.search(r"--wrap=(\S+) -m snakemake", j["SubmitLine"]).group(1)
        assert os.path.realpath(python) == os.path.realpath(sys.executable), j["SubmitLine"]
