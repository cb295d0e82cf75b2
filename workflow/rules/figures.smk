# Figures: matplotlib PDFs made from saved samples and metrics (re-styling never retrains anything).
# A figure whose inputs this config cannot make (a metric without its weights, a run that is not
# configured) is left out of the DAG, and `snakemake -n figures` lists exactly what will run.

import sys

from infdiff.metrics.weights import METRIC_WEIGHTS

FIG = config["figures"]
FIGDIR = f"{RESULTS}/figures"


def _weights_present(metric):
    key = METRIC_WEIGHTS.get(metric)
    return key is None or os.path.isfile(str(config["metrics"]["weights"].get(key) or ""))


def _point_method(run):
    """Methods that sample any resolution and can start part-way (super-resolution, inpainting)."""
    return config["runs"][run].get("method", "infdiff") in ("infdiff", "mlp_pixel")


def fig_run_cfg():
    return run_cfg(FIG["run"])


def _sampled(name, n=1):
    """True when every resolution figure ``name`` shows has >= n samples drawn (sample.n_samples)."""
    counts = {int(s["resolution"]): int(s["n"]) for s in config["sample"]["n_samples"]}
    short = [r for r in FIG[name]["resolutions"] if counts.get(r, 0) < n]
    if short:
        print(f"figures: the {name} figure is left out: sample.n_samples has fewer than {n} samples at {short} px",
              file=sys.stderr)
    return not short


def figure_targets():
    """Every figure this config can make, and a note on stderr for each one it cannot."""
    run = FIG["run"]
    if run not in config["runs"]:
        print(f"figures: figures.run '{run}' is not under runs; only the history plot is made", file=sys.stderr)
        out = []
    else:
        out = [f"{FIGDIR}/fig03-processes.pdf", f"{FIGDIR}/fig13-nearest.pdf", f"{FIGDIR}/training.pdf"]
        if _sampled("resolutions", FIG["resolutions"]["seeds"]):
            out.append(f"{FIGDIR}/fig02-resolutions.pdf")
        if _sampled("samples"):
            out.append(f"{FIGDIR}/fig05-samples.pdf")
        if [r for r in FIG["comparison"]["runs"] if r in config["runs"]] and _sampled("comparison"):
            out.append(f"{FIGDIR}/fig06-comparison.pdf")
        if not _weights_present(FIG["steps"]["metric"]):
            print(f"figures: fig07-steps left out: its metric {FIG['steps']['metric']} needs "
                  f"metrics.weights.{METRIC_WEIGHTS[FIG['steps']['metric']]}, which is not there", file=sys.stderr)
        elif _sampled("steps"):
            out.append(f"{FIGDIR}/fig07-steps.pdf")
        if _point_method(run):
            out += [f"{FIGDIR}/fig08-superres.pdf", f"{FIGDIR}/fig09-inpainting.pdf"]
    if os.path.exists(f"{RESULTS}/history.jsonl"):
        out.append(f"{FIGDIR}/history.pdf")
    return out


def checkpoint_of(run):
    return f"{RESULTS}/runs/{run}/checkpoint.pt"


def nearest_inputs(wildcards):
    """Samples at the training resolution, the training images, and LPIPS neighbours when configured."""
    cfg = fig_run_cfg()
    res, ds = cfg["resolution"], cfg["dataset"]["name"]
    inputs = {"samples": sample_path(FIG["run"], res), "train": data_path(ds, res, "train")}
    if _weights_present("lpips_nn") and FIG["run"] in config["evaluate"]["lpips_nn"]["runs"]:
        inputs["lpips"] = f"{RESULTS}/metrics/{FIG['run']}/lpips_nn.npz"
    return inputs


def training_runs():
    runs = FIG["training"]["runs"] or [r["run"] for r in config["tables"]["table1"]["rows"]]
    return [r for r in runs if config["runs"][r]["train"]["steps"] > 0]


rule fig_resolutions:
    input:
        samples=lambda w: [sample_path(FIG["run"], r) for r in FIG["resolutions"]["resolutions"]],
    output:
        f"{FIGDIR}/fig02-resolutions.pdf",
    params:
        fig=FIG["resolutions"],
        run_cfg=lambda w: fig_run_cfg(),
        # wall time and peak memory of each sampling job, from its Snakemake benchmark file
        benchmarks=lambda w: [f"{RESULTS}/benchmarks/sample/{FIG['run']}-{r}px-{config['sample']['steps']}steps.tsv"
                              for r in FIG["resolutions"]["resolutions"]],
    log:
        f"{RESULTS}/logs/figures/fig02-resolutions.log",
    threads: 1
    script:
        "../scripts/fig_resolutions.py"


rule fig_processes:
    input:
        images=lambda w: data_path(fig_run_cfg()["dataset"]["name"], FIG["processes"]["resolution"], "ref"),
    output:
        f"{FIGDIR}/fig03-processes.pdf",
    params:
        fig=FIG["processes"],
        run_cfg=lambda w: fig_run_cfg(),
    log:
        f"{RESULTS}/logs/figures/fig03-processes.log",
    threads: 1
    script:
        "../scripts/fig_processes.py"


rule fig_samples:
    input:
        samples=lambda w: [sample_path(FIG["run"], r) for r in FIG["samples"]["resolutions"]],
    output:
        f"{FIGDIR}/fig05-samples.pdf",
    params:
        fig=FIG["samples"],
        run=FIG["run"],
        sample=config["sample"],
    log:
        f"{RESULTS}/logs/figures/fig05-samples.log",
    threads: 1
    script:
        "../scripts/fig_samples.py"


rule fig_comparison:
    input:
        samples=lambda w: [sample_path(r, res) for r in [FIG["run"]] + [b for b in FIG["comparison"]["runs"]
                                                                         if b in config["runs"]]
                           for res in FIG["comparison"]["resolutions"]],
    output:
        f"{FIGDIR}/fig06-comparison.pdf",
    params:
        fig=FIG["comparison"],
        runs=lambda w: [FIG["run"]] + [b for b in FIG["comparison"]["runs"] if b in config["runs"]],
        methods=lambda w: {r: config["runs"][r].get("method", "infdiff")
                           for r in [FIG["run"]] + FIG["comparison"]["runs"] if r in config["runs"]},
    log:
        f"{RESULTS}/logs/figures/fig06-comparison.log",
    threads: 1
    script:
        "../scripts/fig_comparison.py"


rule fig_steps:
    input:
        metrics=lambda w: [metric_path(FIG["run"], FIG["steps"]["metric"], res, steps)
                           for res in FIG["steps"]["resolutions"] for steps in FIG["steps"]["steps"]],
    output:
        f"{FIGDIR}/fig07-steps.pdf",
    params:
        fig=FIG["steps"],
        sampler=config["sample"]["sampler"],
    log:
        f"{RESULTS}/logs/figures/fig07-steps.log",
    threads: 1
    script:
        "../scripts/fig_steps.py"


rule fig_superres:
    input:
        checkpoint=lambda w: checkpoint_of(FIG["run"]),
        truth=lambda w: data_path(fig_run_cfg()["dataset"]["name"], FIG["superres"]["high"], "ref"),
    output:
        pdf=f"{FIGDIR}/fig08-superres.pdf",
        metrics=f"{RESULTS}/metrics/{FIG['run']}/superres-{FIG['superres']['low']}to{FIG['superres']['high']}px.json",
    params:
        fig=FIG["superres"],
        sample=config["sample"],
        device=config["device"],
    log:
        f"{RESULTS}/logs/figures/fig08-superres.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/fig08-superres.tsv"
    threads: workflow.cores
    script:
        "../scripts/fig_superres.py"


rule fig_inpainting:
    input:
        checkpoint=lambda w: checkpoint_of(FIG["run"]),
        images=lambda w: data_path(fig_run_cfg()["dataset"]["name"], FIG["inpainting"]["resolution"], "ref"),
    output:
        f"{FIGDIR}/fig09-inpainting.pdf",
    params:
        fig=FIG["inpainting"],
        sample=config["sample"],
        device=config["device"],
    log:
        f"{RESULTS}/logs/figures/fig09-inpainting.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/fig09-inpainting.tsv"
    threads: workflow.cores
    script:
        "../scripts/fig_inpainting.py"


rule fig_nearest:
    input:
        unpack(nearest_inputs),
    output:
        f"{FIGDIR}/fig13-nearest.pdf",
    params:
        fig=FIG["nearest"],
        run=FIG["run"],
    log:
        f"{RESULTS}/logs/figures/fig13-nearest.log",
    threads: 1
    script:
        "../scripts/fig_nearest.py"


rule fig_training:
    input:
        stats=lambda w: [f"{RESULTS}/runs/{r}/stats.jsonl" for r in training_runs()],
    output:
        f"{FIGDIR}/training.pdf",
    params:
        runs=lambda w: training_runs(),
    log:
        f"{RESULTS}/logs/figures/training.log",
    threads: 1
    script:
        "../scripts/fig_training.py"


# Each metric against commit, from results/history.jsonl (appended by every evaluate).
rule fig_history:
    input:
        f"{RESULTS}/history.jsonl",
    output:
        f"{FIGDIR}/history.pdf",
    log:
        f"{RESULTS}/logs/figures/history.log",
    threads: 1
    script:
        "../scripts/fig_history.py"


rule figures:
    input:
        figure_targets(),
