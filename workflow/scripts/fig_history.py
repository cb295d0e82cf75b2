"""Snakemake script: every metric against commit, from results/history.jsonl."""
import contextlib

from infdiff.report.history_plot import plot_history

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    plot_history(sm.input[0], sm.output[0])
    print(f"wrote {sm.output[0]}")
