"""Snakemake script: current metrics vs the committed reference -> results/tables/regress.{csv,md}."""
import contextlib
from pathlib import Path

from infdiff import regress
from infdiff.io import write_text

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    current = regress.current_frame(sm.input.metrics)
    ref_path = Path(sm.params.reference)
    # No reference yet: every row is "new"; the `regress` check then fails and says how to accept one.
    reference = regress.load_reference(ref_path) if ref_path.exists() else current.iloc[0:0]
    report = regress.compare(reference, current, sm.params.tolerance)
    report["reference_file"] = str(ref_path)
    regress.write_report(report, str(Path(sm.output.csv).with_suffix("")))
    if not ref_path.exists():  # the summary line must not read PASS when nothing was compared
        md = Path(sm.output.md)
        write_text(md, f"**NO REFERENCE** ({ref_path} does not exist): every row is new. Check the values, "
                       f"then `python -m infdiff regress --accept` and commit the file.\n\n" + md.read_text())
    write_text(sm.output.current, current.to_csv(index=False))
    print(report.to_string())
