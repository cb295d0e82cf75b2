"""Configuration: named runs, inheritance, schema validation and the resolved per-run config.

The workflow validates `config.yaml` with Snakemake's ``validate()``; the CLI (usable without
Snakemake) goes through :func:`load_config`, which applies the *same* JSON schema with the same
default-filling semantics, so both entry points see identical resolved configs.

A run may say ``inherit: other``: its settings are deep-merged over ``other``'s. Inheritance is
resolved *before* validation, because filling schema defaults first would overwrite the parent's
values in the child (a child without ``ratio`` would get the default, not the parent's ratio).
"""

from __future__ import annotations

import copy

from pathlib import Path
from typing import Any

import yaml

from infdiff.methods.specs import METHODS, SpecError, method_spec
from infdiff.sources import SOURCE_KINDS

# The schema lives with the workflow (docs/architecture.md, "Layout"); the package finds it from an
# editable install.
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration problem, reported as one clear message before any work starts."""


def load_schema(schema_path: Path = SCHEMA_PATH) -> dict:
    """The workflow's JSON schema (the one home of every config default)."""
    if not schema_path.exists():
        raise ConfigError(
            f"config schema not found at {schema_path}; install the repository in editable mode "
            "(pip install -e .) so the package can find workflow/schemas/")
    return yaml.safe_load(schema_path.read_text())


def config_defaults(schema_path: Path = SCHEMA_PATH) -> dict:
    """The whole config as the schema fills an empty one (no datasets, runs or table rows)."""
    instance: dict = {}
    _default_filling_validator(load_schema(schema_path)).validate(instance)
    return instance


def section_defaults(section: str, schema_path: Path = SCHEMA_PATH) -> dict:
    """The schema defaults of ``$defs/<section>`` (e.g. "model"): what an empty section validates to."""
    schema = load_schema(schema_path)
    instance: dict = {}
    _default_filling_validator({"$defs": schema["$defs"], "$ref": f"#/$defs/{section}"}).validate(instance)
    return instance


def deep_merge(base: dict, over: dict) -> dict:
    """Return ``base`` with ``over`` merged in recursively (``over`` wins; neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_inheritance(runs: dict[str, dict]) -> dict[str, dict]:
    """Resolve ``inherit`` chains of named runs; unknown parents and cycles are :class:`ConfigError`."""
    resolved: dict[str, dict] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict:
        if name in resolved:
            return resolved[name]
        if name in chain:
            raise ConfigError(f"runs: inheritance cycle {' -> '.join(chain + (name,))}")
        run = runs[name] or {}
        if not isinstance(run, dict):
            raise ConfigError(f"runs.{name}: must be a mapping, got {type(run).__name__}")
        parent = run.get("inherit")
        if parent:
            if parent not in runs:
                raise ConfigError(
                    f"runs.{name}: inherit: '{parent}' is not a run (known runs: {', '.join(sorted(runs))})")
            merged = deep_merge(resolve(parent, chain + (name,)), run)
        else:
            merged = copy.deepcopy(run)
        merged.pop("inherit", None)
        resolved[name] = merged
        return merged

    for name in runs:
        resolve(name, ())
    return resolved


def _default_filling_validator(schema: dict):
    """A Draft 2020-12 validator that fills ``default`` values, like Snakemake's ``validate``."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, sub_schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub:
                    # deepcopy: a shared mutable default would alias nested dicts across runs
                    instance.setdefault(prop, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, properties, instance, sub_schema)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema)


def validate_config(config: dict, schema_path: Path = SCHEMA_PATH) -> dict:
    """Validate (and default-fill) ``config`` in place against the workflow schema; return it."""
    validator = _default_filling_validator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "<top level>"
        raise ConfigError(f"invalid config at {where}: {first.message}")
    check_semantics(config)
    return config


def check_semantics(config: dict) -> None:
    """Cross-key checks the JSON schema cannot express (methods, dataset names, table rows, run sizes).

    Runs on a validated config (defaults filled), so it indexes keys directly.
    """
    datasets, runs = config["datasets"], config["runs"]
    for name, run in runs.items():
        if run["dataset"] not in datasets:
            raise ConfigError(f"runs.{name}.dataset: '{run['dataset']}' is not under datasets "
                              f"(known: {', '.join(sorted(datasets)) or 'none'})")
        try:
            spec = method_spec(run["method"])
            if run["framework"] != "unconditional" and "framework" not in spec.sections:
                raise SpecError(f"runs.{name}: framework '{run['framework']}' needs a method that has one "
                                f"(spec sections of '{run['method']}': {', '.join(spec.sections)}); only "
                                "∞-Diff trains as a diffusion autoencoder")
            if spec.check is not None:
                spec.check(name, run, config)
        except SpecError as e:
            raise ConfigError(f"runs.{name}.method: {e}" if run["method"] not in METHODS else str(e)) from None

    for d_name, d in datasets.items():
        if d["kind"] in SOURCE_KINDS and not d["path"]:
            what = "an LMDB environment" if d["kind"] == "lmdb" else "a folder or .zip of images"
            raise ConfigError(f"datasets.{d_name}: kind {d['kind']} needs `path` ({what})")
        for key in ("train_size", "val_size"):
            if d["kind"] == "shapes" and not d[key]:
                raise ConfigError(f"datasets.{d_name}: kind shapes needs an integer {key} (a procedural "
                                  "split is infinite: null cannot mean all of it)")
        if d["min_shapes"] > d["max_shapes"] or d["min_size"] > d["max_size"]:
            raise ConfigError(f"datasets.{d_name}: min_* must not exceed max_*")
    if config["evaluate"]["reference_split"] == "full":
        used = sorted({r["dataset"] for r in runs.values()})
        procedural = [d for d in used if datasets[d]["kind"] == "shapes"]
        if procedural:
            raise ConfigError(f"evaluate.reference_split: full (statistics of the whole dataset) needs datasets of "
                              f"files, but {', '.join(procedural)} is procedural (kind shapes): an infinite "
                              "dataset has no full set; use reference_split: ref")
        for d in used:
            # "full" reads the train, val, ref and ref2 stores: a subset in one of them is not the full set
            subset = [k for k in ("train_size", "val_size") if datasets[d][k] is not None]
            if subset:
                raise ConfigError(f"evaluate.reference_split: full reads every prepared split of datasets.{d}, but "
                                  f"{' and '.join(f'{k}: {datasets[d][k]}' for k in subset)} prepares only a subset; "
                                  f"set {' and '.join(f'datasets.{d}.{k}: null' for k in subset)} (the whole split), "
                                  "or use reference_split: train or ref")
    sampled = {s["resolution"] for s in config["sample"]["n_samples"]}
    for table, spec in config["tables"].items():
        for row in spec["rows"]:
            if row["run"] not in runs:
                raise ConfigError(f"tables.{table}.rows: run '{row['run']}' is not under runs "
                                  f"(known: {', '.join(sorted(runs))})")
            missing = sorted(set(row["resolutions"]) - sampled)
            if missing:
                raise ConfigError(f"tables.{table}.rows[{row['run']}]: no sample.n_samples entry for "
                                  f"resolution(s) {missing}")
            _check_steps_within_chain(row["run"], runs[row["run"]], [config["sample"]["steps"]])
        if spec["same_image_budget"]:
            _check_image_budget(table, spec, runs)
        speed = spec.get("speedup")  # optional block: no schema default
        if speed and speed["run"] not in runs:
            raise ConfigError(f"tables.{table}.speedup.run: '{speed['run']}' is not under runs "
                              f"(known: {', '.join(sorted(runs))})")
        if speed and "ratio" not in method_spec(runs[speed["run"]]["method"]).sections:
            raise ConfigError(f"tables.{table}.speedup.run: the ratio benchmark needs a run whose method "
                              "trains on a coordinate subset (reads `ratio`)")
    _check_metrics(config)
    _check_figures(config)


def _check_steps_within_chain(name: str, run: dict, steps: list[int]) -> None:
    """A run of a discrete process (one that reads `diffusion`) cannot be sampled with more steps than
    its chain has (respacing picks distinct timesteps)."""
    if "diffusion" not in method_spec(run["method"]).sections:
        return
    T = run["diffusion"]["timesteps"]
    if max(steps) > T:
        raise ConfigError(f"runs.{name} is sampled with {max(steps)} steps but its chain has only "
                          f"diffusion.timesteps = {T}; lower sample.steps (or figures.steps.steps) or raise "
                          f"runs.{name}.diffusion.timesteps")


def _check_figures(config: dict) -> None:
    """Figure settings that cannot work in any config: super-resolution factors and timesteps."""
    fig, runs = config["figures"], config["runs"]
    ae = fig["autoencoder_run"]
    if ae and (ae not in runs or runs[ae]["framework"] != "autoencoder"):
        raise ConfigError(f"figures.autoencoder_run: '{ae}' is not a run with framework: autoencoder (runs: "
                          f"{', '.join(r for r in sorted(runs) if runs[r]['framework'] == 'autoencoder') or 'none'})")
    if fig["run"] not in runs:
        return  # no ∞-Diff run to show: the workflow makes only the figures it can (see figures.smk)
    # resolutions without enough samples are not errors: the workflow leaves such a figure out of the DAG
    sr = fig["superres"]
    if sr["high"] <= sr["low"] or sr["high"] % sr["low"]:
        raise ConfigError(f"figures.superres: high ({sr['high']}) must be a multiple of low ({sr['low']}) above it")
    _check_steps_within_chain(fig["run"], runs[fig["run"]], [config["sample"]["steps"], *fig["steps"]["steps"]])
    T = runs[fig["run"]]["diffusion"]["timesteps"]
    for t in fig["inpainting"]["t_starts"] + [sr["t_start"]] + fig["processes"]["timesteps"]:
        if t >= T:
            raise ConfigError(f"figures: timestep {t} is outside [0, {T - 1}] (runs.{fig['run']}.diffusion.timesteps)")


def used_metrics(config: dict) -> set[str]:
    """Every metric some target of this config computes: table columns, plus lpips_nn when it has runs."""
    used = {m for spec in config["tables"].values() if spec["rows"] for m in spec["metrics"]}
    if config["evaluate"]["lpips_nn"]["runs"]:
        used.add("lpips_nn")
    return used


def resolution_sample_count(config: dict, res: int) -> int | None:
    """sample.n_samples at ``res`` (None without an entry)."""
    for entry in config["sample"]["n_samples"]:
        if int(entry["resolution"]) == int(res):
            return int(entry["n"])
    return None


def row_sample_count(config: dict, table: str, row: dict, res: int) -> int:
    """Samples a table row scores at ``res``: the row's ``n_samples``, else its table's, else sample.n_samples.

    They are always the *first* ones of the run's sample set (seeds first_seed, first_seed + 1, ...): sample i
    depends on its seed only, so the first 10k of a 50k set are the 10k set (see :func:`sample_set_size`).
    """
    n = row.get("n_samples") or config["tables"][table].get("n_samples") or resolution_sample_count(config, res)
    if n is None:
        raise ConfigError(f"tables.{table}.rows[{row['run']}]: no sample.n_samples entry for resolution {res}")
    return int(n)


def sample_set_size(config: dict, run: str, res: int) -> int:
    """Samples drawn for ``run`` at ``res``: the most that any table row scores from them, else
    sample.n_samples (figures and resolutions no row scores). One set per run, resolution and step count;
    each table scores its first n (:func:`row_sample_count`), so a count is never drawn twice."""
    counts = [row_sample_count(config, table, row, res) for table, spec in config["tables"].items()
              for row in spec["rows"] if row["run"] == run and int(res) in row["resolutions"]]
    if counts:
        return max(counts)
    n = resolution_sample_count(config, res)
    if n is None:
        raise ConfigError(f"run {run}: no sample.n_samples entry for resolution {res}")
    return n


def _check_metrics(config: dict) -> None:
    """Sample counts against each metric's minimum, lpips_nn runs, regress tables and tolerances."""
    evaluate, runs = config["evaluate"], config["runs"]
    counts = {int(s["resolution"]): int(s["n"]) for s in config["sample"]["n_samples"]}
    for table, spec in config["tables"].items():
        for metric in spec["metrics"]:
            minimum = evaluate[metric]["min_samples"]
            for row in spec["rows"]:
                scored = {r: row_sample_count(config, table, row, r) for r in row["resolutions"]}
                short = sorted(r for r, n in scored.items() if n < minimum)
                if short:
                    # the paper's FID_CLIP uses 30k/50k samples: a smaller count is a different number
                    raise ConfigError(
                        f"tables.{table}.rows[{row['run']}]: {metric} needs at least evaluate.{metric}.min_samples "
                        f"= {minimum} samples, but it scores {[scored[r] for r in short]} at {short} px "
                        f"(tables.{table}.n_samples, the row's n_samples, or sample.n_samples)")
        _check_paired_metrics(table, spec, runs, counts)
    for run in evaluate["lpips_nn"]["runs"]:
        if run not in runs:
            raise ConfigError(f"evaluate.lpips_nn.runs: '{run}' is not under runs (known: {', '.join(sorted(runs))})")
    regress = config["regress"]
    for table in regress["tables"]:
        spec = config["tables"].get(table)  # a table the config does not define has no rows to check
        if not spec or not spec["rows"]:
            continue  # nothing to check there; the regress rule says so if every table is empty
        missing = sorted(set(spec["metrics"]) - set(regress["tolerance"]))
        if missing:
            raise ConfigError(f"regress.tolerance has no entry for {missing} (metrics of {table}); add e.g. "
                              f"regress.tolerance.{missing[0]}: {{rel: 0.05}}")


def _check_paired_metrics(table: str, spec: dict, runs: dict, counts: dict[int, int]) -> None:
    """A paired metric (consistency) compares each row resolution of a method that samples any resolution
    with the run's own samples at its training resolution R: every such resolution must be k R (integer
    k >= 2) or R itself (no value there), and R must be sampled (a sample.n_samples entry)."""
    from infdiff.metrics import PAIRED_METRICS

    for metric in (m for m in spec["metrics"] if m in PAIRED_METRICS):
        for row in spec["rows"]:
            run = runs[row["run"]]
            if not method_spec(run["method"]).any_resolution:
                continue  # samples only at its training resolution: no value (an empty cell in the table)
            R = run["resolution"]
            bad = sorted(r for r in row["resolutions"] if r != R and (r % R or r < R))
            if bad:
                raise ConfigError(f"tables.{table}.rows[{row['run']}]: {metric} area-downsamples a k x sample "
                                  f"to the training resolution {R} px, but {bad} px is not an integer multiple "
                                  f"of {R}; use multiples of {R} or drop {metric} from tables.{table}.metrics")
            if any(r != R for r in row["resolutions"]) and R not in counts:
                raise ConfigError(f"tables.{table}.rows[{row['run']}]: {metric} compares with the run's samples "
                                  f"at its training resolution {R} px, which has no sample.n_samples entry; "
                                  "add one")


def _check_image_budget(table: str, spec: dict, runs: dict) -> None:
    """Trained rows of a table must see the same number of images (train.steps x train.batch_size)."""
    budgets = {}
    for row in spec["rows"]:
        t = runs[row["run"]]["train"]
        if t["steps"] > 0:
            budgets[row["run"]] = t["steps"] * t["batch_size"]
    if len(set(budgets.values())) > 1:
        listed = ", ".join(f"{r}: {b}" for r, b in budgets.items())
        raise ConfigError(f"tables.{table}: rows see different numbers of training images ({listed}); give them "
                          f"the same train.steps x train.batch_size, or set tables.{table}.same_image_budget: false")


def n_samples(config: dict, resolution: int) -> int:
    """Images sampled (and procedural reference images rendered) at ``resolution`` (sample.n_samples)."""
    n = resolution_sample_count(config, resolution)
    if n is None:
        raise ValueError(f"no sample.n_samples entry for resolution {resolution}")
    return n


def split_size(config: dict, dataset: str, split: str, resolution: int) -> int | None:
    """Images in a prepared split of ``dataset`` at ``resolution``; None = the whole split of file data.

    train: ``train_size``; val: ``val_size``; ref and ref2: for procedural data as many images as
    samples at that resolution, for file data the whole split (the paper scores samples against the
    held-out images, all of them); full (file data only): None, all four splits.
    """
    ds = config["datasets"][dataset]
    if split in ("train", "val"):
        return ds[f"{split}_size"]
    if ds["kind"] == "shapes":
        return n_samples(config, resolution)
    return None


def check_data_paths(config: dict, datasets: list[str] | None = None) -> None:
    """Folder, zip and LMDB datasets used by a run must exist *before* any job starts (no half-run workflows).

    Checked separately from validation: presets name paths (``/data/ffhq``) that only exist on the
    machine that runs them, and a config can be validated anywhere.
    """
    used = datasets if datasets is not None else sorted({r["dataset"] for r in config["runs"].values()})
    for name in used:
        d = config["datasets"][name]
        if d["kind"] in SOURCE_KINDS and not Path(d["path"]).exists():
            what = ("an LMDB environment as LSUN ships it, e.g. church_outdoor_train_lmdb/" if d["kind"] == "lmdb"
                    else "a folder of png/jpg/webp files or a .zip")
            raise ConfigError(
                f"datasets.{name}.path: {d['path']} does not exist. Put the {name} images there ({what}; "
                f"they cannot be downloaded by this tool) or point to them with "
                f"--config 'datasets={{\"{name}\": {{\"kind\": \"{d['kind']}\", \"path\": \"/your/path\"}}}}'")


def check_metric_weights(config: dict) -> None:
    """Weight files of every configured paper metric must exist *before* any job starts.

    Separate from validation for the same reason as :func:`check_data_paths`: presets name files that
    only exist on the machine that runs them. The message names the config key, the file and its source.
    """
    from infdiff.metrics.weights import MissingWeightsError, require_metric_weights

    try:
        require_metric_weights(used_metrics(config), config["metrics"]["weights"])
    except MissingWeightsError as e:
        raise ConfigError(str(e)) from None


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config (optionally deep-merging ``overrides``), resolve runs, validate."""
    config: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        config = yaml.safe_load(path.read_text()) or {}
    if overrides:
        config = deep_merge(config, overrides)
    return prepare_config(config)


def prepare_config(config: dict) -> dict:
    """Resolve run inheritance, then validate with defaults (the order matters, see module doc)."""
    config = copy.deepcopy(config)
    config["runs"] = resolve_inheritance(config.get("runs") or {})
    return validate_config(config)


def run_config(config: dict, name: str) -> dict:
    """The self-contained config of run ``name``: everything training and sampling need.

    The dataset entry is embedded so that a checkpoint's config alone is enough to rebuild the
    method and to know what it was trained on.
    """
    runs = config["runs"]
    if name not in runs:
        raise ConfigError(f"unknown run '{name}' (known: {', '.join(sorted(runs)) or 'none'})")
    run = copy.deepcopy(runs[name])
    run.pop("inherit", None)
    # Every run is filled with every method's section (schema defaults); keep only this method's, so
    # that the run's config, and its hash, hold only what shapes its results.
    own = method_spec(run["method"]).sections
    for key in {k for spec in METHODS.values() for k in spec.sections} - set(own):
        run.pop(key, None)
    if run.get("framework") == "unconditional":
        run.pop("autoencoder", None)  # read only by the autoencoder framework: not part of this run
    run["name"] = name
    dataset_name = run["dataset"]
    run["dataset"] = {"name": dataset_name, **copy.deepcopy(config["datasets"][dataset_name])}
    return run


