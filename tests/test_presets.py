"""The paper presets mean the paper: each one, resolved exactly as Snakemake resolves it, against the table of
the paper's and the official code's values (workflow/resources/paper_settings.yaml).

Snakemake reads config.yaml (`configfile:` in the Snakefile), deep-merges every --configfile over it, then the
Snakefile resolves run inheritance and validates with the schema's defaults; `infdiff.config.prepare_config`
does the same two steps. Every leaf of every run a table row or a figure scores must be covered by an entry of
the table (a value, "explicit in the preset", or an ignored name), so no CPU-demo value of config.yaml and no
schema default can reach a paper run unnoticed.
"""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from infdiff.config import deep_merge, prepare_config, row_sample_count, run_config, sample_set_size
from tests.conftest import REPO

SETTINGS = yaml.safe_load((REPO / "workflow/resources/paper_settings.yaml").read_text())
PRESETS = sorted(p.stem for p in (REPO / "workflow/presets").glob("paper-*.yaml"))


def _raw(preset: str) -> dict:
    return yaml.safe_load((REPO / "workflow/presets" / f"{preset}.yaml").read_text())


def resolve(preset_raw: dict) -> tuple[dict, dict]:
    """(the merged config before resolution, the resolved config), as Snakemake builds them."""
    merged = deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), preset_raw)
    return merged, prepare_config(copy.deepcopy(merged))


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _get(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            raise KeyError(key)
        d = d[part]
    return d


def _has(d: dict, key: str) -> bool:
    try:
        _get(d, key)
        return True
    except KeyError:
        return False


def _equal(a, b, tol: float | None) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=tol or 0.0)
    return a == b


def scored_runs(cfg: dict) -> set[str]:
    """Every run a table row scores or a figure shows."""
    runs = {row["run"] for spec in cfg["tables"].values() for row in spec["rows"]}
    fig = cfg["figures"]
    runs |= {fig["run"], fig["autoencoder_run"]} - {""}
    runs |= {r for r in fig["comparison"]["runs"] if r in cfg["runs"]}
    return runs | set(cfg["evaluate"]["lpips_nn"]["runs"])


def groups_of(run: str, rc: dict) -> list[str]:
    """The entry groups that apply to a resolved run, broadest first (later ones win on equal keys)."""
    groups = ["all", rc["method"]]
    if rc.get("framework") == "autoencoder":
        groups.append("autoencoder")
    return groups + [run]


def entries_for(preset: str, groups: list[str]) -> list[tuple[str, dict, str]]:
    """(key, entry, where) applying to a run, in increasing precedence."""
    out = []
    for where, runs in (("common", SETTINGS["common"]["runs"]), (preset, SETTINGS["presets"][preset]["runs"])):
        for g in groups:
            out += [(key, entry, f"{where}.runs.{g}.{key}") for key, entry in (runs.get(g) or {}).items()]
    return out


def explicit_provider(merged_runs: dict, preset_runs: dict, run: str, key: str) -> str | None:
    """None when the preset file itself writes ``key`` for ``run`` (or for the run it inherits it from);
    else where the value comes from ("config.yaml runs.<r>" or "the schema default")."""
    name = run
    while name:
        if _has(merged_runs[name] or {}, key):
            return None if _has(preset_runs.get(name) or {}, key) else f"config.yaml runs.{name}"
        name = (merged_runs[name] or {}).get("inherit")
    return "the schema default"


def check_preset(preset: str, preset_raw: dict) -> list[str]:
    """Every difference between the resolved preset and the table, as one line each (empty: it matches)."""
    merged, cfg = resolve(preset_raw)
    want = SETTINGS["presets"][preset]
    problems, used = [], set()

    for key, entry in {**SETTINGS["common"]["config"], **want.get("config", {})}.items():
        got = _get(cfg, key)
        if not _equal(got, entry["value"], entry.get("tol")):
            problems.append(f"{key} = {got!r}, paper_settings.yaml says {entry['value']!r} ({entry['source']})")

    for name in sorted(scored_runs(cfg)):
        rc = run_config(cfg, name)
        entries = entries_for(preset, groups_of(name, rc))
        if rc["resolution"] != want["resolution"]:
            problems.append(f"runs.{name}.resolution = {rc['resolution']}, expected {want['resolution']}")
        if rc["dataset"]["kind"] != want["dataset"]["kind"]:
            problems.append(f"runs.{name}: dataset kind {rc['dataset']['kind']}, expected {want['dataset']['kind']}")
        for leaf, got in _leaves(rc):
            if leaf in ("resolution", "dataset.kind"):
                continue
            covering = [(k, e, w) for k, e, w in entries if leaf == k or leaf.startswith(k + ".")]
            if not covering:
                problems.append(f"runs.{name}.{leaf} = {got!r} is not in paper_settings.yaml: add its paper or "
                                "official value with the source, or mark it explicit / ignore")
                continue
            longest = max(len(k) for k, _, _ in covering)
            key, entry, where = [c for c in covering if len(c[0]) == longest][-1]
            used.add(where)
            if "ignore" in entry:
                continue
            if entry.get("explicit"):
                source = explicit_provider(merged["runs"], preset_raw.get("runs") or {}, name, leaf)
                if source:
                    problems.append(f"runs.{name}.{leaf} = {got!r} comes from {source}, not from the preset "
                                    f"({entry['source']}): write it in {preset}.yaml")
            elif not _equal(got, entry["value"], entry.get("tol")):
                problems.append(f"runs.{name}.{leaf} = {got!r}, paper_settings.yaml {where} says "
                                f"{entry['value']!r} ({entry['source']})")

    tables = deep_merge(SETTINGS["common"]["tables"], want.get("tables", {}))
    for table, spec in tables.items():
        got_spec = cfg["tables"][table]
        runs = [row["run"] for row in got_spec["rows"]]
        if runs != spec["rows"]:
            problems.append(f"tables.{table} rows {runs}, paper_settings.yaml says {spec['rows']}")
        if got_spec["metrics"] != spec["metrics"]["value"]:
            problems.append(f"tables.{table}.metrics = {got_spec['metrics']}, expected {spec['metrics']['value']}")
        for row in got_spec["rows"]:
            if row["resolutions"] != [want["resolution"]]:
                problems.append(f"tables.{table}.rows[{row['run']}] resolutions {row['resolutions']}, "
                                f"expected [{want['resolution']}]")
            expected = (spec.get("row_n_samples") or {}).get(row["run"]) or spec["n_samples"]
            for res in row["resolutions"]:
                n = row_sample_count(cfg, table, row, res)
                if n != expected["value"]:
                    problems.append(f"tables.{table}.rows[{row['run']}] scores {n} samples at {res} px, expected "
                                    f"{expected['value']} ({expected['source']})")
                if sample_set_size(cfg, row["run"], res) < n:
                    problems.append(f"{row['run']} at {res} px draws fewer samples than tables.{table} scores")

    # an entry that covers nothing is a typo or a stale key: it would check nothing
    for where, runs in (("common", SETTINGS["common"]["runs"]), (preset, want["runs"])):
        for g, group in runs.items():
            for key in group:
                if f"{where}.runs.{g}.{key}" not in used:
                    problems.append(f"paper_settings.yaml {where}.runs.{g}.{key} covers no leaf of {preset}'s runs")
    return problems


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_resolves_to_the_papers_settings(preset):
    """Each preset, resolved over config.yaml as Snakemake does, has the paper's/official values everywhere."""
    assert preset in SETTINGS["presets"], f"{preset} has no entry in paper_settings.yaml"
    problems = check_preset(preset, _raw(preset))
    assert not problems, f"{preset}:\n  " + "\n  ".join(problems)


def test_every_preset_has_a_table_entry():
    assert PRESETS == sorted(SETTINGS["presets"]), "paper_settings.yaml and workflow/presets/ list other presets"


@pytest.mark.parametrize("change, expected", [
    # a CPU default leaking back in: the preset no longer states the sampler (config.yaml: ddpm)
    (lambda p: p["sample"].pop("sampler"), "sample.sampler = 'ddpm'"),
    # the ablations' precision: config.yaml sets fp32 on ablation_base
    (lambda p: p["runs"]["ablation_base"].pop("precision"), "runs.ablation_base.precision = 'fp32'"),
    # Adam's betas: the schema default (0.9, 0.999)
    (lambda p: p["runs"]["infdiff"]["train"].pop("betas"), "runs.infdiff.train.betas = [0.9, 0.999]"),
    # a value off the paper's
    (lambda p: p["runs"]["infdiff"]["train"].update(lr=1e-3), "runs.infdiff.train.lr = 0.001"),
    # Table 3 at the Table 1 count
    (lambda p: p["tables"]["table3"].pop("n_samples"), "tables.table3.rows[ablation_ratio_1] scores 50000 samples"),
    # a harness baseline size inherited from the CPU demo instead of stated
    (lambda p: p["runs"]["mlp_pixel"]["mlp_pixel"].pop("width"),
     "runs.mlp_pixel.mlp_pixel.width = 256 comes from config.yaml runs.mlp_pixel"),
    # the untrained row at the full count
    (lambda p: p["tables"]["table1"]["rows"][3].pop("n_samples"), "rows[infdiff_untrained] scores 50000"),
])
def test_a_broken_preset_is_named(change, expected):
    """The check fails, naming the key, when a preset loses a paper value (the shapes of real mistakes)."""
    raw = _raw("paper-ffhq256")
    change(raw)
    problems = check_preset("paper-ffhq256", raw)
    assert any(expected in p for p in problems), problems


def test_an_unlisted_key_is_refused():
    """A new config key that reaches a paper run without an entry in the table is reported, not passed."""
    settings = copy.deepcopy(SETTINGS)
    del settings["common"]["runs"]["all"]["train.num_workers"]
    original = SETTINGS["common"]
    try:
        SETTINGS["common"] = settings["common"]
        problems = check_preset("paper-ffhq256", _raw("paper-ffhq256"))
    finally:
        SETTINGS["common"] = original
    assert any("train.num_workers = 4 is not in paper_settings.yaml" in p for p in problems), problems


@pytest.mark.parametrize("preset", PRESETS)
def test_baselines_share_the_main_runs_recipe(preset):
    """The baselines sit in every preset's Table 1 at the preset's resolution and image budget; the U-ViT's
    transformer runs at 16 x 16 as in simple diffusion (its stem and each level halve R)."""
    _, cfg = resolve(_raw(preset))
    run = run_config(cfg, "infdiff")
    assert run["dataset"]["kind"] in ("folder", "lmdb") and run["dataset"]["path"]
    assert {"mlp_pixel", "simple_diffusion"} <= {r["run"] for r in cfg["tables"]["table1"]["rows"]}
    for name in ("mlp_pixel", "simple_diffusion"):
        base = run_config(cfg, name)
        assert base["resolution"] == run["resolution"] and base["train"] == run["train"]
    sd = run_config(cfg, "simple_diffusion")
    assert sd["resolution"] // 2 ** (len(sd["simple_diffusion"]["channels"]) + 1) == 16
