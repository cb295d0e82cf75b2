#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment of infdiff.yaml, from the working directory: install
# this project exactly as the README's Quickstart does (every version from requirements/lock.txt).
set -euo pipefail
if [[ ! -f requirements/lock.txt || ! -f pyproject.toml ]]; then
    echo "infdiff.post-deploy.sh: no requirements/lock.txt and pyproject.toml in $(pwd): run snakemake with" \
         "--software-deployment-method conda from the infdiff-bench repository root" >&2
    exit 1
fi
python -m pip install -c requirements/lock.txt -e .
