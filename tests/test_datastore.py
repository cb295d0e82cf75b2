"""Real image data into prepared stores: infdiff.sources (folder, .zip, LMDB) and infdiff.data.prepare / load_prepared.

The properties: the three source kinds give the same pixels for the same encoded images; corrupt or
unreadable files are skipped and listed with their error, and the counts add up; the store is a
read-only memory map whose contents do not depend on the number of decoding processes; the splits tile
the sorted name list.
"""
import io
import json
import zipfile

import lmdb
import numpy as np
import pytest
from PIL import Image

from infdiff import data
from infdiff.config import ConfigError, check_data_paths, split_size
from infdiff.data import load_prepared, prepare, report_path
from infdiff.metrics import fid
from infdiff.sources import ImageSource, decode_chunk
from infdiff.splits import FOLDER_SPLITS, FULL_PARTS, folder_splits, split_definition
from tests.conftest import tiny_config

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def encoded(i: int, fmt: str = "PNG", size=(12, 10)) -> bytes:
    """A small image with structure (a gradient and a block that depends on i), encoded as fmt."""
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]
    a[..., 1] = (37 * i) % 256
    a[2:5, (i % 6):(i % 6) + 3, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def image_set(n: int) -> dict[str, bytes]:
    """n encoded images, PNG and JPEG mixed, some in a sub-folder (names as a folder lists them)."""
    return {(f"sub/img{i:03d}" if i % 4 == 3 else f"img{i:03d}") + (".jpg" if i % 3 == 2 else ".png"):
            encoded(i, "JPEG" if i % 3 == 2 else "PNG") for i in range(n)}


def as_folder(root, files: dict[str, bytes]):
    for name, blob in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    return root


def as_zip(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
    return path


def as_lmdb(path, files: dict[str, bytes]):
    """An LMDB as LSUN ships it: a folder with data.mdb, keys = ids (text), values = encoded images."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for name, blob in files.items():
            txn.put(name.encode(), blob)
    env.close()
    return path


def prepared(tmp_path, kind, path, split, R=8, n=None, name=None, **kw):
    out = tmp_path / "out" / (name or f"{kind}-{split}.npy")
    meta = prepare({"kind": kind, "path": str(path)}, split, R, n, out, **kw)
    return load_prepared(out), meta


# --------------------------------------------------------------------------------------- decoding
def test_sources_list_sorted_and_decode_cropped(tmp_path):
    (tmp_path / "sub").mkdir()
    for k, c in enumerate(COLOURS):  # mixed sizes and formats, nested, plus a file that is no image
        Image.new("RGB", (20 + 4 * k, 16), c).save(tmp_path / ("sub" if k % 2 else ".") / f"img{k}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    src = ImageSource("folder", str(tmp_path))
    names = src.names()
    assert names == ["img0.png", "img2.png", "img4.png", "sub/img1.png", "sub/img3.png", "sub/img5.png"]
    x, errors = decode_chunk(src, names, 8)
    assert x.shape == (6, 3, 8, 8) and x.dtype == np.uint8 and errors == []
    assert np.allclose(x.reshape(6, 3, -1).mean(-1), np.array(COLOURS)[[0, 2, 4, 1, 3, 5]], atol=3)


def test_centre_crop_and_antialiased_resize(tmp_path):
    # 30 x 10 image: blue bands left/right, red centre square -> the centre crop is pure red.
    im = np.zeros((10, 30, 3), np.uint8)
    im[:, :, 2] = 255
    im[:, 10:20] = (255, 0, 0)
    Image.fromarray(im).save(tmp_path / "a.png")
    # 1-px checkerboard: an antialiased downscale is uniform grey; point sampling would give black/white.
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(np.stack([board] * 3, -1)).save(tmp_path / "b.png")
    x, _ = decode_chunk(ImageSource("folder", str(tmp_path)), ["a.png", "b.png"], 8)
    assert np.all(x[0, 0] == 255) and np.all(x[0, 1:] == 0)
    assert np.abs(x[1].astype(int) - 128).max() <= 3


def test_lmdb_zip_and_folder_give_the_same_pixels(tmp_path):
    files = image_set(20)
    sources = {"folder": ("folder", as_folder(tmp_path / "imgs", files)),
               "zip": ("folder", as_zip(tmp_path / "imgs.zip", files)),
               "lmdb": ("lmdb", as_lmdb(tmp_path / "church_outdoor_train_lmdb", files))}
    assert {k: ImageSource(*v).names() for k, v in sources.items()} == {k: sorted(files) for k in sources}
    for split in FULL_PARTS:
        stores = {k: prepared(tmp_path, kind, path, split, name=f"{k}-{split}.npy") for k, (kind, path) in sources.items()}
        ref, meta = stores["folder"]
        assert len(ref) == meta["counts"]["listed"] > 0
        for k, (x, m) in stores.items():
            assert np.array_equal(x, ref), (k, split)
            assert m["files_sha256"] == meta["files_sha256"] and m["index_range"] == meta["index_range"]
    # a data.mdb given directly (subdir=False) is the same LMDB
    assert ImageSource("lmdb", str(sources["lmdb"][1] / "data.mdb")).names() == sorted(files)
    # and the pixels are the images' own: decode one by hand
    x, _ = prepared(tmp_path, "lmdb", sources["lmdb"][1], "train", R=10, name="lmdb10.npy")
    first = sorted(files)[0]
    assert np.array_equal(x[0], np.asarray(Image.open(io.BytesIO(files[first])).convert("RGB").crop((1, 0, 11, 10)))
                          .transpose(2, 0, 1))


# ---------------------------------------------------------------------------- corrupt files, counts
@pytest.mark.parametrize("kind", ["folder", "zip", "lmdb"])
def test_corrupt_files_are_skipped_listed_and_counted(tmp_path, kind):
    files = image_set(20)
    good = dict(files)
    files["img001.png"] = files["img001.png"][:60]                     # a truncated PNG
    files["img004.jpg"] = np.random.default_rng(0).bytes(300)          # random bytes named .jpg
    path = {"folder": lambda: as_folder(tmp_path / "imgs", files), "zip": lambda: as_zip(tmp_path / "i.zip", files),
            "lmdb": lambda: as_lmdb(tmp_path / "db", files)}[kind]()
    src_kind = "lmdb" if kind == "lmdb" else "folder"
    x, meta = prepared(tmp_path, src_kind, path, "train")           # train: sorted names [0, 15)
    c = meta["counts"]
    assert c == {"listed": 15, "selected": 15, "written": 13, "skipped": 2}
    assert c["written"] + c["skipped"] == c["selected"] == c["listed"] and len(x) == c["written"] == meta["n"]
    assert [s["name"] for s in meta["skipped"]] == ["img001.png", "img004.jpg"]
    for s in meta["skipped"]:
        assert s["name"] in s["error"] and "cannot read image" in s["error"]
    # the report on disk says the same, and the store holds exactly the good images, in sorted order
    assert json.loads(report_path(tmp_path / "out" / f"{src_kind}-train.npy").read_text())["skipped"] == meta["skipped"]
    names = [n for n in sorted(files)[:15] if n not in ("img001.png", "img004.jpg")]
    clean, _ = decode_chunk(ImageSource("folder", str(as_folder(tmp_path / "good", good))), names, 8)
    assert np.array_equal(x, clean)
    # the file is exactly N images long after the header (the store was shrunk in place)
    npy = tmp_path / "out" / f"{src_kind}-train.npy"
    assert npy.stat().st_size == x.offset + x.nbytes


def test_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(8):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 5)
    with pytest.raises(ValueError, match="none of the 6 images.*0.png"):
        prepare({"kind": "folder", "path": str(tmp_path / "imgs")}, "train", 8, None, tmp_path / "t.npy")
    assert list(tmp_path.glob("*.npy")) == [] and list(tmp_path.glob(".*")) == []   # no store, no temp file


# --------------------------------------------------------------------------------- the stored split
def test_store_is_a_read_only_memory_map_with_clear_errors(tmp_path):
    as_folder(tmp_path / "imgs", image_set(8))
    x, meta = prepared(tmp_path, "folder", tmp_path / "imgs", "train", name="train.npy")
    assert isinstance(x, np.memmap) and not x.flags.writeable and x.dtype == np.uint8 and x.shape == (6, 3, 8, 8)
    with pytest.raises(ValueError):
        x[0, 0, 0, 0] = 1
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["train.json", "train.npy"]   # no temp files left
    _, m = load_prepared(out / "train.npy", with_meta=True)
    assert m == json.loads(json.dumps(meta)) and m["shape"] == [6, 3, 8, 8] and m["source"]["kind"] == "folder"
    with pytest.raises(FileNotFoundError, match="nope.npy.*python -m infdiff prepare"):
        load_prepared(out / "nope.npy")
    (out / "orphan.npy").write_bytes((out / "train.npy").read_bytes())
    with pytest.raises(FileNotFoundError, match="no report"):
        load_prepared(out / "orphan.npy")
    (out / "orphan.json").write_text(json.dumps({**m, "shape": [5, 3, 8, 8]}))
    with pytest.raises(ValueError, match="different runs of prepare"):
        load_prepared(out / "orphan.npy")
    (out / "corrupt.npy").write_bytes((out / "train.npy").read_bytes()[:200])     # truncated
    (out / "corrupt.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="corrupt.npy.*corrupt"):
        load_prepared(out / "corrupt.npy")
    np.savez(out / "old.npz", images=np.zeros((2, 3, 8, 8), np.uint8))
    (out / "old.npz").rename(out / "old.npy")
    (out / "old.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="old.npy"):
        load_prepared(out / "old.npy")


def test_order_does_not_depend_on_the_number_of_processes(tmp_path, monkeypatch):
    files = image_set(24)
    files["img007.png"] = b"not an image"
    as_folder(tmp_path / "imgs", files)
    monkeypatch.setattr(data, "_CHUNK", 3)             # many chunks, so the pool really interleaves
    stores = [prepared(tmp_path, "folder", tmp_path / "imgs", "train", name=f"w{w}.npy", workers=w) for w in (1, 2, 3)]
    (x1, m1), *rest = stores
    assert m1["counts"]["skipped"] == 1 and len(x1) == 17
    for x, m in rest:
        assert np.array_equal(x, x1) and m["skipped"] == m1["skipped"] and m["files_sha256"] == m1["files_sha256"]


# ------------------------------------------------------------------------------------------- splits
def test_split_ranges_tile_the_sorted_list():
    assert FOLDER_SPLITS == {"train": (0.0, 0.75), "val": (0.75, 0.8), "ref": (0.8, 0.9), "ref2": (0.9, 1.0)}
    for m in (20, 1000, 70000, 126227):
        s = folder_splits(m)
        assert [s[k] for k in FULL_PARTS] == sorted(s.values())
        assert s["train"][0] == 0 and s["ref2"][1] == m
        assert all(s[a][1] == s[b][0] for a, b in zip(FULL_PARTS, FULL_PARTS[1:]))
    # ref and ref2 are as before the validation split existed; val is carved from the end of train
    assert folder_splits(70000) == {"train": (0, 52500), "val": (52500, 56000), "ref": (56000, 63000),
                                    "ref2": (63000, 70000)}
    assert split_definition("folder", "full") == {"parts": {k: list(FOLDER_SPLITS[k]) for k in FULL_PARTS}}
    assert split_definition("shapes", "val") == {"seeds": [3 * 10**7, 4 * 10**7]}
    with pytest.raises(ValueError, match="infinite"):
        split_definition("shapes", "full")


def test_prepare_folder_whole_split_subset_and_errors(tmp_path):
    files = image_set(20)
    as_folder(tmp_path / "imgs", files)
    metas = {s: prepared(tmp_path, "folder", tmp_path / "imgs", s)[1] for s in FULL_PARTS}
    assert {s: m["index_range"] for s, m in metas.items()} == {"train": [0, 15], "val": [15, 16], "ref": [16, 18],
                                                                "ref2": [18, 20]}
    assert all(m["n"] == m["counts"]["listed"] and m["subset_seed"] is None for m in metas.values())
    # n smaller than the split: a seeded subset, sorted, the same every time
    a, ma = prepared(tmp_path, "folder", tmp_path / "imgs", "train", n=5, name="a.npy")
    b, _ = prepared(tmp_path, "folder", tmp_path / "imgs", "train", n=5, name="b.npy")
    full, _ = prepared(tmp_path, "folder", tmp_path / "imgs", "train", name="full.npy")
    assert np.array_equal(a, b) and ma["counts"] == {"listed": 15, "selected": 5, "written": 5, "skipped": 0}
    assert ma["subset_seed"] == 0 and any(np.array_equal(a[i], full[j]) for i in range(5) for j in range(15))
    with pytest.raises(ValueError, match="asked for 16 images but split 'train'.*holds 15"):
        prepare({"kind": "folder", "path": str(tmp_path / "imgs")}, "train", 8, 16, tmp_path / "x.npy")
    as_folder(tmp_path / "four", dict(list(files.items())[:4]))
    with pytest.raises(ValueError, match="split 'val'.*is empty"):
        prepare({"kind": "folder", "path": str(tmp_path / "four")}, "val", 8, None, tmp_path / "x.npy")
    with pytest.raises(FileNotFoundError, match="LMDB"):
        prepare({"kind": "lmdb", "path": str(tmp_path / "missing_lmdb")}, "train", 8, None, tmp_path / "x.npy")
    with pytest.raises(ValueError, match="not a readable LMDB"):
        prepare({"kind": "lmdb", "path": str(tmp_path / "imgs")}, "train", 8, None, tmp_path / "x.npy")
    with pytest.raises(ValueError, match="no images"):
        (tmp_path / "empty").mkdir()
        prepare({"kind": "folder", "path": str(tmp_path / "empty")}, "train", 8, None, tmp_path / "x.npy")


def test_config_split_sizes_and_full_reference(tmp_path):
    cfg = tiny_config({"datasets": {"pics": {"kind": "lmdb", "path": str(tmp_path / "db"), "train_size": None,
                                             "val_size": None}}})
    assert [split_size(cfg, "pics", s, 16) for s in ("train", "val", "ref", "ref2", "full")] == [None] * 5
    assert [split_size(cfg, "shapes", s, 16) for s in ("train", "val", "ref")] == [64, 256, 4]
    with pytest.raises(ConfigError, match="church_outdoor_train_lmdb"):
        check_data_paths(cfg, ["pics"])
    with pytest.raises(ConfigError, match="infinite dataset has no full set; use reference_split: ref"):
        tiny_config({"evaluate": {"reference_split": "full"}})
    full = {"evaluate": {"reference_split": "full"}, "datasets": {"pics": {"kind": "folder", "path": "/d"}},
            "runs": {r: {"dataset": "pics"} for r in ("infdiff", "mlp_pixel", "simple_diffusion", "infdiff_ae",
                                                       "infdiff_untrained", "mlp_pixel_as_described")}}
    with pytest.raises(ConfigError, match="train_size: 20000 and val_size: 256 prepares only a subset"):
        tiny_config(full)
    full["datasets"]["pics"].update(train_size=None, val_size=None)
    assert tiny_config(full)["evaluate"]["reference_split"] == "full"
    with pytest.raises(ConfigError, match="kind lmdb needs `path`"):
        tiny_config({"datasets": {"pics": {"kind": "lmdb"}}})


def test_reference_stats_key_follows_the_split_definition(monkeypatch):
    key = dict(dataset={"name": "pics", "kind": "folder", "path": "/d"}, resolution=32, n=None,
               extractor="inception", preprocessing={}, weights_sha256="ab" * 32)
    k_train, k_full = fid.reference_stats_key(split="train", **key), fid.reference_stats_key(split="full", **key)
    assert k_train != k_full
    monkeypatch.setitem(FOLDER_SPLITS, "train", (0.0, 0.8))        # the images of "train" change ...
    assert fid.reference_stats_key(split="train", **key) != k_train  # ... and so does its cache key


# ------------------------------------------------------------------------------- the workflow rule
@pytest.mark.slow
def test_rule_prepare_data_on_a_folder_dataset(tmp_path):
    """The real rule through Snakemake: train_size/val_size null and ref (always the whole split of file
    data) pass n=None through, the .npy and its report are both outputs, a corrupt file is skipped."""
    import shutil
    import subprocess

    import yaml

    from tests.conftest import REPO

    files = image_set(20)
    files["img005.png"] = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20
    as_folder(tmp_path / "pics", files)
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump({"datasets": {"pics": {
        "kind": "folder", "path": str(tmp_path / "pics"), "train_size": None, "val_size": None}}}))
    targets = [f"results/data/pics-8/{s}.npy" for s in ("train", "val", "ref")]
    out = subprocess.run(["snakemake", *targets, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                          "--cores", "2", "--configfile", str(tmp_path / "extra.yaml")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    stores = {s: load_prepared(tmp_path / f"results/data/pics-8/{s}.npy", with_meta=True) for s in ("train", "val", "ref")}
    assert {s: m["counts"] for s, (_, m) in stores.items()} == {
        "train": {"listed": 15, "selected": 15, "written": 14, "skipped": 1},
        "val": {"listed": 1, "selected": 1, "written": 1, "skipped": 0},
        "ref": {"listed": 2, "selected": 2, "written": 2, "skipped": 0}}
    assert [s["name"] for s in stores["train"][1]["skipped"]] == ["img005.png"]
    assert "skipped img005.png" in (tmp_path / "results/logs/prepare_data/pics-8-train.log").read_text()
    direct, _ = prepared(tmp_path, "folder", tmp_path / "pics", "train")
    assert np.array_equal(stores["train"][0], direct)
