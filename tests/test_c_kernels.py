"""infdiff.c_kernels: plain C kernels built with the system compiler into a cache, loaded with ctypes."""

import ctypes
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

ck = importlib.import_module("infdiff.c_kernels")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache directory and no memoised availability or libraries."""
    monkeypatch.setenv("INFDIFF_C_CACHE", str(tmp_path / "cache"))
    ck.c_available.cache_clear()
    ck.load_c.cache_clear()
    yield tmp_path / "cache"
    ck.c_available.cache_clear()
    ck.load_c.cache_clear()


def test_builds_into_the_cache_once_and_loads_a_working_library(fresh):
    if not ck.c_available()[0]:
        pytest.skip("no C compiler")
    lib = ck.load_c("swd_bootstrap")
    built = sorted(fresh.glob("swd_bootstrap-*.so"))
    assert len(built) == 1 and list(fresh.glob("*.so")) == built
    mtime = built[0].stat().st_mtime_ns
    ck.load_c.cache_clear()
    ck.load_c("swd_bootstrap")                                             # a second process: loaded, not rebuilt
    assert built[0].stat().st_mtime_ns == mtime
    built[0].unlink()                              # a new file (this process keeps the mapped one) ...
    built[0].write_bytes(b"\x7fELF truncated by a killed build")      # ... cut short
    # a fresh process (this one keeps the library it loaded): the file does not load, so it is built again
    code = "import infdiff.c_kernels as c; c.load_c('swd_bootstrap')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "INFDIFF_C_CACHE": str(fresh)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert built[0].stat().st_size > 1000
    # the reduction of one sorted row against another: sum |(g + shift) - pb|
    g, pb, shift = np.array([1.0, 2.0, 4.0], np.float32), np.array([0.0, 3.0, 3.0], np.float32), np.float32(0.5)
    lib.swd_reduce.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.swd_reduce.restype = ctypes.c_double
    sh = np.array([shift], np.float32)
    assert lib.swd_reduce(g.ctypes.data, 1, 3, sh.ctypes.data, pb.ctypes.data, 3, None, None) == 1.5 + 0.5 + 1.5


def test_no_compiler_is_said_and_loading_refuses(fresh, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(ck.shutil, "which", lambda name: None)
    ok, why = ck.c_available()
    assert not ok and "C compiler" in why
    with pytest.raises(RuntimeError, match="C compiler"):
        ck.load_c("swd_bootstrap")
