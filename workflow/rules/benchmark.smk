# Speed benchmarks that tables report (DESIGN.md §5: results/benchmarks/). Timings are ratios measured
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
    threads: workflow.cores
    script:
        "../scripts/train_step_ratios.py"
