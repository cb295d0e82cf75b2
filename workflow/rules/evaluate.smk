# Metrics: every JSON records the value and its full provenance (docs/architecture.md, "Results").


rule evaluate:
    input:
        samples=rules.sample.output.npz,
        ref=lambda w: reference_input(run_dataset(w.run), w.res, w.metric),
        run_info=rules.train.output.config,
        stage2=lambda w: stage2_summary(w.run),
    output:
        # {first}: empty (the whole sample set) or "-first<n>" (its first n samples, for a table scoring fewer)
        f"{RESULTS}/metrics/{{run}}/{{metric}}-{{res}}px-{{steps}}steps{{first}}.json",
    params:
        evaluate=config["evaluate"],
        metrics=config["metrics"],
        device=config["device"],
        history=HISTORY,
        run_cfg=lambda w: run_cfg(w.run),
        run=lambda w: w.run,
        steps=lambda w: int(w.steps),
        dataset=lambda w: run_dataset(w.run),
        kind="samples",
        first=scored_subset,
    log:
        f"{RESULTS}/logs/evaluate/{{run}}-{{metric}}-{{res}}px-{{steps}}steps{{first}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{run}}-{{metric}}-{{res}}px-{{steps}}steps{{first}}.tsv"
    threads: 1
    resources:
        gpu=lambda w: feature_metric_gpu(w.metric),
        mem_mb=64000,
        runtime=240,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/evaluate.py"


# Resolution consistency: a run's samples at k x its training resolution, area-downsampled, against its
# own samples of the same seeds at the training resolution (infdiff/metrics/consistency.py). The same
# path pattern and script as `evaluate`; the rule-level constraint keeps the two rules apart (the global
# {metric} constraint lists only the metrics scored against data, which this rule overrides).
rule evaluate_consistency:
    input:
        samples=rules.sample.output.npz,
        ref=lambda w: consistency_reference(w.run, w.steps),
        run_info=rules.train.output.config,
        stage2=lambda w: stage2_summary(w.run),
    output:
        rules.evaluate.output[0],
    wildcard_constraints:
        metric="consistency",
    params:
        evaluate=config["evaluate"],
        metrics=config["metrics"],
        device=config["device"],
        history=HISTORY,
        run_cfg=lambda w: run_cfg(w.run),
        run=lambda w: w.run,
        steps=lambda w: int(w.steps),
        dataset=lambda w: run_dataset(w.run),
        kind="samples",
        first=scored_subset,
    log:
        f"{RESULTS}/logs/evaluate_consistency/{{run}}-{{metric}}-{{res}}px-{{steps}}steps{{first}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_consistency/{{run}}-{{metric}}-{{res}}px-{{steps}}steps{{first}}.tsv"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/evaluate.py"


rule evaluate_noise:
    input:
        samples=rules.noise_samples.output.npz,
        ref=lambda w: reference_input(w.dataset, w.res, w.metric),
    output:
        f"{RESULTS}/metrics/_noise/{{dataset}}/{{metric}}-{{res}}px.json",
    params:
        evaluate=config["evaluate"],
        metrics=config["metrics"],
        device=config["device"],
        history=HISTORY,
        run_cfg=None,
        run="_noise",
        steps=0,
        dataset=lambda w: w.dataset,
        kind="noise",
        first=None,
    log:
        f"{RESULTS}/logs/evaluate_noise/{{dataset}}-{{metric}}-{{res}}px.log",
    threads: 1
    resources:
        gpu=lambda w: feature_metric_gpu(w.metric),
        mem_mb=64000,
        runtime=240,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/evaluate.py"


rule evaluate_floor:
    input:
        samples=lambda w: data_path(w.dataset, w.res, "ref2"),
        ref=lambda w: reference_input(w.dataset, w.res, w.metric),
    output:
        f"{RESULTS}/metrics/_floor/{{dataset}}/{{metric}}-{{res}}px.json",
    params:
        evaluate=config["evaluate"],
        metrics=config["metrics"],
        device=config["device"],
        history=HISTORY,
        run_cfg=None,
        run="_floor",
        steps=0,
        dataset=lambda w: w.dataset,
        kind="floor",
        first=None,
    log:
        f"{RESULTS}/logs/evaluate_floor/{{dataset}}-{{metric}}-{{res}}px.log",
    threads: 1
    resources:
        gpu=lambda w: feature_metric_gpu(w.metric),
        mem_mb=64000,
        runtime=240,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/evaluate.py"


# Feature statistics of a reference split for FID / FID_CLIP / KID, computed once, batch by batch from
# the memory-mapped stores ("full": train, val, ref and ref2 in turn). The file name carries a hash of
# dataset, split (and its definition), resolution, image count, extractor, preprocessing and weights, so a
# change of any of them makes a new file instead of silently reusing a stale one.
rule reference_stats:
    input:
        images=lambda w: reference_images(w.dataset, w.res, w.split),
    output:
        f"{RESULTS}/reference_stats/{{dataset}}-{{split}}-{{res}}px-{{extractor}}-{{key}}.npz",
    wildcard_constraints:
        split="train|val|ref|ref2|full",
    params:
        metrics=config["metrics"],
        dataset=lambda w: {"name": w.dataset, **config["datasets"][w.dataset]},
        n=lambda w: split_size(w.dataset, w.split, w.res),
        batch_size=lambda w: max(config["evaluate"][m]["batch_size"] for m, e in EXTRACTOR_OF.items() if e == w.extractor),
        device=config["device"],
    log:
        f"{RESULTS}/logs/reference_stats/{{dataset}}-{{split}}-{{res}}px-{{extractor}}-{{key}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/reference_stats/{{dataset}}-{{split}}-{{res}}px-{{extractor}}-{{key}}.tsv"
    threads: 8
    resources:
        gpu=GPU,
        mem_mb=64000,
        runtime=240,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/reference_stats.py"


# Nearest training images of a run's first samples (memorisation, paper Figs. 13-15), by LPIPS.
rule lpips_nn:
    input:
        unpack(lambda w: lpips_nn_inputs(w.run)),
    output:
        npz=f"{RESULTS}/metrics/{{run}}/lpips_nn.npz",
        grid=f"{RESULTS}/metrics/{{run}}/lpips_nn.png",
    params:
        settings=config["evaluate"]["lpips_nn"],
        metrics=config["metrics"],
        device=config["device"],
    log:
        f"{RESULTS}/logs/lpips_nn/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/lpips_nn/{{run}}.tsv"
    threads: 8
    resources:
        gpu=GPU,
        mem_mb=64000,
        runtime=480,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/lpips_nn.py"
