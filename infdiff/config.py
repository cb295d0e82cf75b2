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

# The schema lives with the workflow (DESIGN.md §2); the package finds it from an editable install.
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


# The run keys each method reads; run_config drops the other methods' sections (filled with schema
# defaults for every run) so that a run's config, and its hash, hold only what shapes its results.
METHOD_SECTIONS = {
    "infdiff": ("model", "diffusion", "ratio", "coords"),
    "mlp_pixel": ("mlp_pixel", "diffusion", "ratio", "coords"),
    "simple_diffusion": ("simple_diffusion",),
}


class ConfigError(ValueError):
    """A configuration problem, reported as one clear message before any work starts."""


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
    if not schema_path.exists():
        raise ConfigError(
            f"config schema not found at {schema_path}; install the repository in editable mode "
            "(pip install -e .) so the package can find workflow/schemas/")
    schema = yaml.safe_load(schema_path.read_text())
    validator = _default_filling_validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "<top level>"
        raise ConfigError(f"invalid config at {where}: {first.message}")
    check_semantics(config)
    return config


def check_semantics(config: dict) -> None:
    """Cross-key checks the JSON schema cannot express (dataset names, table rows, run sizes)."""
    datasets = config.get("datasets", {})
    runs = config.get("runs", {})
    for name, run in runs.items():
        if run.get("dataset") not in datasets:
            raise ConfigError(f"runs.{name}.dataset: '{run.get('dataset')}' is not under datasets "
                              f"(known: {', '.join(sorted(datasets)) or 'none'})")
        method = run.get("method", "infdiff")
        if method == "infdiff":
            _check_infdiff(name, run)
        elif method == "simple_diffusion":
            _check_simple_diffusion(name, run)

    for d_name, d in datasets.items():
        if d.get("kind") == "folder" and not d.get("path"):
            raise ConfigError(f"datasets.{d_name}: kind folder needs `path` (a folder or .zip of images)")
        if d.get("kind") == "shapes" and not d.get("train_size"):
            raise ConfigError(f"datasets.{d_name}: kind shapes needs an integer train_size")
        if d.get("min_shapes", 0) > d.get("max_shapes", 0) or d.get("min_size", 0) > d.get("max_size", 1):
            raise ConfigError(f"datasets.{d_name}: min_* must not exceed max_*")
    sampled = {s["resolution"] for s in config.get("sample", {}).get("n_samples", [])}
    for table, spec in config.get("tables", {}).items():
        for row in spec.get("rows", []):
            if row["run"] not in runs:
                raise ConfigError(f"tables.{table}.rows: run '{row['run']}' is not under runs "
                                  f"(known: {', '.join(sorted(runs))})")
            if runs[row["run"]].get("method") == "mlp_pixel":
                _check_mlp_pixel(row["run"], runs[row["run"]], config.get("sample", {}))
            missing = sorted(set(row["resolutions"]) - sampled)
            if missing:
                raise ConfigError(f"tables.{table}.rows[{row['run']}]: no sample.n_samples entry for "
                                  f"resolution(s) {missing}")
        if spec.get("same_image_budget", True):
            _check_image_budget(table, spec, runs)
        speed = spec.get("speedup")
        if speed and speed["run"] not in runs:
            raise ConfigError(f"tables.{table}.speedup.run: '{speed['run']}' is not under runs "
                              f"(known: {', '.join(sorted(runs))})")
        if speed and runs[speed["run"]].get("method") != "infdiff":
            raise ConfigError(f"tables.{table}.speedup.run: the ratio benchmark needs an infdiff run")
    _check_metrics(config)
    _check_figures(config)


def _check_figures(config: dict) -> None:
    """Figure settings that cannot work in any config: super-resolution factors and timesteps."""
    fig, runs = config.get("figures") or {}, config.get("runs", {})
    if not fig or fig.get("run") not in runs:
        return  # no ∞-Diff run to show: the workflow makes only the figures it can (see figures.smk)
    # resolutions without enough samples are not errors: figures.smk leaves such a figure out of the DAG
    sr = fig["superres"]
    if sr["high"] <= sr["low"] or sr["high"] % sr["low"]:
        raise ConfigError(f"figures.superres: high ({sr['high']}) must be a multiple of low ({sr['low']}) above it")
    for t in fig["inpainting"]["t_starts"] + [sr["t_start"]] + fig["processes"]["timesteps"]:
        T = runs[fig["run"]].get("diffusion", {}).get("timesteps", 1000)
        if t >= T:
            raise ConfigError(f"figures: timestep {t} is outside [0, {T - 1}] (runs.{fig['run']}.diffusion.timesteps)")


def used_metrics(config: dict) -> set[str]:
    """Every metric some target of this config computes: table columns, plus lpips_nn when it has runs."""
    used = {m for spec in config.get("tables", {}).values() if spec.get("rows") for m in spec.get("metrics", [])}
    if (config.get("evaluate", {}).get("lpips_nn") or {}).get("runs"):
        used.add("lpips_nn")
    return used


def _check_metrics(config: dict) -> None:
    """Sample counts against each metric's minimum, lpips_nn runs, regress tables and tolerances."""
    evaluate, runs = config.get("evaluate", {}), config.get("runs", {})
    counts = {int(s["resolution"]): int(s["n"]) for s in config.get("sample", {}).get("n_samples", [])}
    for table, spec in config.get("tables", {}).items():
        for metric in spec.get("metrics", []):
            minimum = (evaluate.get(metric) or {}).get("min_samples", 1)
            for row in spec.get("rows", []):
                short = sorted(r for r in row["resolutions"] if counts.get(r, 0) < minimum)
                if short:
                    # the paper's FID_CLIP uses 30k/50k samples: a smaller count is a different number
                    raise ConfigError(
                        f"tables.{table}: {metric} needs at least evaluate.{metric}.min_samples = {minimum} "
                        f"samples, but sample.n_samples gives {[counts.get(r, 0) for r in short]} at {short} px")
    for run in (evaluate.get("lpips_nn") or {}).get("runs", []):
        if run not in runs:
            raise ConfigError(f"evaluate.lpips_nn.runs: '{run}' is not under runs (known: {', '.join(sorted(runs))})")
    regress = config.get("regress", {})
    for table in regress.get("tables", []):
        spec = config.get("tables", {}).get(table) or {}
        if not spec.get("rows"):
            continue  # nothing to check there; the regress rule says so if every table is empty
        missing = sorted(set(spec.get("metrics", [])) - set(regress.get("tolerance", {})))
        if missing:
            raise ConfigError(f"regress.tolerance has no entry for {missing} (metrics of {table}); add e.g. "
                              f"regress.tolerance.{missing[0]}: {{rel: 0.05}}")


def _check_infdiff(name: str, run: dict) -> None:
    model = run.get("model", {})
    if model.get("kernel_size", 7) % 2 == 0:
        raise ConfigError(f"runs.{name}.model.kernel_size must be odd, got {model['kernel_size']}")
    grid, levels = model.get("grid_res", 16), len(model.get("unet_mults", [1]))
    if grid % (2 ** (levels - 1)):
        raise ConfigError(f"runs.{name}.model.grid_res={grid} must be divisible by 2**(len(unet_mults)-1)")


def _check_simple_diffusion(name: str, run: dict) -> None:
    sd, R = run.get("simple_diffusion", {}), run.get("resolution", 32)
    halvings = len(sd.get("channels", [32, 64])) + 1
    # the stem halves R, every conv level ends by halving it again; the transformer runs on what is left
    if R % (2 ** halvings):
        raise ConfigError(f"runs.{name}: resolution {R} must be divisible by 2**(len(simple_diffusion.channels)+1) "
                          f"= {2 ** halvings} (the stem and each level halve it)")
    if sd.get("schedule") == "interpolated" and sd.get("interpolate_from", 32) == R:
        raise ConfigError(f"runs.{name}.simple_diffusion.interpolate_from equals the resolution {R}: the "
                          "interpolated schedule would be the plain cosine one; use a lower resolution")
    lo = sd.get("multiscale_min", 32)
    if lo > R or R % lo or (R // lo) & (R // lo - 1):
        raise ConfigError(f"runs.{name}.simple_diffusion.multiscale_min={lo} must be R_train={R} divided by a "
                          "power of two (the loss levels are min, 2 min, .., R)")
    if sd.get("transformer_width", 256) % sd.get("heads", 4):
        raise ConfigError(f"runs.{name}.simple_diffusion.transformer_width must be divisible by heads")


def _check_mlp_pixel(name: str, run: dict, sample: dict) -> None:
    mp = run.get("mlp_pixel", {})
    T, steps = run.get("diffusion", {}).get("timesteps", 1000), sample.get("steps", 50)
    if mp.get("variant") == "as_described" and T != steps:
        raise ConfigError(
            f"runs.{name}: mlp_pixel variant as_described predicts I_(t-1) directly, so it is sampled with all "
            f"its diffusion.timesteps ({T}) steps, but sample.steps is {steps}; set runs.{name}.diffusion.timesteps "
            f"to {steps}")


def _check_image_budget(table: str, spec: dict, runs: dict) -> None:
    """Trained rows of a table must see the same number of images (train.steps x train.batch_size)."""
    budgets = {}
    for row in spec.get("rows", []):
        t = runs[row["run"]].get("train", {})
        if t.get("steps", 0) > 0:
            budgets[row["run"]] = t.get("steps", 0) * t.get("batch_size", 32)
    if len(set(budgets.values())) > 1:
        listed = ", ".join(f"{r}: {b}" for r, b in budgets.items())
        raise ConfigError(f"tables.{table}: rows see different numbers of training images ({listed}); give them "
                          f"the same train.steps x train.batch_size, or set tables.{table}.same_image_budget: false")


def check_data_paths(config: dict, datasets: list[str] | None = None) -> None:
    """Folder datasets used by a run must exist *before* any job starts (no half-run workflows).

    Checked separately from validation: presets name paths (``/data/ffhq``) that only exist on the
    machine that runs them, and a config can be validated anywhere.
    """
    used = datasets if datasets is not None else sorted({r["dataset"] for r in config.get("runs", {}).values()})
    for name in used:
        d = config["datasets"][name]
        if d.get("kind") == "folder" and not Path(d["path"]).exists():
            raise ConfigError(
                f"datasets.{name}.path: {d['path']} does not exist. Put the {name} images there (a folder "
                f"of png/jpg files or a .zip; they cannot be downloaded by this tool) or point to them with "
                f"--config 'datasets={{\"{name}\": {{\"kind\": \"folder\", \"path\": \"/your/path\"}}}}'")


def check_metric_weights(config: dict) -> None:
    """Weight files of every configured paper metric must exist *before* any job starts.

    Separate from validation for the same reason as :func:`check_data_paths`: presets name files that
    only exist on the machine that runs them. The message names the config key, the file and its source.
    """
    from infdiff.metrics.weights import MissingWeightsError, require_metric_weights

    try:
        require_metric_weights(used_metrics(config), (config.get("metrics") or {}).get("weights"))
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
    runs = config.get("runs", {})
    if name not in runs:
        raise ConfigError(f"unknown run '{name}' (known: {', '.join(sorted(runs)) or 'none'})")
    run = copy.deepcopy(runs[name])
    run.pop("inherit", None)
    own = METHOD_SECTIONS.get(run.get("method", "infdiff"), ())
    for key in {k for keys in METHOD_SECTIONS.values() for k in keys} - set(own):
        run.pop(key, None)
    run["name"] = name
    dataset_name = run["dataset"]
    run["dataset"] = {"name": dataset_name, **copy.deepcopy(config["datasets"][dataset_name])}
    return run


