"""Tests of the LPIPS / L2 nearest-neighbour search (infdiff.metrics.lpips_nn).

Offline: the AlexNet trunk is a randomly initialised torchvision AlexNet whose ``features`` state dict is
saved to a temp file (the real file has the same keys); the calibrated linear layers come from the lpips
wheel. Exact answers are checked against brute force over every training image.
"""

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.nn import functional as F

from infdiff.data import to_float
from infdiff.metrics.lpips_nn import (
    LPIPS_MIN_RES,
    load_lpips,
    lpips_features,
    lpips_from_features,
    nearest_neighbours,
    save_neighbours,
)
from infdiff.metrics.weights import MissingWeightsError


@pytest.fixture(scope="module")
def alexnet_features():
    """(torchvision AlexNet ``features`` module, path of its state dict with keys ``features.*``)."""
    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features.eval()
    return features, {f"features.{k}": v for k, v in features.state_dict().items()}


@pytest.fixture(scope="module")
def weights(alexnet_features, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "alexnet-owt-7be5be79.pth"
    # The real file also holds the classifier (ignored by LPIPS); a stand-in key checks it is skipped.
    torch.save({**alexnet_features[1], "classifier.6.bias": torch.zeros(1000)}, path)
    return {"alexnet": str(path)}


@pytest.fixture(scope="module")
def net(weights):
    return load_lpips(weights)


def _images(n: int, R: int = 16, seed: int = 0) -> np.ndarray:
    """Random smooth uint8 images [n, 3, R, R] (upsampled 4x4 noise): distinct, nothing special."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(R, R), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.rand(n, 3, R, R, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _brute_l2(samples: np.ndarray, train: np.ndarray) -> np.ndarray:
    """[N, M] per-pixel mean squared difference in [-1, 1], float64."""
    a = samples.astype(np.float64).reshape(len(samples), 1, -1) / 127.5 - 1
    b = train.astype(np.float64).reshape(1, len(train), -1) / 127.5 - 1
    return ((a - b) ** 2).mean(-1)


# ------------------------------------------------------------------------------------------ loading
def test_load_lpips_maps_torchvision_features_onto_slices(net, alexnet_features):
    features, state = alexnet_features
    # Every trunk parameter comes from the file, under the same layer index.
    for name, p in net.net.named_parameters():
        idx, kind = name.split(".", 1)[1].split(".")
        assert torch.equal(p, state[f"features.{idx}.{kind}"]), name
        assert not p.requires_grad
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    # ...so the trunk's levels are torchvision's activations after ReLUs 1, 2, 3, 4, 5.
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    outs = net.net(x)
    with torch.no_grad():
        for level, end in enumerate((2, 5, 8, 10, 12)):
            torch.testing.assert_close(outs[level], features[:end](x), rtol=1e-5, atol=1e-6)
    # The calibrated linear layers were loaded from the wheel (non-negative, not random init).
    assert all((lin.model[-1].weight >= 0).all() for lin in net.lins)


def test_missing_weights_name_the_config_key(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"metrics\.weights\.alexnet.*alexnet-owt-7be5be79\.pth"):
        load_lpips({})
    with pytest.raises(MissingWeightsError, match=r"metrics\.weights\.alexnet"):
        load_lpips({"alexnet": str(tmp_path / "nope.pth")})


def test_mismatched_state_dict_is_refused(alexnet_features, tmp_path):
    state = dict(alexnet_features[1])
    del state["features.10.weight"]
    state["features.13.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    match = r"missing \['features.10.weight'\].*unexpected \['features.13.weight'\]"
    with pytest.raises(ValueError, match=match):
        load_lpips({"alexnet": str(path)})
    state = dict(alexnet_features[1])
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"wrong shape \['features.3.weight'\]"):
        load_lpips({"alexnet": str(path)})


def test_split_lpips_equals_lpips_forward(net):
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        ref = net(x, y).flatten()
        ours = lpips_from_features(net, lpips_features(net, x), lpips_features(net, y))
        assert torch.all(ref > 0)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
        assert torch.all(net(x, x) == 0)


# ------------------------------------------------------------------------------------------- search
def test_l2_exact_copies_found_and_equal_brute_force():
    train = _images(40, seed=2)
    samples = np.concatenate([train[[7, 23]], _images(3, seed=3)])
    res = nearest_neighbours(samples, train, k=4, distance="l2", prefilter=1000)
    assert res["indices"].dtype == np.int64 and res["indices"].shape == (5, 4)
    assert res["distances"].dtype == np.float64 and res["prefilter"] == 40 and res["distance"] == "l2"
    assert list(res["indices"][:2, 0]) == [7, 23] and np.all(res["distances"][:2, 0] == 0)
    D = _brute_l2(samples, train)
    expected = np.argsort(D, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(res["indices"], expected)
    np.testing.assert_allclose(res["distances"], np.take_along_axis(D, expected, 1), rtol=1e-6)
    assert np.all(np.diff(res["distances"], axis=1) >= 0)


def test_prefilter_at_least_m_is_exhaustive_and_small_prefilter_keeps_planted_nearest():
    train = _images(120, seed=4)
    planted = np.array([5, 50, 99, 118])
    rng = np.random.default_rng(0)
    # Near (not exact) copies: the true nearest is unambiguous but not at distance 0.
    noise = rng.integers(-6, 7, train[planted].shape)
    samples = np.clip(train[planted].astype(int) + noise, 0, 255).astype(np.uint8)
    full = nearest_neighbours(samples, train, k=3, distance="l2", prefilter=120)
    more = nearest_neighbours(samples, train, k=3, distance="l2", prefilter=10_000)
    np.testing.assert_array_equal(full["indices"], more["indices"])
    np.testing.assert_array_equal(full["distances"], more["distances"])
    np.testing.assert_array_equal(full["indices"][:, 0], planted)
    small = nearest_neighbours(samples, train, k=3, distance="l2", prefilter=4, embed_res=4)
    assert small["prefilter"] == 4
    np.testing.assert_array_equal(small["indices"][:, 0], planted)
    np.testing.assert_allclose(small["distances"][:, 0], full["distances"][:, 0], rtol=1e-6)


@pytest.mark.parametrize("distance", ["l2", "lpips"])
def test_batch_size_does_not_change_results(distance, net):
    train = _images(20, seed=5)
    samples = np.concatenate([train[[3]], _images(2, seed=6)])
    kw = dict(k=3, distance=distance, lpips_net=net if distance == "lpips" else None, prefilter=6)
    ref = nearest_neighbours(samples, train, batch_size=64, **kw)
    # 1: every image and pair alone; 4: chunks that split the candidates of one sample.
    for bs in (1, 4):
        res = nearest_neighbours(samples, train, batch_size=bs, **kw)
        np.testing.assert_array_equal(res["indices"], ref["indices"])
        np.testing.assert_allclose(res["distances"], ref["distances"], rtol=1e-5, atol=1e-7)


def test_lpips_neighbours_end_to_end(net):
    R = 16
    train = _images(25, R=R, seed=7)
    copies = [2, 17]
    samples = np.concatenate([train[copies], _images(2, R=R, seed=8)])
    res = nearest_neighbours(samples, train, k=3, distance="lpips", lpips_net=net, prefilter=1000,
                             batch_size=8)
    np.testing.assert_array_equal(res["indices"][:2, 0], copies)
    # Features of a sample and of its copy come from different batches: equal up to float32 rounding.
    assert np.all(np.abs(res["distances"][:2, 0]) < 1e-6) and np.all(res["distances"][:, 1:] > 1e-4)
    # Distances are LPIPS of the images upsampled to 64 px, as the lpips module itself computes them.
    up = lambda u8: F.interpolate(to_float(u8), size=(LPIPS_MIN_RES,) * 2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        all_d = net(up(samples).repeat_interleave(len(train), 0), up(train).repeat(len(samples), 1, 1, 1))
    all_d = all_d.reshape(len(samples), len(train)).double().numpy()
    np.testing.assert_array_equal(res["indices"], np.argsort(all_d, axis=1)[:, :3])
    np.testing.assert_allclose(res["distances"], np.sort(all_d, axis=1)[:, :3], rtol=1e-4, atol=1e-6)


def test_argument_errors(net):
    train, samples = _images(5), _images(2)
    with pytest.raises(ValueError, match="unknown distance"):
        nearest_neighbours(samples, train, distance="ssim")
    with pytest.raises(ValueError, match="needs lpips_net"):
        nearest_neighbours(samples, train, distance="lpips")
    with pytest.raises(ValueError, match="k=6"):
        nearest_neighbours(samples, train, k=6, distance="l2")
    with pytest.raises(ValueError, match="uint8"):
        nearest_neighbours(samples / 127.5 - 1, train, distance="l2")
    with pytest.raises(ValueError, match="differ in image shape"):
        nearest_neighbours(_images(2, R=32), train, distance="l2")


# ------------------------------------------------------------------------------------------ output
def test_save_neighbours_round_trip(tmp_path):
    train = _images(12, seed=9)
    samples = np.concatenate([train[[4]], _images(2, seed=10)])
    res = nearest_neighbours(samples, train, k=3, distance="l2")
    npz, png = tmp_path / "out" / "nn.npz", tmp_path / "out" / "nn.png"
    save_neighbours(npz, png, samples, train, res, {"run": "infdiff", "n": np.int64(3)})
    with np.load(npz) as z:
        np.testing.assert_array_equal(z["indices"], res["indices"])
        np.testing.assert_array_equal(z["distances"], res["distances"])
        np.testing.assert_array_equal(z["samples"], samples)
        assert z["neighbours"].shape == (3, 3, 3, 16, 16)
        np.testing.assert_array_equal(z["neighbours"], train[res["indices"]])
        assert str(z["distance"]) == "l2" and int(z["prefilter"]) == 12
        assert json.loads(str(z["meta"])) == {"run": "infdiff", "n": 3}
    grid = np.asarray(Image.open(png))
    # One row per sample; k + 1 tiles of 16 px with 2 px gaps, plus the 2 px separator bar.
    assert grid.shape == (3 * 18 + 2, 4 * 18 + 2 + 2, 3)
    np.testing.assert_array_equal(grid[2:18, 2:18], samples[0].transpose(1, 2, 0))
    np.testing.assert_array_equal(grid[2:18, 19:21], 0)  # the bar between the sample and its neighbours
    np.testing.assert_array_equal(grid[2:18, 22:38], train[4].transpose(1, 2, 0))
    assert sorted(p.name for p in npz.parent.iterdir()) == ["nn.npz", "nn.png"]  # no temp files left
