"""Snakemake script: assemble a table (measured metric JSONs + the paper's reported numbers)."""
import contextlib
from pathlib import Path

from infdiff.report.rows import table_from_metrics
from infdiff.report.tables import write_table

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    table = Path(sm.output.csv).stem
    df = table_from_metrics(table, sm.input.metrics, sm.input.paper if sm.params.spec["reported"] else None,
                            speedup=sm.input.speedup[0] if sm.input.speedup else None,
                            metrics=sm.params.spec["metrics"])
    write_table(df, str(Path(sm.output.csv).with_suffix("")))
    print(df.to_string())
