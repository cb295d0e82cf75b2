"""Training-step speed and memory per coordinate ratio, measured interleaved in one process (Table 3).

The paper's Table 3 reports the training speed-up of using 1/2, 1/4, 1/8 of the pixels. A speed-up is
a ratio of two timings, so both must see the same machine noise: every repeat times one step at each
ratio, in an order rotated from repeat to repeat, on the same model, batch and optimiser, each after
an untimed step at the same ratio (``settle``: the first step after a switch page-faults fresh memory).
Reported per ratio: the median step time after warm-up, the speed-up relative to ratio 1, and the memory
that the step holds for backward (the bytes of every tensor autograd saves; on CUDA also the allocator's peak).

Callers: the workflow's Table 3 rule (workflow/scripts/train_step_ratios.py) and the standalone script
benchmarks/bench_train_step.py (the top-level benchmarks/ folder holds scripts, not library code).
"""

from __future__ import annotations

import statistics
import time

import torch

from infdiff.methods import build_method
from infdiff.optim import adam
from infdiff.precision import autocast


def _saved_bytes(fn) -> tuple[object, int]:
    """(fn(), bytes of the tensors autograd saves for backward while fn runs).

    Storage is counted once per distinct storage, so views of one activation are not double counted.
    This is the part of a training step's memory that depends on the number of points.
    """
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            if t.layout == torch.strided:
                st = t.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
            elif t.layout == torch.sparse_csr:  # the kNN interpolation matrix: count its three arrays
                parts = (t.crow_indices(), t.col_indices(), t.values())
                seen[id(t)] = sum(p.numel() * p.element_size() for p in parts)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def set_sparse_backend(method: torch.nn.Module, backend: str) -> None:
    """Make every sparse operator of ``method`` use ``backend`` (infdiff.sparse.BACKENDS): benchmarks compare
    backends on one model."""
    from infdiff.sparse import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"unknown sparse backend '{backend}' (known: {', '.join(BACKENDS)})")
    for m in method.modules():
        if hasattr(m, "backend"):
            m.backend = backend


def timing_optimiser(method: torch.nn.Module, cfg: dict, implementation: str = "fused") -> torch.optim.Optimizer:
    """The run's optimiser as training builds it (:func:`infdiff.optim.adam`, its betas) with a tiny learning
    rate, so that the repeated steps of a timing barely move the weights."""
    return adam(method.parameters(), lr=1e-5, betas=cfg["train"]["betas"], implementation=implementation)


def optimiser_step(cfg: dict, seed: int = 0, batch_size: int | None = None, resolution: int | None = None,
                   optimizer: str = "fused"):
    """A closure running one optimiser step of the run as training does (its precision, its optimiser
    :func:`infdiff.optim.adam`), on CPU.

    The batch is fixed random images [B, 3, R, R] at the run's training resolution R and batch size B
    (``resolution`` and ``batch_size`` override them; the network is the run's either way); the learning rate is tiny so that repeated steps barely move the weights.
    Used by the benchmarks that time or profile a whole step (benchmarks/roofline.py, profile_step.py,
    bench_threads.py). Returns (step, method).
    """
    torch.manual_seed(seed)
    method = build_method(cfg).train()
    opt = timing_optimiser(method, cfg, optimizer)
    gen = torch.Generator().manual_seed(seed)
    R, B = int(resolution or cfg["resolution"]), batch_size or cfg["train"]["batch_size"]
    x0 = torch.rand(B, 3, R, R, generator=gen) * 2 - 1

    def step() -> None:
        with autocast(cfg["precision"], "cpu"):
            loss = method.training_loss(x0, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, method


def time_train_steps(cfg: dict, ratios: list[float], repeats: int = 20, warmup: int = 3,
                     batch_size: int | None = None, device: str = "cpu", seed: int = 0,
                     backend: str | None = None, optimizer: str = "fused", settle: int = 1) -> list[dict]:
    """Median wall time of one optimiser step per coordinate ratio (interleaved), with memory.

    Args:
        cfg: resolved run config of an ``infdiff`` run (its ``ratio`` is overridden per measurement).
        ratios: e.g. [1, 0.5, 0.25, 0.125]; the first ratio 1 (or the largest) is the speed-up reference.
        repeats: timed steps per ratio; warmup: untimed rounds over all ratios first (allocator, caches).
        settle: untimed steps at a ratio right after switching to it, before its timed step. Switching
            changes the size of every activation, and the C heap can then hand out memory the kernel maps
            afresh: the first step at the new ratio page-faults it (measured on the FFHQ-128 architecture,
            batch 4, 2 CPU cores: 0.5-1 s more for a ~1.9 s step at ratio 1, at random depending on the heap's
            state), which training, at one ratio throughout, does not pay. Timing that step biased the
            speed-ups upwards (the largest ratio faults most); 0 times it anyway (the old measurement).
        backend: if given, the sparse operators' backend (else the network's own, "auto").
        optimizer: the implementation of :func:`infdiff.optim.adam` (training's is "fused").
    Returns:
        one dict per ratio: ratio, points, median_ms, iqr_ms, speedup, saved_mb, cuda_peak_mb (or None).
    """
    dev = torch.device(device)
    torch.manual_seed(seed)
    method = build_method(cfg).to(dev).train()
    if backend:
        set_sparse_backend(method, backend)
    opt = timing_optimiser(method, cfg, optimizer)
    gen = torch.Generator().manual_seed(seed)
    B = batch_size or cfg["train"]["batch_size"]
    R = int(cfg["resolution"])
    x0 = torch.rand(B, 3, R, R, generator=gen).to(dev) * 2 - 1
    reference = max(ratios)

    def step(ratio: float) -> tuple[float, int]:
        method.ratio = ratio
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(cfg["precision"], dev):                # the run's precision, as training uses it
            loss, saved = _saved_bytes(lambda: method.training_loss(x0, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3, saved

    times = {r: [] for r in ratios}
    saved = {r: 0 for r in ratios}
    peaks = {r: None for r in ratios}
    for rep in range(warmup + repeats):
        # Rotate the order so no ratio always runs right after the same other one (cache/thermal bias).
        order = ratios[rep % len(ratios):] + ratios[:rep % len(ratios)]
        for r in order:
            for _ in range(settle):
                step(r)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            ms, nbytes = step(r)
            if rep >= warmup:
                times[r].append(ms)
                saved[r] = max(saved[r], nbytes)
                if dev.type == "cuda":
                    peaks[r] = max(peaks[r] or 0, torch.cuda.max_memory_allocated(dev) / 2**20)
    ref_ms = statistics.median(times[reference])
    rows = []
    for r in ratios:
        q = statistics.quantiles(times[r], n=4) if len(times[r]) >= 2 else [times[r][0]] * 3
        med = statistics.median(times[r])
        rows.append({"ratio": r, "points": max(1, round(r * R * R)), "batch_size": B, "resolution": R,
                     "median_ms": med, "iqr_ms": q[2] - q[0], "speedup": ref_ms / med,
                     "saved_mb": saved[r] / 2**20, "cuda_peak_mb": peaks[r], "repeats": repeats,
                     "settle": settle})
    return rows
