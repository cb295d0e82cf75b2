"""The house rules that keep the code cheap to extend, checked on the source itself.

* no import cycle between modules of the package (counting imports inside functions too);
* a method is named only in its spec line, its own module and its schema section;
* the schema is the one home of defaults: no `.get(key, default)` for a key it defaults;
* config validation and the method spec table import no torch (they run at Snakemake parse time), nor
  does infdiff.data (each prepare_data job imports it).
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import yaml

from infdiff.config import SCHEMA_PATH
from infdiff.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("infdiff", "baselines")


def _python_files(*folders):
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module of the packages that ``path`` imports, at any depth of its code."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from pkg.mod import name": the module, or pkg.mod.name when that is a module itself
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def test_no_import_cycles():
    modules = {_module_name(p): p for p in _python_files(*PACKAGES)}
    graph = {m: sorted(i for i in _imports(p) if i in modules and i != m) for m, p in modules.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _own_files() -> set[Path]:
    """The spec table and each method's own module (its entry point's module)."""
    own = {REPO / "infdiff/methods/specs.py"}
    for spec in METHODS.values():
        own.add(REPO / (spec.entry.split(":")[0].replace(".", "/") + ".py"))
    return own


def test_methods_are_named_only_in_their_spec_and_own_module():
    """Any string literal equal to a method name in the library, the baselines, the benchmarks or the
    workflow code outside those files means dispatching on a method by name again."""
    names, own, found = set(METHODS), _own_files(), []
    for path in _python_files("infdiff", "baselines", "benchmarks", "workflow"):
        if path in own:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    quoted = re.compile(r"""["'](%s)["']""" % "|".join(names))
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if quoted.search(line.split("#")[0]):
                found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, "method names outside the spec table and their own modules:\n" + "\n".join(found)


def _schema_defaulted_keys() -> set[str]:
    keys = set()

    def walk(node):
        if isinstance(node, dict):
            for key, sub in (node.get("properties") or {}).items():
                if isinstance(sub, dict) and "default" in sub:
                    keys.add(key)
            for sub in node.values():
                walk(sub)
        elif isinstance(node, list):
            for sub in node:
                walk(sub)

    walk(yaml.safe_load(SCHEMA_PATH.read_text()))
    return keys


# Modules that read *result records* (metric JSONs and history lines, possibly from older commits),
# not the config: a missing field of an old record has a meaning there.
RECORD_READERS = {"infdiff/history.py", "infdiff/regress.py", "infdiff/report/rows.py"}


def test_no_get_with_default_for_keys_the_schema_defaults():
    keys, found = _schema_defaulted_keys(), []
    pattern = re.compile(r"""\.get\(\s*["'](\w+)["']\s*,""")
    files = _python_files("infdiff", "baselines", "benchmarks", "workflow")
    files += [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]
    for path in files:
        if str(path.relative_to(REPO)) in RECORD_READERS:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.relative_to(REPO)}:{i}: {line.strip()}" for m in pattern.finditer(line)
                      if m.group(1) in keys]
    assert len(keys) > 100  # the scan really sees the schema
    assert not found, "restated schema defaults (index the validated config instead):\n" + "\n".join(found)


def test_config_validation_and_method_specs_import_no_torch():
    # infdiff.data too: every prepare_data job imports it, and torch would add seconds to each
    code = ("import sys, infdiff.config, infdiff.methods, infdiff.metrics.weights, infdiff.data, infdiff.splits; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
