"""The C heap keeps freed activations (infdiff/allocator.py): checked by glibc's own accounting."""
import ctypes
import json
import os
import subprocess
import sys

import pytest

# In a fresh interpreter: import infdiff, malloc 64 MiB (above glibc's default mmap ceiling of 32 MiB),
# report whether glibc mmapped it, free it, and report whether the heap kept it (not trimmed).
PROBE = r"""
import ctypes, json
import infdiff
from infdiff import allocator
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
n = 64 << 20
before = libc.mallinfo2().hblkhd
p = libc.malloc(n)
ctypes.memset(p, 1, n)
mmapped = libc.mallinfo2().hblkhd - before >= n
libc.free(ctypes.c_void_p(p))
kept = libc.mallinfo2().fordblks >= n
print(json.dumps({"state": allocator.state(), "mmapped": mmapped, "kept": kept}))
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


def _probe(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_importing_infdiff_keeps_large_freed_blocks_in_the_heap():
    tuned = _probe(INFDIFF_MALLOC="tuned")
    assert tuned["state"].startswith("glibc mmap/trim threshold")
    assert not tuned["mmapped"] and tuned["kept"]          # served from the heap, and kept after free
    system = _probe(INFDIFF_MALLOC="system")
    assert system == {"state": "system", "mmapped": True, "kept": False}   # glibc's defaults: mmap, unmap


def test_provenance_records_the_allocator_state():
    from infdiff import allocator
    from infdiff.provenance import provenance

    assert provenance()["malloc"] == allocator.state()
