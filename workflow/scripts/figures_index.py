"""Snakemake script: results/figures/index.md, every figure made (one line on what it shows) and every
figure this config leaves out, with the reason and what to change."""
import contextlib
from pathlib import Path

sm = snakemake  # noqa: F821  (injected by Snakemake)
with open(sm.log[0], "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
    made, left_out = sm.params.made, sm.params.left_out
    lines = ["# Figures", "",
             f"Made by `snakemake --cores all figures` for the run `{sm.params.run}` (config key `figures.run`). "
             "Each figure's log in results/logs/figures/ records what it shows in detail.", "",
             f"## Made ({len(made)})", ""]
    lines += (["| file | what it shows |", "|---|---|"] + [f"| `{name}` | {what} |" for name, what in made.items()]
              if made else ["None: see below for why."])
    lines += ["", f"## Left out ({len(left_out)})", ""]
    lines += [f"- `{name}`: {why}" for name, why in left_out.items()] or ["None: this config makes every figure."]
    Path(sm.output[0]).write_text("\n".join(lines) + "\n")
    print(f"wrote {sm.output[0]}: {len(made)} figures made, {len(left_out)} left out")
    for name, why in left_out.items():
        print(f"left out {name}: {why}")
