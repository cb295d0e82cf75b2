# Metrics: every JSON records the value and its full provenance (DESIGN.md §5).


rule evaluate:
    input:
        samples=f"{RESULTS}/samples/{{run}}/{{res}}px-{{steps}}steps/samples.npz",
        ref=lambda w: data_path(run_dataset(w.run), w.res, "ref"),
        run_info=f"{RESULTS}/runs/{{run}}/config.json",
    output:
        f"{RESULTS}/metrics/{{run}}/{{metric}}-{{res}}px-{{steps}}steps.json",
    params:
        evaluate=config["evaluate"],
        run_cfg=lambda w: run_cfg(w.run),
        kind="samples",
    log:
        f"{RESULTS}/logs/evaluate/{{run}}-{{metric}}-{{res}}px-{{steps}}steps.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{run}}-{{metric}}-{{res}}px-{{steps}}steps.tsv"
    threads: 1
    script:
        "../scripts/evaluate.py"


rule evaluate_noise:
    input:
        samples=f"{RESULTS}/samples/_noise/{{dataset}}/{{res}}px/samples.npz",
        ref=lambda w: data_path(w.dataset, w.res, "ref"),
    output:
        f"{RESULTS}/metrics/_noise/{{dataset}}/{{metric}}-{{res}}px.json",
    params:
        evaluate=config["evaluate"],
        run_cfg=None,
        kind="noise",
    log:
        f"{RESULTS}/logs/evaluate_noise/{{dataset}}-{{metric}}-{{res}}px.log",
    threads: 1
    script:
        "../scripts/evaluate.py"


rule evaluate_floor:
    input:
        samples=lambda w: data_path(w.dataset, w.res, "ref2"),
        ref=lambda w: data_path(w.dataset, w.res, "ref"),
    output:
        f"{RESULTS}/metrics/_floor/{{dataset}}/{{metric}}-{{res}}px.json",
    params:
        evaluate=config["evaluate"],
        run_cfg=None,
        kind="floor",
    log:
        f"{RESULTS}/logs/evaluate_floor/{{dataset}}-{{metric}}-{{res}}px.log",
    threads: 1
    script:
        "../scripts/evaluate.py"
