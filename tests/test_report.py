"""`tatl report`: one self-contained HTML page and a Markdown twin for a tiny trained run."""

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_bound import tiny_trained_run

from tatl.cli import main
from tatl.errors import DataError
from tatl.reporting.report import write_report

TABLES = ["config.yaml (fully resolved)", "Images and split", "Images showing each attribute",
          "Stage 1: lesion segmentation", "Stage 3 (Table 2/3 style): unet", "Bound terms per attribute", "Parameters"]
PNG = b"\x89PNG\r\n\x1a\n"


VOID = {"meta", "img", "br", "hr"}  # elements without an end tag


class PageParser(HTMLParser):
    """Collects table captions and image sources, anything that would load from outside the page, and checks that
    every element is closed in order."""

    def __init__(self):
        super().__init__()
        self.captions, self.images, self.external, self.open_tags = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in VOID:
            self.open_tags.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("script", "link", "iframe") or (tag == "img" and not attrs.get("src", "").startswith("data:")):
            self.external.append(tag)

    def handle_endtag(self, tag):
        assert self.open_tags and self.open_tags[-1] == tag, f"</{tag}> closes {self.open_tags[-1:]}"
        self.open_tags.pop()

    def handle_data(self, data):
        if self.open_tags and self.open_tags[-1] == "caption":
            self.captions.append(data)


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory) -> Path:
    run = tiny_trained_run(tmp_path_factory)
    if not (run / "bound" / "bound.json").is_file():
        assert main(["bound", str(run), "--iterations", "1", "--max-samples", "1", "--device", "cpu"]) == 0
    assert main(["report", str(run), "--overlays", "2"]) == 0
    return run


def parse(path: Path, parser_class: type[PageParser] = PageParser) -> PageParser:
    parser = parser_class()
    parser.feed(path.read_text())
    parser.close()
    assert parser.open_tags == [], f"unclosed elements: {parser.open_tags}"
    return parser


def test_report_html_is_self_contained_and_has_every_table(reported_run: Path):
    page = parse(reported_run / "report.html")
    for title in TABLES:
        assert any(caption.startswith(title) for caption in page.captions), title
    assert not page.external
    assert len(page.images) >= 3 + 1 + 2  # curves of stage 1, 2, 3; the bound; two overlays
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG)


def test_report_markdown_has_the_same_tables_and_its_pictures(reported_run: Path):
    markdown = (reported_run / "report.md").read_text()
    for title in TABLES:
        assert f"**{title}" in markdown, title
    pictures = [line[line.index("](") + 2:-1] for line in markdown.splitlines() if line.startswith("![")]
    assert pictures and all((reported_run / p).read_bytes().startswith(PNG) for p in pictures)
    metrics = json.loads((reported_run / "metrics.json").read_text())
    macro = metrics["variant 1,2,3"]["unet"]["macro_average"]["jaccard"]
    assert f"| Average (macro) | {macro:.3f} |" in markdown


def test_a_run_whose_data_is_unknown_still_gets_a_report(reported_run: Path, tmp_path: Path):
    for name in ("config.yaml", "splits.json", "metrics.json"):
        shutil.copy(reported_run / name, tmp_path / name)
    shutil.copytree(reported_run / "stage1", tmp_path / "stage1")
    page = parse(write_report(tmp_path))
    assert any(c.startswith("Stage 3 (Table 2/3 style)") for c in page.captions)
    markdown = (tmp_path / "report.md").read_text()
    assert "Per-attribute counts need the data folder" in markdown and "Not available:" in markdown


def test_folders_that_are_not_runs_are_refused(tmp_path: Path):
    with pytest.raises(DataError, match="neither a finished run"):
        write_report(tmp_path)
    (tmp_path / "grid.json").write_text("{}")  # a grid folder's report: tests/test_grid_report.py
    with pytest.raises(DataError, match="not a grid record"):
        write_report(tmp_path)
