"""What a config costs: FLOPs per job of a target, images seen, and GPU-hours at a stated throughput.

``python -m infdiff cost --configfile workflow/presets/paper-ffhq256.yaml --target table1``

The config is read exactly as Snakemake resolves it (``config.yaml``, then each ``--configfile`` deep-merged
over it, then run inheritance and the schema's defaults: :func:`load_workflow_config`). The jobs of a
target are the rule instances its files need (see :func:`target_jobs`):

* ``train``: stage 1 of every run of the target's table rows (``train.steps x batch_size`` images);
* ``train_latent``: stage 2 of an autoencoder run: encoding the training split once, then
  ``autoencoder.latent.steps x batch_size`` latents;
* ``train_step_ratios``: Table 3's interleaved step timing, ``(warmup + repeats)`` steps per ratio;
* ``sample``: each row's run at each resolution: ``n`` images x ``steps`` network calls (plus, for an
  autoencoder run, ``n`` latents x ``autoencoder.latent.sample_steps`` latent-network calls);
* ``features``: the images a feature metric (FID, FID_CLIP, KID) embeds: samples, the noise row, the
  floor (ref2) and the reference statistics. SWD and consistency use no network and cost nothing here.

FLOPs are *measured*, never taken from a formula of the architecture: each quantity is one call under
``torch.utils.flop_counter.FlopCounterMode`` at batch 1 (forward + backward for training, forward for a
sampling step), then multiplied by the batch. FLOPs are linear in the batch (tests/test_cost.py checks it
on the embedded default's model). What FlopCounterMode counts and what this module adds or leaves out:

* counted by FlopCounterMode: matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``), convolutions and
  their backward, scaled-dot-product attention; 2 FLOPs per multiply-add.
* corrected: a product with a *sparse* (CSR) matrix, as the k-nearest-neighbour points -> grid
  interpolation uses, is counted by FlopCounterMode as the dense product of its shapes (34 GFLOP per
  image at 256 px instead of 6 MFLOP); :func:`_mm_flops` counts ``2 x nnz x columns`` instead.
* added by formula (:class:`_SparseOpCounter`), because they are gathers and ``addcmul`` or FFTs that
  FlopCounterMode does not see: the sparse depthwise operator (infdiff/sparse.py, Eq. 20). With P the
  number of (point, sampled neighbour) pairs and C channels, the gather backend costs 2 P C forward and
  2 P C (input gradient) + 2 P C (kernel gradient) backward. The dense backend's direct depthwise
  ``conv2d`` is counted by FlopCounterMode; its FFT path (kernels >= ``FFT_MIN_KERNEL`` taps, i.e. every
  sampling resolution well above the training one) costs, per (image, channel) plane of the padded
  size M = Mh x Mw, two real 2-D FFTs at 2.5 M log2 M each and 6 FLOPs per complex product of the
  Mh x (Mw / 2 + 1) bins (the kernel's own spectrum, C transforms, is counted once per image: an upper
  bound at batch > 1); backward through it is twice the forward.
* not counted (memory-bound, no multiply-adds of consequence): gathers and scatters of points
  (``gather_points``, the neighbour tables), the bilinear grid -> points read (``grid_sample``, ~8 C
  FLOPs per point), elementwise work (activations, norms, softmax outside SDPA, the loss), the
  optimiser and EMA updates (~15 FLOPs per parameter per step), the noise draws, data loading, and
  the validation loss (train.validation), whose evaluations are a small multiple of a step each.

The networks are evaluated on the CPU at batch 1 with their dense, shape-only parts (the grid U-Net, the
per-pixel MLP, the U-ViT; :data:`META_MODULES`) run on the ``meta`` device, which counts their FLOPs
without computing them: a paper model's training step is counted in about a second instead of 30 s.
Everything whose control flow depends on values (coordinate subsets, neighbour tables, kNN stencils)
runs for real.

Predicted GPU-hours are total FLOPs / the sustained throughput (``--tflops``, default
:data:`DEFAULT_TFLOPS`): an assumption, printed with every result, never a measurement of this code
(benchmarks/gpu_check.sh measures the real step time on a GPU).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from infdiff.config import n_samples, row_sample_count, sample_set_size, split_size

__all__ = ["DEFAULT_TFLOPS", "A100_BF16_PEAK_TFLOPS", "TARGETS", "META_MODULES", "load_workflow_config",
           "target_jobs", "JobSpec", "Job", "train_flops_per_image", "sample_flops_per_image",
           "estimate", "to_markdown", "to_json", "count_flops", "count_flops_split"]

#: A100 SXM dense bf16 tensor-core peak (NVIDIA A100 datasheet), TFLOP/s
A100_BF16_PEAK_TFLOPS = 312.0
#: Default sustained throughput: 30% of the A100's bf16 peak. An assumption (a usual model-FLOP
#: utilisation for convolutional U-Nets under AMP), not measured for ∞-Diff, whose gathers are memory-bound.
DEFAULT_TFLOPS = round(0.30 * A100_BF16_PEAK_TFLOPS, 1)
#: Targets and the tables they make (figures: the figure rules' sample sets, see target_jobs)
TARGETS = ("table1", "table2", "table3", "figures", "all")
#: Dense submodules evaluated on the meta device (their control flow depends on shapes only): the methods
#: the rest of the network calls them through, and children it calls directly (kept on the CPU)
META_MODULES = {"infdiff.nets.unet:GridUNet": (("forward", "encode"), ()),
                "baselines.mlp_pixel:PixelMLP": (("forward", "modulations"), ("time",)),
                "baselines.uvit:UViT": (("forward",), ())}
#: The feature networks' input sizes: clean-fid resizes to 299 px for Inception; CLIP ViT-B/32 reads 224 px
FEATURE_INPUT = {"inception": 299, "clip_vit_b_32": 224}
FEATURE_METRICS = {"fid": "inception", "kid": "inception", "fid_clip": "clip_vit_b_32"}


# ----------------------------------------------------------------------------------------------------
# The config, as Snakemake resolves it
# ----------------------------------------------------------------------------------------------------
def load_workflow_config(configfiles: Sequence[str | Path] = (), base: str | Path = "config.yaml") -> dict:
    """``base`` (the Snakefile's ``configfile:``) with each of ``configfiles`` deep-merged over it in order,
    as ``snakemake --configfile a.yaml b.yaml`` does; then inheritance and schema defaults
    (:func:`infdiff.config.prepare_config`, the Snakefile's order)."""
    from infdiff.config import ConfigError, deep_merge, prepare_config

    merged: dict = {}
    for path in [base, *configfiles]:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        merged = deep_merge(merged, yaml.safe_load(path.read_text()) or {})
    return prepare_config(merged)


# ----------------------------------------------------------------------------------------------------
# The jobs of a target (torch-free)
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """One rule instance a target needs.

    kind: train | train_latent | train_step_ratios | sample | features. ``images`` is None where the count
    is the size of a folder dataset's split, which only the files know (then the job is left out of the
    totals and says so).
    """

    kind: str
    run: str              # run name (a "-seed<k>" suffix for seeded table rows); "_noise" / "_floor" / dataset
    resolution: int
    steps: int = 0        # training steps, or sampling steps per image
    batch: int = 0        # training batch
    images: int | None = 0
    extractor: str = ""   # features: inception | clip_vit_b_32
    ratio: float | None = None   # train_step_ratios: the coordinate ratio of this part


def _base_run(config: dict, run: str) -> str:
    base, sep, seed = run.rpartition("-seed")
    return base if sep and seed.isdigit() and base in config["runs"] else run


def _train_jobs(config: dict, run: str) -> list[JobSpec]:
    from infdiff.config import run_config

    cfg = run_config(config, _base_run(config, run))
    R, tr = cfg["resolution"], cfg["train"]
    jobs = [JobSpec("train", run, R, steps=tr["steps"], batch=tr["batch_size"], images=tr["steps"] * tr["batch_size"])]
    if cfg.get("framework") == "autoencoder":
        lat = cfg["autoencoder"]["latent"]
        jobs.append(JobSpec("train_latent", run, R, steps=lat["steps"], batch=lat["batch_size"],
                            images=split_size(config, cfg["dataset"]["name"], "train", R)))
    return jobs


def _sample_job(config: dict, run: str, res: int, steps: int | None = None) -> JobSpec:
    """A run's sample set at ``res``: as many samples as the most any table row scores from it (the
    workflow's set_size, infdiff.config.sample_set_size)."""
    steps = config["sample"]["steps"] if steps is None else steps
    return JobSpec("sample", run, int(res), steps=int(steps),
                   images=sample_set_size(config, _base_run(config, run), res))


def _feature_jobs(config: dict, table: dict, run: str, res: int, scored: int) -> list[JobSpec]:
    """Embeddings of one row at one resolution: its ``scored`` samples, the noise row, the floor, the
    reference stats (a folder or LMDB split's size is known only from the files: None)."""
    ds = config["runs"][_base_run(config, run)]["dataset"]
    jobs = []
    for metric in table["metrics"]:
        ext = FEATURE_METRICS.get(metric)
        if ext is None:
            continue
        jobs.append(JobSpec("features", run, res, images=scored, extractor=ext))
        if table.get("noise"):
            jobs.append(JobSpec("features", f"_noise/{ds}", res, images=n_samples(config, res), extractor=ext))
        if table.get("floor"):
            jobs.append(JobSpec("features", f"_floor/{ds}", res, extractor=ext,
                                images=split_size(config, ds, "ref2", res)))
        split = config["evaluate"]["reference_split"]
        jobs.append(JobSpec("features", f"_reference/{ds}-{split}", res, extractor=ext,
                            images=split_size(config, ds, split, res)))
    return jobs


def _table_jobs(config: dict, name: str) -> list[JobSpec]:
    from infdiff.methods import method_spec

    table = config["tables"][name]
    jobs: list[JobSpec] = []
    for row in table["rows"]:
        runs = [f"{row['run']}-seed{s}" for s in table["seeds"]] if table["seeds"] else [row["run"]]
        base = config["runs"][row["run"]]
        for run in runs:
            jobs += _train_jobs(config, run)
            for res in row["resolutions"]:
                jobs.append(_sample_job(config, run, res))
                jobs += _feature_jobs(config, table, run, res, row_sample_count(config, name, row, res))
            if "consistency" in table["metrics"] and method_spec(base["method"]).any_resolution:
                jobs.append(_sample_job(config, run, base["resolution"]))   # the paired reference samples
    speed = table.get("speedup")
    if speed:
        cfg = config["runs"][speed["run"]]
        for ratio in speed["ratios"]:
            steps = speed["warmup"] + speed["repeats"]
            jobs.append(JobSpec("train_step_ratios", speed["run"], cfg["resolution"], steps=steps,
                                batch=cfg["train"]["batch_size"], images=steps * cfg["train"]["batch_size"],
                                ratio=float(ratio)))
    return jobs


def _figure_jobs(config: dict) -> list[JobSpec]:
    """The sample sets and trainings of the figure rules (workflow/rules/figures.smk) that sample from
    noise: Fig. 2 (resolutions), Figs. 5 and 10-12 (samples), Fig. 6 (comparison), Fig. 7 (steps, with its
    metric), Figs. 13-15 (nearest: samples at the training resolution) and the training curves. The
    figures that start from images (super-resolution, inpainting, reconstruction) are not estimated."""
    fig, runs = config["figures"], config["runs"]
    run = fig["run"]
    jobs: list[JobSpec] = []
    R = runs[run]["resolution"]
    sets = [(run, r) for r in fig["resolutions"]["resolutions"]] + [(run, R)]
    sets += [(run, r) for r in fig["samples"]["resolutions"]]
    comparison = [run] + [r for r in fig["comparison"]["runs"] if r in runs]
    sets += [(r, res) for r in comparison for res in fig["comparison"]["resolutions"]]
    for r, res in dict.fromkeys(sets):
        jobs.append(_sample_job(config, r, res))
    steps_metric = fig["steps"]["metric"]
    for res in fig["steps"]["resolutions"]:
        for steps in fig["steps"]["steps"]:
            jobs.append(_sample_job(config, run, res, steps))
        jobs += _feature_jobs(config, {"metrics": [steps_metric], "noise": False, "floor": False}, run, res,
                              sample_set_size(config, run, res))
    trained = fig["training"]["runs"] or [r["run"] for r in config["tables"]["table1"]["rows"]]
    for r in dict.fromkeys(comparison + ([fig["autoencoder_run"]] if fig["autoencoder_run"] else []) + trained):
        jobs += _train_jobs(config, r)
    return jobs


def target_jobs(config: dict, target: str) -> list[JobSpec]:
    """The distinct jobs of ``target`` (a table, ``figures`` or ``all``), in DAG-ish order, each once."""
    if target not in TARGETS:
        raise ValueError(f"unknown target '{target}' (known: {', '.join(TARGETS)})")
    if target == "all":
        names = [t for t in ("table1", "table2", "table3") if t in config["tables"]] + ["figures"]
    else:
        names = [target]
    jobs: list[JobSpec] = []
    for name in names:
        if name == "figures":
            jobs += _figure_jobs(config)
        elif name not in config["tables"]:
            raise ValueError(f"this config has no {name} (tables: {', '.join(sorted(config['tables']))})")
        else:
            jobs += _table_jobs(config, name)
    return list(dict.fromkeys(jobs))   # a sample set needed by two tables is one job


# ----------------------------------------------------------------------------------------------------
# Counting FLOPs
# ----------------------------------------------------------------------------------------------------
def _mm_flops(a, b, *args, out_val=None, **kwargs) -> int:
    """aten.mm: 2 m k n for dense operands; 2 nnz n for a sparse left (or right) operand."""
    import torch

    if a.layout != torch.strided:
        return 2 * int(a._nnz()) * int(b.shape[1])
    if b.layout != torch.strided:
        return 2 * int(b._nnz()) * int(a.shape[0])
    return 2 * int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1])


_mm_flops._get_raw = True  # FlopCounterMode passes the tensors, not their shapes


class _SparseOpCounter:
    """FLOPs of the sparse depthwise operators (formulas in the module docstring), counted per call.

    ``batch`` is the batch of the job measured at batch 1: the backend "auto" resolves to can depend on
    it (a neighbour table above TORCH_TABLE_LIMIT switches to the dense backend); where it would differ
    from the batch-1 choice the mismatch is recorded in ``notes``.
    """

    def __init__(self, model, batch: int):
        from infdiff.nets.blocks import SparseDepthwiseConv

        self.flops = 0
        self.batch = int(batch)
        self.notes: set[str] = set()
        # The blocks call ``operator`` (Eq. 20 without the bias), not ``forward``: it is wrapped per instance.
        self.wrapped = [m for m in model.modules() if isinstance(m, SparseDepthwiseConv)]
        for m in self.wrapped:
            m.operator = functools.partial(self._counted, m, type(m).operator.__get__(m))

    def _counted(self, module, operator, v, geom):
        self._count(module, v, geom)
        return operator(v, geom)

    def _count(self, module, v, geom) -> None:
        import torch

        from infdiff import sparse as S

        C = v.shape[-1]
        grad = torch.is_grad_enabled() and (v.requires_grad or module.weight.requires_grad)
        backend = S._check_backend(geom, module.backend, C, grad)
        at_batch = S._check_backend(S.SparseGeometry(geom.idx[:1].expand(self.batch, -1), geom.R, geom.k),
                                    module.backend, C, grad)
        gathers = S.GATHER_BACKENDS                # the same useful work, counted alike
        if at_batch != backend and not (at_batch in gathers and backend in gathers):
            self.notes.add(f"sparse backend at batch {self.batch} is '{at_batch}', counted as '{backend}' (batch 1)")
        if backend in gathers:
            # (point, sampled neighbour) pairs: sum of window counts (the compiled kernels also multiply
            # the zero rows of missing neighbours; the count is of the operator's useful work)
            pairs = int(geom.count.sum())
            fwd = 2 * pairs * C
            self.flops += fwd * (3 if grad else 1)
        elif geom.k >= S.FFT_MIN_KERNEL:               # dense backend through the FFT
            Mh = Mw = S._fast_size(geom.R + geom.k - 1)
            M = Mh * Mw
            fft = 2.5 * M * math.log2(M)
            planes = geom.B * C
            fwd = planes * (2 * fft + 6 * Mh * (Mw // 2 + 1)) + C * fft
            self.flops += int(fwd * (3 if grad else 1))
        # dense direct conv2d: FlopCounterMode counts it

    def close(self) -> None:
        for m in self.wrapped:
            del m.operator


def count_flops(fn, model, batch: int = 1) -> tuple[int, list[str]]:
    """FLOPs of ``fn()`` (FlopCounterMode with the sparse-product fix, plus the sparse operators of
    ``model``), and notes on anything counted approximately."""
    counted, sparse, notes = count_flops_split(fn, model, batch)
    return counted + sparse, notes


def count_flops_split(fn, model, batch: int = 1) -> tuple[int, int, list[str]]:
    """(FLOPs FlopCounterMode counts, FLOPs of the sparse depthwise operators by formula, notes) of ``fn()``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sparse = _SparseOpCounter(model, batch)
    mode = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.mm: _mm_flops})
    try:
        with mode:
            fn()
    finally:
        sparse.close()
    return int(mode.get_total_flops()), int(sparse.flops), sorted(sparse.notes)


class _MetaCall:
    """Runs a dense submodule on the meta device inside a CPU forward (and backward): its FLOPs are
    counted, its values are not computed; it returns zeros of the right shapes and dtypes on the CPU.

    Arguments and results may be nested (lists and tuples of tensors, e.g. the per-pixel MLP's
    ``modulations``, one ``(gain, shift, None)`` per block, which its ``forward`` then reads): every tensor
    in them crosses between the CPU and the meta device, and gradients flow back through each of them, so
    that the backward of a submodule feeding another is counted too."""

    @staticmethod
    def wrap(module, method: str = "forward"):
        import torch
        from torch.utils._pytree import tree_flatten, tree_unflatten

        twin = copy.deepcopy(module).to("meta")
        meta = getattr(twin, method)

        # A leaf that requires grad makes the output differentiable even when every parameter lives in
        # the twin (the whole U-ViT), so that the backward, and its FLOPs, run.
        anchor = torch.zeros((), requires_grad=True)

        def to_meta(leaves):
            return [t.detach().to("meta").requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
                    for t in leaves]

        def zeros(t, device):
            return torch.zeros(t.shape, dtype=t.dtype, device=device)

        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, _anchor, call, *leaves):
                with torch.enable_grad():
                    out = meta(*tree_unflatten(to_meta(leaves), call["in_spec"]))
                out_leaves, call["out_spec"] = tree_flatten(out)
                call["out_is_tensor"] = [isinstance(o, torch.Tensor) for o in out_leaves]
                call["out_other"] = [None if isinstance(o, torch.Tensor) else o for o in out_leaves]
                ctx.meta_out = [o for o in out_leaves if isinstance(o, torch.Tensor)]
                ctx.like = [t if isinstance(t, torch.Tensor) else None for t in leaves]
                return tuple(zeros(o, call["device"]) for o in ctx.meta_out)

            @staticmethod
            def backward(ctx, *grads):
                pairs = [(o, g) for o, g in zip(ctx.meta_out, grads) if o.requires_grad and g is not None]
                if pairs:
                    torch.autograd.backward([o for o, _ in pairs], [g.to("meta") for _, g in pairs])
                return (None, None, *(None if t is None else torch.zeros_like(t) for t in ctx.like))

        def call(*args):
            leaves, in_spec = tree_flatten(args)
            device = next(t.device for t in leaves if isinstance(t, torch.Tensor))
            if not torch.is_grad_enabled():
                out_leaves, out_spec = tree_flatten(meta(*tree_unflatten(to_meta(leaves), in_spec)))
                return tree_unflatten([zeros(o, device) if isinstance(o, torch.Tensor) else o
                                       for o in out_leaves], out_spec)
            info = {"in_spec": in_spec, "device": device}
            tensors = iter(Fn.apply(anchor, info, *leaves))
            # Rebuild the result: the CPU zeros where the meta call returned tensors, anything else as is.
            out_leaves = [next(tensors) if is_t else other
                          for is_t, other in zip(info["out_is_tensor"], info["out_other"])]
            return tree_unflatten(out_leaves, info["out_spec"])

        return call


def _offload_dense(method) -> None:
    """Replace the forward of every :data:`META_MODULES` submodule by its meta-device twin (in place)."""
    import importlib

    classes = {}
    for entry, calls in META_MODULES.items():
        mod, _, name = entry.partition(":")
        try:
            classes[getattr(importlib.import_module(mod), name)] = calls
        except ImportError:
            continue
    for m in list(method.modules()):
        found = next((c for cls, c in classes.items() if isinstance(m, cls)), None)
        if found and not getattr(m, "_cost_on_meta", False):
            calls, keep = found
            for call in calls:
                setattr(m, call, _MetaCall.wrap(m, call))
            kept = {id(x) for child in keep for x in getattr(m, child).modules()}
            for sub in m.modules():
                if id(sub) not in kept:
                    sub._cost_on_meta = True


def _cost_key(cfg: dict) -> str:
    """What shapes a run's FLOPs: everything but its name, seed, dataset entry and training schedule."""
    c = {k: v for k, v in cfg.items() if k not in ("name", "seed", "dataset", "train")}
    return json.dumps(c, sort_keys=True, default=str)


@functools.lru_cache(maxsize=None)
def _method(key: str):
    """An untrained method of a run config (random weights, training mode), its dense parts on meta."""
    import torch

    from infdiff.methods import build_method

    cfg = json.loads(key)
    cfg.setdefault("name", "cost")
    cfg.setdefault("seed", 0)
    with _EmptyOnMeta():
        method = build_method(cfg)
    _offload_dense(method)
    # The offloaded modules keep meta parameters (never read on the CPU); every other parameter is made
    # on the CPU with small random values (values shape no FLOP count, but must be finite).
    offloaded = {id(p) for m in method.modules() if getattr(m, "_cost_on_meta", False)
                 for p in m.parameters(recurse=False)}
    g = torch.Generator().manual_seed(0)
    for m in method.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_meta and id(p) not in offloaded:
                m._parameters[name] = torch.nn.Parameter(0.02 * torch.randn(p.shape, generator=g),
                                                         requires_grad=p.requires_grad)
    # Method.device is its first parameter's device: a CPU anchor keeps it on the CPU when the whole
    # network is offloaded (the U-ViT, the per-pixel MLP).
    method.register_parameter("_cost_anchor", torch.nn.Parameter(torch.zeros(1), requires_grad=False))
    # One uncounted step fills what the method builds on its first call (65k FLOPs for the default ∞-Diff),
    # so that every count is that of a step, whichever ratio or batch is counted first.
    method.training_loss(_image(cfg["resolution"]), torch.Generator().manual_seed(0)).backward()
    method.zero_grad(set_to_none=True)
    return method


class _EmptyOnMeta:
    """Creates parameters on the meta device while a method is built (``torch.empty`` without a device):
    a 600M-parameter model is built in 0.1 s instead of 8 s of initialisation."""

    def __enter__(self):
        import torch
        from torch.overrides import TorchFunctionMode

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is torch.empty and kwargs.get("device") is None:
                    kwargs["device"] = "meta"
                return func(*args, **kwargs)

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


# ----------------------------------------------------------------------------------------------------
# Measured quantities (batch 1, cached per architecture)
# ----------------------------------------------------------------------------------------------------
def _image(R: int):
    import torch

    return torch.rand(1, 3, R, R, generator=torch.Generator().manual_seed(0)) * 2 - 1


@functools.lru_cache(maxsize=None)
def _train_flops(key: str, ratio: float | None, batch: int) -> tuple[int, tuple[str, ...]]:
    import torch

    cfg = json.loads(key)
    if ratio is not None:
        cfg["ratio"] = ratio
        key = json.dumps(cfg, sort_keys=True, default=str)
    method = _method(key)
    method.train()
    x0 = _image(cfg["resolution"])

    def step():
        method.training_loss(x0, torch.Generator().manual_seed(0)).backward()

    flops, notes = count_flops(step, method, batch)
    return flops, tuple(notes)


def train_flops_per_image(cfg: dict, batch: int | None = None, ratio: float | None = None) -> tuple[int, list[str]]:
    """FLOPs of one training step per image (forward + backward of ``training_loss`` at batch 1) of a
    resolved run config, with notes; a step of batch B costs B times this (tests/test_cost.py)."""
    batch = cfg["train"]["batch_size"] if batch is None else batch
    flops, notes = _train_flops(_cost_key(cfg), ratio, int(batch))
    return flops, list(notes)


@functools.lru_cache(maxsize=None)
def _sample_flops(key: str, R: int, sampler: str) -> tuple[int, int]:
    """(FLOPs per sampling step, fixed FLOPs per image) at resolution R: samples of 1 and 2 steps, differenced."""
    import torch

    method = _method(key)
    cond = None
    if getattr(method, "conditional", False):
        cond = torch.zeros(1, method.net.z_dim)

    def run(steps):
        return count_flops(lambda: method.sample([0], R, steps, progress=False, sampler=sampler, cond=cond),
                           method)[0]

    one, two = run(1), run(2)
    return two - one, one - (two - one)


def sample_flops_per_image(cfg: dict, R: int, sampler: str = "ddim") -> tuple[int, int]:
    """(FLOPs per sampling step, fixed FLOPs: initial noise, mollifier, Wiener filter) of one image at R.

    A method that samples only at its training resolution is measured there (the harness resizes)."""
    from infdiff.methods import method_spec

    if not method_spec(cfg["method"]).any_resolution:
        R = cfg["resolution"]
    return _sample_flops(_cost_key(cfg), int(R), sampler)


@functools.lru_cache(maxsize=None)
def _latent_flops(key: str) -> tuple[int, int, int]:
    """(train FLOPs per latent, FLOPs per latent sampling step, encoder FLOPs per image) of an autoencoder run."""
    import torch

    from infdiff.latent import build_latent

    cfg = json.loads(key)
    latent = build_latent(cfg)
    z = torch.randn(1, cfg["autoencoder"]["z_dim"], generator=torch.Generator().manual_seed(0))
    latent.train()
    train = count_flops(lambda: latent.training_loss(z, torch.Generator().manual_seed(0)).backward(), latent)[0]
    one = count_flops(lambda: latent.sample([0], steps=1), latent)[0]
    two = count_flops(lambda: latent.sample([0], steps=2), latent)[0]
    method = _method(key)
    x0 = _image(cfg["resolution"])
    enc = count_flops(lambda: method.encode(x0, [0]), method)[0]
    return train, two - one, enc


@functools.lru_cache(maxsize=None)
def feature_flops_per_image(extractor: str) -> int:
    """FLOPs of embedding one image: Inception-v3 at 299 px (torchvision's architecture, which clean-fid's
    TorchScript port of the 2015 TF graph matches layer for layer) or CLIP ViT-B/32 at 224 px (open_clip's
    architecture), both with random weights on the meta device."""
    import torch

    size = FEATURE_INPUT[extractor]
    if extractor == "inception":
        from torchvision.models import inception_v3

        with _EmptyOnMeta():
            net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        forward = net.eval().to("meta")
    else:
        import open_clip

        from infdiff.metrics.fid import DEFAULT_CLIP_ARCH

        model = open_clip.create_model(DEFAULT_CLIP_ARCH, pretrained=None, device="meta")
        forward = model.visual.eval()
    x = torch.zeros(1, 3, size, size, device="meta")
    with torch.no_grad():
        return count_flops(lambda: forward(x), torch.nn.Module())[0]


# ----------------------------------------------------------------------------------------------------
# Jobs with their FLOPs
# ----------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """A job of the target with its cost. ``flops_per_step``: per training step (the whole batch) or per
    sampling step of one image; ``total_flops`` None where ``images`` is unknown (a folder split)."""

    kind: str
    run: str
    resolution: int
    steps: int
    batch: int
    images: int | None
    flops_per_step: float
    flops_per_image: float
    total_flops: float | None
    gpu_hours: float | None
    what: str
    notes: list[str] = field(default_factory=list)


def _gpu_hours(flops: float | None, tflops: float) -> float | None:
    return None if flops is None else flops / (tflops * 1e12) / 3600


def _job_cost(config: dict, spec: JobSpec, tflops: float) -> list[Job]:
    from infdiff.config import run_config

    if spec.kind == "features":
        per = feature_flops_per_image(spec.extractor)
        total = None if spec.images is None else per * spec.images
        what = f"embed {spec.images if spec.images is not None else 'the whole split of'} images ({spec.extractor})"
        return [Job("features", spec.run, spec.resolution, 0, 0, spec.images, per, per, total,
                    _gpu_hours(total, tflops), what,
                    [] if spec.images is not None else ["image count = a folder split: not in the totals"])]
    cfg = run_config(config, _base_run(config, spec.run))
    if spec.kind in ("train", "train_step_ratios"):
        per_img, notes = train_flops_per_image(cfg, spec.batch, spec.ratio)
        per_step = per_img * spec.batch
        total = per_step * spec.steps
        what = (f"{spec.steps} steps x batch {spec.batch}" +
                (f", ratio {spec.ratio:g}" if spec.ratio is not None else f", ratio {cfg['ratio']:g}"
                 if "ratio" in cfg else ""))
        return [Job(spec.kind, spec.run, spec.resolution, spec.steps, spec.batch, spec.images, per_step, per_img,
                    total, _gpu_hours(total, tflops), what, notes)]
    key = _cost_key(cfg)
    if spec.kind == "train_latent":
        lat_train, _, enc = _latent_flops(key)
        per_step = lat_train * spec.batch
        total = per_step * spec.steps
        jobs = [Job("train_latent", spec.run, spec.resolution, spec.steps, spec.batch, spec.steps * spec.batch,
                    per_step, lat_train, total, _gpu_hours(total, tflops),
                    f"latent DDPM: {spec.steps} steps x batch {spec.batch}")]
        enc_total = None if spec.images is None else enc * spec.images
        jobs.append(Job("encode_train", spec.run, spec.resolution, 1, 0, spec.images, enc, enc, enc_total,
                        _gpu_hours(enc_total, tflops),
                        f"encode {spec.images if spec.images is not None else 'the whole train split of'} images",
                        [] if spec.images is not None else ["image count = a folder split: not in the totals"]))
        return jobs
    if spec.kind == "sample":
        per_step, fixed = sample_flops_per_image(cfg, spec.resolution, config["sample"]["sampler"])
        per_img = spec.steps * per_step + fixed
        total = per_img * spec.images
        jobs = [Job("sample", spec.run, spec.resolution, spec.steps, 0, spec.images, per_step, per_img, total,
                    _gpu_hours(total, tflops), f"{spec.images} images x {spec.steps} steps ({config['sample']['sampler']})")]
        if cfg.get("framework") == "autoencoder":
            _, lat_step, _ = _latent_flops(key)
            s = cfg["autoencoder"]["latent"]["sample_steps"]
            total = lat_step * s * spec.images
            jobs.append(Job("sample_latent", spec.run, spec.resolution, s, 0, spec.images, lat_step, lat_step * s,
                            total, _gpu_hours(total, tflops), f"{spec.images} latents x {s} steps (ddpm)"))
        return jobs
    raise ValueError(f"unknown job kind {spec.kind}")


def estimate(config: dict, target: str, tflops: float = DEFAULT_TFLOPS, progress: bool = False) -> dict:
    """Every job of ``target`` with its FLOPs and GPU-hours, the totals, and the assumptions."""
    if tflops <= 0:
        raise ValueError(f"--tflops must be positive, got {tflops}")
    import torch

    t0 = time.time()
    jobs: list[Job] = []
    with torch.random.fork_rng():       # nothing here touches the caller's random state
        for spec in target_jobs(config, target):
            t1 = time.time()
            jobs += _job_cost(config, spec, tflops)
            if progress:
                print(f"  measured {spec.kind} {spec.run} {spec.resolution}px in {time.time() - t1:.1f} s", flush=True)
    known = [j.total_flops for j in jobs if j.total_flops is not None]
    by_kind: dict[str, float] = {}
    for j in jobs:
        if j.total_flops is not None:
            by_kind[j.kind] = by_kind.get(j.kind, 0.0) + j.total_flops
    total = float(sum(known))
    return {
        "target": target,
        "tflops": tflops,
        "assumption": (f"sustained {tflops:g} TFLOP/s per GPU ({tflops / A100_BF16_PEAK_TFLOPS:.0%} of the A100's "
                       f"{A100_BF16_PEAK_TFLOPS:g} TFLOP/s dense bf16 peak); GPU-hours = FLOPs / throughput"),
        "counted": "FlopCounterMode (matmuls, convolutions, attention; sparse products by nnz) + the sparse "
                   "depthwise operator by formula; gathers, elementwise ops, optimiser and data loading not "
                   "counted (infdiff/cost.py)",
        "jobs": [asdict(j) for j in jobs],
        "by_kind": by_kind,
        "total_flops": total,
        "gpu_hours": _gpu_hours(total, tflops),
        "left_out": sorted({f"{j.kind} {j.run} {j.resolution}px" for j in jobs if j.total_flops is None}),
        "seconds": round(time.time() - t0, 1),
    }


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".strip()


def _hours(h: float | None) -> str:
    return "n/a" if h is None else (f"{h:.3g}" if h >= 0.01 else "<0.01")


def to_markdown(result: dict) -> str:
    """The jobs as a Markdown table, then the totals and the assumptions."""
    lines = ["| job | run | res | what | FLOPs / step | FLOPs / image | images | total FLOPs | GPU-h |",
             "|---|---|---|---|---|---|---|---|---|"]
    for j in result["jobs"]:
        images = "n/a" if j["images"] is None else f"{j['images']:,}"
        lines.append(f"| {j['kind']} | {j['run']} | {j['resolution']} | {j['what']} | {_fmt(j['flops_per_step'], 'FLOP')} "
                     f"| {_fmt(j['flops_per_image'], 'FLOP')} | {images} | {_fmt(j['total_flops'], 'FLOP')} "
                     f"| {_hours(j['gpu_hours'])} |")
    lines.append("")
    parts = ", ".join(f"{k} {_hours(_gpu_hours(v, result['tflops']))}" for k, v in result["by_kind"].items())
    lines.append(f"**{result['target']}: {_fmt(result['total_flops'], 'FLOP')}, "
                 f"{_hours(result['gpu_hours'])} GPU-hours** ({parts}).")
    lines.append(f"Throughput: {result['assumption']}.")
    lines.append(f"Counted: {result['counted']}.")
    if result["left_out"]:
        lines.append("Not in the totals (image count known only from the files): " + "; ".join(result["left_out"]) + ".")
    notes = sorted({n for j in result["jobs"] for n in j["notes"] if "folder split" not in n})
    if notes:
        lines.append("Notes: " + "; ".join(notes) + ".")
    return "\n".join(lines) + "\n"


def to_json(result: dict) -> str:
    return json.dumps(result, indent=1, default=str) + "\n"
