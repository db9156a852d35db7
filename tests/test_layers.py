"""The package's layers point one way, and nothing is held together by an import cycle.

Every `import` of a tatl module is read from the source (top-level and inside functions alike: a deferred import
is still a dependency), and each module is placed in a layer. A module may import its own layer's modules and
lower layers' only; the whole graph must have no cycle. `tatl` itself (the package's `__init__`: version and the
Python API, loaded lazily) is not a layer: Python imports it before any of its submodules anyway.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tatl"
# Lowest first. A leaf module is shared by every layer and imports only other leaves.
LAYERS = [
    ("leaves", ["tatl.errors", "tatl.constants", "tatl.io", "tatl.folders", "tatl.device", "tatl.logs",
                "tatl.config", "tatl.layout", "tatl.distributed", "tatl.checkpoints"]),
    ("data", ["tatl.data"]),
    ("metrics", ["tatl.metrics"]),
    ("models", ["tatl.models"]),
    ("training", ["tatl.training"]),
    ("pipeline", ["tatl.pipeline"]),
    ("inference", ["tatl.inference"]),
    ("evaluation", ["tatl.evaluation"]),
    ("experiments", ["tatl.experiments"]),
    ("reporting, serving", ["tatl.reporting", "tatl.serving"]),  # siblings: neither imports the other
    ("api", ["tatl.api"]),
    ("commands", ["tatl.commands", "tatl.cli", "tatl.__main__"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The tatl modules `path` imports anywhere in it (`from tatl.x import y` counts tatl.x.y when y is a module)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {m for m in found if m in known and m != name and m != "tatl"}


def layer_of(name: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name}: in no layer; add it to LAYERS in {Path(__file__).name}")


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported_modules(name, path, known) for name, path in found.items() if name != "tatl"}


def test_every_module_has_a_layer():
    for name in graph():
        layer_of(name)


def test_no_module_imports_from_a_higher_layer():
    wrong = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
             for name, targets in graph().items() for target in sorted(targets) if layer_of(target) > layer_of(name)]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


FORBIDDEN = [("tatl.inference", "tatl.pipeline")]  # prediction needs the weights, not the training pipeline


def test_prediction_does_not_import_the_training_pipeline():
    """A layer above may import a lower one, but inference loads finished networks: it needs nothing of the
    pipeline that trains them (what both need lives below both: data.crops, models.ensemble, layout)."""
    wrong = [f"{name} imports {target}" for name, targets in graph().items() for target in sorted(targets)
             for upper, lower in FORBIDDEN if name.startswith(upper) and target.startswith(lower)]
    assert not wrong, "\n".join(wrong)


def test_sibling_packages_of_one_layer_stay_apart_and_leaves_import_only_leaves():
    """Within one layer, a package imports only itself (inference and evaluation know nothing of each other)."""
    def top(name: str) -> str:
        prefixes = LAYERS[layer_of(name)][1]
        return next(p for p in prefixes if name == p or name.startswith(p + "."))

    wrong = [f"{name} imports {target}" for name, targets in graph().items() for target in sorted(targets)
             if layer_of(target) == layer_of(name) and top(target) != top(name)
             and LAYERS[layer_of(name)][0] not in ("leaves", "commands")]
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(edges.get(name, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(edges):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_commands_hold_argparse_wiring_only():
    """A command module defines EXAMPLES, add_arguments, run and private helpers: library code lives in the
    layers, where the Python API and other commands can use it."""
    for path in sorted((PACKAGE / "commands").glob("*.py")):
        public = [node.name for node in ast.parse(path.read_text()).body
                  if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")]
        assert set(public) <= {"add_arguments", "run"}, f"{path.name}: library code in a command: {public}"


def test_the_checker_sees_a_deferred_import_cycle(tmp_path, monkeypatch):
    """The cycle check is not vacuous: two modules importing each other inside functions are caught."""
    package = tmp_path / "tatl"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "a.py").write_text("def f():\n    from tatl.data import b\n")
    (package / "data" / "b.py").write_text("def g():\n    import tatl.data.a\n")
    (package / "errors.py").write_text("def h():\n    from tatl.data.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    with pytest.raises(AssertionError, match="import cycle: tatl.data.a -> tatl.data.b -> tatl.data.a"):
        test_there_is_no_import_cycle()
    with pytest.raises(AssertionError, match="tatl.errors \\(leaves\\) imports tatl.data.a \\(data\\)"):
        test_no_module_imports_from_a_higher_layer()
