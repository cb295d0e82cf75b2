"""The cost model (infdiff/cost.py): what it counts, that it scales as FLOPs must, and its arithmetic."""

import warnings

import numpy as np
import pytest
import torch

from infdiff import cost
from infdiff.config import run_config
from infdiff.nets.blocks import SparseDepthwiseConv
from infdiff.sparse import SparseGeometry

from tests.conftest import REPO


@pytest.fixture(scope="module")
def default_config():
    """The embedded default, read the way the CLI reads it (config.yaml, nothing merged over it)."""
    return cost.load_workflow_config([], base=REPO / "config.yaml")


def _pairs_brute_force(idx: np.ndarray, R: int, k: int) -> int:
    """(point, sampled in-image neighbour within the k x k window) pairs, counted pixel by pixel."""
    h = k // 2
    total = 0
    for row in idx:
        mask = np.zeros((R, R), bool)
        mask.flat[row] = True
        for p in row:
            y, x = divmod(int(p), R)
            total += mask[max(0, y - h):y + h + 1, max(0, x - h):x + h + 1].sum()
    return int(total)


def test_sparse_operator_counted_by_its_formula():
    """The gather backend is invisible to FlopCounterMode: 2 P C forward, 3x that with both gradients."""
    R, k, C = 12, 5, 6
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(R * R, generator=g)[:36].sort().values for _ in range(2)])
    geom = SparseGeometry(idx, R, k)
    conv = SparseDepthwiseConv(C, k, backend="torch")
    v = torch.randn(2, idx.shape[1], C, requires_grad=True)
    pairs = _pairs_brute_force(idx.numpy(), R, k)
    with torch.no_grad():
        fwd, _ = cost.count_flops(lambda: conv(v, geom), conv, batch=2)
    both, _ = cost.count_flops(lambda: conv(v, geom).sum().backward(), conv, batch=2)
    assert fwd == 2 * pairs * C
    assert both == 3 * 2 * pairs * C


def test_sparse_matrix_product_counted_by_nonzeros():
    """A CSR product (the kNN points -> grid stencil) costs 2 nnz n, not the dense 2 m k n."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        S = torch.eye(50).to_sparse_csr()
    v = torch.randn(50, 4)
    flops, _ = cost.count_flops(lambda: S @ v, torch.nn.Module())
    assert flops == 2 * 50 * 4
    dense, _ = cost.count_flops(lambda: torch.eye(50) @ v, torch.nn.Module())
    assert dense == 2 * 50 * 50 * 4


def test_training_flops_linear_in_batch(default_config):
    """Counting at batch 1 and multiplying is what a batch-B step costs (here measured at B = 3)."""
    cfg = run_config(default_config, "infdiff")
    method = cost._method(cost._cost_key(cfg))
    R = cfg["resolution"]

    def measured(B):
        x0 = torch.rand(B, 3, R, R, generator=torch.Generator().manual_seed(1)) * 2 - 1
        return cost.count_flops(lambda: method.training_loss(x0, torch.Generator().manual_seed(0)).backward(),
                                method, B)[0]

    one, three = measured(1), measured(3)
    # exact for the dense parts; the sparse pair count varies with each image's random subset (~1%)
    assert three == pytest.approx(3 * one, rel=0.02)
    per_image, _ = cost.train_flops_per_image(cfg)
    assert per_image == pytest.approx(one, rel=0.02)


def test_training_flops_scale_with_the_ratio_of_pixels(default_config):
    """What FlopCounterMode counts is a constant (grid U-Net, mollifier on the full grid, kNN stencil per
    grid node) plus a part exactly linear in the number of points N; the sparse operators' pairs grow as
    N (1 + ratio (k^2 - 1)), less the image border."""
    cfg = run_config(default_config, "infdiff")
    method = cost._method(cost._cost_key(cfg))
    R, K = cfg["resolution"], cfg["model"]["kernel_size"] ** 2
    x0 = torch.rand(1, 3, R, R, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def split(ratio):
        method.ratio = ratio
        try:
            return cost.count_flops_split(
                lambda: method.training_loss(x0, torch.Generator().manual_seed(0)).backward(), method)[:2]
        finally:
            method.ratio = cfg["ratio"]

    (c16, s16), (c8, s8), (c4, s4) = split(1 / 16), split(1 / 8), split(1 / 4)   # N = 64, 128, 256
    assert c4 - c8 == 2 * (c8 - c16) > 0           # linear in N: equal steps per point
    expected = 2 * (1 + 0.25 * (K - 1)) / (1 + 0.125 * (K - 1))
    assert s4 / s8 == pytest.approx(expected, rel=0.15)
    assert s4 / s8 > 2.5                            # more than linear: denser windows at a higher ratio


def test_totals_and_gpu_hours(default_config):
    """total = steps x batch x per-image FLOPs; GPU-hours = FLOPs / throughput; sampling n x steps."""
    cfg = run_config(default_config, "infdiff")
    per_image, _ = cost.train_flops_per_image(cfg)
    spec = cost.JobSpec("train", "infdiff", 32, steps=10, batch=4, images=40)
    (job,) = cost._job_cost(default_config, spec, tflops=50.0)
    assert job.flops_per_step == 4 * per_image
    assert job.total_flops == 10 * 4 * per_image
    assert job.gpu_hours == pytest.approx(job.total_flops / 50e12 / 3600)
    per_step, fixed = cost.sample_flops_per_image(cfg, 32, default_config["sample"]["sampler"])
    (s,) = cost._job_cost(default_config, cost.JobSpec("sample", "infdiff", 32, steps=7, images=3), tflops=50.0)
    assert per_step > 0 and fixed >= 0
    assert s.total_flops == 3 * (7 * per_step + fixed)


def test_table1_jobs_of_the_default(default_config):
    """Every row trains once (the autoencoder row twice: stage 2), samples at each resolution, and the
    feature-free metrics (SWD, consistency) add no embedding jobs."""
    jobs = cost.target_jobs(default_config, "table1")
    rows = default_config["tables"]["table1"]["rows"]
    trains = [j.run for j in jobs if j.kind == "train"]
    assert trains == [r["run"] for r in rows]
    assert [j.run for j in jobs if j.kind == "train_latent"] == ["infdiff_ae"]
    samples = {(j.run, j.resolution) for j in jobs if j.kind == "sample"}
    assert samples == {(r["run"], res) for r in rows for res in r["resolutions"]}
    n = {e["resolution"]: e["n"] for e in default_config["sample"]["n_samples"]}
    assert all(j.images == n[j.resolution] for j in jobs if j.kind == "sample")
    assert not [j for j in jobs if j.kind == "features"]
    with pytest.raises(ValueError, match="unknown target"):
        cost.target_jobs(default_config, "table9")


def test_jobs_count_the_samples_each_table_scores():
    """Sample sets hold the most any row scores; a row's embeddings are its own count (paper-ffhq128:
    Table 1 50k, the untrained row 5000, Table 3 10k); a file dataset's splits are None (sized by files)."""
    config = cost.load_workflow_config([REPO / "workflow/presets/paper-ffhq128.yaml"], base=REPO / "config.yaml")
    t1 = {(j.kind, j.run): j.images for j in cost.target_jobs(config, "table1") if j.resolution == 128}
    assert t1[("sample", "infdiff_untrained")] == 5000 and t1[("sample", "infdiff")] == 50000
    assert t1[("features", "infdiff_untrained")] == 5000
    assert t1[("features", "_reference/ffhq-full")] is None and t1[("train_latent", "infdiff")] is None
    t3 = [j for j in cost.target_jobs(config, "table3") if j.kind == "features" and j.run == "ablation_ratio_1"]
    assert t3 and all(j.images == 10000 for j in t3)


class _Modulated(torch.nn.Module):
    """A toy of the per-pixel MLP's calls: ``modulations`` returns nested tensors (and a None) that
    ``forward`` reads, so counting both on the meta device needs nested arguments, results and gradients."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 2 * 16)
        self.fc = torch.nn.Linear(16, 16)

    def modulations(self, temb):
        return [tuple(self.proj(temb).unsqueeze(1).chunk(2, dim=-1)) + (None,) for _ in range(2)]

    def forward(self, v, temb, mods=None):
        mods = self.modulations(temb) if mods is None else mods
        for gain, shift, _ in mods:
            v = self.fc(v * gain + shift)
        return v


def test_offloaded_calls_count_what_the_cpu_counts():
    """A submodule run on the meta device (nested arguments and results, as the per-pixel MLP's
    ``modulations`` feeding its ``forward``) counts exactly the FLOPs of running it on the CPU, forward and
    backward."""
    torch.manual_seed(0)
    v, temb = torch.randn(3, 5, 16, requires_grad=True), torch.randn(3, 8)

    def step(m):
        return lambda: m(v, temb, m.modulations(temb)).sum().backward()

    cpu = _Modulated()
    expected = cost.count_flops(step(cpu), cpu)[0]
    offloaded = _Modulated()
    for call in ("forward", "modulations"):
        setattr(offloaded, call, cost._MetaCall.wrap(offloaded, call))
    assert cost.count_flops(step(offloaded), offloaded)[0] == expected > 0
    with torch.no_grad():                              # the sampling path: no autograd
        out = offloaded(v, temb, offloaded.modulations(temb))
    assert out.shape == (3, 5, 16) and out.device.type == "cpu"


def test_every_table1_method_is_counted(default_config):
    """Training and sampling FLOPs of every method of Table 1 (the per-pixel MLP computes its modulations
    outside its forward, once per sampling step)."""
    for row in default_config["tables"]["table1"]["rows"]:
        cfg = run_config(default_config, row["run"])
        assert cost.train_flops_per_image(cfg)[0] > 0
        assert cost.sample_flops_per_image(cfg, 32, "ddpm")[0] > 0
