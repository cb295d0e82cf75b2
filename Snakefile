"""infdiff-bench: reproduce, ablate and regression-check ∞-Diff with one Snakemake DAG.

    snakemake --cores all table1          # embedded default: CPU, offline, minutes
    snakemake --cores all table1 --configfile workflow/presets/paper-ffhq256.yaml

Targets go before --configfile (and --config, --software-deployment-method): those options take every
word after them as their values.

The config is resolved (run inheritance) and validated against workflow/schemas/config.schema.yaml
before any job runs; a misspelt key or a bad value stops here with one message.
"""

from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "config.yaml"

# `snakemake <targets> --report results/report.html`: every table and figure of those targets, with captions
# (workflow/report/*.rst) and the provenance of each.
report: "workflow/report/workflow.rst"

from infdiff.config import check_data_paths, check_metric_weights, check_semantics, resolve_inheritance

# Inheritance first, then defaults: filling defaults first would overwrite a parent's values in its
# children (see infdiff/config.py).
config["runs"] = resolve_inheritance(config.get("runs") or {})
validate(config, "workflow/schemas/config.schema.yaml")
check_semantics(config)
check_data_paths(config)
check_metric_weights(config)  # a configured FID/FID_CLIP/LPIPS without its weight file stops here


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        rules.table.output.csv.format(table="table1"),
    default_target: True
