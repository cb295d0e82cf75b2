# Path helpers, run lookup and wildcard constraints. Functions live only here (docs/architecture.md).
# A path that one of the rules makes is read from that rule's outputs (rules.<name>.output), never retyped.
# The helpers below run only while the DAG is built, after every rule file has been read, so every
# rules.<name> exists by then.

import copy
import os

import infdiff.io as infdiff_io

from infdiff.config import n_samples as config_n_samples
from infdiff.config import resolution_sample_count, row_sample_count, run_config, sample_set_size
from infdiff.config import split_size as config_split_size
from infdiff.splits import FULL_PARTS, FULL_SPLIT
from infdiff.methods import method_spec
from infdiff.metrics import PAIRED_METRICS
# EXTRACTOR_OF: the feature metrics and the network each embeds images with (the weight key names it)
from infdiff.metrics.stats_key import EXTRACTOR_OF, configured_stats_key
from infdiff.metrics.weights import METRIC_WEIGHTS

RESULTS = config["results"]
# One conda environment for every rule: this project installed from requirements/lock.txt. It is used
# only with `--software-deployment-method conda` (README, "Environment"); the path is relative to the
# rule files, which all sit in workflow/rules/.
SOFTWARE_ENV = "../envs/infdiff.yaml"
# Every evaluate job appends its record here (the regression history across commits).
HISTORY = f"{RESULTS}/history.jsonl"

# GPUs a job that runs a network asks for (`resources: gpu=`): none with `device: cpu`, else one. A SLURM
# job gets them with --gpus (workflow/profiles/slurm, which sets train's count: > 1 runs torchrun with one
# process per GPU, read by the script as snakemake.resources.gpu). Jobs that run no network ask for 0.
GPU = 0 if config["device"] == "cpu" else 1


def feature_metric_gpu(metric):
    """GPUs of an evaluate job: the feature metrics embed images with a network; swd/consistency do not."""
    return GPU if metric in EXTRACTOR_OF else 0


# A local run on a CUDA machine runs its GPU jobs one at a time: they all use the first visible device, so
# `gpu` becomes a global resource of 1 (as `--resources gpu=1` would make it). `--resources gpu=N` on the
# command line replaces the limit. CPU-only machines get no limit: their gpu=1 jobs run side by side as
# --cores allows. Not in a profile: the default (workflow) profile is also read with --profile
# workflow/profiles/slurm, where a global gpu=1 would hold back all but one GPU job of the cluster.
if GPU and workflow.local_exec and "gpu" not in workflow.global_resources and infdiff_io.cuda_available():
    workflow.global_resources["gpu"] = 1


# Intra-op threads of a training job. With a GPU, 8 (its host-side work; the SLURM profile sets its own).
# On a CPU, one: `--cores N` then trains N runs side by side, which finishes a table's trainings sooner
# than one N-thread job after another, because the small networks of the embedded default do not scale
# to a second thread (README, "Performance"; measured by benchmarks/bench_threads.py). One run on its
# own trains faster with `--set-threads train=2`.
TRAIN_THREADS = 8 if GPU and infdiff_io.cuda_available() else 1

wildcard_constraints:
    # a run, optionally trained again under another seed: "<run>-seed<k>" (tables' `seeds:` lists)
    run="(" + ("|".join(sorted(config["runs"])) or "NO_RUNS") + r")(-seed\d+)?",
    table="|".join(sorted(config["tables"])) or "NO_TABLES",
    dataset="|".join(sorted(config["datasets"])) or "NO_DATASETS",
    # prepared splits; reference_stats also accepts "full" (all four, read in sequence)
    split="train|val|ref|ref2",
    res=r"\d+",
    steps=r"\d+",
    # empty: the whole sample set is scored; "-first<n>": its first n samples (a table scoring fewer than the
    # set holds, see scored_subset)
    first=r"(-first\d+)?",
    # metrics scored against data (evaluate, evaluate_noise, evaluate_floor); evaluate_consistency
    # overrides it with its own rule-level constraint (consistency compares a run with itself)
    metric="swd|fid|fid_clip|kid",
    extractor="inception|clip_vit_b_32",
    key="[0-9a-f]{16}",


def split_run(run):
    """'ablation_base-seed3' -> ('ablation_base', 3); 'ablation_base' -> ('ablation_base', None)."""
    base, sep, seed = run.rpartition("-seed")
    if sep and seed.isdigit() and base in config["runs"]:
        return base, int(seed)
    return run, None


def run_cfg(run):
    """The self-contained config of a named run (dataset embedded), as the library consumes it.

    A "-seed<k>" suffix is the same run trained with seed k (every seed-dependent draw changes).
    """
    base, seed = split_run(run)
    cfg = run_config(config, base)
    if seed is not None:
        cfg["name"], cfg["seed"] = run, seed
    return cfg


def n_samples(res):
    """sample.n_samples at resolution ``res``: procedural reference images rendered, and samples drawn where
    no table row scores another count (set_size)."""
    return config_n_samples(config, res)


def set_size(run, res):
    """Samples drawn for a run at ``res``: the most any table row scores from them (infdiff.config)."""
    return sample_set_size(config, split_run(run)[0], res)


def scored_subset(wildcards):
    """The n of a metric file "...-first<n>.json" (its first n samples), or None for the whole set."""
    return int(wildcards.first[len("-first"):]) if wildcards.first else None


def split_size(dataset, split, res):
    """Images in a prepared split; None = the whole split of a folder/lmdb dataset (infdiff.config.split_size)."""
    return config_split_size(config, dataset, split, res)


def data_path(dataset, res, split):
    """A prepared split of a dataset at one resolution (the .npy store; its JSON report lies beside it)."""
    return rules.prepare_data.output.npy.format(dataset=dataset, res=res, split=split)


def reference_images(dataset, res, split):
    """The prepared stores a reference split consists of: one, or for "full" all four in order."""
    parts = FULL_PARTS if split == FULL_SPLIT else [split]
    return [data_path(dataset, res, s) for s in parts]


def train_data(wildcards):
    cfg = run_cfg(wildcards.run)
    return data_path(cfg["dataset"]["name"], cfg["resolution"], "train")


def train_inputs(wildcards):
    """{"train": the training split} and, when the run validates (train.validation.every > 0), {"val": ...}."""
    cfg = run_cfg(wildcards.run)
    inputs = {"train": train_data(wildcards)}
    if cfg["train"]["validation"]["every"]:
        inputs["val"] = data_path(cfg["dataset"]["name"], cfg["resolution"], "val")
    return inputs


def run_dataset(run):
    return config["runs"][split_run(run)[0]]["dataset"]


def sample_path(run, res, steps=None):
    """A run's sample set at one resolution (steps: sample.steps unless given)."""
    steps = config["sample"]["steps"] if steps is None else steps
    return rules.sample.output.npz.format(run=run, res=res, steps=steps)


def metric_path(run, metric, res, steps=None, n=None):
    """The metric JSON of a run's sample set (steps: sample.steps unless given); consistency's is made by
    rule evaluate_consistency, at the same path pattern.

    n: score only the first n samples of the set (a table's or row's n_samples); the path names them
    ("-first<n>") only when the set holds more, so the scores of whole sets keep their paths.
    """
    steps = config["sample"]["steps"] if steps is None else steps
    held = set_size(run, res)
    if n is not None and int(n) > held:
        raise ValueError(f"{run} at {res} px: {n} samples asked, but its sample set holds {held}")
    first = "" if n is None or int(n) == held else f"-first{int(n)}"
    made_by = rules.evaluate_consistency if metric in PAIRED_METRICS else rules.evaluate
    return made_by.output[0].format(run=run, metric=metric, res=res, steps=steps, first=first)


def checkpoint_of(run):
    """A trained run's checkpoint."""
    return rules.train.output.checkpoint.format(run=run)


def is_autoencoder(run):
    """True for a run of the diffusion-autoencoder framework (two training stages)."""
    return run_cfg(run).get("framework") == "autoencoder"  # only ∞-Diff runs carry the key


def stage2_summary(run):
    """[the latent model's summary JSON] of an autoencoder run (its stage-2 steps and time), else []."""
    return [rules.train_latent.output.summary.format(run=run)] if is_autoencoder(run) else []


def model_inputs(run):
    """A trained model: its checkpoint and, for an autoencoder run, its stage-2 latent model."""
    inputs = {"checkpoint": checkpoint_of(run)}
    if is_autoencoder(run):
        inputs["latent"] = rules.train_latent.output.latent.format(run=run)
    return inputs


def seeded_runs(table, run):
    """The run names a table row trains: the run itself, or one "<run>-seed<k>" per listed seed."""
    seeds = config["tables"][table]["seeds"]
    return [f"{run}-seed{s}" for s in seeds] if seeds else [run]


def has_paired_value(run, res):
    """True when a paired metric (consistency) has a value for a run at ``res``: its method samples any
    resolution and ``res`` is not its training resolution (the table shows an empty cell otherwise)."""
    base = split_run(run)[0]
    return method_spec(method_of(base)).any_resolution and int(res) != config["runs"][base]["resolution"]


def resize_source(run, res, steps):
    """{"native": the run's sample set at its training resolution} when its method cannot sample at ``res``
    (a grid model, whose rows at other resolutions are resizes) and that set already holds the seeds ``res``
    needs (the first ones of the same seed range): the job resizes them instead of sampling them again.
    {} otherwise (the job samples; a grid model's set then is drawn at its training resolution and resized)."""
    base = split_run(run)[0]
    train_res = config["runs"][base]["resolution"]
    if method_spec(method_of(base)).any_resolution or int(res) == train_res:
        return {}
    if set_size(run, train_res) < set_size(run, res):
        return {}
    return {"native": sample_path(run, train_res, steps)}


def sample_threads(run, res, steps):
    """Threads of a sample job: two at 128 px and above, one below, and one for a job that only resizes."""
    return 1 if resize_source(run, res, steps) or int(res) < 128 else 2


# Job priorities (`priority:`; among the jobs that are ready, Snakemake starts those of higher priority
# first). On 2 cores Table 1 is bound by its work, not by its order, but the order still decides how much
# of the end runs on one core: with equal priorities a run measured at e1ae92a started ∞-Diff's training,
# the longest job, third, after two shorter ones, and its sampling jobs then ran alone at the end (75 s of
# 643 with a core idle, against 26 s of 618 in a run of the same code that happened to start it first;
# README, "Performance"). So a job's priority is the work it does or unblocks, in pixels drawn.
PRIORITY_PIXELS = 2**16   # one unit of priority: the pixels of one 256 px image


def sample_priority(run, res, steps):
    """A sample job's priority: the pixels it draws (its images x res^2, in units of PRIORITY_PIXELS), so the
    largest sets start first; 0 for a job that only resizes another set (resize_source)."""
    if resize_source(run, res, steps):
        return 0
    return set_size(run, res) * int(res) ** 2 // PRIORITY_PIXELS


def train_priority(run):
    """A training job's priority: the sampling work that waits for it (sample_priority summed over every
    resolution a table samples the run at), so the run whose samples cost the most trains first and its
    sampling is not what the end of the DAG waits for. Pixels, not seconds: a method's cost per pixel is not
    known before it runs (the per-pixel MLP's is ~2x ∞-Diff's on the AMX Xeon)."""
    base = split_run(run)[0]
    resolutions = {int(r) for spec in config["tables"].values() for row in spec["rows"] if row["run"] == base
                   for r in row["resolutions"]}
    return sum(sample_priority(run, r, config["sample"]["steps"]) for r in resolutions)


def data_priority():
    """A prepare_data job's priority: above every training job. A split unblocks training or scoring, and a
    reference split left for later (two threads, seconds) waits until both cores are free at once, holding
    back every evaluation of its resolution: at 4ff022d the 32 px reference split ran 558 s into a 621 s
    Table 1, and its five SWD jobs after it."""
    return 1 + max([train_priority(r) for r in config["runs"]], default=0)


def consistency_reference(run, steps):
    """What a run's consistency JSON compares its samples with: its own samples at its training resolution."""
    return sample_path(run, run_cfg(run)["resolution"], steps)


def table_inputs(table):
    """Every metric JSON a table needs: its runs at their resolutions, plus noise and floor rows.

    A paired metric (consistency) is requested only where it has a value (has_paired_value), and never for
    the noise and floor rows, which have no run to compare with. Each row scores the first
    row_sample_count(...) samples of its run's set (the row's, the table's or sample.n_samples).
    """
    spec = config["tables"][table]
    paths = []
    for row in spec["rows"]:
        for res in row["resolutions"]:
            for metric in spec["metrics"]:
                if metric in PAIRED_METRICS and not has_paired_value(row["run"], res):
                    continue
                n = row_sample_count(config, table, row, res)
                paths += [metric_path(r, metric, res, n=n) for r in seeded_runs(table, row["run"])]
                if metric in PAIRED_METRICS:
                    continue
                ds = run_dataset(row["run"])
                if spec["noise"]:
                    paths.append(rules.evaluate_noise.output[0].format(dataset=ds, metric=metric, res=res))
                if spec["floor"]:
                    paths.append(rules.evaluate_floor.output[0].format(dataset=ds, metric=metric, res=res))
    return sorted(set(paths))


def speedup_inputs(table):
    """The interleaved training-step benchmark a table shows (Table 3's speed-up column), if any."""
    spec = config["tables"][table].get("speedup")
    return [rules.train_step_ratios.output[0].format(table=table)] if spec else []


# ----------------------------------------------------------------------------------------------------
# Paper metrics: reference statistics (cached by a hash of everything that shapes them), regression
# ----------------------------------------------------------------------------------------------------


def ref_stats_key(dataset, split, res, extractor):
    """Cache key of a reference-statistics file: dataset entry, split, resolution, image count, extractor,
    its preprocessing and the sha256 of its weight file (infdiff.metrics.stats_key.reference_stats_key)."""
    ds = {"name": dataset, **config["datasets"][dataset]}
    return configured_stats_key(ds, split, int(res), split_size(dataset, split, res), extractor,
                                config["metrics"])


def ref_stats_path(dataset, split, res, extractor):
    """The cached feature statistics of a reference split (file name keyed by ref_stats_key)."""
    key = ref_stats_key(dataset, split, res, extractor)
    return rules.reference_stats.output[0].format(dataset=dataset, split=split, res=res, extractor=extractor,
                                                  key=key)


def reference_input(dataset, res, metric):
    """What a metric scores samples against: reference images (swd) or cached feature statistics."""
    if metric in EXTRACTOR_OF:
        return ref_stats_path(dataset, config["evaluate"]["reference_split"], res, EXTRACTOR_OF[metric])
    return data_path(dataset, res, "ref")


def regress_inputs():
    """Every metric JSON of the tables `regress` checks."""
    # regress.tables may name a table this config does not define: it has no rows to check
    paths = [p for t in config["regress"]["tables"] if t in config["tables"] and config["tables"][t]["rows"]
             for p in table_inputs(t)]
    if not paths:
        raise ValueError(f"regress.tables {config['regress']['tables']} have no rows in this config: nothing "
                         "to check")
    return sorted(set(paths))


def regress_reference():
    """The committed reference file, as an input when it exists (accepting new values re-runs the report)."""
    ref = config["regress"]["reference"]
    return [ref] if os.path.exists(ref) else []


def lpips_nn_inputs(run):
    """A run's samples at its training resolution and the training images they are compared with."""
    cfg = run_cfg(run)
    res = cfg["resolution"]
    return {"samples": sample_path(run, res), "train": data_path(cfg["dataset"]["name"], res, "train")}


# ----------------------------------------------------------------------------------------------------
# Methods: what a run's method can do, from the method spec table (infdiff/methods/specs.py)
# ----------------------------------------------------------------------------------------------------


def method_of(run):
    """The method name of a configured run."""
    return config["runs"][run]["method"]


def starts_part_way(run):
    """True when a run's method can start the reverse process part-way (super-resolution, inpainting)."""
    return method_spec(method_of(run)).starts_part_way


# ----------------------------------------------------------------------------------------------------
# Figures: which of them this config can make, and why any other is left out (results/figures/index.md)
# ----------------------------------------------------------------------------------------------------

FIG = config["figures"]
# The run of the figures that start from an image (Figs. 8 and 9, reconstructions): the autoencoder run
# when one is named (the paper's framework), else the figures' run.
EDIT_RUN = FIG["autoencoder_run"] or FIG["run"]

# Each figure, by the rule that draws it, with one line on what it shows (written into the index).
FIGURES = {
    "fig_resolutions": "Fig. 2: one model, the same seeds, sampled at every resolution (procedural data: beside "
                       "one training image rendered exactly at each); the log has each sampling job's time and memory",
    "fig_processes": "Fig. 3: white-noise diffusion vs the mollified process (Eq. 11) of one image, same noise "
                     "draw, at several t",
    "fig_samples": "Figs. 5, 10-12: the first seeds at every resolution (never cherry-picked)",
    "fig_comparison": "Fig. 6: ∞-Diff beside the baselines, same seeds, same resolutions (resized rows labelled)",
    "fig_steps": "Fig. 7: the metric against sampling steps at several resolutions, with 95% intervals",
    "fig_superres": "Fig. 8: super-resolution: input, bicubic, SDEdit and, for an autoencoder run, z only (the "
                    "paper's) and z + the carried DDIM encoding, exact truth, with PSNR/SSIM",
    "fig_reconstruction": "autoencoder reconstructions at several resolutions from the DDIM encoding and from fresh "
                          "noise, with PSNR/SSIM against the exact truth",
    "fig_inpainting": "Fig. 9: inpainting by reconstruction guidance from several t_s (an autoencoder run: from "
                      "the encoding at t_s)",
    "fig_nearest": "Figs. 13-15: samples beside their nearest training images (LPIPS when the AlexNet weights "
                   "are configured, else pixel L2, named on the figure)",
    "fig_training": "training loss of every Table 1 run",
    "fig_history": "every metric against commit, from results/history.jsonl",
}


def fig_run_cfg():
    """The resolved config of the run the figures show."""
    return run_cfg(FIG["run"])


def weights_present(metric):
    """True when a metric needs no weight file or its configured file exists."""
    key = METRIC_WEIGHTS.get(metric)
    return key is None or os.path.isfile(str(config["metrics"]["weights"].get(key) or ""))


def unsampled_resolutions(name, n=1, runs=None):
    """The resolutions figure ``name`` shows where a sample set of ``runs`` (default: the figures' run) holds
    fewer than n samples (no sample.n_samples entry: none)."""
    runs = runs or [FIG["run"]]
    def held(r):
        return 0 if resolution_sample_count(config, r) is None else min(set_size(run, r) for run in runs)
    return [r for r in FIG[name]["resolutions"] if held(r) < n]


def comparison_runs():
    """The runs of Fig. 6: the figures' run, then each configured baseline of figures.comparison.runs."""
    return [FIG["run"]] + [r for r in FIG["comparison"]["runs"] if r in config["runs"]]


def why_left_out(figure):
    """Why this config cannot make the figure drawn by rule ``figure``, and what to change; None if it can."""
    run = FIG["run"]
    if figure == "fig_history":
        return None if os.path.exists(HISTORY) else (
            f"{HISTORY} did not exist when this run started (every evaluate job appends to it): make a table, "
            "then run `snakemake --cores all figures` again")
    if run not in config["runs"]:
        return f"figures.run '{run}' is not under runs: set figures.run to a configured ∞-Diff run"
    short_of = {"fig_resolutions": ("resolutions", FIG["resolutions"]["seeds"]), "fig_samples": ("samples", 1),
                "fig_comparison": ("comparison", 1), "fig_steps": ("steps", 1)}
    if figure == "fig_comparison" and len(comparison_runs()) == 1:
        return (f"none of figures.comparison.runs {FIG['comparison']['runs']} is under runs: name configured "
                "baseline runs there")
    if figure == "fig_steps" and not weights_present(FIG["steps"]["metric"]):
        metric = FIG["steps"]["metric"]
        key = METRIC_WEIGHTS[metric]
        return (f"its metric {metric} needs metrics.weights.{key} = {config['metrics']['weights'].get(key)}, "
                "which does not exist: put the file there (README, \"Weight files\") or set figures.steps.metric: swd")
    if figure == "fig_resolutions" and fig_run_cfg()["resolution"] not in {int(s["resolution"]) for s in
                                                                          config["sample"]["n_samples"]}:
        R = fig_run_cfg()["resolution"]
        return (f"its consistency panel compares every resolution with the training resolution {R} px, which has "
                f"no sample.n_samples entry: add one for {R} px")
    if figure in short_of:
        name, n = short_of[figure]
        short = unsampled_resolutions(name, n, comparison_runs() if figure == "fig_comparison" else None)
        if short:
            return (f"sample.n_samples has fewer than {n} samples at {short} px (figures.{name}.resolutions): "
                    f"add entries with n >= {n} there")
    if figure in ("fig_superres", "fig_inpainting", "fig_reconstruction"):
        run = EDIT_RUN
    if figure == "fig_reconstruction":
        if not is_autoencoder(run):
            return (f"no diffusion-autoencoder run: set figures.autoencoder_run to a run with framework: "
                    f"autoencoder (run '{run}' is {config['runs'][run]['framework']})")
        counts = {int(s["resolution"]): int(s["n"]) for s in config["sample"]["n_samples"]}
        short = [r for r in reconstruction_resolutions() if counts.get(r, 0) < FIG["reconstruction"]["n"]]
        if short:
            return (f"sample.n_samples has fewer than figures.reconstruction.n = {FIG['reconstruction']['n']} "
                    f"reference images at {short} px: add entries there or lower the factors")
    if figure in ("fig_superres", "fig_inpainting", "fig_reconstruction") and not starts_part_way(run):
        return (f"run '{run}' (figures.autoencoder_run or figures.run) uses method '{method_of(run)}', which cannot "
                "start the reverse process part-way: name a run whose method can, such as ∞-Diff")
    return None


def reconstruction_resolutions():
    """The resolutions of the reconstruction figure: figures.reconstruction.factors x the training resolution."""
    return [f * run_cfg(EDIT_RUN)["resolution"] for f in FIG["reconstruction"]["factors"]]


def figure_output(figure):
    """The PDF that rule ``figure`` draws (its first output)."""
    return getattr(rules, figure).output[0]


def figure_targets():
    """{PDF: what it shows} for every figure this config can make."""
    return {figure_output(f): what for f, what in FIGURES.items() if why_left_out(f) is None}


def figures_left_out():
    """{PDF file name: why it is left out, and what to change} for every figure this config cannot make."""
    return {os.path.basename(figure_output(f)): why for f in FIGURES if (why := why_left_out(f)) is not None}


def nearest_inputs(wildcards):
    """Samples at the training resolution, the training images, and LPIPS neighbours when configured."""
    cfg = fig_run_cfg()
    res, ds = cfg["resolution"], cfg["dataset"]["name"]
    inputs = {"samples": sample_path(FIG["run"], res), "train": data_path(ds, res, "train")}
    if weights_present("lpips_nn") and FIG["run"] in config["evaluate"]["lpips_nn"]["runs"]:
        inputs["lpips"] = rules.lpips_nn.output.npz.format(run=FIG["run"])
    return inputs


def training_runs():
    """The runs whose training curves the training figure shows (figures.training.runs or Table 1's rows)."""
    runs = FIG["training"]["runs"] or [r["run"] for r in config["tables"]["table1"]["rows"]]
    return [r for r in runs if config["runs"][r]["train"]["steps"] > 0]
