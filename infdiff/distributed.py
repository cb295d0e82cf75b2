"""Data-parallel training under ``torchrun``: the process group, this process's device and rank.

``torchrun --nproc_per_node N -m infdiff train ...`` (what the train rule runs when its job has N > 1
GPUs) starts N processes with RANK, WORLD_SIZE and LOCAL_RANK set. Each joins one process group (NCCL
on CUDA, gloo on CPU), trains its chunks of every step's global batch (``infdiff.loader``) and the
gradients are averaged by ``torch.nn.parallel.DistributedDataParallel``. Without those variables the
run is one process and nothing here communicates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from infdiff.io import pick_device


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes of a few floats (float64, on this process's device)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def world_from_env(device: str = "auto") -> World:
    """The process group torchrun describes in the environment (joined here), else a single process.

    Under torchrun on CUDA, process LOCAL_RANK uses GPU LOCAL_RANK.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(0, 1, pick_device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices are visible")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return World(rank, size, dev)


def leave(world: World) -> None:
    """Leave the process group (end of a distributed run)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
