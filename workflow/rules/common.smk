# Path helpers, run lookup and wildcard constraints. Functions live only here (DESIGN.md §2).

import copy
import os

from infdiff.config import run_config
from infdiff.metrics.weights import METRIC_WEIGHTS

RESULTS = config["results"]


wildcard_constraints:
    # a run, optionally trained again under another seed: "<run>-seed<k>" (tables' `seeds:` lists)
    run="(" + ("|".join(sorted(config["runs"])) or "NO_RUNS") + r")(-seed\d+)?",
    table="|".join(sorted(config["tables"])) or "NO_TABLES",
    dataset="|".join(sorted(config["datasets"])) or "NO_DATASETS",
    split="train|ref|ref2",
    res=r"\d+",
    steps=r"\d+",
    metric="swd|fid|fid_clip|kid",
    extractor="inception|clip_vit_b_32",
    key="[0-9a-f]{16}",


def split_run(run):
    """'infdiff-seed3' -> ('infdiff', 3); 'infdiff' -> ('infdiff', None)."""
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
    """Images sampled (and reference images rendered) at resolution ``res``."""
    for entry in config["sample"]["n_samples"]:
        if int(entry["resolution"]) == int(res):
            return int(entry["n"])
    raise ValueError(f"no sample.n_samples entry for resolution {res}")


def split_size(dataset, split, res):
    """Images in a prepared split; None = the whole split of a folder dataset.

    Procedural data: train_size training images and, per resolution, as many reference images as
    samples. Folder data: the paper scores samples against the full dataset, so ref/ref2 are whole splits.
    """
    ds = config["datasets"][dataset]
    if split == "train":
        return ds["train_size"]
    return None if ds["kind"] == "folder" else n_samples(res)


def data_path(dataset, res, split):
    return f"{RESULTS}/data/{dataset}-{res}/{split}.npz"


def train_data(wildcards):
    cfg = run_cfg(wildcards.run)
    return data_path(cfg["dataset"]["name"], cfg["resolution"], "train")


def run_dataset(run):
    return config["runs"][split_run(run)[0]]["dataset"]


def sample_path(run, res, steps=None):
    steps = config["sample"]["steps"] if steps is None else steps
    return f"{RESULTS}/samples/{run}/{res}px-{steps}steps/samples.npz"


def metric_path(run, metric, res, steps=None):
    steps = config["sample"]["steps"] if steps is None else steps
    return f"{RESULTS}/metrics/{run}/{metric}-{res}px-{steps}steps.json"


def seeded_runs(table, run):
    """The run names a table row trains: the run itself, or one "<run>-seed<k>" per listed seed."""
    seeds = config["tables"][table].get("seeds") or []
    return [f"{run}-seed{s}" for s in seeds] if seeds else [run]


def table_inputs(table):
    """Every metric JSON a table needs: its runs at their resolutions, plus noise and floor rows."""
    spec = config["tables"][table]
    paths = []
    for row in spec["rows"]:
        for res in row["resolutions"]:
            for metric in spec["metrics"]:
                paths += [metric_path(r, metric, res) for r in seeded_runs(table, row["run"])]
                ds = run_dataset(row["run"])
                if spec["noise"]:
                    paths.append(f"{RESULTS}/metrics/_noise/{ds}/{metric}-{res}px.json")
                if spec["floor"]:
                    paths.append(f"{RESULTS}/metrics/_floor/{ds}/{metric}-{res}px.json")
    return sorted(set(paths))


def speedup_inputs(table):
    """The interleaved training-step benchmark a table shows (Table 3's speed-up column), if any."""
    spec = config["tables"][table].get("speedup")
    return [f"{RESULTS}/benchmarks/{table}/train_step_ratios.json"] if spec else []


# ----------------------------------------------------------------------------------------------------
# Paper metrics: reference statistics (cached by a hash of everything that shapes them), regression
# ----------------------------------------------------------------------------------------------------

# The feature metrics and the network each one embeds images with (the weight key names the network).
EXTRACTOR_OF = {m: w for m, w in METRIC_WEIGHTS.items() if m in ("fid", "fid_clip", "kid")}


def ref_stats_key(dataset, split, res, extractor):
    """Cache key of a reference-statistics file: dataset entry, split, resolution, image count, extractor,
    its preprocessing and the sha256 of its weight file (infdiff.metrics.fid.reference_stats_key)."""
    from infdiff.metrics.fid import configured_stats_key

    ds = {"name": dataset, **config["datasets"][dataset]}
    return configured_stats_key(ds, split, int(res), split_size(dataset, split, res), extractor,
                                config["metrics"])


def ref_stats_path(dataset, split, res, extractor):
    key = ref_stats_key(dataset, split, res, extractor)
    return f"{RESULTS}/reference_stats/{dataset}-{split}-{res}px-{extractor}-{key}.npz"


def reference_input(dataset, res, metric):
    """What a metric scores samples against: reference images (swd) or cached feature statistics."""
    if metric in EXTRACTOR_OF:
        return ref_stats_path(dataset, config["evaluate"]["reference_split"], res, EXTRACTOR_OF[metric])
    return data_path(dataset, res, "ref")


def regress_inputs():
    """Every metric JSON of the tables `regress` checks."""
    paths = [p for t in config["regress"]["tables"] if config["tables"][t].get("rows") for p in table_inputs(t)]
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
