"""`tatl report DIR` on an experiment grid folder, and the report `tatl experiment` writes at its end."""

import base64
import csv
import re
from pathlib import Path

import pytest
from test_experiments import fake_metrics, write_grid
from test_report import PNG, PageParser
from test_report import parse as parse_page

from tatl.cli import main
from tatl.errors import DataError
from tatl.experiments.grid import plan_jobs, read_grid
from tatl.reporting.report import write_report

BACKBONES, SETTINGS = ["tu-resnet10t", "vgg16"], ["TATL (FE)", "Random"]  # write_grid's settings
COMBINATIONS = [[b, s] for b in BACKBONES for s in SETTINGS]


class TableParser(PageParser):
    """PageParser that also keeps each table's cells: caption -> [[cell, ...] per row, header row first]."""

    def __init__(self):
        super().__init__()
        self.tables, self.caption, self.links = {}, None, []

    def handle_starttag(self, tag, attrs):
        super().handle_starttag(tag, attrs)
        if tag == "a":
            self.links.append(dict(attrs)["href"])
        if tag == "caption":
            self.caption = ""
        elif tag == "tr":
            self.tables[self.caption].append([])
        elif tag in ("td", "th"):
            self.tables[self.caption][-1].append("")

    def handle_endtag(self, tag):
        super().handle_endtag(tag)
        if tag == "caption":
            self.tables[self.caption] = []

    def handle_data(self, data):
        super().handle_data(data)
        if self.open_tags and self.open_tags[-1] == "caption":
            self.caption += data
        elif self.open_tags and (self.open_tags[-1] in ("td", "th") or self.open_tags[-2:-1] == ["td"]):
            self.tables[self.caption][-1][-1] += data  # a cell's text, also inside a link

    def table(self, prefix: str) -> list[list[str]]:
        (rows,) = [rows for caption, rows in self.tables.items() if caption.startswith(prefix)]
        return rows


def parse(path: Path) -> TableParser:
    return parse_page(path, TableParser)


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def check_table7_equals_csv(folder: Path, page: TableParser) -> None:
    """Every cell of the page's Table 7 is the mean (± std) in DIR/table7.csv, to the 3 decimals shown."""
    header, *rows = page.table("Table 7")
    expected = read_csv(folder / "table7.csv")
    assert [row[:2] for row in rows] == [[r["backbone"], r["setting"]] for r in expected]
    for row, values in zip(rows, expected, strict=True):
        for column, cell in zip(header[2:], row[2:], strict=True):
            numbers = [float(x) for x in re.findall(r"\d+\.\d+", cell)]
            wanted = [float(values[f"{column} {s}"]) for s in ("mean", "std") if values[f"{column} {s}"]]
            assert numbers == pytest.approx(wanted, abs=5e-4), (row[:2], column, cell)


@pytest.fixture(scope="module")
def grid_folder(tmp_path_factory) -> Path:
    """2 backbones x 2 shapes x 2 settings x 2 folds = 16 jobs with scores written as a run would (no training),
    the first job started but unfinished, the last not started; then `tatl experiment --aggregate-only`, as on a
    grid that is still running."""
    folder = tmp_path_factory.mktemp("grid")
    path = write_grid(folder, backbones=BACKBONES, shapes=["unet", "linknet"])
    jobs, _ = plan_jobs(read_grid(path))
    out = folder / "out"
    for job in jobs[1:-1]:
        fake_metrics(job, out, dice=0.2 + 0.2 * job.fold + 0.1 * (job.setting == "Random"))
    jobs[0].run_dir(out).mkdir(parents=True)
    (jobs[0].run_dir(out) / "config.yaml").write_text("{}\n")  # started: a run folder without metrics.json
    assert main(["experiment", str(path), "--out", str(out), "--aggregate-only"]) == 0
    return out


def test_experiment_writes_a_grid_report_with_every_table(grid_folder: Path):
    page = parse(grid_folder / "report.html")
    for title in ("The grid", "Settings", "Job status", "Jobs", "Table 6", "Table 7"):
        assert any(caption.startswith(title) for caption in page.captions), title
    assert not page.external
    assert len(page.images) == 1 and base64.b64decode(page.images[0].split(",", 1)[1]).startswith(PNG)
    assert [row[0] for row in page.table("Settings")[1:]] == SETTINGS
    for table in ("Table 6", "Table 7"):
        assert [row[:2] for row in page.table(table)[1:]] == COMBINATIONS, table
    counts = {row[0]: row[1] for row in page.table("Job status")[1:]}
    assert counts == {"finished": "14", "running": "0", "failed": "0", "started": "1", "not started": "1"}
    assert len(page.table("Jobs")) == 1 + 16
    # The results first, as on a paper's results page; job status and the grid definition after.
    sections = page.sections()
    assert [title for title, _ in sections] == ["Results: Tables 6-7 style", "Macro Dice per setting", "Jobs", "Grid"]
    assert [(kind, text[:7]) for kind, text in sections[0][1]] == [("table", "Table 6"), ("table", "Table 7")]
    assert [kind for kind, _ in sections[1][1]] == ["figure"]
    assert [text for _, text in sections[2][1]] == ["Job status (16 jobs)", "Jobs"]
    markdown = (grid_folder / "report.md").read_text()
    assert "validation fold" in markdown and "ISIC 2018 leaderboard's 'overall'" in markdown
    assert (grid_folder / "report" / "macro-dice.png").read_bytes().startswith(PNG)


def test_report_tables_equal_the_grid_tables(grid_folder: Path):
    check_table7_equals_csv(grid_folder, parse(grid_folder / "report.html"))
    markdown = (grid_folder / "report.md").read_text().splitlines()
    for name in ("table6", "table7"):  # the same cells as DIR/table6.md, table7.md, line for line
        rows = [line for line in (grid_folder / f"{name}.md").read_text().splitlines() if line.startswith("| ")]
        assert len(rows) == 1 + len(COMBINATIONS) and all(row in markdown for row in rows), name
    assert "(n=1)" in rows[1] and "(n=1)" in rows[-1]  # the first and last jobs' rows: one of their two folds


def test_tatl_report_rebuilds_the_grid_report(grid_folder: Path, capsys):
    (grid_folder / "report.html").unlink()
    assert main(["report", str(grid_folder)]) == 0
    assert "report.html" in capsys.readouterr().out
    check_table7_equals_csv(grid_folder, parse(grid_folder / "report.html"))


def test_a_grid_with_no_finished_job_says_so(tmp_path: Path):
    from tatl.experiments.runners import GridRecord

    grid = read_grid(write_grid(tmp_path))
    jobs, _ = plan_jobs(grid)
    GridRecord(grid, jobs, tmp_path / "out").write()  # as `tatl experiment` leaves it before the first job ends
    page = parse(write_report(tmp_path / "out"))
    assert "No job has finished yet" in (tmp_path / "out" / "report.md").read_text()
    assert not any(caption.startswith(("Table 6", "Table 7")) for caption in page.captions) and not page.images
    assert [title for title, _ in page.sections()] == ["Results", "Jobs", "Grid"]  # why no scores, first
    assert {row[0]: row[1] for row in page.table("Job status")[1:]}["not started"] == str(len(jobs))


def test_a_failing_report_does_not_fail_the_grid(grid_folder: Path, monkeypatch):
    from tatl.reporting.report import write_report_or_say_why

    def broken(*args, **kwargs):
        raise ValueError("no room")

    monkeypatch.setattr("tatl.reporting.report.write_report", broken)
    assert "report not written: ValueError: no room" in write_report_or_say_why(grid_folder)


def test_a_grid_json_not_written_by_tatl_experiment_is_refused(tmp_path: Path):
    (tmp_path / "grid.json").write_text('{"grid": {"backbones": []}}')
    with pytest.raises(DataError, match="not a grid record written by `tatl experiment`"):
        write_report(tmp_path)


@pytest.mark.slow
def test_a_real_grid_gets_its_report(tmp_path: Path):
    """Two real tiny jobs (about a minute on 2 cores): the report `tatl experiment` writes at its end."""
    path = write_grid(tmp_path, folds=[0])
    assert main(["experiment", str(path), "--out", str(tmp_path / "out")]) == 0
    page = parse(tmp_path / "out" / "report.html")
    assert {row[0]: row[1] for row in page.table("Job status")[1:]}["finished"] == "2"
    jobs = page.table("Jobs")
    assert jobs[0][-1] == "run report" and [row[-1] for row in jobs[1:]] == ["report", "report"]
    assert len(page.links) == 2 and all((tmp_path / "out" / link).is_file() for link in page.links)  # each job's own
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert all(f"[report]({link.removesuffix('.html')}.md)" in markdown for link in page.links)
    assert [row[:2] for row in page.table("Table 6")[1:]] == [["tu-resnet10t", s] for s in SETTINGS]
    check_table7_equals_csv(tmp_path / "out", page)
