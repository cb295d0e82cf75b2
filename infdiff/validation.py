"""Validation loss: the training loss on held-out images, with the same draws at every evaluation.

The first ``n`` images of the val split are scored in fixed groups of ``batch_size`` (group g = images
g * batch_size ...), each at ``timesteps`` fixed, evenly spaced levels (``Method.fixed_timesteps``);
group g at level k draws its noise and coordinates from a generator of (validation seed, g, k). Two
evaluations of the same weights therefore give the same number, and the curve over training measures
the model, not the draws. Groups are shared out over processes (g = rank, rank + world, ...) and the sum
is reduced, so the value does not depend on the number of processes either.
"""
from __future__ import annotations

import torch

from infdiff.distributed import World
from infdiff.loader import PreparedImages, step_generator
from infdiff.methods.base import Method
from infdiff.precision import autocast

# The stream key of validation draws (infdiff.loader.step_seed's second key), apart from training's.
STREAM_VALIDATION = 10


@torch.no_grad()
def validation_loss(method: Method, images: PreparedImages, vcfg: dict, precision: str, world: World) -> float:
    """Mean loss over the first ``vcfg["n"]`` val images x ``vcfg["timesteps"]`` fixed levels (eval mode).

    images: uint8 [N, 3, R, R] with N >= n. Returns a float (the same on every process).
    """
    n, bs, K = int(vcfg["n"]), int(vcfg["batch_size"]), int(vcfg["timesteps"])
    if len(images) < n:
        raise ValueError(f"train.validation.n = {n} but the val split holds {len(images)} images: lower "
                         f"train.validation.n or enlarge the val split (datasets.<name>.val_size)")
    was_training = method.training
    method.eval()
    dev = world.device
    levels = method.fixed_timesteps(K)
    total = 0.0
    for g in range(world.rank, -(-n // bs), world.size):
        rows = range(g * bs, min(n, (g + 1) * bs))
        x0 = torch.stack([images[i] for i in rows]).to(dev).float() / 127.5 - 1.0
        for k in range(K):
            gen = step_generator(int(vcfg["seed"]), STREAM_VALIDATION, g, k)
            t = levels[k].expand(len(rows))
            with autocast(precision, dev):
                total += float(method.training_loss(x0, gen, t=t)) * len(rows)
    method.train(was_training)
    return world.all_sum([total])[0] / (n * K)
