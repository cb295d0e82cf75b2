"""Tests for infdiff.noise: exact pooling consistency and the law of the coarse-to-fine white noise."""

import pytest
import torch
import torch.nn.functional as F

from infdiff.noise import batch_white_noise, make_generator, odd_base, white_noise


def pool(x):
    """2x2 sum-pool / 2: the map that must send the noise at 2R to the noise at R."""
    return F.avg_pool2d(x.unsqueeze(0), 2).squeeze(0) * 2  # mean * 4 / 2


def test_odd_base():
    assert odd_base(48) == (3, 4)
    assert odd_base(64) == (1, 6)
    assert odd_base(7) == (7, 0)
    assert odd_base(1) == (1, 0)
    with pytest.raises(ValueError):
        odd_base(0)


def test_pooling_consistency_power_of_two_chain():
    # R = 1, 2, ..., 256: every level must pool exactly onto the previous one (same seed, same stream).
    seed = 17
    prev = white_noise(seed, 1)
    R = 1
    while R < 256:
        R *= 2
        cur = white_noise(seed, R)
        assert cur.shape == (3, R, R) and cur.dtype == torch.float32
        assert torch.allclose(pool(cur), prev, atol=1e-5), f"pooling {R} -> {R // 2} broke"
        prev = cur
    # And across several levels at once: 256 -> 8 is the same as drawing at 8.
    x = white_noise(seed, 256)
    assert torch.allclose(F.avg_pool2d(x.unsqueeze(0), 32).squeeze(0) * 32, white_noise(seed, 8), atol=1e-4)


@pytest.mark.parametrize("R", [48, 96, 40, 12])
def test_pooling_consistency_odd_base(R):
    x = white_noise(5, R, channels=2, stream=3)
    assert x.shape == (2, R, R)
    assert torch.allclose(pool(x), white_noise(5, R // 2, channels=2, stream=3), atol=1e-5)


def test_odd_resolutions_work():
    for R in (3, 5, 7, 9):
        x = white_noise(0, R)
        assert x.shape == (3, R, R) and torch.isfinite(x).all()


def test_deterministic_and_seed_stream_sensitive():
    a = white_noise(3, 32)
    assert torch.equal(a, white_noise(3, 32))
    assert not torch.allclose(a, white_noise(4, 32))
    assert not torch.allclose(a, white_noise(3, 32, stream=1))
    # (seed, stream) is hashed, not added: (1, 0) and (0, 1) must not collide.
    assert not torch.allclose(white_noise(1, 8, stream=0), white_noise(0, 8, stream=1))
    g1, g2 = make_generator(9, 2), make_generator(9, 2)
    assert torch.equal(torch.randn(5, generator=g1), torch.randn(5, generator=g2))


def test_marginals_and_neighbour_correlation_single_field():
    # At R = 256 (8 levels of splitting) the pixels must still be N(0, 1) and uncorrelated.
    # n = 3 * 65536 values: std error of the mean ~0.0023, of the variance ~0.0035, of a correlation
    # ~0.004; the tolerances are ~8 sigma. A wrong split (e.g. c = p + z - mean z) gives var 1.75,
    # and forgetting the parent's share (c = z - mean z) gives sibling correlation -1/3.
    x = white_noise(11, 256).double()
    assert abs(x.mean()) < 0.02
    assert abs(x.var() - 1) < 0.03
    # Siblings (same parent at every level up): even column vs the next odd column.
    sib = torch.corrcoef(torch.stack([x[:, :, 0::2].flatten(), x[:, :, 1::2].flatten()]))[0, 1]
    # Cousins across a parent boundary: odd column vs the next even column.
    cous = torch.corrcoef(torch.stack([x[:, :, 1:-1:2].flatten(), x[:, :, 2::2].flatten()]))[0, 1]
    vert = torch.corrcoef(torch.stack([x[:, 0::2, :].flatten(), x[:, 1::2, :].flatten()]))[0, 1]
    diag = torch.corrcoef(torch.stack([x[:, 0::2, 0::2].flatten(), x[:, 1::2, 1::2].flatten()]))[0, 1]
    for c in (sib, cous, vert, diag):
        assert abs(c) < 0.03
    # No correlation between channels either.
    assert abs(torch.corrcoef(x.reshape(3, -1))[0, 1]) < 0.03


def test_covariance_of_a_block_across_seeds():
    # The 4x4 top-left block of R = 16 over 3000 seeds: covariance must be I_16 (iid N(0,1) pixels).
    # Entry std error ~ 1/sqrt(3000) = 0.018; tolerance 0.1 (> 5 sigma) over 136 distinct entries.
    samples = torch.stack([white_noise(s, 16, channels=1)[0, :4, :4].flatten() for s in range(3000)]).double()
    cov = torch.cov(samples.T)
    assert (cov - torch.eye(16, dtype=torch.float64)).abs().max() < 0.1
    assert samples.mean(0).abs().max() < 0.1


def test_batch_rows_depend_only_on_their_seed():
    seeds = [7, 3, 1000003, 0]
    batch = batch_white_noise(seeds, 24, channels=3, stream=2)
    assert batch.shape == (4, 3, 24, 24)
    for i, s in enumerate(seeds):
        assert torch.equal(batch[i], white_noise(s, 24, channels=3, stream=2))
    # Reordering or shrinking the batch leaves each row unchanged.
    other = batch_white_noise([0, 3], 24, channels=3, stream=2)
    assert torch.equal(other[0], batch[3]) and torch.equal(other[1], batch[1])
    assert batch_white_noise([], 8).shape == (0, 3, 8, 8)
    assert batch_white_noise([1], 8, device="cpu").device.type == "cpu"


def test_generator_lives_on_the_requested_device():
    """device="cpu" is the default stream, bit for bit; the generator and the draw stay on the device."""
    from infdiff.noise import batch_vector_noise

    assert make_generator(3, 1, device="cpu").device == torch.device("cpu")
    assert torch.equal(batch_white_noise([5, 6], 12, stream=2, device="cpu"), batch_white_noise([5, 6], 12, stream=2))
    assert torch.equal(batch_vector_noise([5, 6], 7, stream=2, device="cpu"), batch_vector_noise([5, 6], 7, stream=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_cuda_streams_keep_every_property():
    """On CUDA (another generator, other numbers) rows still depend on their seed only, and the noise
    still pools to itself across resolutions."""
    x = batch_white_noise([1, 2, 3], 32, device="cuda")
    assert x.device.type == "cuda"
    assert torch.equal(batch_white_noise([2], 32, device="cuda")[0], x[1])
    pooled = F.avg_pool2d(x, 2) * 2
    assert torch.allclose(pooled, batch_white_noise([1, 2, 3], 16, device="cuda"), atol=1e-5)
    assert not torch.equal(x.cpu(), batch_white_noise([1, 2, 3], 32))   # CUDA streams differ from CPU ones
