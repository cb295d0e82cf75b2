"""Snakemake script: Figs. 13-15, samples beside their nearest training images (memorisation check)."""
import contextlib

import numpy as np

from infdiff.evaluate import read_images
from infdiff.metrics.lpips_nn import nearest_neighbours
from infdiff.report.figures import image_grid_figure

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    fig = sm.params.fig
    samples, seeds, _ = read_images(sm.input.samples)
    train, _, _ = read_images(sm.input.train)
    if "lpips" in sm.input.keys():
        # LPIPS neighbours computed by the lpips_nn rule (AlexNet weights configured)
        with np.load(sm.input.lpips) as z:
            idx, dist, shown = z["indices"], z["distances"], z["samples"]
        name, unit = "LPIPS (AlexNet)", "LPIPS"
    else:
        # no LPIPS weights: exact pixel-space L2 over the whole training set, named as such on the figure
        shown = samples[: fig["n"]]
        res = nearest_neighbours(shown, train, k=fig["k"], distance="l2", prefilter=len(train))
        idx, dist = res["indices"], res["distances"]
        name, unit = "pixel L2 (LPIPS weights not configured)", "mean squared error"
    print(f"distance: {name}")
    n, k = min(fig["n"], len(shown)), min(fig["k"], idx.shape[1])
    rows = [[shown[i]] + [train[j] for j in idx[i, :k]] for i in range(n)]
    for i in range(n):
        print(f"sample {int(seeds[i])}: neighbours {idx[i, :k].tolist()} at {np.round(dist[i, :k], 4).tolist()}")
    image_grid_figure(
        rows, sm.output[0], title=f"Nearest training images of {sm.params.run}'s samples by {name}",
        col_labels=["sample"] + [f"neighbour {j + 1}" for j in range(k)], col_group_gaps=[1],
        row_labels=[f"{dist[i, 0]:.3g}" for i in range(n)],
        caption=(f"Left: the first {n} samples (not cherry-picked). Right: their {k} nearest of the {len(train)} "
                 f"training images by {name}; the row label is the distance ({unit}) to the nearest. Samples that "
                 f"copied training images would match their first neighbour."))
    print(f"wrote {sm.output[0]}")
