# Path helpers, run lookup and wildcard constraints. Functions live only here (DESIGN.md §2).

import copy

from infdiff.config import run_config

RESULTS = config["results"]


wildcard_constraints:
    run="|".join(sorted(config["runs"])) or "NO_RUNS",
    dataset="|".join(sorted(config["datasets"])) or "NO_DATASETS",
    split="train|ref|ref2",
    res=r"\d+",
    steps=r"\d+",
    metric="swd",


def run_cfg(run):
    """The self-contained config of a named run (dataset embedded), as the library consumes it."""
    return run_config(config, run)


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
    return config["runs"][run]["dataset"]


def sample_path(run, res, steps=None):
    steps = config["sample"]["steps"] if steps is None else steps
    return f"{RESULTS}/samples/{run}/{res}px-{steps}steps/samples.npz"


def metric_path(run, metric, res, steps=None):
    steps = config["sample"]["steps"] if steps is None else steps
    return f"{RESULTS}/metrics/{run}/{metric}-{res}px-{steps}steps.json"


def table_inputs(table):
    """Every metric JSON a table needs: its runs at their resolutions, plus noise and floor rows."""
    spec = config["tables"][table]
    paths = []
    for row in spec["rows"]:
        for res in row["resolutions"]:
            for metric in spec["metrics"]:
                paths.append(metric_path(row["run"], metric, res))
                ds = run_dataset(row["run"])
                if spec["noise"]:
                    paths.append(f"{RESULTS}/metrics/_noise/{ds}/{metric}-{res}px.json")
                if spec["floor"]:
                    paths.append(f"{RESULTS}/metrics/_floor/{ds}/{metric}-{res}px.json")
    return sorted(set(paths))
