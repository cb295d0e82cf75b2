"""FID / FID_CLIP / KID (infdiff.metrics.fid): closed forms, clean-fid parity, offline loading of stand-ins.

The real networks (Inception 92 MB, CLIP 350 MB) are never needed: tiny randomly initialised stand-ins
with the same file formats (a TorchScript module with a `layers` submodule; an open_clip CLIP state dict
and an OpenAI-style TorchScript archive) go through the same loading code.
"""

import hashlib
import json
import os

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import nn

from infdiff.metrics import fid as F
from infdiff.metrics.weights import MissingWeightsError
from tests.standins import save_inception as _save_inception

# CLIP's normalisation constants (OpenAI; clean-fid's CLIP_fx uses the same numbers).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CLIP = "infdiff-test-tiny-clip"


# ----------------------------------------------------------------------------------------------------
# Stand-in networks
# ----------------------------------------------------------------------------------------------------


def _images(n: int, seed: int, R: int = 16, shift: int = 0) -> np.ndarray:
    """uint8 [n, 3, R, R]: smooth random colour fields plus noise (shift brightens them)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 200, size=(n, 3, 1, 1)) + rng.normal(0, 25, size=(n, 3, R, R))
    return np.clip(base + shift, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "standin.pt"
    net = _save_inception(path, dim=16)
    return F.load_extractor("inception", {"inception": str(path)}), net


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip architecture (QuickGELU, as OpenAI's) registered under TINY_CLIP, with a random
    model whose weights are fp16-representable, saved as a state dict and as an OpenAI-style TorchScript
    archive (fp16 parameters plus the input_resolution/context_length/vocab_size entries)."""
    import open_clip

    d = tmp_path_factory.mktemp("clip")
    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
           "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}
    (d / f"{TINY_CLIP}.json").write_text(json.dumps(cfg))
    (d / f"{TINY_CLIP}-gelu.json").write_text(json.dumps({**cfg, "quick_gelu": False}))
    open_clip.add_model_config(d / f"{TINY_CLIP}.json")
    open_clip.add_model_config(d / f"{TINY_CLIP}-gelu.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP).eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for p in params.values():
            p.copy_(p.half().float())
    sd = model.state_dict()
    torch.save(sd, d / "clip.pt")

    class Node(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Node()
    extra = {"input_resolution": torch.tensor(224), "context_length": torch.tensor(16),
             "vocab_size": torch.tensor(100)}
    for key, value in {**sd, **extra}.items():
        *parents, leaf = key.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, Node())
            mod = getattr(mod, p)
        if key in params:
            mod.register_parameter(leaf, nn.Parameter(value.half()))
        else:
            mod.register_buffer(leaf, value.clone())
    with F._quiet_torchscript():
        torch.jit.script(root).save(str(d / "clip-jit.pt"))
    return {"state_dict": d / "clip.pt", "torchscript": d / "clip-jit.pt", "model": model}


# ----------------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------------


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert F.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_full_covariance_closed_form():
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    S1, S2 = A @ A.T + 0.1 * np.eye(5), B @ B.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    base = np.sum((mu1 - mu2) ** 2) + np.trace(S1) + np.trace(S2)
    by_hand = base - 2 * np.trace(scipy.linalg.sqrtm(S1 @ S2)).real
    # Independent route: Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}, symmetric, by eigenvalues.
    w, V = np.linalg.eigh(S1)
    r1 = V @ np.diag(np.sqrt(w)) @ V.T
    by_eig = base - 2 * np.sqrt(np.linalg.eigvalsh(r1 @ S2 @ r1)).sum()
    got = F.frechet_distance(mu1, S1, mu2, S2)
    assert got == pytest.approx(by_hand, rel=1e-8)
    assert got == pytest.approx(by_eig, rel=1e-8)
    assert F.frechet_distance(mu2, S2, mu1, S1) == pytest.approx(got, rel=1e-8)


def test_fid_self_zero_and_grows_with_shift():
    feats = np.random.default_rng(2).normal(size=(400, 16)) @ np.random.default_rng(3).normal(size=(16, 16))
    mu, sigma = F.gaussian_stats(feats)
    assert np.allclose(mu, feats.mean(0)) and np.allclose(sigma, np.cov(feats.T))
    assert abs(F.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)
    values = []
    for a in (0.25, 0.5, 1.0, 2.0):
        delta = a * np.ones(16)
        mu2, sigma2 = F.gaussian_stats(feats + delta)
        value = F.frechet_distance(mu, sigma, mu2, sigma2)
        # Same covariance: only the mean term is left, ||delta||^2.
        assert value == pytest.approx(float(delta @ delta), rel=1e-5)
        values.append(value)
    assert values == sorted(values)


# ----------------------------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------------------------


def _mmd_unbiased(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written from the definition."""
    d, m = x.shape[1], len(x)
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()


def test_kid_properties_and_rng_untouched():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    state = np.random.get_state()
    same = F.kid(a, b, seed=0, num_subsets=20, max_subset_size=100)
    shifted = F.kid(a, b + 0.5, seed=0, num_subsets=20, max_subset_size=100)
    assert shifted > 0 and abs(same) < 0.05 * shifted
    assert F.kid(a, b + 1.0, seed=0, num_subsets=20, max_subset_size=100) > shifted
    # Seeded: the same seed gives the same value, another seed other subsets.
    assert F.kid(a, b, seed=0, num_subsets=20, max_subset_size=100) == same
    assert F.kid(a, b, seed=1, num_subsets=20, max_subset_size=100) != same
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    # Subsets as large as the sets: every subset is a permutation, the estimate is the exact one.
    assert F.kid(a[:50], b[:50] + 0.5, num_subsets=3) == pytest.approx(_mmd_unbiased(b[:50] + 0.5, a[:50]), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        F.kid(a[:1], b)


def test_kid_equals_cleanfid_kernel_distance():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(120, 8)), rng.normal(size=(90, 8)) + 0.3
    state = np.random.get_state()
    try:
        np.random.seed(7)
        theirs = kernel_distance(a, b, num_subsets=10, max_subset_size=40)
    finally:
        np.random.set_state(state)
    assert F.kid(a, b, seed=7, num_subsets=10, max_subset_size=40) == pytest.approx(theirs, rel=1e-10)


# ----------------------------------------------------------------------------------------------------
# Inception path
# ----------------------------------------------------------------------------------------------------


# clean-fid's own frechet_distance passes sqrtm(disp=False), deprecated in scipy 1.17.
@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_inception_features_match_cleanfid_pipeline(inception, tmp_path, single_thread):
    """Our features + statistics + distance equal clean-fid's compute_fid on the same images as PNGs.
    (single_thread: clean-fid's DataLoader collates with torch.stack, 10x slower multi-threaded here.)"""
    from cleanfid.fid import compute_fid
    from cleanfid.resize import build_resizer

    ext, net = inception
    assert ext.name == "inception" and ext.dim == 16
    A, B = _images(32, 10), _images(32, 11, shift=30)
    fa = F.features(A, ext, batch_size=16)
    assert fa.shape == (32, 16) and fa.dtype == np.float64
    # The forward is clean-fid's clean mode: PIL bicubic to 299 without quantising, (x - 128) / 128, layers.
    resize = build_resizer("clean")
    x = torch.stack([torch.from_numpy(resize(img.transpose(1, 2, 0)).transpose(2, 0, 1).copy()) for img in A[:3]])
    with torch.no_grad():
        assert np.allclose(fa[:3], net.layers((x - 128) / 128).numpy(), atol=1e-5)
    assert np.allclose(F.features(A, ext, batch_size=7), fa, atol=1e-6)
    ours = F.frechet_distance(*F.gaussian_stats(fa), *F.gaussian_stats(F.features(B, ext)))
    # clean-fid's own pipeline (files, its ResizeDataset, its statistics) with our extractor plugged in.
    for name, imgs in (("a", A), ("b", B)):
        (tmp_path / name).mkdir()
        for i, img in enumerate(imgs):
            Image.fromarray(img.transpose(1, 2, 0)).save(tmp_path / name / f"{i:03d}.png")
    theirs = compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), mode="clean", custom_feat_extractor=ext,
                         device=torch.device("cpu"), num_workers=0, batch_size=16, verbose=False)
    assert ours > 0.01
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_inception_forward_equals_cleanfid_wrapper(tmp_path):
    """With a 2048-d stand-in under clean-fid's file name, clean-fid's InceptionV3W gives our features."""
    from cleanfid.inception_torchscript import InceptionV3W

    _save_inception(tmp_path / "inception-2015-12-05.pt", dim=2048, seed=1)
    ext = F.load_extractor("inception", {"inception": str(tmp_path / "inception-2015-12-05.pt")})
    assert ext.dim == 2048
    with F._quiet_torchscript():
        wrapper = InceptionV3W(str(tmp_path), download=False).eval()
    x = torch.rand(2, 3, 299, 299) * 255
    with torch.no_grad():
        assert torch.allclose(ext(x), wrapper(x), atol=1e-6)


def test_inception_file_without_layers(tmp_path):
    with F._quiet_torchscript():
        torch.jit.script(nn.Linear(2, 2)).save(str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="layers"):
        F.load_extractor("inception", {"inception": str(tmp_path / "other.pt")})


# ----------------------------------------------------------------------------------------------------
# CLIP path
# ----------------------------------------------------------------------------------------------------


def test_clip_features_match_open_clip_pipeline(tiny_clip):
    import open_clip

    ext = F.load_extractor("clip_vit_b_32", {"clip_vit_b_32": str(tiny_clip["state_dict"])}, clip_arch=TINY_CLIP)
    assert ext.name == "clip_vit_b_32" and ext.dim == 32
    pp = ext.preprocessing
    assert pp["mean"] == pytest.approx(CLIP_MEAN) and pp["std"] == pytest.approx(CLIP_STD)
    assert pp["quick_gelu"] is True and pp["resize"]["size"] == [224, 224]
    assert pp == F.extractor_preprocessing("clip_vit_b_32", TINY_CLIP)
    imgs = _images(5, 20)
    feats = F.features(imgs, ext, batch_size=2)
    assert feats.shape == (5, 32)
    # open_clip's own inference transform (resize shorter side, centre crop, ToTensor, Normalize) and
    # encode_image on the model it loads from the same file.
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=str(tiny_clip["state_dict"]))
    x = torch.stack([preprocess(Image.fromarray(img.transpose(1, 2, 0))) for img in imgs])
    with torch.no_grad():
        ref = model.eval().encode_image(x).numpy()
        # ... which is the model we saved, with CLIP's constants applied by hand.
        mean, std = torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1), torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)
        raw = torch.from_numpy(np.stack([ext.resize(img.transpose(1, 2, 0)).transpose(2, 0, 1) for img in imgs]))
        by_hand = tiny_clip["model"].encode_image((raw.float() / 255 - mean) / std).numpy()
    assert np.allclose(feats, ref, atol=1e-5)
    assert np.allclose(feats, by_hand, atol=1e-5)
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


def test_clip_from_openai_style_torchscript(tiny_clip):
    """OpenAI's ViT-B-32.pt is a TorchScript archive: torch.load(weights_only=True) refuses it, so the
    loader must route it through torch.jit.load (and give the same network as the state dict)."""
    assert F._is_torchscript(tiny_clip["torchscript"]) and not F._is_torchscript(tiny_clip["state_dict"])
    imgs = _images(3, 21)
    a = F.load_extractor("clip_vit_b_32", {"clip_vit_b_32": str(tiny_clip["torchscript"])}, clip_arch=TINY_CLIP)
    b = F.load_extractor("clip_vit_b_32", {"clip_vit_b_32": str(tiny_clip["state_dict"])}, clip_arch=TINY_CLIP)
    assert np.allclose(F.features(imgs, a), F.features(imgs, b), atol=1e-6)


def test_clip_arch_without_quick_gelu_warns(tiny_clip):
    with pytest.warns(UserWarning, match="QuickGELU"):
        ext = F.load_extractor("clip_vit_b_32", {"clip_vit_b_32": str(tiny_clip["state_dict"])},
                               clip_arch=f"{TINY_CLIP}-gelu")
    assert ext.preprocessing["quick_gelu"] is False
    with pytest.raises(ValueError, match="built-in"):
        F.extractor_preprocessing("clip_vit_b_32", "hf-hub:someone/model")


def test_default_clip_arch_is_openai_vit_b_32():
    import open_clip

    cfg = open_clip.get_model_config(F.DEFAULT_CLIP_ARCH)
    assert cfg["quick_gelu"] is True and cfg["embed_dim"] == 512
    assert cfg["vision_cfg"]["patch_size"] == 32 and cfg["vision_cfg"]["width"] == 768
    pp = F.extractor_preprocessing("clip_vit_b_32")
    assert pp["resize"]["size"] == [224, 224] and pp["resize"]["filter"] == "bicubic"
    assert pp["mean"] == pytest.approx(CLIP_MEAN) and pp["std"] == pytest.approx(CLIP_STD)


# ----------------------------------------------------------------------------------------------------
# Weights, cache keys, reference statistics files, score
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,file", [("inception", "inception-2015-12-05.pt"), ("clip_vit_b_32", "ViT-B-32.pt")])
def test_missing_weights(name, file, tmp_path):
    for weights in ({}, {name: str(tmp_path / "absent.pt")}):
        with pytest.raises(MissingWeightsError, match=f"metrics.weights.{name}") as err:
            F.load_extractor(name, weights)
        assert file in str(err.value)


def test_reference_stats_key():
    base = dict(dataset={"name": "shapes", "kind": "shapes", "train_size": 64}, split="ref", resolution=32, n=100,
                extractor="inception", preprocessing={"resize": "clean"}, weights_sha256="ab" * 32)
    key = F.reference_stats_key(**base)
    assert len(key) == 16 and int(key, 16) >= 0
    assert F.reference_stats_key(**{**base, "dataset": {"train_size": 64, "kind": "shapes", "name": "shapes"}}) == key
    variants = [
        {"dataset": {"name": "shapes", "kind": "shapes", "train_size": 65}}, {"split": "train"}, {"resolution": 64}, {"n": 101},
        {"n": None}, {"extractor": "clip_vit_b_32"}, {"preprocessing": {"resize": "other"}},
        {"weights_sha256": "cd" * 32},
    ]
    keys = {F.reference_stats_key(**{**base, **v}) for v in variants}
    assert len(keys) == len(variants) and key not in keys


def test_file_sha256(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"x" * 3_000_000)
    assert F.file_sha256(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert F.file_sha256(str(p)) == F.file_sha256(p)
    p.write_bytes(b"y" * 10)
    assert F.file_sha256(p) == hashlib.sha256(b"y" * 10).hexdigest()


def test_reference_stats_round_trip_atomic(tmp_path, monkeypatch):
    feats = np.random.default_rng(6).normal(size=(30, 8))
    path = tmp_path / "stats" / "ref.npz"
    meta = {"extractor": "inception", "n": 30, "preprocessing": {"size": [299, 299]}}
    F.save_reference_stats(path, feats, meta)
    assert os.listdir(path.parent) == ["ref.npz"]
    ref = F.load_reference_stats(path)
    mu, sigma = F.gaussian_stats(feats)
    assert np.array_equal(ref["mu"], mu) and np.array_equal(ref["sigma"], sigma)
    assert ref["feats"].dtype == np.float32 and np.array_equal(ref["feats"], feats.astype(np.float32))
    assert ref["meta"] == meta

    def boom(*args, **kwargs):
        raise OSError("disk full")

    # A failed write leaves the previous file intact and no temp files behind.
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        F.save_reference_stats(path, feats * 2, meta)
    assert os.listdir(path.parent) == ["ref.npz"]
    assert np.array_equal(F.load_reference_stats(path)["mu"], mu)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        F.load_reference_stats(tmp_path / "junk.npz")


def test_score(inception, tmp_path, single_thread):
    ext, _ = inception
    A, B = _images(24, 30), _images(24, 31, shift=40)
    fa = F.features(A, ext)
    F.save_reference_stats(tmp_path / "ref.npz", fa, {"extractor": ext.name, "preprocessing": ext.preprocessing})
    ref = F.load_reference_stats(tmp_path / "ref.npz")
    same = F.score("fid", A, ref, ext, {"min_samples": 2, "batch_size": 5})
    assert abs(same["value"]) < 1e-6 * np.trace(ref["sigma"])
    assert same["n_samples"] == 24 and same["n_ref"] == 24 and same["settings"]["batch_size"] == 5
    fb = F.features(B, ext)
    out = F.score("fid", B, ref, ext, {"min_samples": 2, "batch_size": 64})
    assert out["value"] == pytest.approx(F.frechet_distance(*F.gaussian_stats(fb), ref["mu"], ref["sigma"]), rel=1e-6)
    assert out["value"] > 0.01
    settings = {"min_samples": 2, "batch_size": 64, "subsets": 5, "subset_size": 10, "seed": 3}
    k = F.score("kid", B, ref, ext, settings)
    assert k["value"] == pytest.approx(F.kid(ref["feats"], fb, seed=3, num_subsets=5, max_subset_size=10), rel=1e-6)
    assert k["settings"]["subsets"] == 5 and k["settings"]["subset_size"] == 10
    with pytest.raises(ValueError, match=r"fid: 3 samples.*evaluate\.fid\.min_samples"):
        F.score("fid", B[:3], ref, ext, {"min_samples": 10, "batch_size": 64})
    with pytest.raises(ValueError, match="clip_vit_b_32"):
        F.score("fid_clip", B, ref, ext, {"min_samples": 2, "batch_size": 64})
    stale = {**ref, "meta": {"extractor": "inception", "preprocessing": {"resize": "other"}}}
    with pytest.raises(ValueError, match="recompute"):
        F.score("fid", B, stale, ext, {"min_samples": 2, "batch_size": 64})
