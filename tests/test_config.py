"""Config resolution and validation: one clear error for bad input, before any work."""

import pytest

from infdiff.config import ConfigError, resolve_inheritance, run_config
from tests.conftest import tiny_config


def test_inheritance_deep_merges_and_keeps_parent_values():
    cfg = tiny_config({"runs": {"infdiff": {"ratio": 0.5}}})
    child = run_config(cfg, "infdiff_untrained")
    # the child inherits the parent's non-default ratio and overrides only train.steps
    assert child["ratio"] == 0.5
    assert child["train"]["steps"] == 0
    assert child["train"]["batch_size"] == cfg["runs"]["infdiff"]["train"]["batch_size"]
    assert child["dataset"]["name"] == "shapes" and child["dataset"]["kind"] == "shapes"


def test_unknown_parent_and_cycle():
    with pytest.raises(ConfigError, match="not a run"):
        resolve_inheritance({"a": {"inherit": "b"}})
    with pytest.raises(ConfigError, match="cycle"):
        resolve_inheritance({"a": {"inherit": "b"}, "b": {"inherit": "a"}})


@pytest.mark.parametrize("extra, match", [
    ({"runs": {"infdiff": {"ratoi": 0.5}}}, "ratoi"),                       # misspelt key
    ({"runs": {"infdiff": {"ratio": 0.0}}}, "ratio"),                      # outside (0, 1]
    ({"runs": {"infdiff": {"ratio": 1.5}}}, "ratio"),
    ({"sample": {"sampler": "euler"}}, "sampler"),
    ({"runs": {"infdiff": {"model": {"kernel_size": 6}}}}, "odd"),
    ({"runs": {"infdiff": {"dataset": "ffhq"}}}, "ffhq"),
    ({"datasets": {"real": {"kind": "folder"}}}, "path"),
    ({"tables": {"table1": {"rows": [{"run": "nope", "resolutions": [16]}]}}}, "nope"),
    ({"tables": {"table1": {"rows": [{"run": "infdiff", "resolutions": [48]}]}}}, "48"),
])
def test_bad_config_is_one_clear_error(extra, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(extra)


def test_defaults_filled_and_unknown_run():
    cfg = tiny_config()
    assert cfg["runs"]["infdiff"]["coords"] == "uniform"
    with pytest.raises(ConfigError, match="unknown run"):
        run_config(cfg, "nope")


def test_paper_presets_validate():
    import yaml

    from infdiff.config import deep_merge, prepare_config
    from tests.conftest import REPO

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    presets = sorted((REPO / "workflow/presets").glob("*.yaml"))
    assert len(presets) >= 5
    for preset in presets:
        cfg = prepare_config(deep_merge(base, yaml.safe_load(preset.read_text())))
        run = run_config(cfg, "infdiff")
        assert run["dataset"]["kind"] == "folder" and run["dataset"]["path"]


def test_missing_dataset_folder_is_clear_error(tmp_path):
    from infdiff.config import check_data_paths

    cfg = tiny_config({"datasets": {"real": {"kind": "folder", "path": str(tmp_path / "nope")}},
                       "runs": {"infdiff": {"dataset": "real"}}})
    with pytest.raises(ConfigError, match="nope does not exist"):
        check_data_paths(cfg)
    (tmp_path / "nope").mkdir()
    check_data_paths(cfg)
