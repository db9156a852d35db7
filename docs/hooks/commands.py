"""MkDocs hook: the command reference is rendered from the argparse parsers themselves, so it cannot drift.

A page holding the line `<!-- tatl-commands -->` gets, in its place, `tatl --help` and then every command of
`tatl.cli.COMMANDS` (in that order) with its `tatl COMMAND --help`, at a fixed width. Building the parsers imports
no torch (DEVELOPERS.md), so the docs build stays fast.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- tatl-commands -->"
WIDTH = "100"  # argparse wraps at $COLUMNS - 2: the same page on every machine


def _help(selected: str | None) -> str:
    from tatl.cli import build_parser

    parser = build_parser(selected)
    if selected is None:
        return parser.format_help()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[selected].format_help()


def render() -> str:
    from tatl.cli import COMMANDS

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parts = ["## tatl", "", "```text", _help(None).rstrip(), "```", ""]
        for name, (_, one_line) in COMMANDS.items():
            parts += [f"## tatl {name}", "", one_line.replace("%%", "%").rstrip(".") + ".", "",
                      "```text", _help(name).rstrip(), "```", ""]
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
