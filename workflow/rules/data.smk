# Prepared data (infdiff/data.py): per dataset and resolution, the training split at a run's resolution,
# the validation split, and two disjoint reference splits per evaluation resolution (ref scores samples;
# ref vs ref2 is the real-vs-real floor). Each is a .npy store read as a memory map plus its JSON report
# (counts, skipped files with their errors, source, index range).


rule prepare_data:
    output:
        npy=f"{RESULTS}/data/{{dataset}}-{{res}}/{{split}}.npy",
        report=f"{RESULTS}/data/{{dataset}}-{{res}}/{{split}}.json",
    params:
        dataset=lambda w: {"name": w.dataset, **config["datasets"][w.dataset]},
        n=lambda w: split_size(w.dataset, w.split, w.res),
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}-{{res}}-{{split}}.log",
    # decoding processes (the store is the same for any number); Snakemake caps it at --cores
    threads: 8
    priority: lambda w: data_priority()
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/prepare_data.py"
