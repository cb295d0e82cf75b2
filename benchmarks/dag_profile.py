"""Where the wall time of a Snakemake run went: per rule, the work against the cores, and the schedule.

Reads the log Snakemake writes of every run (``.snakemake/log/<time>.snakemake.log``: each job's rule,
wildcards, threads, input and output files, start and finish second) and reports

* per rule: jobs, summed wall time, core-seconds (wall x threads) and their share of all work;
* the bounds of any schedule: the work divided by the cores, and the critical path (the longest chain of
  dependent jobs, by their measured durations);
* the span of the run, the time with fewer jobs running than cores could take, and the makespan of a greedy
  list schedule of the same jobs (same durations and threads) under a few priority orders, so that a
  schedule that loses time shows up as a gap between the run and the simulation.

Usage (after ``snakemake --cores 2 table1``, in the same working directory):
  python benchmarks/dag_profile.py [LOG] [--cores 2] [--json OUT]
LOG defaults to the newest ``.snakemake/log/*.snakemake.log``. Durations have a resolution of one second
(the log's), so short jobs count as 0-1 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import heapq
import itertools
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]{8} \d{4})\]")
_RULE = re.compile(r"^(?:local)?rule (\w+):")
_FIELD = re.compile(r"^\s+(\w+): (.*)")
_FINISHED = re.compile(r"^Finished jobid: (\d+)")


def parse_log(path: Path) -> dict[int, dict]:
    """{jobid: {rule, wildcards, threads, start, end, duration, deps}} of the jobs a log started and finished."""
    jobs: dict[int, dict] = {}
    ends: dict[int, dt.datetime] = {}
    stamp, cur = None, None
    for line in path.read_text().splitlines():
        if m := _STAMP.match(line):
            cur = None
            stamp = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := _RULE.match(line):
            cur = {"rule": m.group(1), "start": stamp, "input": [], "output": [], "threads": 1, "wildcards": ""}
        elif cur is not None and (m := _FIELD.match(line)):   # the job's block: one indented field a line
            key, value = m.groups()
            if key in ("input", "output"):
                cur[key] = [v.strip() for v in value.split(",")]
            elif key == "threads":
                cur["threads"] = int(value)
            elif key == "wildcards":
                cur["wildcards"] = value
            elif key == "jobid":
                jobs[int(value)] = cur
        elif m := _FINISHED.match(line):
            ends[int(m.group(1))] = stamp
    jobs = {i: j for i, j in jobs.items() if i in ends}
    made_by = {f: i for i, j in jobs.items() for f in j["output"]}
    for i, j in jobs.items():
        j["end"] = ends[i]
        j["duration"] = (j["end"] - j["start"]).total_seconds()
        j["deps"] = {made_by[f] for f in j["input"] if f in made_by}
    return jobs


def critical_path(jobs: dict[int, dict]) -> dict[int, float]:
    """{jobid: seconds from its start to the end of the longest chain of jobs that depend on it}."""
    children = defaultdict(list)
    for i, j in jobs.items():
        for d in j["deps"]:
            children[d].append(i)

    @functools.cache
    def level(i: int) -> float:
        return jobs[i]["duration"] + max((level(c) for c in children[i]), default=0.0)

    return {i: level(i) for i in jobs}


def list_schedule(jobs: dict[int, dict], cores: int, priority) -> float:
    """Makespan of a greedy list schedule: whenever cores are free, start the ready job first in
    ``priority`` order that fits (threads capped at ``cores``), with the measured durations."""
    done, remaining, running, free, t = set(), set(jobs), [], cores, 0.0
    order = itertools.count()
    while remaining or running:
        ready = sorted((i for i in remaining if jobs[i]["deps"] <= done), key=priority)
        for i in ready:
            threads = min(jobs[i]["threads"], cores)
            if threads <= free:
                free -= threads
                remaining.discard(i)
                heapq.heappush(running, (t + jobs[i]["duration"], next(order), i, threads))
        if not running:
            raise ValueError("jobs wait on inputs no job of the log makes: is the log complete?")
        t, _, i, threads = heapq.heappop(running)
        free += threads
        done.add(i)
    return t


def profile(jobs: dict[int, dict], cores: int) -> dict:
    """The report of :func:`main` as a dict."""
    start = min(j["start"] for j in jobs.values())
    span = (max(j["end"] for j in jobs.values()) - start).total_seconds()
    rules: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "wall_s": 0.0, "core_s": 0.0})
    for j in jobs.values():
        r = rules[j["rule"]]
        r["jobs"] += 1
        r["wall_s"] += j["duration"]
        r["core_s"] += j["duration"] * min(j["threads"], cores)
    work = sum(r["core_s"] for r in rules.values())
    # Seconds in which the running jobs held fewer threads than there are cores.
    events = sorted([(j["start"], min(j["threads"], cores)) for j in jobs.values()]
                    + [(j["end"], -min(j["threads"], cores)) for j in jobs.values()], key=lambda e: (e[0], e[1]))
    underused, busy, prev = 0.0, 0, start
    for when, d in events:
        if busy < cores:
            underused += (when - prev).total_seconds()
        busy, prev = busy + d, when
    level = critical_path(jobs)
    orders = {
        "longest first": lambda i: (-min(jobs[i]["threads"], cores), -jobs[i]["duration"]),
        "critical path first": lambda i: -level[i],
        "most threads, then critical path": lambda i: (-min(jobs[i]["threads"], cores), -level[i]),
    }
    return {
        "jobs": len(jobs), "cores": cores, "span_s": span, "work_core_s": work, "work_bound_s": work / cores,
        "critical_path_s": max(level.values()), "underused_s": underused,
        "simulated_s": {name: list_schedule(jobs, cores, key) for name, key in orders.items()},
        "rules": {k: {**v, "share": v["core_s"] / work if work else 0.0} for k, v in sorted(rules.items(), key=lambda kv: -kv[1]["core_s"])},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("log", nargs="?", default=None, help="a Snakemake log (default: the newest in .snakemake/log)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the report as JSON")
    a = p.parse_args(argv)
    if a.log is None:
        logs = sorted(Path(".snakemake/log").glob("*.snakemake.log"))
        if not logs:
            p.error("no .snakemake/log/*.snakemake.log here: run from the workflow's directory or name a LOG")
        a.log = logs[-1]
    jobs = parse_log(Path(a.log))
    if not jobs:
        p.error(f"{a.log} holds no finished job")
    r = profile(jobs, a.cores)
    print(f"{a.log}: {r['jobs']} jobs on {r['cores']} cores")
    print(f"{'rule':<22}{'jobs':>5}{'wall s':>9}{'core s':>9}{'share':>7}")
    for name, v in r["rules"].items():
        print(f"{name:<22}{v['jobs']:>5}{v['wall_s']:>9.0f}{v['core_s']:>9.0f}{v['share']:>7.1%}")
    print(f"work {r['work_core_s']:.0f} core-s = {r['work_bound_s']:.0f} s on {a.cores} cores (the bound of any "
          f"schedule); critical path {r['critical_path_s']:.0f} s")
    print(f"the run took {r['span_s']:.0f} s, {r['underused_s']:.0f} s of them with cores to spare")
    for name, s in r["simulated_s"].items():
        print(f"list schedule, {name}: {s:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
