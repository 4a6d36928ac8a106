"""The package's import structure: every module imports on its own, and imports have no cycle.

A module that only imports when something else was imported first, or two modules that
import each other, work by the accident of import order; these tests fail on both. Imports
inside functions are allowed only to defer a heavy dependency, and each says so with a
``# deferred: <reason>`` comment on the import or the line above it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

# located without importing ppfr, so that this process's import order cannot matter
_SPEC = importlib.util.find_spec("ppfr")
assert _SPEC is not None and _SPEC.submodule_search_locations
PACKAGE_DIR = Path(next(iter(_SPEC.submodule_search_locations)))

DEFERRED_MARK = "# deferred:"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__.py``)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()

# Runs in a fresh interpreter: for each module, forget every ppfr module imported so far
# and import this one alone. Third-party modules stay loaded, which keeps it fast and does
# not change what is tested (whether ppfr's own modules import in any order).
_CHILD = r"""
import importlib, importlib.util, json, sys, traceback
outcome = {"failed": {}, "skipped": {}}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "ppfr" or m.startswith("ppfr.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top and top != "ppfr" and importlib.util.find_spec(top) is None:
            outcome["skipped"][name] = top  # an optional dependency that is not installed
        else:
            outcome["failed"][name] = traceback.format_exc(limit=-4)
    except BaseException:
        outcome["failed"][name] = traceback.format_exc(limit=-4)
print(json.dumps(outcome))
"""


def test_every_module_imports_on_its_own() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PACKAGE_DIR.parent), env.get("PYTHONPATH")) if p
    )
    # a __main__ module runs the CLI when imported: it is run, never imported
    names = sorted(m for m in MODULES if not m.endswith(".__main__"))
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(names)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    if outcome["skipped"]:
        # said in the test report, never silently: these modules were not imported
        missing = ", ".join(f"{m} (needs {dep})" for m, dep in sorted(outcome["skipped"].items()))
        warnings.warn(f"not imported, optional dependency missing: {missing}", stacklevel=1)
    failed = outcome["failed"]
    assert not failed, f"{len(failed)} module(s) fail to import on their own:\n\n" + "\n".join(
        f"--- {name}\n{tb}" for name, tb in sorted(failed.items())
    )


# --- the static import graph ---------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_statements(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: top level, including inside if/try/with
    and class bodies, but not inside functions nor under ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from import_time_statements(node.body)
            yield from import_time_statements(node.orelse)
        elif isinstance(node, ast.Try | ast.TryStar):
            yield from import_time_statements(node.body)
            for handler in node.handlers:
                yield from import_time_statements(handler.body)
            yield from import_time_statements(node.orelse)
            yield from import_time_statements(node.finalbody)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from import_time_statements(node.body)


def imported_modules(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The ppfr modules an import statement in ``module`` names.

    ``from ppfr.x import y`` names ``ppfr.x.y`` when that is a module, else ``ppfr.x``.
    The parent packages that Python initialises on the way are not counted: a submodule
    always needs its package, and that is not a cycle.
    """
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "ppfr"}
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base.split(".")[0] != "ppfr":
        return set()
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}


def import_graph() -> dict[str, set[str]]:
    """Module -> the ppfr modules it imports when it is imported."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in import_time_statements(tree.body):
            edges |= imported_modules(module, node)
        graph[module] = edges - {module}
    return graph


def test_graph_resolves_imports() -> None:
    # the resolution the cycle check relies on, on modules whose imports are known
    graph = import_graph()
    assert "ppfr.methods.base" in graph["ppfr.methods._registry"]
    assert "ppfr.serve.store" in graph["ppfr.serve.store._sqlite"]
    assert set(graph) == set(MODULES)
    unknown = {(m, d) for m, deps in graph.items() for d in deps if d not in MODULES}
    assert not unknown, f"imports of ppfr modules that do not exist: {sorted(unknown)}"


def test_no_import_cycles() -> None:
    try:
        tuple(TopologicalSorter(import_graph()).static_order())
    except CycleError as e:
        cycle = e.args[1]
        pytest.fail("ppfr modules import each other in a cycle: " + " -> ".join(cycle))


# --- imports inside functions ----------------------------------------------------------------


def _reason_above(lines: list[str], lineno: int) -> bool:
    """Whether the comment heading the block of imports that holds line ``lineno`` gives a
    reason: one comment may cover several imports in a row (blank lines between them too)."""
    for text in reversed(lines[: lineno - 1]):
        text = text.strip()
        if text.startswith("#"):
            if DEFERRED_MARK in text:
                return True
        elif not (text == "" or text.startswith(("import ", "from "))):
            return False
    return False


def undeclared_deferred_imports() -> list[str]:
    """``file:line`` of each ppfr import inside a function without a ``# deferred:`` reason."""
    missing: set[tuple[str, int]] = set()  # a set: nested functions are walked twice
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), filename=str(path))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                if not imported_modules(module, node):
                    continue
                own = lines[node.lineno - 1 : node.end_lineno]
                if any(DEFERRED_MARK in text for text in own) or _reason_above(lines, node.lineno):
                    continue
                missing.add((str(path.relative_to(PACKAGE_DIR.parent)), node.lineno))
    return [f"{path}:{line}" for path, line in sorted(missing)]


def test_function_level_imports_say_why() -> None:
    missing = undeclared_deferred_imports()
    assert not missing, (
        f"{len(missing)} import(s) of ppfr inside functions without a '{DEFERRED_MARK} "
        "<reason>' comment (import at module level unless it defers a heavy dependency):\n"
        + "\n".join(missing)
    )
