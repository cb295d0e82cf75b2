"""Training images from a prepared store: a map-style Dataset and the per-step batch sampler.

Every random draw of a training step comes from a generator seeded by (run seed, stream, step, chunk)
(:func:`step_seed`), never from a generator carried from step to step. That makes three things exact:

* **resume** — a run restarted at step s draws what the uninterrupted run drew at step s, with no
  random state in the checkpoint;
* **DataLoader prefetching** — the sampler may run ahead of the training loop (workers) freely;
* **rank-count independence** — the global batch of step s is split into fixed chunks of
  ``train.micro_batch_size`` images, chunk c's draws depend on (seed, s, c) only, and a process
  (GPU) handles chunks c = rank, rank + world, ...: 1, 2 or 4 processes compute the same gradients.

Batches are drawn with replacement: step s's global batch is ``batch_size`` uniform indices into the
split (:class:`StepBatches`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

# Independent random streams of one training step (the second key of step_seed).
STREAM_DATA, STREAM_LOSS, STREAM_DROPOUT = 0, 1, 2


def step_seed(seed: int, stream: int, step: int, chunk: int = 0) -> int:
    """A 63-bit seed for (run seed, stream, step, chunk): numpy's SeedSequence hashes the four keys."""
    state = np.random.SeedSequence([int(seed), int(stream), int(step), int(chunk)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def step_generator(seed: int, stream: int, step: int, chunk: int = 0) -> torch.Generator:
    """A CPU generator seeded by :func:`step_seed` (CPU, so the draws are the same on every device)."""
    return torch.Generator().manual_seed(step_seed(seed, stream, step, chunk))


class PreparedImages(Dataset):
    """uint8 images [3, R, R] of a prepared split: a path (opened as a read-only memmap in each process
    that reads it, so DataLoader workers never copy the split) or an in-memory uint8 array [N, 3, R, R]."""

    def __init__(self, source: str | Path | np.ndarray):
        if isinstance(source, (str, Path)):
            from infdiff.data import load_prepared

            self.path, self._array = str(source), None
            self.shape = tuple(load_prepared(self.path).shape)
        else:
            self.path, self._array = None, source
            self.shape = tuple(source.shape)
        if len(self.shape) != 4 or self.shape[1] != 3:
            raise ValueError(f"training images must be uint8 [N, 3, R, R], got shape {self.shape}")

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            from infdiff.data import load_prepared

            self._array = load_prepared(self.path)
        return self._array

    def __getstate__(self):
        # Workers re-open the memmap from the path instead of receiving a pickled copy of the split.
        state = dict(self.__dict__)
        if self.path is not None:
            state["_array"] = None
        return state

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[int(i)], dtype=np.uint8))


class StepBatches(Sampler[list[int]]):
    """For steps ``start .. stop - 1``: the indices of this process's chunks of the step's global batch.

    The global batch of step s is ``batch_size`` indices drawn uniformly (with replacement) from a
    generator of (seed, STREAM_DATA, s); chunk c is ``indices[c * micro : (c + 1) * micro]`` and this
    process takes chunks ``chunks`` (in order), concatenated: ``len(chunks) * micro`` indices per step.
    """

    def __init__(self, num_images: int, batch_size: int, micro: int, chunks: Sequence[int], seed: int,
                 start: int, stop: int):
        self.n, self.batch_size, self.micro = int(num_images), int(batch_size), int(micro)
        self.chunks, self.seed, self.start, self.stop = list(chunks), int(seed), int(start), int(stop)

    def indices(self, step: int) -> list[int]:
        idx = torch.randint(0, self.n, (self.batch_size,), generator=step_generator(self.seed, STREAM_DATA, step))
        return [int(i) for c in self.chunks for i in idx[c * self.micro:(c + 1) * self.micro]]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def step_loader(images: PreparedImages, sampler: StepBatches, num_workers: int, device: torch.device) -> DataLoader:
    """Batches uint8 [len(chunks) * micro, 3, R, R], one per step, read by ``num_workers`` processes
    (pinned memory on CUDA, so the copy to the GPU overlaps compute)."""
    return DataLoader(images, batch_sampler=sampler, num_workers=int(num_workers),
                      pin_memory=device.type == "cuda", persistent_workers=False)
