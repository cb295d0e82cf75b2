"""Snakemake script: Fig. 6, ∞-Diff beside each baseline with the same seeds at the same resolutions."""
import contextlib

from infdiff.evaluate import read_images
from infdiff.report.figures import image_grid_figure
from infdiff.report.rows import method_display

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    fig, runs = sm.params.fig, sm.params.runs
    n, resolutions = fig["n"], fig["resolutions"]
    paths = iter(sm.input.samples)
    rows, labels, resized = [], [], set()
    for run in runs:
        for res in resolutions:
            images, seeds, meta = read_images(next(paths))
            rows.append(list(images[:n]))
            name = method_display(sm.params.methods[run])
            if meta.get("resized_from"):
                resized.add(f"{name} ({meta['resized_from']} px)")
                name += f", resized from {meta['resized_from']} px"
            labels.append(f"{name}\n{res} px")
    note = (" Resized rows: " + ", ".join(sorted(resized)) + " cannot sample other resolutions; their training-"
            "resolution samples were resized (antialiased bicubic).") if resized else ""
    image_grid_figure(
        rows, sm.output[0], title="∞-Diff and the baselines: same seeds, same resolutions", row_labels=labels,
        col_labels=[f"seed {i + 1}" for i in range(n)],
        caption=("Every method was trained on the same images with the same image budget and samples the same "
                 f"first {n} seeds; nothing is cherry-picked." + note))
    print(f"wrote {sm.output[0]}")
