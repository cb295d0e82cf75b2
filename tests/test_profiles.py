"""Execution profiles and rule resources: what Snakemake reads from profiles/default and
workflow/profiles/slurm, the GPU limit of a local run, and rules that a cluster can schedule (no
`workflow.cores`, a partition for every GPU rule). Fast: no job runs (the real SLURM run is tests/test_slurm.py)."""

import re
from unittest import mock

import pytest
import yaml

from tests.conftest import REPO

RULES = sorted((REPO / "workflow/rules").glob("*.smk"))
SLURM = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())


def _rule_blocks():
    """{rule name: its text} of every rule in workflow/rules/*.smk."""
    blocks = {}
    for path in RULES:
        parts = re.split(r"^(?:local)?rule (\w+):\n", path.read_text(), flags=re.M)
        blocks.update(dict(zip(parts[1::2], parts[2::2])))
    return blocks


def _cli_args(monkeypatch, *argv):
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)  # Snakemake looks for profiles/default beside the Snakefile it finds
    return parse_args(list(argv))[1]


def test_default_profile_is_read_and_leaves_the_cluster_profile_its_keys(monkeypatch):
    local = _cli_args(monkeypatch, "-n", "table1")
    assert local.rerun_incomplete and local.printshellcmds  # profiles/default/config.yaml was read
    # with the SLURM profile, the default (workflow) profile is read too and would replace its keys one by
    # one: it must hold none of the cluster's (cores, jobs, resources, threads)
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    assert not set(default) & {"cores", "jobs", "resources", "default-resources", "set-resources", "set-threads",
                               "executor", "max-threads"}


@pytest.mark.slurm
def test_the_cluster_profile_keeps_its_keys_beside_the_default_profile(monkeypatch):
    """Needs snakemake-executor-plugin-slurm (the slurm extra): CI runs it with the SLURM test."""
    cluster = _cli_args(monkeypatch, "-n", "--profile", "workflow/profiles/slurm", "table1")
    assert cluster.executor == "slurm" and cluster.retries == SLURM["retries"]
    assert cluster.set_resources["train"]["gpu"].value == SLURM["set-resources"]["train"]["gpu"]
    assert set(cluster.set_resources) == set(SLURM["set-resources"]) and set(cluster.set_threads) == set(SLURM["set-threads"])


def test_no_rule_needs_the_total_core_count():
    """`threads: workflow.cores` fails at parse time without --cores, which a SLURM run does not give."""
    for path in RULES:
        assert "workflow.cores" not in path.read_text(), path.name


def test_every_gpu_rule_has_the_clusters_gpu_partition_and_threads():
    blocks = _rule_blocks()
    gpu_rules = {name for name, text in blocks.items() if re.search(r"^\s+gpu=", text, re.M)}
    assert {"train", "train_latent", "sample", "evaluate", "reference_stats", "lpips_nn"} <= gpu_rules
    sets, threads = SLURM["set-resources"], SLURM["set-threads"]
    assert set(sets) | set(threads) <= set(blocks), "the SLURM profile names a rule that does not exist"
    default_partition = SLURM["default-resources"]["slurm_partition"]
    for rule in gpu_rules:
        assert sets.get(rule, {}).get("slurm_partition", default_partition) != default_partition, rule
        assert threads.get(rule, 1) > 1, rule
    # GPUs are the plugin's `gpu` resource; the plugin refuses --gres in slurm_extra
    assert "slurm_extra" not in str(SLURM) and "gres" not in str(SLURM)


def _global_gpu(cuda, config=None, resources=None):
    """The workflow's global `gpu` resource after reading the Snakefile locally, with CUDA as ``cuda``."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with mock.patch("infdiff.io.cuda_available", return_value=cuda), SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1, resources=resources or {}),
                          config_settings=ConfigSettings(config=config or {}), storage_settings=StorageSettings(),
                          snakefile=REPO / "Snakefile", workdir=REPO)
        res = wf._workflow.global_resources
        return res["gpu"].value if "gpu" in res else None


@pytest.mark.parametrize("cuda, config, resources, limit", [
    (True, None, None, 1),              # a local CUDA run: GPU jobs one at a time
    (False, None, None, None),          # CPU only: no limit, the gpu=1 jobs run side by side
    (True, {"device": "cpu"}, None, None),
    (True, None, {"gpu": 3}, 3),        # --resources gpu=3 on the command line replaces it
])
def test_a_local_cuda_run_limits_gpu_jobs(cuda, config, resources, limit):
    assert _global_gpu(cuda, config, resources) == limit


def test_cuda_is_asked_of_torch_only_where_a_gpu_device_node_exists(monkeypatch, tmp_path):
    import torch

    import infdiff.io as io

    monkeypatch.setattr(io, "GPU_DEVICE_NODES", (str(tmp_path / "nvidia[0-9]*"),))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert io.cuda_available() is False            # no node: no GPU, whatever torch would say
    (tmp_path / "nvidia0").touch()
    assert io.cuda_available() is True             # a node: torch decides
