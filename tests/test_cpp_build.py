"""The C++ kernels as one extension of generated translation units (infdiff/cpp_build.py)."""

import re

import pytest
import torch

from infdiff import cpp_build

needs_cpp = pytest.mark.skipif(not cpp_build.cpp_available("cpu")[0], reason="needs g++ and ninja")
INCLUDE = re.compile(r"^\s*#\s*include\s*[<\"][^>\"]+[>\"]", re.MULTILINE)


def test_every_kernel_file_is_in_exactly_one_unit_inside_its_own_namespace():
    texts = cpp_build.unit_sources()
    assert len(texts) == min(cpp_build.UNITS, len(cpp_build.kernel_files()))
    included = [name for t in texts for name in re.findall(r'^#include "(\w+)\.cpp"$', t, re.MULTILINE)]
    assert sorted(included) == sorted(f.stem for f in cpp_build.kernel_files())
    for t in texts:
        for stem in re.findall(r'^#include "(\w+)\.cpp"$', t, re.MULTILINE):
            assert f'namespace infdiff_unit_{stem} {{\n#include "{stem}.cpp"\n}}' in t


def test_a_unit_includes_every_header_of_its_files_before_any_namespace():
    for t in cpp_build.unit_sources():
        head = t[:t.index("namespace")]
        hoisted = {m.group(0).strip() for m in INCLUDE.finditer(head)}
        for stem in re.findall(r'^#include "(\w+)\.cpp"$', t, re.MULTILINE):
            own = {m.group(0).strip() for m in INCLUDE.finditer((cpp_build.CSRC / f"{stem}.cpp").read_text())}
            assert own <= hoisted, (stem, own - hoisted)


def test_files_are_spread_over_the_units_by_size(tmp_path):
    files = []
    for name, size in [("a", 900), ("b", 500), ("c", 450), ("d", 100)]:
        f = tmp_path / f"{name}.cpp"
        f.write_text("// " + "x" * size + "\n")
        files.append(f)
    units = [re.findall(r'^#include "(\w+)\.cpp"$', t, re.MULTILINE) for t in cpp_build.unit_sources(files, 2)]
    assert units == [["a", "d"], ["b", "c"]]
    assert cpp_build.unit_sources(files, 2) == cpp_build.unit_sources(files[::-1], 2)   # deterministic


def test_units_are_written_once(tmp_path, monkeypatch):
    # A unit rewritten while another job's ninja compiles it would be newer than its object: a second build.
    monkeypatch.setenv("INFDIFF_C_CACHE", str(tmp_path))
    paths = cpp_build._write_units()
    stamps = [p.stat().st_mtime_ns for p in map(type(tmp_path), paths)]
    assert cpp_build._write_units() == paths
    assert [p.stat().st_mtime_ns for p in map(type(tmp_path), paths)] == stamps
    assert [p.read_text() for p in map(type(tmp_path), paths)] == cpp_build.unit_sources()


@needs_cpp
def test_loading_registers_the_operators_of_every_file():
    for f in cpp_build.kernel_files():
        cpp_build.load_extension(f.stem)
    schemas = {s.name.split("::")[0] for s in torch._C._jit_get_all_schemas()}
    assert {f"infdiff_{f.stem}" for f in cpp_build.kernel_files()} <= schemas


def test_an_unknown_kernel_is_refused_by_name():
    with pytest.raises(ValueError, match="no kernel file csrc/nope.cpp"):
        cpp_build.load_extension("nope")
