"""Snakemake script: pure Gaussian noise images, the top row of the quality scale."""
import contextlib

from infdiff.sample import noise_images, save_samples

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    first = sm.params.sample["first_seed"]
    seeds = list(range(first, first + int(sm.params.n)))
    save_samples(noise_images(seeds, int(sm.wildcards.res)), seeds, sm.output.npz, sm.output.grid,
                 meta={"kind": "noise", "resolution": int(sm.wildcards.res)})
