# Speed benchmarks that tables report (results/benchmarks/, docs/architecture.md "Results and provenance"). Timings are ratios measured
# in one job, so machine noise hits every ratio alike.


rule train_step_ratios:
    output:
        f"{RESULTS}/benchmarks/{{table}}/train_step_ratios.json",
    params:
        spec=lambda w: config["tables"][w.table]["speedup"],
        cfg=lambda w: run_cfg(config["tables"][w.table]["speedup"]["run"]),
        device=config["device"],
    log:
        f"{RESULTS}/logs/train_step_ratios/{{table}}.log",
    threads: 8
    resources:
        gpu=GPU,
        mem_mb=16000,
        runtime=120,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/train_step_ratios.py"


# `snakemake --cores all bench`: the sparse operator against the dense depthwise conv, and the whole
# training step per coordinate ratio on the embedded default and on the paper's FFHQ-128 architecture.
rule bench_sparse_conv:
    output:
        f"{RESULTS}/benchmarks/bench/sparse_conv-{{res}}px.csv",
    log:
        f"{RESULTS}/logs/bench/sparse_conv-{{res}}px.log",
    params:
        script="benchmarks/bench_sparse.py",
        args=lambda w: ["--res", w.res, "--batch", "8", "--channels", "64"],
    threads: 8
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/bench.py"


rule bench_train_step:
    output:
        f"{RESULTS}/benchmarks/bench/train_step-{{arch}}.csv",
    log:
        f"{RESULTS}/logs/bench/train_step-{{arch}}.log",
    params:
        script="benchmarks/bench_train_step.py",
        args=lambda w: ["--arch", w.arch],
    wildcard_constraints:
        arch="embedded|ffhq128",
    threads: 8
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/bench.py"


rule bench:
    input:
        expand(rules.bench_sparse_conv.output, res=[64, 128]),
        expand(rules.bench_train_step.output, arch=["embedded", "ffhq128"]),
