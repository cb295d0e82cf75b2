"""Snakemake script: run one benchmarks/*.py script in-process with fixed arguments, output and threads."""
import contextlib
import runpy
import sys

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    module = runpy.run_path(f"{sm.scriptdir}/../../{sm.params.script}")
    code = module["main"]([*map(str, sm.params.args), "--threads", str(sm.threads), "--out", sm.output[0]])
    if code:
        sys.exit(code)
