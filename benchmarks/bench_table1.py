"""Wall time of ``snakemake --cores all table1`` from scratch, for several commits, back to back on this machine.

Issue 14 asks for Table 1's time as a ratio to another commit's "on the same machine with the same rows". This
script makes that one command. For every commit named (in the order given; a commit may appear twice, e.g.
``HEAD 7ea17dd HEAD``, so that a drift of the machine's speed during the runs shows up) it

* clones this repository into a fresh folder under ``--workdir`` and checks the commit out (commits only:
  uncommitted changes of this checkout are not timed);
* keeps the same rows in every clone: the commit's own ``tables.table1.rows`` whose run is in ``--rows``
  (default: the runs of the first commit's Table 1; 7ea17dd, the issue's baseline, has ∞-Diff, the MLP and the
  U-ViT), passed as an override with ``--configfile`` (the commit's config.yaml is not edited). A commit
  that lacks one of those runs stops the script before anything runs;
* starts from empty extension, C-kernel and inductor caches (``TORCH_EXTENSIONS_DIR``, ``INFDIFF_C_CACHE`` and
  ``TORCHINDUCTOR_CACHE_DIR`` in the clone's own folder: the C++ and C kernels are built inside the timed run,
  as on a fresh machine) and
  puts the clone first on ``PYTHONPATH``, so that its Snakemake jobs import the clone's ``infdiff`` and not
  an editable install of another checkout;
* runs ``snakemake --cores <cores> table1`` and times it, then reads the run's log with
  :mod:`dag_profile` (work per rule in core-seconds, the work bound, the critical path).

``--emulate-avx2`` times the runs as an AVX2-only CPU would run them, on this one: torch's kernels, oneDNN,
MKL, OpenBLAS and numpy dispatch AVX2 code only (:data:`AVX2_ENV`), the C++ and C kernels are built for AVX2,
and every row's run trains and samples in float32 (``bench_table1_avx2.yaml``), which is what
``precision: auto`` resolves to without native bf16. An emulation, not such a CPU: clocks, caches and memory
stay this machine's (an AVX2-only AMD EPYC may be slower still).

It prints one row per run and the ratio of each run's wall time to the mean of the first commit's runs, and
writes the rows to ``--out`` (CSV). Every job is a process of its own and the runs take minutes each: leave
the machine otherwise idle while it runs. Checked-out commits must have ``config.yaml`` and a ``table1``
target (every commit since the embedded default's first Table 1).

Usage:
  python benchmarks/bench_table1.py [COMMIT ...] [--rows RUN ...] [--configfile FILE ...] [--cores 2]
                                    [--emulate-avx2] [--workdir /tmp/bench_table1] [--out FILE.csv]
  (default commits: 7ea17dd HEAD, the issue's baseline and this checkout)
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import dag_profile  # noqa: E402

#: rules reported in their own column; every other rule's work is summed under "other"
COLUMNS = ("train", "train_latent", "sample", "evaluate")
#: What makes a process tree dispatch AVX2 code only, as on an AVX2-only CPU (``--emulate-avx2``): torch's
#: own kernels (and with them get_cpu_capability(), which the C++ kernels' build flags follow), oneDNN,
#: MKL, OpenBLAS, and numpy 2's dispatch (its AVX-512 groups disabled).
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}


def resolve(commit: str) -> str:
    """The full hash of ``commit`` in this repository (stops with git's message if it does not exist)."""
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{commit}^{{commit}}"],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"bench_table1: {commit!r} is not a commit of {REPO}: {out.stderr.strip()}")
    return out.stdout.strip()


def _rows_of(clone: Path, configfiles: tuple[Path, ...] = ()) -> list[dict]:
    """Table 1's rows of the clone's config.yaml with ``configfiles`` layered over it as Snakemake layers them
    (dicts merged key by key, lists replaced)."""
    from infdiff.config import deep_merge

    config = yaml.safe_load((clone / "config.yaml").read_text())
    for f in configfiles:
        config = deep_merge(config, yaml.safe_load(Path(f).read_text()))
    return config["tables"]["table1"]["rows"]


def table1_rows(clone: Path, runs: tuple[str, ...], configfiles: tuple[Path, ...] = ()) -> list[dict]:
    """The clone's own Table 1 rows whose run is one of ``runs``, in its order; stops if one is missing."""
    rows = _rows_of(clone, configfiles)
    kept = [r for r in rows if r["run"] in runs]
    missing = sorted(set(runs) - {r["run"] for r in kept})
    if missing:
        raise SystemExit(f"bench_table1: {clone.name} has no Table 1 row for {', '.join(missing)} "
                         f"(its rows: {', '.join(r['run'] for r in rows)}); choose --rows it has")
    return kept


def clone_at(commit: str, sha: str, index: int, workdir: Path) -> Path:
    """A fresh clone of this repository at ``sha`` in ``workdir`` (named by its place in the order)."""
    clone = workdir / f"{index}-{commit.replace('/', '_')}-{sha[:7]}"
    if clone.exists():
        shutil.rmtree(clone)
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", sha], check=True)
    return clone


def own_runs(clone: Path, configfiles: tuple[Path, ...] = ()) -> tuple[str, ...]:
    """The runs of the clone's own Table 1 rows (under ``configfiles``), in order."""
    return tuple(r["run"] for r in _rows_of(clone, configfiles))


def write_rows(clone: Path, runs: tuple[str, ...], configfiles: tuple[Path, ...] = ()) -> list[str]:
    """The ``--configfile`` arguments of the clone's run: ``configfiles``, then an override that keeps only
    ``runs`` of its Table 1 (``bench_table1_rows.yaml`` beside its config)."""
    rows = table1_rows(clone, runs, configfiles)
    (clone / "bench_table1_rows.yaml").write_text(yaml.safe_dump({"tables": {"table1": {"rows": rows}}}))
    return [str(f) for f in configfiles] + ["bench_table1_rows.yaml"]


def write_fp32(clone: Path, runs: tuple[str, ...]) -> str:
    """A ``--configfile`` (``bench_table1_avx2.yaml`` beside the clone's config) that trains and samples every
    one of ``runs`` in float32: what ``precision: auto`` resolves to on a CPU without native bf16."""
    (clone / "bench_table1_avx2.yaml").write_text(yaml.safe_dump({"runs": {r: {"precision": "fp32"} for r in runs}}))
    return "bench_table1_avx2.yaml"


def run_env(clone: Path, emulate_avx2: bool = False) -> dict:
    """The environment of a timed run: the clone's ``infdiff`` first on ``PYTHONPATH``, empty caches of its
    own, and with ``emulate_avx2`` the instruction-set limits of :data:`AVX2_ENV`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(clone), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               TORCH_EXTENSIONS_DIR=str(clone / ".cache" / "torch_extensions"),
               INFDIFF_C_CACHE=str(clone / ".cache" / "infdiff_c"),
               TORCHINDUCTOR_CACHE_DIR=str(clone / ".cache" / "torchinductor"))
    return {**env, **AVX2_ENV} if emulate_avx2 else env


def run(clone: Path, cores: int, configfiles: list[str], emulate_avx2: bool = False) -> dict:
    """``snakemake --cores <cores> table1`` in ``clone`` from empty caches: wall seconds and the log's profile."""
    env = run_env(clone, emulate_avx2)
    # the target first: --configfile takes every word after it
    cmd = ["snakemake", "--cores", str(cores), "table1", "--configfile", *configfiles]
    with open(clone / "bench_table1.log", "w") as log:
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"bench_table1: {' '.join(cmd)} failed in {clone} (rc {done.returncode}); "
                         f"see {clone / 'bench_table1.log'}")
    logs = sorted((clone / ".snakemake" / "log").glob("*.snakemake.log"))
    return {"wall_s": wall, "profile": dag_profile.profile(dag_profile.parse_log(logs[-1]), cores)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("commits", nargs="*", default=["7ea17dd", "HEAD"],
                   help="commits to time, in this order (repeats allowed); the first one is the reference")
    p.add_argument("--rows", nargs="+", default=None,
                   help="runs of Table 1 every clone keeps (default: those of the first commit's Table 1)")
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2, the CI machines')")
    p.add_argument("--configfile", nargs="+", default=[],
                   help="config files layered over each commit's config.yaml (e.g. a smaller budget), before the rows")
    p.add_argument("--emulate-avx2", action="store_true",
                   help="run as an AVX2-only CPU would: AVX2 code only, every row in float32 (an emulation)")
    p.add_argument("--workdir", default="/tmp/bench_table1", help="where the clones go (each one is replaced)")
    p.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "bench" / "table1.csv"))
    a = p.parse_args(argv)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runs = tuple(a.rows) if a.rows else None
    extra = tuple(Path(f).resolve() for f in a.configfile)
    # Every clone first, so that a commit without the rows stops the script before an hour of runs.
    shas = [resolve(c) for c in a.commits]
    clones = [clone_at(c, s, i, workdir) for i, (c, s) in enumerate(zip(a.commits, shas))]
    runs = runs or own_runs(clones[0], extra)
    configfiles = [write_rows(clone, runs, extra) + ([write_fp32(clone, runs)] if a.emulate_avx2 else [])
                   for clone in clones]
    print(f"Table 1 rows: {', '.join(runs)}; --cores {a.cores}; {len(clones)} runs in {workdir}"
          + ("; emulating an AVX2-only CPU, float32" if a.emulate_avx2 else ""), flush=True)
    records = []
    for commit, sha, clone, files in zip(a.commits, shas, clones, configfiles):
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        r = run(clone, a.cores, files, a.emulate_avx2)
        rules = r["profile"]["rules"]
        rec = {"commit": commit, "sha": sha[:10], "started": started, "wall_s": round(r["wall_s"], 1),
               "work_core_s": round(r["profile"]["work_core_s"]), "jobs": r["profile"]["jobs"],
               "critical_path_s": round(r["profile"]["critical_path_s"])}
        for col in COLUMNS:
            rec[f"{col}_core_s"] = round(rules.get(col, {}).get("core_s", 0.0))
        rec["other_core_s"] = round(sum(v["core_s"] for k, v in rules.items() if k not in COLUMNS))
        records.append(rec)
        minutes, seconds = divmod(round(rec["wall_s"]), 60)
        print(f"{commit} ({sha[:10]}), started {started}: {minutes} min {seconds} s, "
              f"work {rec['work_core_s']} core-s", flush=True)
    ref = statistics.mean(r["wall_s"] for r in records if r["sha"] == records[0]["sha"])
    for rec in records:
        rec["vs_first"] = round(rec["wall_s"] / ref, 3)
    cpu = cpu_line() + ("; emulating an AVX2-only CPU (AVX2 code only, float32)" if a.emulate_avx2 else "")
    print(f"\n{cpu}")
    head = ["commit", "sha", "started", "wall_s", "vs_first", "work_core_s"] + [f"{c}_core_s" for c in COLUMNS] \
        + ["other_core_s", "critical_path_s", "jobs"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for rec in records:
        print("| " + " | ".join(str(rec[h]) for h in head) + " |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=head + ["rows", "cores", "cpu"])
        w.writeheader()
        for rec in records:
            w.writerow({**{h: rec[h] for h in head}, "rows": " ".join(runs), "cores": a.cores, "cpu": cpu})
    print(f"wrote {out}")
    return 0


def cpu_line() -> str:
    """The CPU model, torch's vector capability and whether bf16 is native: what every README timing names."""
    from infdiff.precision import cpu_has_native_bf16  # imports torch, whose capability _cpu_info reads
    from infdiff.provenance import _cpu_info

    info = _cpu_info()
    return (f"CPU: {info.get('cpu_model')}, torch capability {info.get('cpu_capability')}, "
            f"native bf16 (avx512_bf16 / amx_bf16): {'yes' if cpu_has_native_bf16() else 'no'}")


if __name__ == "__main__":
    sys.exit(main())
