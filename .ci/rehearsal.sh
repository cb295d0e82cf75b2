#!/usr/bin/env bash
# The rehearsal preset end to end (workflow/presets/rehearsal.yaml): real photographs as files and as an
# LMDB, the autoencoder framework, DDIM, validation, FID/FID_CLIP through the real loading code with
# stand-in weight files. Run from the repository root after installing as the README says.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
python -m infdiff rehearsal-data --out data/rehearsal
python -m tests.standins data/rehearsal/weights
snakemake --cores all table1 figures --configfile workflow/presets/rehearsal.yaml
for f in results/rehearsal/tables/table1.csv results/rehearsal/tables/table1.md results/rehearsal/figures/index.md; do
  test -s "$f" || { echo "rehearsal: $f missing or empty" >&2; exit 1; }
done
cat results/rehearsal/tables/table1.md
echo "rehearsal: passed in $(( $(date +%s) - start )) s"
