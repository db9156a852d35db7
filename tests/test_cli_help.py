"""`tatl --help` lists every subcommand; every subcommand's `--help` exits 0 with examples of that command."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tatl.cli import COMMANDS, main


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0, argv
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def test_top_level_help_lists_every_subcommand(capsys):
    text = help_text(["--help"], capsys)
    assert text.startswith("usage: tatl")
    for name, (_, one_line) in COMMANDS.items():
        # argparse prints each subcommand on its own line, its one-line help beside it (or on the next line).
        assert re.search(rf"^ {{4}}{re.escape(name)}\s", text, re.MULTILINE), name
        assert " ".join(one_line.split()[:4]) in " ".join(text.split()), name
    assert "examples:" in text and re.search(r"^ +tatl \S+", text.split("examples:")[1], re.MULTILINE)
    assert main([]) == 0 and "usage: tatl" in capsys.readouterr().out  # no command: the same help, exit 0


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_help_has_examples_of_itself(command, capsys):
    text = help_text([command, "--help"], capsys)
    assert text.startswith(f"usage: tatl {command}")
    assert "\nexamples:\n" in text, text
    description, examples = text.split("\nexamples:\n", 1)
    assert len(description.split("\n\n", 1)[-1].strip()) > 40, "the module docstring describes the command"
    lines = [line.strip() for line in examples.splitlines()]
    assert any(re.match(rf"tatl {re.escape(command)}(\s|$)", line) for line in lines), examples


def test_help_imports_no_heavy_module():
    # DEVELOPERS.md: heavy modules are imported inside run(), so every --help is fast. A fresh interpreter shows it.
    script = """
import contextlib, io, json, sys
from tatl.cli import COMMANDS, main
for argv in [["--help"], *[[name, "--help"] for name in COMMANDS]]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
heavy = ("torch", "segmentation_models_pytorch", "timm", "albumentations", "matplotlib", "onnxruntime", "ray")
print(json.dumps(sorted(name for name in heavy if name in sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
