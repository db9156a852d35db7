"""One report of a run folder: `DIR/report.html` (self-contained: inline style, images as base64 PNG, no script)
and `DIR/report.md` with its pictures in `DIR/report/`.

A report is a list of sections, each a list of blocks (tatl.reporting.render: Table, Figure, Text), built once and
rendered twice, so the HTML page and the Markdown hold the same tables. What a folder is decides which sections: a run
(RUN/metrics.json) or an experiment grid (DIR/grid.json; its sections are in tatl.reporting.grid_report); an
active-learning experiment (DIR/active-learning.json) has its own page (tatl.reporting.active_learning_report).
Optional parts (the data, the bound, the overlays) that cannot be built say why in the report instead of failing
it: a report written at the end of a long run must not lose it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

from tatl.errors import DataError, TatlError
from tatl.experiments.active_learning import ExperimentDir
from tatl.layout import LOG_CSV, RunLayout
from tatl.reporting.render import Block, Figure, Section, Table, Text, figure_png, pyplot, write_page
from tatl.reporting.summary import MICRO_NOTE, stage1_cells, stage1_notes


def write_report(run_dir: Path, data: str | Path | None = None, overlays: int = 3) -> Path:
    """Write DIR/report.html and DIR/report.md (+ DIR/report/*.png); returns the HTML's path."""
    folder = Path(run_dir)
    if RunLayout(folder).metrics.is_file():
        title, sections = f"TATL run {folder}", run_sections(folder, data, overlays)
    elif (folder / "grid.json").is_file():
        title, sections = f"TATL experiments {folder}", grid_sections(folder)
    elif ExperimentDir(folder).settings.is_file():
        from tatl.reporting.active_learning_report import rewrite_results

        return rewrite_results(folder)
    else:
        raise DataError(f"{folder}: neither a finished run (metrics.json), an experiment grid (grid.json) nor an "
                        "active-learning experiment (active-learning.json)")
    layout = RunLayout(folder)  # a grid folder keeps its report under the same names
    return write_page(title, sections, layout.report_html, layout.report_markdown, layout.report_pictures)


def write_report_or_say_why(folder: Path, data: str | Path | None = None) -> str:
    """The line to print after writing `folder`'s report: what was written, or why not. A report only views results
    already saved (metrics.json, a grid's tables): its failure must not fail the training or the jobs before it."""
    try:
        html = write_report(folder, data)
    except Exception as error:  # noqa: BLE001 - any failure: say it, keep what hours of work wrote
        return f"report not written: {type(error).__name__}: {error} (rebuild it with `tatl report {folder}`)"
    return f"wrote {html} and {RunLayout(folder).report_markdown}"


def grid_sections(grid_dir: Path) -> list[Section]:
    from tatl.reporting.grid_report import (
        grid_sections as sections,  # imports this module: only when a grid is reported
    )

    return sections(grid_dir)


# ------------------------------------------------------------------------------------------------ a run's parts
def run_sections(run_dir: Path, data: str | Path | None, overlays: int) -> list[Section]:
    from tatl.pipeline.context import RunContext

    run = RunContext.open(run_dir, data, need_data=False)
    metrics = json.loads(run.layout.metrics.read_text())
    presence = _optional(lambda: attribute_presence(run), {})
    # A paper's results page: what a reader came for (the scores, then Figure 5) first, how they were obtained after.
    return [
        ("Results", [*tuned_note(run.config), *result_tables(metrics, run.config.data.attributes)]),
        ("Predictions on validation images", _optional(lambda: overlay_figures(run, presence, overlays), None)),
        ("Configuration", [config_table(run_dir)]),
        ("Data", data_blocks(run, presence)),
        ("Training curves", curve_figures(run_dir)),
        ("Networks", [parameter_table(run.config)]),
        ("Generalisation bound", bound_blocks(run_dir)),
    ]


def _optional(build: Callable, default):
    """build(), or, when the run lacks what it needs, `default` (None: a Text saying why)."""
    try:
        return build()
    except (TatlError, OSError) as error:
        return [Text(f"Not available: {error}")] if default is None else default


def tuned_note(config) -> list[Block]:
    from tatl.reporting.summary import TUNED_NOTE

    optimistic = config.pipeline.tune_thresholds and not config.data.tune_fraction  # tuned on validation itself
    return [Text(TUNED_NOTE)] if optimistic else []


def config_table(run_dir: Path) -> Table:
    import yaml

    values = yaml.safe_load(RunLayout(run_dir).config.read_text())
    rows = [[f"{section}.{key}", json.dumps(value)] for section, keys in values.items() for key, value in keys.items()]
    return Table("config.yaml (fully resolved)", ["key", "value"], rows)


def attribute_presence(run) -> dict[str, set[str]]:
    """Image id -> attributes with a non-empty full-size mask, for the train and validation images."""
    from concurrent.futures import ThreadPoolExecutor

    from tatl.data.images import read_mask

    if not run.samples:
        raise DataError("the run's data folder is not known (tatl report DIR --data DATA)")

    def present(image_id: str) -> set[str]:
        paths = run.samples[image_id].attribute_mask_paths
        return {a for a, p in paths.items() if read_mask(p, None, run.config.data.binarize_threshold).any()}

    ids = run.train_ids + run.val_ids
    with ThreadPoolExecutor(max_workers=4) as pool:  # PNG inflating releases the GIL
        return dict(zip(ids, pool.map(present, ids), strict=True))


def data_blocks(run, presence: dict[str, set[str]]) -> list[Block]:
    sizes = [["train", str(len(run.train_ids))], ["validation", str(len(run.val_ids))],
             ["total", str(len(run.train_ids) + len(run.val_ids))]]
    folders = ", ".join(map(str, run.data_roots)) or "not known"
    splits = Table("Images and split", ["", "images"], [["data folder", folders], *sizes])
    if not presence:
        return [splits, Text("Per-attribute counts need the data folder: tatl report DIR --data DATA.")]
    rows = []
    for attribute in run.config.data.attributes:
        train, val = (sum(attribute in presence[i] for i in ids) for ids in (run.train_ids, run.val_ids))
        share = 100 * (train + val) / max(1, len(presence))
        rows.append([attribute, str(train), str(val), f"{share:.1f}%"])
    counts = Table("Images showing each attribute (non-empty mask)", ["attribute", "train", "validation", "share"],
                   rows)
    return [splits, counts]


# -------------------------------------------------------------------------------------------- training curves
CURVES = (("train_loss", "training loss"), ("loss", "validation loss"), ("jaccard", "validation Jaccard"),
          ("threshold_jaccard", "validation thresholded Jaccard"))  # Stage 1's monitor


def curve_figures(run_dir: Path) -> list[Block]:
    """One figure per stage group (stage folder / shape): a line per head, from every log.csv."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for stage in RunLayout(run_dir).stage_folders():
        for log in sorted(stage.rglob(LOG_CSV)):
            parts = log.parent.relative_to(run_dir).parts
            head = "/".join(parts[2:]) or parts[-1]
            groups.setdefault("/".join(parts[:2]), {})[head] = list(csv.DictReader(log.read_text().splitlines()))
    figures = [_curve_figure(group, heads) for group, heads in groups.items()]
    return [f for f in figures if f is not None] or [Text("No log.csv found.")]


def _curve_figure(group: str, heads: dict[str, list[dict]]) -> Figure | None:
    columns = [(c, label) for c, label in CURVES if any(c in rows[0] for rows in heads.values() if rows)]
    if not columns:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns) + 1.4, 2.5), dpi=100, squeeze=False)
    for axis, (column, label) in zip(axes[0], columns, strict=True):
        for head, rows in heads.items():
            epochs = [int(r["epoch"]) + 1 for r in rows if r.get(column) not in (None, "")]
            values = [float(r[column]) for r in rows if r.get(column) not in (None, "")]
            axis.plot(epochs, values, marker="o", markersize=3, label=head)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs, not 0.96 ... 1.04
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("epoch", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(group, fontsize=10)
    return Figure("curves-" + re.sub(r"[^A-Za-z0-9]+", "-", group), figure_png(figure), f"Training curves of {group}")


# ---------------------------------------------------------------------------------------------- result tables
def result_tables(metrics: dict, attributes: list[str]) -> list[Block]:
    """The Stage-3 scores (Tables 2-3: the U+Link ensemble, then each shape) first, then Stages 1 and 2."""
    blocks = attribute_tables(metrics, attributes)
    if "stage1" in metrics:
        blocks.append(Table("Stage 1: lesion segmentation (ISIC 2018 Task 1 scores, validation, original size)",
                            ["Jaccard", "thresholded Jaccard", "Dice", "whole-image fallbacks"],
                            [stage1_cells(metrics["stage1"])], " ".join(stage1_notes(metrics["stage1"]))))
    for key in (k for k in metrics if k.startswith("stage2-")):
        rows = [[shape, f"{v['union']['jaccard']:.3f}", f"{v['union']['dice']:.3f}"]
                for shape, v in metrics[key].items()]
        blocks.append(Table(f"Stage 2: abnormal region (union of attributes), {key[7:]} inputs",
                            ["network", "Jaccard", "Dice"], rows))
    return blocks or [Text("metrics.json holds no scores.")]


def attribute_tables(metrics: dict, attributes: list[str]) -> list[Block]:
    """One Stage-3 table per network (the ensemble first: the paper's headline), a column pair per variant."""
    blocks: list[Block] = []
    variants = [k for k in metrics if k.startswith("variant ")]
    networks = sorted(dict.fromkeys(n for v in variants for n in metrics[v]), key=lambda n: n != "ensemble")
    for network in networks:
        shown = [v for v in variants if network in metrics[v]]
        header = ["attribute"] + [f"stages {v[8:]} {score}" for v in shown for score in ("Jaccard", "Dice")]
        rows = []
        for row in [*attributes, "macro_average", "micro_average"]:
            label = {"macro_average": "Average (macro)", "micro_average": "micro (ISIC leaderboard)"}.get(row, row)
            rows.append([label] + [f"{metrics[v][network][row][s]:.3f}" for v in shown for s in ("jaccard", "dice")])
        name = "U+Link ensemble" if network == "ensemble" else network
        last = network == networks[-1]  # the note once, under the last table
        blocks.append(Table(f"Stage 3 (Table 2/3 style): {name}, ISIC 2018 Task 2 scores, validation, original size",
                            header, rows, MICRO_NOTE if last else ""))
    return blocks


def bound_blocks(run_dir: Path) -> list[Block]:
    from tatl.evaluation.bound_report import BOUND_HEADER, bound_caption, bound_rows

    layout = RunLayout(run_dir)
    if not layout.bound_json.is_file():
        return [Text(f"Not estimated: run `tatl bound {run_dir}` first.")]
    result = json.loads(layout.bound_json.read_text())
    blocks: list[Block] = [Table("Bound terms per attribute and initialisation", BOUND_HEADER, bound_rows(result),
                                 bound_caption(result))]
    if layout.bound_chart.is_file():
        blocks.insert(0, Figure("bound", layout.bound_chart.read_bytes(), "Figure 4 style: bound x100"))
    return blocks


# --------------------------------------------------------------------------------------- overlays, parameters
def overlay_figures(run, presence: dict[str, set[str]], count: int, side: int = 240) -> list[Block]:
    """Figure-5 style pictures of the validation images showing the most attributes: `tatl predict --overlays
    --truth` run on them (into a scratch folder), so they look exactly like that command's."""
    import tempfile

    from tatl.inference.outputs import OutputOptions, predict_image
    from tatl.inference.predictor import load_predictor

    if not run.samples:
        raise DataError("the run's data folder is not known (tatl report DIR --data DATA)")
    predictor = load_predictor(run.layout.root, device="cpu")
    figures: list[Block] = []
    with tempfile.TemporaryDirectory() as scratch:
        for image_id in sorted(run.val_ids, key=lambda i: (-len(presence.get(i, ())), i))[:count]:
            sample = run.samples[image_id]
            truth = next(iter(sample.attribute_mask_paths.values()), None)
            options = OutputOptions(Path(scratch), True, side, False, truth.parent if truth else None)
            options.prepare()
            predict_image(predictor, sample.image_path, image_id, options)
            png = (Path(scratch) / "overlays" / f"{image_id}.png").read_bytes()
            figures.append(Figure(f"overlay-{image_id}", png, f"{image_id} (validation)"))
    s = predictor.settings
    caption = (f"Variant {s.variant}, {' + '.join(s.shapes)}: truth green, prediction red, both yellow; the abnormal "
               "region (Stage 2) dashed, the lesion (Stage 1) outlined." if s.shapes
               else f"Segment-Net (Stage 1, {s.stage1_shape}): the predicted lesion outlined.")
    return [Text(caption), *figures]


def parameter_table(config) -> Table:
    """Keras-style counts (BatchNorm statistics included, as the paper's Table 5) and nn.Parameters."""
    from tatl.models.networks import build_model, count_parameters

    m, attributes, mode = config.model, len(config.data.attributes), config.pipeline.encoder_mode
    rows = []
    for role, shape in [("Segment-Net (Stage 1)", m.stage1_shape), *[("one U/Link network", s) for s in m.shapes]]:
        model = build_model(shape, m.encoder_name)
        total, encoder = count_parameters(model), count_parameters(model.encoder)
        stage3 = encoder + attributes * (total - encoder) if mode == "frozen" else attributes * total
        rows.append([role, shape, m.encoder_name, f"{total:,}", f"{count_parameters(model, False):,}",
                     f"{encoder:,}", "" if role.startswith("Segment") else f"{stage3:,}"])
    header = ["network", "shape", "encoder", "Keras-style", "nn.Parameters", "of which encoder",
              f"Stage 3, {attributes} attributes ({mode} encoder)"]
    return Table("Parameters", header, rows, "Stage 3 of variants with Stage 2 and a frozen encoder (TATL-FE) "
                 "shares one encoder among the attribute decoders; otherwise each attribute has a whole network.")
