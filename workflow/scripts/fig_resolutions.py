"""Snakemake script: Fig. 2, one model and the same seeds at every resolution, beside exact ground truth,
with the resolution-consistency PSNR of each resolution against the training resolution under the grid."""
import contextlib
from pathlib import Path

import pandas as pd

from infdiff.evaluate import read_images
from infdiff.methods import method_spec
from infdiff.metrics.consistency import consistency
from infdiff.report.figures import consistency_panel, image_grid_figure

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    fig, cfg = sm.params.fig, sm.params.run_cfg
    n, resolutions = fig["seeds"], fig["resolutions"]
    R, c = cfg["resolution"], sm.params.consistency
    low, low_seeds, _ = read_images(sm.input.train_samples)
    columns, seeds, records = [], None, {}
    for res, path, bench in zip(resolutions, sm.input.samples, sm.params.benchmarks):
        images, s, meta = read_images(path)
        if res > R and res % R == 0 and method_spec(cfg["method"]).any_resolution:
            # the Table 1 number (same function, same settings), over every seed sampled at both resolutions
            records[res] = consistency(images, s, low, low_seeds, seed=c["seed"], n_boot=c["n_boot"],
                                       max_db=c["max_db"])
            r = records[res]
            print(f"{res:5d} px: consistency {r['value']:.2f} dB [{r['ci_low']:.2f}, {r['ci_high']:.2f}] over "
                  f"{r['n_ref']} seeds")
        elif res != R:
            print(f"{res:5d} px: no consistency point (not k x {R} px with integer k >= 2, or the method samples "
                  "only at its training resolution)")
        if len(images) < n:
            raise ValueError(f"{path} holds {len(images)} samples, the figure needs {n} (sample.n_samples)")
        if seeds is not None and list(s[:n]) != seeds:
            raise ValueError(f"{path}: seeds {list(s[:n])} differ from the other resolutions' {seeds}")
        seeds = [int(x) for x in s[:n]]
        columns.append(images[:n])
        # wall time and peak memory of the sampling job (Snakemake benchmark: whole job, all its samples)
        if Path(bench).exists():
            b = pd.read_csv(bench, sep="\t").iloc[-1]
            print(f"{res:5d} px: {len(images)} samples in {b['s']:.1f} s wall ({b['s'] / len(images):.1f} s per "
                  f"sample), peak memory (max RSS) {b['max_rss']:.0f} MB")
    rows = [[col[i] for col in columns] for i in range(n)]
    labels = [f"seed {s}" for s in seeds]
    truth_note = ""
    ds = cfg["dataset"]
    if ds["kind"] == "shapes":
        # the dataset is a continuous function: render one training-like image exactly at each resolution
        from infdiff.data import ShapesDataset, split_seeds, to_uint8

        shapes = ShapesDataset.from_config(ds)
        seed = int(split_seeds("train", 1)[0])
        rows.append([to_uint8(shapes.render_batch([seed], r))[0] for r in resolutions])
        labels.append("data (exact)")
        truth_note = (" Bottom row: one training image of the procedural dataset rendered exactly at each "
                      "resolution, i.e. what infinite-resolution data looks like.")
    panel_note = ""
    if records:
        panel_note = (f" Plot: PSNR of each seed's sample at k × {R} px, averaged over k × k pixel blocks, against "
                      f"its {R} px sample (per seed, and the mean over every seed sampled at both resolutions with "
                      f"a 95% bootstrap interval, as Table 1's consistency; capped at {c['max_db']:g} dB). The "
                      "same picture at every resolution gives a high, flat curve.")
    image_grid_figure(
        rows, sm.output[0], title=f"∞-Diff: one model trained at {R} px, sampled at {resolutions[0]}-{resolutions[-1]} px",
        row_labels=labels, col_labels=[f"{r} px ({r // R}×)" if r >= R else f"{r} px" for r in resolutions],
        caption=(f"Each row is one seed sampled at every resolution by the same model (trained on {R} px images, "
                 f"1/{round(1 / cfg['ratio'])} of the pixels per step), so rows show how one sample refines "
                 f"with resolution. Images are embedded at their native pixel size.{truth_note}{panel_note}"),
        panel=consistency_panel(records, R, seeds) if records else None)
    print(f"wrote {sm.output[0]}")
