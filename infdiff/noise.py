"""Resolution-consistent white noise (docs/architecture.md, "Tensors and coordinates").

A diffusion sample is a deterministic function (DDIM, eta = 0) of its initial noise xi. For ∞-Diff to
draw "the same image" at 64 px and at 1024 px from one seed, the two noise fields must be two
discretisations of the same continuous white noise: the pixel value at resolution R must be the
(rescaled) area sum of the finer pixels it covers. With per-pixel variance 1 at every R this reads

    white_noise(seed, R)[p] == (1 / 2) * sum of the 4 children of p in white_noise(seed, 2R),

because the sum of 4 iid N(0, 1) variables has variance 4.

We draw coarse to fine. With R = R0 * 2**L, R0 odd, level R0 is iid N(0, 1). Each pixel p is then split
into its 2 x 2 children

    c_j = p / 2 + (z_j - mean(z)),   z ~ N(0, I_4),

i.e. p's share plus a zero-sum perturbation: sum_j c_j = 2 p exactly. The children are iid N(0, 1):
Var(c_j) = 1/4 + (1 - 1/4) = 1 and Cov(c_i, c_j) = 1/4 - 1/4 = 0, and (c, p) are jointly Gaussian, so
uncorrelated means independent. This is exact conditional sampling of the fine noise given the coarse
noise, so the fine field has the right law *and* pools to the coarse one.

Randomness: one ``torch.Generator`` per (seed, stream), seeded through numpy's ``SeedSequence`` (a
fixed, well-mixed hash), draws the levels in order. The draws for levels up to R do not depend on the
final resolution, which is what makes the pooling identity exact. ``stream`` separates independent uses
of one seed (the initial noise, the noise of each DDPM step, ...).

The generator lives on the device the noise is drawn for (``device=``): on the CPU the numbers are
exactly those of a CPU generator (the golden tests pin them); on CUDA the generator is CUDA's Philox,
whose stream for the same seed is *different* from the CPU's, so a seed's picture depends on the kind of
device it was sampled on (every property above still holds within one device kind; the device is in
every sample set's provenance). Drawing on the device avoids one host-to-device copy per image per step
(at paper scale, 16 images at 256 px: 67 ms per draw on the CPU; benchmarks/bench_noise.py, and
benchmarks/gpu_check.sh on a GPU).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["odd_base", "make_generator", "white_noise", "batch_white_noise", "batch_vector_noise",
           "LATENT_STREAMS", "ENCODER_STREAM"]

#: streams of a seed used by the latent DDPM of the autoencoder framework (its initial state, then each
#: step's noise): far above the image sampler's streams 0 .. steps, so the two never share numbers
LATENT_STREAMS = 2 ** 20
#: stream of a seed that draws the encoder's coordinate subset of one image (eval-mode encoding)
ENCODER_STREAM = 2 ** 21


def odd_base(R: int) -> tuple[int, int]:
    """Split R = R0 * 2**L with R0 odd; returns (R0, L). E.g. 48 -> (3, 4), 64 -> (1, 6), 7 -> (7, 0)."""
    if int(R) != R or R < 1:
        raise ValueError(f"resolution must be a positive integer, got {R!r}")
    R = int(R)
    L = 0
    while R % 2 == 0:
        R //= 2
        L += 1
    return R, L


def make_generator(seed: int, stream: int = 0, device=None) -> torch.Generator:
    """Generator for (seed, stream) on ``device`` (default CPU): same pair -> same numbers on every machine
    with that kind of device (CPU and CUDA generators give different numbers for one seed).

    SeedSequence hashes the pair so that nearby seeds/streams give unrelated states (seeding torch
    directly with e.g. seed + stream would make (1, 0) and (0, 1) collide).
    """
    if seed < 0 or stream < 0:
        raise ValueError(f"seed and stream must be non-negative, got seed={seed}, stream={stream}")
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=torch.device("cpu" if device is None else device))
    # 63 bits: torch.Generator.manual_seed accepts any int64-range value.
    g.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return g


def white_noise(seed: int, R: int, channels: int = 3, stream: int = 0, device=None) -> Tensor:
    """White noise at resolution R for one seed, drawn coarse-to-fine (see module docstring).

    Args:
        seed: per-sample seed.
        R: resolution; any positive integer (R0 * 2**L with R0 odd).
        channels: number of independent channels.
        stream: independent stream index for the same seed.
        device: where the generator lives and the noise is drawn (default CPU; see the module docstring).
    Returns:
        [channels, R, R] float32 on ``device``, iid N(0, 1) per pixel; pooling 2 x 2 blocks of the result
        at 2R (sum / 2) returns exactly the result at R.
    """
    R0, L = odd_base(R)
    g = make_generator(seed, stream, device)
    x = torch.randn(channels, R0, R0, generator=g, device=g.device)
    r = R0
    for _ in range(L):
        # z [C, r, r, 2, 2]: the 4 children of each pixel; (a, b) = (row, col) offset inside the block.
        z = torch.randn(channels, r, r, 2, 2, generator=g, device=g.device)
        z = z - z.mean(dim=(-2, -1), keepdim=True)  # zero-sum perturbation: keeps the parent's sum
        c = x[..., None, None] / 2 + z                # children: sum == 2 * parent exactly
        # [C, r, r, 2, 2] -> [C, r, 2, r, 2] -> [C, 2r, 2r]: child (a, b) of pixel (i, j) is (2i+a, 2j+b).
        x = c.permute(0, 1, 3, 2, 4).reshape(channels, 2 * r, 2 * r)
        r *= 2
    return x


def batch_white_noise(seeds: Sequence[int], R: int, channels: int = 3, stream: int = 0,
                      device=None) -> Tensor:
    """Stack ``white_noise`` for several seeds.

    Row i depends only on seeds[i] (each row has its own generator), so a sample never changes with the
    batch it was drawn in, the batch size, or the number of devices (EDM's stacked-generator idea). The
    generators live on ``device``: no host-to-device copy, and CUDA numbers differ from CPU numbers.

    Returns:
        [len(seeds), channels, R, R] float32 on ``device``.
    """
    if len(seeds) == 0:
        return torch.empty(0, channels, R, R, device=device)
    return torch.stack([white_noise(int(s), R, channels, stream, device) for s in seeds])


def batch_vector_noise(seeds: Sequence[int], dim: int, stream: int = 0, device=None) -> Tensor:
    """One N(0, I_dim) vector per seed: [len(seeds), dim] float32; row i depends only on seeds[i].

    The latent counterpart of :func:`batch_white_noise` (the autoencoder's latent DDPM), from the same
    (seed, stream) generators, on ``device``.
    """
    if len(seeds) == 0:
        return torch.empty(0, dim, device=device)
    gens = [make_generator(int(s), stream, device) for s in seeds]
    return torch.stack([torch.randn(dim, generator=g, device=g.device) for g in gens])
