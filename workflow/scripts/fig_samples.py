"""Snakemake script: Figs. 5, 10-12, the first n samples at each resolution (never cherry-picked)."""
import contextlib
import math

from infdiff.evaluate import read_images
from infdiff.report.figures import image_grid_figure

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    n = sm.params.fig["n"]
    rows, labels, counts = [], [], []
    for path, res in zip(sm.input.samples, sm.params.fig["resolutions"]):
        images, seeds, _ = read_images(path)
        shown = images[:n]
        counts.append(len(shown))
        per_row = math.ceil(math.sqrt(n)) * 2          # two square blocks side by side read well on a page
        for r in range(0, len(shown), per_row):
            rows.append(list(shown[r:r + per_row]))
            labels.append(f"{res} px" if r == 0 else "")
    width = max(len(r) for r in rows)
    rows = [r + [None] * (width - len(r)) for r in rows]
    s = sm.params.sample
    image_grid_figure(
        rows, sm.output[0], title=f"Samples of {sm.params.run} (seeds {s['first_seed']}-{s['first_seed'] + n - 1})",
        row_labels=labels,
        caption=(f"Not cherry-picked: the first {n} seeds at every resolution, all from one model. The same seed "
                 f"gives the same picture at every resolution up to the detail that resolution can hold."))
    print(f"wrote {sm.output[0]} ({counts} images)")
