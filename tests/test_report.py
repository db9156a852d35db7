"""`tatl report`: one self-contained HTML page and a Markdown twin for a tiny trained run."""

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tatl.cli import main
from tatl.errors import DataError
from tatl.reporting.render import Table
from tatl.reporting.report import result_tables, write_report

TABLES = ["config.yaml (fully resolved)", "Images and split", "Images showing each attribute",
          "Stage 1: lesion segmentation", "Stage 3 (Table 2/3 style): unet", "Bound terms per attribute", "Parameters"]
# What a reader came for first (the scores, Figure 5), how they were obtained after.
RUN_SECTIONS = ["Results", "Predictions on validation images", "Configuration", "Data", "Training curves", "Networks",
                "Generalisation bound"]
PNG = b"\x89PNG\r\n\x1a\n"


VOID = {"meta", "img", "br", "hr"}  # elements without an end tag


class PageParser(HTMLParser):
    """Collects table captions and image sources, anything that would load from outside the page, and the page's
    outline in order (("section", h2), ("table", caption), ("figure", alt)); checks that every element is closed in
    order."""

    def __init__(self):
        super().__init__()
        self.captions, self.images, self.external, self.open_tags, self.outline = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in VOID:
            self.open_tags.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
            self.outline.append(("figure", attrs.get("alt", "")))
        if tag in ("script", "link", "iframe") or (tag == "img" and not attrs.get("src", "").startswith("data:")):
            self.external.append(tag)

    def handle_endtag(self, tag):
        assert self.open_tags and self.open_tags[-1] == tag, f"</{tag}> closes {self.open_tags[-1:]}"
        self.open_tags.pop()

    def handle_data(self, data):
        if self.open_tags and self.open_tags[-1] == "caption":
            self.captions.append(data)
            self.outline.append(("table", data))
        elif self.open_tags and self.open_tags[-1] == "h2":
            self.outline.append(("section", data))

    def sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """(section title, its tables and figures in order) for each section, in order."""
        sections = []
        for kind, text in self.outline:
            if kind == "section":
                sections.append((text, []))
            else:
                sections[-1][1].append((kind, text))
        return sections


@pytest.fixture(scope="module")
def reported_run(tiny_run) -> Path:
    """The session's tiny run (conftest), with its bound estimated and its report rewritten with two overlays."""
    run = tiny_run
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


def test_report_opens_with_the_scores_and_the_overlays(reported_run: Path):
    page = parse(reported_run / "report.html")
    sections = page.sections()
    assert [title for title, _ in sections] == RUN_SECTIONS
    (_, results), (_, overlays) = sections[:2]
    first_table = next(text for kind, text in results if kind == "table")
    assert first_table.startswith("Stage 3 (Table 2/3 style): unet, ISIC 2018 Task 2 scores")
    assert len(overlays) == 2 and all(kind == "figure" and text.endswith("(validation)") for kind, text in overlays)
    config = page.outline.index(("table", "config.yaml (fully resolved)"))
    assert max(page.outline.index(item) for item in overlays) < config
    markdown = (reported_run / "report.md").read_text()
    order = [markdown.index(marker) for marker in ("**Stage 3 (Table 2/3 style): unet", "(validation)](report/overlay-",
                                                    "**config.yaml", "**Parameters", "**Bound terms")]
    assert order == sorted(order)


def test_result_tables_put_the_ensemble_first_and_the_earlier_stages_last():
    scores = {a: {"jaccard": 0.1, "dice": 0.2} for a in ("globules", "macro_average", "micro_average")}
    metrics = {"stage1": {"jaccard": 0.8, "threshold_jaccard": 0.8, "dice": 0.9},
               "stage2-crops": {"unet": {"union": {"jaccard": 0.3, "dice": 0.4}}},
               "variant 1,2,3": {"unet": scores, "linknet": scores, "ensemble": scores}}
    tables = [block for block in result_tables(metrics, ["globules"]) if isinstance(block, Table)]
    assert [table.title.split(",")[0] for table in tables] == [
        "Stage 3 (Table 2/3 style): U+Link ensemble", "Stage 3 (Table 2/3 style): unet",
        "Stage 3 (Table 2/3 style): linknet", "Stage 1: lesion segmentation (ISIC 2018 Task 1 scores",
        "Stage 2: abnormal region (union of attributes)"]
    assert [bool(table.note) for table in tables] == [False, False, True, False, False]  # the note once, under Stage 3


def test_a_run_whose_data_is_unknown_still_gets_a_report(reported_run: Path, tmp_path: Path):
    for name in ("config.yaml", "splits.json", "metrics.json"):
        shutil.copy(reported_run / name, tmp_path / name)
    shutil.copytree(reported_run / "stage1", tmp_path / "stage1")
    page = parse(write_report(tmp_path))
    assert [title for title, _ in page.sections()] == RUN_SECTIONS
    assert page.sections()[0][1][0] == ("table", page.captions[0]) and page.captions[0].startswith("Stage 3 (Table")
    markdown = (tmp_path / "report.md").read_text()
    assert "Per-attribute counts need the data folder" in markdown and "Not available:" in markdown


def test_folders_that_are_not_runs_are_refused(tmp_path: Path):
    with pytest.raises(DataError, match="neither a finished run"):
        write_report(tmp_path)
    (tmp_path / "grid.json").write_text("{}")  # a grid folder's report: tests/test_grid_report.py
    with pytest.raises(DataError, match="not a grid record"):
        write_report(tmp_path)
