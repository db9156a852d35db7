"""The sections of the report of an experiment grid folder (`tatl experiment GRID.yaml --out DIR`).

The grid and its jobs are read back from DIR/grid.json, not from the grid file, which may have moved or changed
since. Each job's status is taken from its run folder first: grid.json is only as current as the last event of the
last `tatl experiment` (a grid killed mid-run leaves jobs "running" there). Tables 6-7 are built by
tatl.experiments.grid' own aggregation, so the page and DIR/table6.md, table7.md cannot disagree.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from tatl.errors import DataError
from tatl.experiments.grid import SHAPE_LABELS, Columns, Grid, Job, Setting, results_rows, table_cells, table_specs
from tatl.layout import RunLayout
from tatl.reporting.render import Block, Figure, Link, Section, Table, Text, figure_png, pyplot
from tatl.reporting.summary import MICRO_NOTE

STATUSES = {  # the order of the counts table, and what each status means for the next `tatl experiment`
    "finished": "metrics.json written; skipped when the grid runs again",
    "running": "running when grid.json was last written",
    "failed": "the last attempt failed (its log: DIR/logs/<job>.log); retried when the grid runs again",
    "started": "interrupted; continues with --resume when the grid runs again",
    "not started": "no run folder yet",
}
VALIDATION_NOTE = ("Every score is measured on the job's validation fold (data.fold of data.n_folds; the official ISIC "
                   "2018 Task 2 metric at original size), the split its runs also pick their best epoch on: "
                   "somewhat optimistic, not a held-out test set. ")


def grid_sections(grid_dir: Path) -> list[Section]:
    """Tables 6-7 and the macro Dice chart (or why there are no scores yet), then job status and the grid definition:
    a paper's results page opens with the results."""
    grid, jobs, record = read_grid_record(grid_dir)
    rows, attributes = results_rows(jobs, grid_dir)
    recorded = {entry["name"]: entry for entry in record["jobs"]}
    statuses = {job.name: job_status(job, recorded[job.name].get("status", ""), grid_dir) for job in jobs}
    results = result_sections(grid, rows, attributes) if any(row["finished"] for row in rows) else [
        ("Results", [Text(f"No job has finished yet (0 of {len(jobs)}): no scores to show. "
                          "Run `tatl experiment` again to continue the grid.")])]
    return [*results, ("Jobs", job_blocks(jobs, statuses, rows, recorded, grid_dir)),
            ("Grid", definition_tables(grid, jobs, record))]


def read_grid_record(grid_dir: Path) -> tuple[Grid, list[Job], dict[str, Any]]:
    """The Grid and Jobs that `tatl experiment` wrote to DIR/grid.json, and the whole record."""
    path = grid_dir / "grid.json"
    try:
        record = json.loads(path.read_text())
        values = record["grid"]
        settings = [Setting(name, tuple(body["set"]), body["variant"]) for name, body in values["settings"].items()]
        grid = Grid(Path(values["file"]), values["data"], values["base_config"], values["set"], values["backbones"],
                    values["shapes"], settings, values["folds"], values["seeds"])
        fields = [field.name for field in dataclasses.fields(Job)]
        jobs = [Job(**{name: entry[name] for name in fields}) for entry in record["jobs"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: not a grid record written by `tatl experiment` ({type(error).__name__}: "
                        f"{error})") from None
    return grid, jobs, record


def job_status(job: Job, recorded: str, out: Path) -> str:
    """One of STATUSES: the run folder decides finished and started, grid.json running and failed."""
    if job.is_finished(out):
        return "finished"
    if recorded in ("running", "failed"):
        return recorded
    return "started" if job.is_started(out) else "not started"


def definition_tables(grid: Grid, jobs: list[Job], record: dict[str, Any]) -> list[Block]:
    axes = [("backbones", grid.backbones), ("shapes", grid.shapes), ("settings", grid.settings),
            ("folds", grid.folds), ("seeds", grid.seeds)]
    rows = [["grid file", str(grid.path)], ["data", grid.data],
            ["data folder the jobs read", record.get("data_folder") or "not recorded"],
            ["base config", grid.base_config or "the defaults"], ["set (every job)", ", ".join(grid.overrides) or "–"],
            *([name, ", ".join(map(str, values))] for name, values in axes if name != "settings"),
            ["jobs", f"{len(jobs)} = " + " x ".join(f"{len(values)} {name}" for name, values in axes)]]
    variants = {job.setting: job.variant for job in jobs}  # the variant each setting's jobs report, as planned
    settings = [[s.name, variants.get(s.name, s.variant or "–"), ", ".join(s.overrides) or "–"] for s in grid.settings]
    return [Table("The grid (DIR/grid.json)", ["", "value"], rows),
            Table("Settings: the rows of Tables 6-7", ["setting", "variant reported", "overrides"], settings)]


def job_blocks(jobs: list[Job], statuses: dict[str, str], rows: list[dict], recorded: dict[str, dict],
               grid_dir: Path) -> list[Block]:
    counts = [[status, str(sum(s == status for s in statuses.values())), meaning]
              for status, meaning in STATUSES.items()]
    listing = []
    for job, row in zip(jobs, rows, strict=True):  # results_rows keeps the jobs' order
        seconds = recorded[job.name].get("seconds")
        listing.append([job.backbone, job.shape, job.setting, str(job.fold), str(job.seed), job.variant,
                        statuses[job.name], "" if seconds is None else f"{seconds:.0f}",
                        *(f"{row[key]:.3f}" if key in row else "–" for key in ("macro dice", "macro jaccard")),
                        _job_report_link(job, grid_dir)])
    header = ["backbone", "shape", "setting", "fold", "seed", "variant", "status", "seconds", "macro Dice",
              "macro Jaccard", "run report"]
    return [Table(f"Job status ({len(jobs)} jobs)", ["status", "jobs", "meaning"], counts),
            Table("Jobs", header, listing, "seconds: the attempt of the last `tatl experiment` (blank: it did not "
                  "run the job).")]


def _job_report_link(job: Job, grid_dir: Path) -> Link | str:
    """The job's own run report (bound, curves, overlays), relative to the grid folder; – when it has none."""
    run = RunLayout(job.run_dir(grid_dir))
    if not run.report_html.is_file():
        return "–"
    return Link("report", run.report_html.relative_to(grid_dir).as_posix(),
                run.report_markdown.relative_to(grid_dir).as_posix())


# ------------------------------------------------------------------------------------------------- scores
def result_sections(grid: Grid, rows: list[dict], attributes: list[str]) -> list[Section]:
    blocks: list[Block] = [Text(VALIDATION_NOTE + MICRO_NOTE)]
    aggregates = {}
    for name, columns, title, note in table_specs(grid, attributes):
        cells, csv_rows = table_cells(rows, grid, columns)
        blocks.append(Table(f"{title} (validation)", ["backbone", "setting", *(c[0] for c in columns)], cells, note))
        aggregates[name] = (columns, csv_rows)
    columns, csv_rows = aggregates["table7"]
    figure = macro_dice_figure(grid, [column for column in columns if column[2] == "macro dice"], csv_rows)
    return [("Results: Tables 6-7 style", blocks), ("Macro Dice per setting", [figure])]


def macro_dice_figure(grid: Grid, columns: Columns, csv_rows: list[dict]) -> Figure:
    """The paper's comparison as grouped bars: a group per backbone x shape, a bar per setting (mean over folds and
    seeds, error bar one sample std), from Table 7's own CSV rows."""
    plt = pyplot()
    settings = [s.name for s in grid.settings]
    groups = [(backbone, header, shape) for backbone in grid.backbones for header, shape, _ in columns]
    by_row = {(row["backbone"], row["setting"]): row for row in csv_rows}
    width = 0.8 / len(settings)
    figure, axis = plt.subplots(figsize=(min(16.0, 3.5 + 0.35 * len(groups) * len(settings)), 3.4), dpi=100)
    for i, setting in enumerate(settings):
        means = [_number(by_row[backbone, setting][f"{header} mean"]) for backbone, header, _ in groups]
        stds = [_number(by_row[backbone, setting][f"{header} std"]) for backbone, header, _ in groups]
        offsets = [g + (i - (len(settings) - 1) / 2) * width for g in range(len(groups))]
        axis.bar(offsets, means, width, yerr=stds, capsize=3, label=setting)  # NaN: no bar, no error bar
    axis.set_xticks(range(len(groups)), [f"{b}\n{SHAPE_LABELS.get(s, s)}" for b, _, s in groups], fontsize=8)
    axis.set_ylabel("macro Dice (validation)", fontsize=9)
    axis.set_ylim(bottom=0)
    axis.tick_params(axis="y", labelsize=8)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    caption = ("Macro Dice per setting, grouped by backbone and shape: mean over folds and seeds, error bars one "
               "sample standard deviation (none with a single job); no bar: no finished job.")
    return Figure("macro-dice", figure_png(figure), caption)


def _number(value: float | None) -> float:
    return math.nan if value is None else value
