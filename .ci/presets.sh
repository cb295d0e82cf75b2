#!/usr/bin/env bash
# CI: the preset loop (not part of the default pytest run). For each of the five paper presets, on fake data of
# its shapes and stand-in weight files: `snakemake -n table1 table2 table3 figures`, prepare_data of the train
# split, and 5 training steps of its ∞-Diff run through the train rule (tests/presets_loop.py says what it
# overrides). Prints PASS/FAIL per preset and stage with wall times; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m tests.presets_loop "$@"
