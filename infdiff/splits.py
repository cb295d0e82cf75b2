"""Dataset splits (docs/architecture.md, "The library"): which images make train, val, ref, ref2 and full.

Procedural data (kind shapes): disjoint seed ranges `SPLITS`; image i of a split is the image of seed
start + i. Real data (kinds folder and lmdb): fixed fractions `FOLDER_SPLITS` of the *sorted* name list,
so every machine splits a dataset the same way. "full" is the whole dataset, the paper's reference set
for FID: the four stores of a file dataset read one after another (an infinite procedural dataset has
none). Torch-free: the workflow reads these while it builds the DAG.
"""
from __future__ import annotations

import numpy as np

# Disjoint seed ranges [start, stop) of the procedural splits.
SPLITS = {"train": (0, 10**7), "ref": (10**7, 2 * 10**7), "ref2": (2 * 10**7, 3 * 10**7),
          "val": (3 * 10**7, 4 * 10**7)}


def split_seeds(split: str, n: int) -> np.ndarray:
    """First n seeds (int64 [n]) of a procedural split's seed range (`SPLITS`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {sorted(SPLITS)}")
    start, stop = SPLITS[split]
    if not 0 <= int(n) <= stop - start:
        raise ValueError(f"split {split!r} holds {stop - start} seeds, asked for {n}")
    return np.arange(start, start + int(n), dtype=np.int64)


# Real-data splits as [start, stop) fractions of the sorted name list: training images, a validation
# split carved from the end of them, and the last 20% held out in two disjoint halves, so that no two
# of "train", "val", "ref" and "ref2" ever share an image.
FOLDER_SPLITS = {"train": (0.0, 0.75), "val": (0.75, 0.8), "ref": (0.8, 0.9), "ref2": (0.9, 1.0)}
# The whole dataset (the paper's reference statistics): the four split stores, read one after another.
# It is not a prepared split of its own: the images are in the four stores already.
FULL_SPLIT = "full"
FULL_PARTS = ("train", "val", "ref", "ref2")


def folder_splits(num_files: int) -> dict[str, tuple[int, int]]:
    """Index ranges [start, stop) into the sorted name list for each split (see `FOLDER_SPLITS`)."""
    return {k: (int(np.floor(a * num_files)), int(np.floor(b * num_files)))
            for k, (a, b) in FOLDER_SPLITS.items()}


def split_definition(kind: str, split: str) -> dict:
    """What `split` of a dataset of `kind` is, as JSON (a reference-statistics cache key includes it):
    {"seeds": [start, stop]} for procedural data, {"fractions": [a, b]} of the sorted name list for file
    data; "full" (file data only) lists the fractions of its parts."""
    if kind == "shapes":
        if split not in SPLITS:
            raise ValueError(f"procedural data has the splits {sorted(SPLITS)}, not {split!r} (an infinite "
                             "dataset has no full set)")
        return {"seeds": list(SPLITS[split])}
    if split == FULL_SPLIT:
        return {"parts": {s: list(FOLDER_SPLITS[s]) for s in FULL_PARTS}}
    if split not in FOLDER_SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {sorted(FOLDER_SPLITS)} and {FULL_SPLIT!r}")
    return {"fractions": list(FOLDER_SPLITS[split])}
