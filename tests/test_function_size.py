"""Functions a reader can hold in mind: none in tatl/ is over 60 lines or takes more than 8 parameters, except those
listed here, each with its reason, and in DEVELOPERS.md ("Exceptions to the function limits"), so the list cannot
silently grow."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tatl"
DEVELOPERS = PACKAGE.parent / "DEVELOPERS.md"
MAX_LINES, MAX_PARAMETERS = 60, 8
EXCEPTIONS = {  # module:function -> why it takes more parameters (each also in DEVELOPERS.md)
    "tatl.api:train": "the Python API mirrors `tatl run`'s options as keywords",
    "tatl.api:active_learning": "the Python API mirrors `tatl active-learning`'s options as keywords",
    "tatl.pipeline.train:train": "the options of `tatl run` as keywords, for tatl.api and the command",
    "tatl.training.engine:fit": "the training loop's inputs: network, data, settings, where to write, objective",
}


def functions() -> list[tuple[str, ast.FunctionDef, int]]:
    """(module:function, node, parameter count without self/cls) for every function in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args
                names = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
                count = len(names) + bool(arguments.vararg) + bool(arguments.kwarg) - (names[:1] in (["self"], ["cls"]))
                found.append((f"{module}:{node.name}", node, count))
    return found


def test_no_function_is_over_60_lines():
    long = [f"{name} ({node.end_lineno - node.lineno + 1} lines)" for name, node, _ in functions()
            if node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, "split these functions:\n" + "\n".join(long)


def test_no_function_takes_more_than_8_parameters_but_the_listed_ones():
    many = {name: count for name, _, count in functions() if count > MAX_PARAMETERS}
    unlisted = sorted(set(many) - set(EXCEPTIONS))
    assert not unlisted, f"more than {MAX_PARAMETERS} parameters: {unlisted}; pass a dataclass, or list it here and " \
                         "in DEVELOPERS.md with a reason"
    gone = sorted(set(EXCEPTIONS) - set(many))
    assert not gone, f"no longer exceptions, drop them from EXCEPTIONS and DEVELOPERS.md: {gone}"


def test_every_exception_is_in_developers_md():
    text = DEVELOPERS.read_text()
    missing = [name for name in EXCEPTIONS if f"`{name}`" not in text]
    assert not missing, f"list these in DEVELOPERS.md's exceptions to the function limits: {missing}"
