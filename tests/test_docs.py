"""The documentation: every page is in the MkDocs navigation and every navigation entry is a page; the command
reference renders every command's own --help; the README opens with its two commands and links only to files that
exist. (`make docs` builds the site with `mkdocs build --strict`, which also checks every link and anchor.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from tatl.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def nav_pages(entries: list) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = nav_pages(config["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "hooks" not in p.parts)
    assert sorted(pages) == on_disk
    assert config["hooks"] == ["docs/hooks/commands.py"]
    titles = " ".join(str(entry) for entry in config["nav"]).lower()
    for topic in ("fine-tuning", "tatl serve", "gpu"):  # one click each from the navigation
        assert topic in titles, topic


def test_the_command_reference_renders_every_commands_help():
    spec = importlib.util.spec_from_file_location("docs_commands_hook", DOCS / "hooks" / "commands.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (DOCS / "reference" / "commands.md").read_text()
    assert hook.MARKER in page
    rendered = hook.on_page_markdown(page, None, None, None)
    assert hook.MARKER not in rendered
    headings = re.findall(r"^## (tatl.*)$", rendered, re.MULTILINE)
    assert headings == ["tatl", *[f"tatl {name}" for name in COMMANDS]]
    for name in COMMANDS:
        assert f"usage: tatl {name}" in rendered and "examples:" in rendered.split(f"## tatl {name}\n", 1)[1]


def test_readme_opens_with_its_two_commands_and_links_to_files_that_exist():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]
    assert len(readme.splitlines()) < 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), target
    assert "<!-- --8<-- [start:real-data] -->" in readme and "<!-- --8<-- [end:real-data] -->" in readme
