# Training: one job per named run. A killed job resumes from <run>/state/<config sha>/latest.pt when re-run.


rule train:
    input:
        train_data,
    output:
        checkpoint=f"{RESULTS}/runs/{{run}}/checkpoint.pt",
        stats=f"{RESULTS}/runs/{{run}}/stats.jsonl",
        config=f"{RESULTS}/runs/{{run}}/config.json",
    params:
        cfg=lambda w: run_cfg(w.run),
        device=config["device"],
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{run}}.tsv"
    threads: workflow.cores
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/train.py"
