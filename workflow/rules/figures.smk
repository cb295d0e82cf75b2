# Figures: matplotlib PDFs made from saved samples and metrics (re-styling never retrains anything).
# A figure whose inputs this config cannot make (a metric without its weights, a run that is not
# configured) is left out of the DAG; results/figures/index.md lists every figure made and every one left
# out with the reason (common.smk decides which), and `snakemake -n figures` lists exactly what will run.

FIGDIR = f"{RESULTS}/figures"


rule fig_resolutions:
    input:
        samples=lambda w: [sample_path(FIG["run"], r) for r in FIG["resolutions"]["resolutions"]],
        # the consistency panel compares every resolution with the training resolution, seed by seed
        train_samples=lambda w: sample_path(FIG["run"], fig_run_cfg()["resolution"]),
    output:
        report(f"{FIGDIR}/fig02-resolutions.pdf", caption="../report/fig02-resolutions.rst",
               category="Figures", subcategory="Fig. 2"),
    params:
        fig=FIG["resolutions"],
        consistency=config["evaluate"]["consistency"],
        run_cfg=lambda w: fig_run_cfg(),
        # wall time and peak memory of each sampling job, from its Snakemake benchmark file
        benchmarks=lambda w: [rules.sample.benchmark.format(run=FIG["run"], res=r, steps=config["sample"]["steps"])
                              for r in FIG["resolutions"]["resolutions"]],
    log:
        f"{RESULTS}/logs/figures/fig02-resolutions.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_resolutions.py"


rule fig_processes:
    input:
        images=lambda w: data_path(fig_run_cfg()["dataset"]["name"], FIG["processes"]["resolution"], "ref"),
    output:
        report(f"{FIGDIR}/fig03-processes.pdf", caption="../report/fig03-processes.rst",
               category="Figures", subcategory="Fig. 3"),
    params:
        fig=FIG["processes"],
        run_cfg=lambda w: fig_run_cfg(),
    log:
        f"{RESULTS}/logs/figures/fig03-processes.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_processes.py"


rule fig_samples:
    input:
        samples=lambda w: [sample_path(FIG["run"], r) for r in FIG["samples"]["resolutions"]],
    output:
        report(f"{FIGDIR}/fig05-samples.pdf", caption="../report/fig05-samples.rst",
               category="Figures", subcategory="Figs. 5, 10-12"),
    params:
        fig=FIG["samples"],
        run=FIG["run"],
        sample=config["sample"],
    log:
        f"{RESULTS}/logs/figures/fig05-samples.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_samples.py"


rule fig_comparison:
    input:
        samples=lambda w: [sample_path(r, res) for r in comparison_runs() for res in FIG["comparison"]["resolutions"]],
    output:
        report(f"{FIGDIR}/fig06-comparison.pdf", caption="../report/fig06-comparison.rst",
               category="Figures", subcategory="Fig. 6"),
    params:
        fig=FIG["comparison"],
        runs=lambda w: comparison_runs(),
        methods=lambda w: {r: method_of(r) for r in comparison_runs()},
    log:
        f"{RESULTS}/logs/figures/fig06-comparison.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_comparison.py"


rule fig_steps:
    input:
        metrics=lambda w: [metric_path(FIG["run"], FIG["steps"]["metric"], res, steps)
                           for res in FIG["steps"]["resolutions"] for steps in FIG["steps"]["steps"]],
    output:
        report(f"{FIGDIR}/fig07-steps.pdf", caption="../report/fig07-steps.rst",
               category="Figures", subcategory="Fig. 7"),
    params:
        fig=FIG["steps"],
        sampler=config["sample"]["sampler"],
    log:
        f"{RESULTS}/logs/figures/fig07-steps.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_steps.py"


rule fig_superres:
    input:
        checkpoint=lambda w: checkpoint_of(EDIT_RUN),
        truth=lambda w: data_path(run_cfg(EDIT_RUN)["dataset"]["name"], FIG["superres"]["high"], "ref"),
    output:
        pdf=report(f"{FIGDIR}/fig08-superres.pdf", caption="../report/fig08-superres.rst", category="Figures",
                   subcategory="Fig. 8"),
        metrics=f"{RESULTS}/metrics/{EDIT_RUN}/superres-{FIG['superres']['low']}to{FIG['superres']['high']}px.json",
    params:
        weights=config["sample"]["checkpoint"],   # last or best EMA weights, as the samples
        fig=FIG["superres"],
        sample=config["sample"],
        device=config["device"],
    log:
        f"{RESULTS}/logs/figures/fig08-superres.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/fig08-superres.tsv"
    threads: 8
    resources:
        gpu=GPU,
        mem_mb=32000,
        runtime=240,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_superres.py"


rule fig_reconstruction:
    input:
        checkpoint=lambda w: checkpoint_of(EDIT_RUN),
        truth=lambda w: [data_path(run_cfg(EDIT_RUN)["dataset"]["name"], r, "ref") for r in reconstruction_resolutions()],
    output:
        pdf=report(f"{FIGDIR}/reconstruction.pdf", caption="../report/fig-reconstruction.rst", category="Figures",
                   subcategory="Reconstruction"),
        metrics=f"{RESULTS}/metrics/{EDIT_RUN}/reconstruction.json",
    params:
        weights=config["sample"]["checkpoint"],   # last or best EMA weights, as the samples
        fig=FIG["reconstruction"],
        sample=config["sample"],
        run=EDIT_RUN,
        device=config["device"],
    log:
        f"{RESULTS}/logs/figures/reconstruction.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/reconstruction.tsv"
    threads: 8
    resources:
        gpu=GPU,
        mem_mb=32000,
        runtime=240,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_reconstruction.py"


rule fig_inpainting:
    input:
        checkpoint=lambda w: checkpoint_of(EDIT_RUN),
        images=lambda w: data_path(run_cfg(EDIT_RUN)["dataset"]["name"], FIG["inpainting"]["resolution"], "ref"),
    output:
        report(f"{FIGDIR}/fig09-inpainting.pdf", caption="../report/fig09-inpainting.rst",
               category="Figures", subcategory="Fig. 9"),
    params:
        weights=config["sample"]["checkpoint"],   # last or best EMA weights, as the samples
        fig=FIG["inpainting"],
        sample=config["sample"],
        device=config["device"],
    log:
        f"{RESULTS}/logs/figures/fig09-inpainting.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/fig09-inpainting.tsv"
    threads: 8
    resources:
        gpu=GPU,
        mem_mb=32000,
        runtime=240,
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_inpainting.py"


rule fig_nearest:
    input:
        unpack(nearest_inputs),
    output:
        report(f"{FIGDIR}/fig13-nearest.pdf", caption="../report/fig13-nearest.rst",
               category="Figures", subcategory="Figs. 13-15"),
    params:
        fig=FIG["nearest"],
        run=FIG["run"],
    log:
        f"{RESULTS}/logs/figures/fig13-nearest.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_nearest.py"


rule fig_training:
    input:
        stats=lambda w: [rules.train.output.stats.format(run=r) for r in training_runs()],
    output:
        report(f"{FIGDIR}/training.pdf", caption="../report/training.rst",
               category="Figures", subcategory="Training"),
    params:
        runs=lambda w: training_runs(),
    log:
        f"{RESULTS}/logs/figures/training.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_training.py"


# Each metric against commit, from results/history.jsonl (appended by every evaluate).
rule fig_history:
    input:
        HISTORY,
    output:
        report(f"{FIGDIR}/history.pdf", caption="../report/history.rst",
               category="Figures", subcategory="History"),
    log:
        f"{RESULTS}/logs/figures/history.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/fig_history.py"


# What `figures` made and what it left out, with the reason: the persistent record of the choices above.
# Input and params are decided once, while the workflow is read, so that the index lists exactly the
# figures this run makes (a lazily evaluated param would see results/history.jsonl appear mid-run).
rule figures_index:
    input:
        list(figure_targets()),
    output:
        report(f"{FIGDIR}/index.md", caption="../report/figures-index.rst",
               category="Figures", subcategory="Index"),
    params:
        made={os.path.basename(pdf): what for pdf, what in figure_targets().items()},
        left_out=figures_left_out(),
        run=FIG["run"],
    log:
        f"{RESULTS}/logs/figures/index.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/figures_index.py"


rule figures:
    input:
        rules.figures_index.output,
