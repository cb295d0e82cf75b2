# Sampling at any resolution from one trained model, and pure-noise "samples" for the table's top row.


rule sample:
    input:
        # the checkpoint, and the latent model of an autoencoder run (unconditional samples: z from it);
        # for a grid model above its training resolution, its training-resolution set to resize
        unpack(lambda w: {**model_inputs(w.run), **resize_source(w.run, w.res, w.steps)}),
    output:
        npz=f"{RESULTS}/samples/{{run}}/{{res}}px-{{steps}}steps/samples.npz",
        grid=f"{RESULTS}/samples/{{run}}/{{res}}px-{{steps}}steps/grid.png",
    params:
        # the most any table row scores (each scores the first n of them), else sample.n_samples
        n=lambda w: set_size(w.run, w.res),
        # only what shapes these images: adding a resolution to sample.n_samples re-samples nothing else
        sample={k: config["sample"][k] for k in ("sampler", "eta", "batch_size", "first_seed", "checkpoint")},
        device=config["device"],
    log:
        f"{RESULTS}/logs/sample/{{run}}-{{res}}px-{{steps}}steps.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample/{{run}}-{{res}}px-{{steps}}steps.tsv"
    # small resolutions run side by side on one core each; the big ones get two
    threads: lambda w: sample_threads(w.run, w.res, w.steps)
    priority: lambda w: sample_priority(w.run, w.res, w.steps)
    resources:
        gpu=GPU,
        mem_mb=32000,
        runtime=720,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/sample.py"


rule noise_samples:
    output:
        npz=f"{RESULTS}/samples/_noise/{{dataset}}/{{res}}px/samples.npz",
        grid=f"{RESULTS}/samples/_noise/{{dataset}}/{{res}}px/grid.png",
    params:
        n=lambda w: n_samples(w.res),
        sample={"first_seed": config["sample"]["first_seed"]},
    log:
        f"{RESULTS}/logs/noise_samples/{{dataset}}-{{res}}px.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/noise_samples.py"
