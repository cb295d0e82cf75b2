# Training: one job per named run. A killed job resumes from <run>/state/<config sha>/latest.pt when re-run.


rule train:
    input:
        unpack(train_inputs),
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
    threads: TRAIN_THREADS
    priority: lambda w: train_priority(w.run)
    resources:
        gpu=GPU,  # the GPUs of this job (torchrun with one process each when > 1)
        mem_mb=64000,
        runtime=2880,  # minutes; a timed-out or pre-empted job resumes from latest.pt when retried
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/train.py"


# Stage 2 of an autoencoder run (framework: autoencoder): encode the training set with the stage-1 EMA
# encoder, normalise the latents (mean and std) and train the latent DDPM. Refuses a stage-1 checkpoint
# of another config. Short and fully seeded: a killed job starts again and ends with the same weights.
rule train_latent:
    input:
        checkpoint=rules.train.output.checkpoint,
        data=train_data,
    output:
        latent=f"{RESULTS}/runs/{{run}}/latent.pt",
        stats=f"{RESULTS}/runs/{{run}}/latent_stats.jsonl",
        summary=f"{RESULTS}/runs/{{run}}/latent.json",
    params:
        cfg=lambda w: run_cfg(w.run),
        device=config["device"],
        weights=config["sample"]["checkpoint"],   # the stage-1 EMA weights that encode (last or best)
    log:
        f"{RESULTS}/logs/train_latent/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_latent/{{run}}.tsv"
    # as a training job (TRAIN_THREADS): on a CPU one thread, so it starts beside another job as soon as its
    # stage 1 ends instead of waiting for two free cores (embedded default: 121 s on one thread, 73 s on two)
    threads: TRAIN_THREADS
    resources:
        gpu=GPU,
        mem_mb=32000,
        runtime=720,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/train_latent.py"
