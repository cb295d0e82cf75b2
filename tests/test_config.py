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


def test_missing_dataset_folder_is_clear_error(tmp_path):
    from infdiff.config import check_data_paths

    cfg = tiny_config({"datasets": {"real": {"kind": "folder", "path": str(tmp_path / "nope")}},
                       "runs": {"infdiff": {"dataset": "real"}}})
    with pytest.raises(ConfigError, match="nope does not exist"):
        check_data_paths(cfg)
    (tmp_path / "nope").mkdir()
    check_data_paths(cfg)


def test_run_config_keeps_only_its_methods_sections():
    cfg = tiny_config()
    assert {"model", "diffusion", "ratio"} <= set(run_config(cfg, "infdiff"))
    assert not {"mlp_pixel", "simple_diffusion"} & set(run_config(cfg, "infdiff"))
    mlp = run_config(cfg, "mlp_pixel")
    assert {"mlp_pixel", "diffusion", "ratio"} <= set(mlp) and "model" not in mlp
    sd = run_config(cfg, "simple_diffusion")
    assert "simple_diffusion" in sd and not {"model", "diffusion", "ratio", "mlp_pixel"} & set(sd)
    # the baselines inherit ∞-Diff's image budget and training resolution
    for run in ("mlp_pixel", "simple_diffusion"):
        assert run_config(cfg, run)["train"] == run_config(cfg, "infdiff")["train"]


@pytest.mark.parametrize("extra, match", [
    # a baseline trained on more images than ∞-Diff in the same table
    ({"runs": {"mlp_pixel": {"train": {"steps": 12}}}}, "different numbers of training images"),
    # a discrete chain cannot be sampled with more steps than it has (tiny sample.steps is 3)
    ({"runs": {"mlp_pixel_as_described": {"diffusion": {"timesteps": 2}}}},
     "runs.mlp_pixel_as_described is sampled with 3 steps but its chain has only diffusion.timesteps = 2"),
    # the U-ViT stem and levels halve R twice: 18 px does not divide
    ({"runs": {"simple_diffusion": {"resolution": 18}}}, "divisible by 2\\*\\*\\(len"),
    ({"runs": {"simple_diffusion": {"simple_diffusion": {"multiscale_min": 6}}}}, "multiscale_min"),
])
def test_baseline_cross_key_checks(extra, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(extra)


def test_differing_budgets_allowed_when_the_table_says_so():
    cfg = tiny_config({"runs": {"mlp_pixel": {"train": {"steps": 12}}},
                       "tables": {"table1": {"same_image_budget": False}}})
    assert cfg["runs"]["mlp_pixel"]["train"]["steps"] == 12


def test_embedded_default_needs_no_weights():
    from infdiff.config import check_metric_weights, load_config, used_metrics
    from tests.conftest import REPO

    cfg = load_config(REPO / "config.yaml")
    assert used_metrics(cfg) == {"swd", "consistency"}
    check_metric_weights(cfg)  # no weight file configured or needed: must not raise


@pytest.mark.parametrize("extra, message", [
    ({"tables": {"table1": {"metrics": ["swd", "fid"]}}, "evaluate": {"fid": {"min_samples": 5}}},
     r"rows\[infdiff\]: fid needs at least evaluate.fid.min_samples = 5 samples, but it scores \[4, 4\] at \[16, 32\] px"),
    ({"evaluate": {"lpips_nn": {"runs": ["nope"]}}}, "evaluate.lpips_nn.runs: 'nope' is not under runs"),
    ({"tables": {"table1": {"metrics": ["swd", "kid"]}}, "regress": {"tolerance": {"swd": {"rel": 0.1}}}},
     r"regress.tolerance has no entry for \['kid'\]"),
])
def test_metric_config_errors(extra, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(extra)


def test_missing_weight_file_names_key_file_and_source(tmp_path):
    from infdiff.config import check_metric_weights

    cfg = tiny_config({"tables": {"table1": {"metrics": ["swd", "fid_clip"]}},
                       "metrics": {"weights": {"clip_vit_b_32": str(tmp_path / "ViT-B-32.pt")}}})
    with pytest.raises(ConfigError) as err:
        check_metric_weights(cfg)
    msg = str(err.value)
    assert "metrics.weights.clip_vit_b_32" in msg and str(tmp_path / "ViT-B-32.pt") in msg
    assert "openaipublic" in msg and "never downloads" in msg
    (tmp_path / "ViT-B-32.pt").write_bytes(b"stand-in")
    check_metric_weights(cfg)  # present: passes (its contents are checked when it is loaded)
    cfg["evaluate"]["lpips_nn"]["runs"] = ["infdiff"]
    with pytest.raises(ConfigError, match="alexnet-owt-7be5be79.pth"):
        check_metric_weights(cfg)
