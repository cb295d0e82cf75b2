"""benchmarks/dag_profile.py reads a Snakemake log into jobs, dependencies, threads and durations, and bounds
the schedule: work / cores, the critical path, and a greedy list schedule of the same jobs."""

import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import dag_profile  # noqa: E402

# Three jobs as Snakemake 9 logs them: train (1 thread, 100 s) -> sample (2 threads, 30 s); eval (1 thread,
# 50 s) on its own, started beside train.
LOG = """\
Job stats:
job      count
total        3

Select jobs to execute...
[Sun Dec  6 10:00:00 2026]
localrule train:
    input: data.npy
    output: runs/a/checkpoint.pt
    log: logs/train.log
    jobid: 2
    wildcards: run=a
    resources: tmpdir=/tmp
Shell command: None
[Sun Dec  6 10:00:00 2026]
localrule evaluate:
    input: data.npy
    output: metrics/floor.json
    jobid: 3
    resources: tmpdir=/tmp
Shell command: None
[Sun Dec  6 10:00:50 2026]
Finished jobid: 3 (Rule: evaluate)
1 of 3 steps (33%) done
[Sun Dec  6 10:01:40 2026]
Finished jobid: 2 (Rule: train)
2 of 3 steps (67%) done
[Sun Dec  6 10:01:40 2026]
localrule sample:
    input: runs/a/checkpoint.pt
    output: samples/a/samples.npz, samples/a/grid.png
    jobid: 1
    wildcards: run=a, res=256
    threads: 2
    resources: tmpdir=/tmp
Shell command: None
[Sun Dec  6 10:02:10 2026]
Finished jobid: 1 (Rule: sample)
3 of 3 steps (100%) done
"""


def test_log_to_jobs_and_bounds(tmp_path):
    log = tmp_path / "run.snakemake.log"
    log.write_text(LOG)
    jobs = dag_profile.parse_log(log)
    assert {i: (j["rule"], j["threads"], j["duration"]) for i, j in jobs.items()} == {
        2: ("train", 1, 100.0), 3: ("evaluate", 1, 50.0), 1: ("sample", 2, 30.0)}
    assert jobs[1]["deps"] == {2} and jobs[2]["deps"] == jobs[3]["deps"] == set()
    r = dag_profile.profile(jobs, cores=2)
    assert r["span_s"] == 130 and r["work_core_s"] == 100 + 50 + 2 * 30 and r["work_bound_s"] == 105
    assert r["critical_path_s"] == 130
    assert r["underused_s"] == 50                       # 10:00:50-10:01:40: train alone on one of two cores
    assert set(r["simulated_s"].values()) == {130.0}    # nothing to gain here: the chain is the bound
    assert r["rules"]["sample"]["core_s"] == 60


def test_list_schedule_waits_for_cores():
    """A 2-thread job cannot start beside a running 1-thread job on 2 cores."""
    jobs = {1: {"threads": 1, "duration": 10.0, "deps": set()},
            2: {"threads": 2, "duration": 5.0, "deps": set()},
            3: {"threads": 1, "duration": 10.0, "deps": set()}}
    longest_first = lambda i: -jobs[i]["duration"]  # noqa: E731
    assert dag_profile.list_schedule(jobs, 2, longest_first) == 15.0   # 1 and 3 together, then 2
    assert dag_profile.list_schedule(jobs, 1, longest_first) == 25.0   # threads capped at the cores
