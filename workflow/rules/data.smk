# Prepared data: the training split at a run's resolution and two disjoint reference splits per
# evaluation resolution (ref scores samples; ref vs ref2 is the real-vs-real floor).


rule prepare_data:
    output:
        f"{RESULTS}/data/{{dataset}}-{{res}}/{{split}}.npz",
    params:
        dataset=lambda w: {"name": w.dataset, **config["datasets"][w.dataset]},
        n=lambda w: split_size(w.dataset, w.split, w.res),
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}-{{res}}-{{split}}.log",
    threads: 1
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/prepare_data.py"
