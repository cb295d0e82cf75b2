"""The rehearsal photographs: deterministic crops of real photos, as files and as an LMDB."""

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage")
lmdb = pytest.importorskip("lmdb")

from infdiff.rehearsal import write_photo_crops  # noqa: E402


def test_crops_as_files_and_lmdb_are_the_same_photographs(tmp_path):
    a = write_photo_crops(tmp_path / "a", n=6, seed=3)
    b = write_photo_crops(tmp_path / "b", n=6, seed=3)
    files = sorted((tmp_path / "a" / "folder").iterdir())
    assert [f.name for f in files] == ["00000.png", "00001.jpg", "00002.png", "00003.jpg", "00004.png", "00005.jpg"]
    assert all(f.read_bytes() == (tmp_path / "b" / "folder" / f.name).read_bytes() for f in files)
    env = lmdb.open(a["lmdb"], readonly=True, lock=False)
    with env.begin() as txn:
        keys = [k.decode() for k, _ in txn.cursor()]
        assert keys == [f"{i:05d}" for i in range(6)]
        for i in (0, 2, 4):   # PNG files and lossless WebP values: the same pixels
            webp = np.asarray(Image.open(io.BytesIO(txn.get(f"{i:05d}".encode()))).convert("RGB"))
            png = np.asarray(Image.open(files[i]).convert("RGB"))
            assert webp.shape[0] == webp.shape[1] >= 48 and np.array_equal(webp, png)
    env.close()
    other = write_photo_crops(tmp_path / "c", n=6, seed=4)
    assert (tmp_path / "c" / "folder" / "00000.png").read_bytes() != files[0].read_bytes()
    assert other["n"] == b["n"] == 6
