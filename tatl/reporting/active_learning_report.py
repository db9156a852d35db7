"""The results of an active-learning experiment (`tatl active-learning`): the learning-curve chart and the report
page (DIR/report.md with DIR/report/learning-curve.png, and the self-contained DIR/report.html), from the rows of
curves.csv and their summary (tatl.experiments.active_learning_curves)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tatl.errors import DataError
from tatl.experiments.active_learning import RANDOM, ExperimentDir, Settings, finished_states
from tatl.experiments.active_learning_curves import (
    DEFAULT_KEY,
    REACH,
    curve_rows,
    mean_curve,
    strategies_of,
    summarise,
    write_curves,
)
from tatl.io import write_json
from tatl.reporting.render import Block, Figure, Section, Table, Text, figure_png, pyplot, render_markdown, write_page

log = logging.getLogger(__name__)
CHART = "learning-curve"
VALIDATION_NOTE = ("Scores: the official ISIC 2018 Task 2 metric at original size on the fixed validation split, "
                   "which no strategy may select; each round's model is the run's reported variant (U+Link ensemble "
                   "when it trains both), fine-tuned from the previous round's best weights on every label so far.")


def learning_curve_figure(rows: list[dict[str, Any]], key: str = DEFAULT_KEY) -> Figure:
    """Mean score against labels per strategy, a band of one sample standard deviation over the seeds."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for strategy in strategies_of(rows):
        curve = mean_curve(rows, strategy, key)
        labels = [point["labels"] for point in curve]
        means = [point["mean"] for point in curve]
        stds = [point["std"] or 0.0 for point in curve]
        line, = axis.plot(labels, means, marker="o", markersize=3, label=strategy)
        axis.fill_between(labels, [m - s for m, s in zip(means, stds, strict=True)],
                          [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.2)
    axis.xaxis.get_major_locator().set_params(integer=True)  # labels are counts
    axis.set_xlabel("labelled images", fontsize=9)
    axis.set_ylabel(f"{key} (validation)", fontsize=9)
    axis.tick_params(labelsize=8)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    seeds = len({row["seed"] for row in rows})
    caption = (f"Learning curves: {key} on the fixed validation split against the number of labelled images, mean "
               f"over {seeds} seed(s), band one sample standard deviation (none with one seed).")
    return Figure(CHART, figure_png(figure), caption)


def summary_table(summary: dict[str, Any]) -> Table:
    target = summary["target"]
    reach = f"labels to {REACH:.0%} of random's final" + ("" if target is None else f" ({target:.3f})")
    rows = []
    for strategy, values in summary["strategies"].items():
        area = "–" if values["area"] is None else f"{values['area']:.3f}" + (
            "" if values["area_std"] is None else f" ± {values['area_std']:.3f}")
        final = "–" if values["final"] is None else f"{values['final']:.3f} ({values['final_labels']} labels)"
        reached = values["labels_to_reach"]
        rows.append([strategy, area, str(values["seeds"]), final,
                     "–" if target is None else "not reached" if reached is None else str(reached)])
    note = (f"Area: trapezoid rule over the labels divided by their range (the curve's mean height), per seed, mean "
            f"± sample std over the seeds that finished every round. Labels to {REACH:.0%}: the first round whose "
            f"mean {summary['metric']} is at least {REACH:.0%} of the random strategy's mean at its last round "
            "(no interpolation); – when random was not run.")
    return Table(f"Summary ({summary['metric']})", ["strategy", "area under the curve", "seeds", "final score",
                                                     reach], rows, note)


def curve_tables(rows: list[dict[str, Any]], key: str = DEFAULT_KEY) -> list[Block]:
    """Per strategy: round, labels, mean ± std and seeds, as the chart draws them."""
    blocks: list[Block] = []
    for strategy in strategies_of(rows):
        cells = [[str(p["round"]), str(p["labels"]), f"{p['mean']:.3f}" + ("" if p["std"] is None else
                 f" ± {p['std']:.3f}"), str(p["n"])] for p in mean_curve(rows, strategy, key)]
        blocks.append(Table(f"{strategy}: {key} per round", ["round", "labels", "mean ± std", "seeds"], cells))
    return blocks


def attribute_table(rows: list[dict[str, Any]]) -> Table:
    """The last round of every strategy, mean Jaccard and Dice per attribute over the seeds."""
    columns = [key for key in rows[0] if key not in ("strategy", "seed", "round", "labels")] if rows else []
    cells = []
    for strategy in strategies_of(rows):
        last = max(row["round"] for row in rows if row["strategy"] == strategy)
        mine = [row for row in rows if row["strategy"] == strategy and row["round"] == last]
        means = [sum(row[c] for row in mine) / len(mine) if all(c in row for row in mine) else None for c in columns]
        cells.append([strategy, str(last), str(mine[0]["labels"]),
                      *("–" if m is None else f"{m:.3f}" for m in means)])
    return Table("Last round, per attribute (mean over seeds)", ["strategy", "round", "labels", *columns], cells)


def settings_table(settings: Settings, split: dict[str, Any]) -> Table:
    rows = [["DATA", settings.data], ["initial labels N0", str(settings.initial)],
            ["labels per round B", str(settings.per_round)], ["rounds R", str(settings.rounds)],
            ["strategies", " ".join(settings.strategies)], ["seeds", " ".join(map(str, settings.seeds))],
            ["config", settings.config or "the defaults"], ["set", ", ".join(settings.overrides) or "–"],
            ["validation split", f"{len(split['val'])} images (seed {split['seed']}, fraction "
                                 f"{split['val_fraction']}), never selected"],
            ["pool", f"{len(split['pool'])} images"]]
    return Table("The experiment (DIR/active-learning.json)", ["", "value"], rows)


def sections(rows: list[dict[str, Any]], summary: dict[str, Any], settings: Settings,
             split: dict[str, Any]) -> list[Section]:
    if not rows:
        return [("Results", [Text("No round has finished yet: run the same command again to continue.")]),
                ("Settings", [settings_table(settings, split)])]
    random_note = [] if RANDOM in summary["strategies"] else [Text("Random selection was not run: no 95% target.")]
    results: list[Block] = [Text(VALIDATION_NOTE), learning_curve_figure(rows, summary["metric"]),
                            summary_table(summary), *random_note]
    return [("Results", results), ("Curves", [*curve_tables(rows, summary["metric"]), attribute_table(rows)]),
            ("Settings", [settings_table(settings, split)])]


def write_report(folder: ExperimentDir, rows: list[dict[str, Any]], summary: dict[str, Any], settings: Settings,
                 split: dict[str, Any]) -> Path:
    """DIR/report.md (+ report/learning-curve.png) and DIR/report.html; returns the HTML's path."""
    title = f"TATL active learning {folder.root}"
    page = sections(rows, summary, settings, split)
    return write_page(title, page, folder.report_html, folder.report_markdown, folder.report_pictures)


def write_results(folder: ExperimentDir, settings: Settings, split: dict[str, Any]) -> dict[str, Any]:
    """curves.csv, summary.json and the report from every finished round; returns the summary."""
    rows = curve_rows(finished_states(folder, settings))
    write_curves(folder.curves, rows)
    summary = summarise(rows)
    write_json(folder.summary, summary)
    write_report(folder, rows, summary, settings, split)
    log.info(f"wrote {folder.curves} ({len(rows)} rounds), {folder.summary}, {folder.report_html} and "
             f"{folder.report_markdown}")
    return summary


def rewrite_results(root: Path) -> Path:
    """curves.csv, summary.json and the report of an experiment folder, from its own records (`tatl report DIR`);
    returns the HTML's path."""
    folder = ExperimentDir(Path(root))
    try:
        settings = Settings.from_record(json.loads(folder.settings.read_text()))
        split = json.loads(folder.split.read_text())
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{root}: not an experiment of tatl active-learning ({type(error).__name__}: "
                        f"{error})") from None
    write_results(folder, settings, split)
    return folder.report_html


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary table as Markdown, what `tatl active-learning` prints."""
    return render_markdown("Active learning", [("Summary", [summary_table(summary)])])
