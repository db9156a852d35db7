"""`summary.md` of a run: a Table-2-style table of Jaccard and Dice per attribute and average, per variant."""

from __future__ import annotations

from typing import Any

MACRO_NOTE = (
    "Average = macro average (unweighted mean over attributes): the scale of the paper's tables (TATL 0.334 Jaccard "
    "on ISIC 2018). Micro average = the ISIC 2018 leaderboard's 'overall' (all attributes' normalised confusion "
    "matrices summed); not comparable with the paper's tables."
)


def _variant_scores(scores: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ensemble if there is one, else the only shape."""
    if "ensemble" in scores:
        return "U+Link ensemble", scores["ensemble"]
    shape, values = next(iter(scores.items()))
    return shape, values


MICRO_NOTE = ("Average (macro) = unweighted mean over attributes, the scale of the paper's Tables 2-3. Micro = all "
              "attributes' confusion matrices summed: the ISIC 2018 leaderboard's 'overall', not comparable with them.")
TUNED_NOTE = (
    "Thresholds tuned on this validation split (pipeline.tune_thresholds, RUN/thresholds.json): these scores are "
    "optimistic, measured on the images the thresholds were picked on (data.tune_fraction > 0 tunes them on a split "
    "of their own)."
)


def summary_markdown(metrics: dict[str, Any], attributes: list[str], title: str = "TATL run",
                     tuned: bool = False) -> str:
    lines = [f"# {title}", ""]
    if tuned:
        lines += [f"**{TUNED_NOTE}**", ""]
    if "stage1" in metrics:
        s1 = metrics["stage1"]
        lines += [
            "## Stage 1: lesion segmentation (ISIC 2018 Task 1 scores, validation split, original size)",
            "",
            "| Jaccard | thresholded Jaccard (< 0.65 -> 0) | Dice | whole-image fallbacks |",
            "|---|---|---|---|",
            "| " + " | ".join(stage1_cells(s1)) + " |",
            "",
            *(f"{note}\n" for note in stage1_notes(s1)),
        ]
    variants = [k for k in metrics if k.startswith("variant ")]
    if variants:
        lines += _table(metrics, variants, attributes)
        lines += _shape_table(metrics, variants)
    for key in [k for k in metrics if k.startswith("stage2-")]:
        rows = [f"| {shape} | {v['union']['jaccard']:.3f} | {v['union']['dice']:.3f} |"
                for shape, v in metrics[key].items()]
        lines += [f"## Stage 2: attribute-agnostic (abnormal) region, {key[7:]} inputs", "",
                  "| network | Jaccard | Dice |", "|---|---|---|", *rows, ""]
    return "\n".join(lines) + "\n"


def stage1_cells(s1: dict[str, Any]) -> list[str]:
    """Jaccard, thresholded Jaccard, Dice ("n/a" without lesion masks in the run's data), whole-image fallbacks."""
    scores = [f"{s1[key]:.3f}" if key in s1 else "n/a" for key in ("jaccard", "threshold_jaccard", "dice")]
    return [*scores, str(len(s1.get("whole_image_fallbacks", [])))]


def stage1_notes(s1: dict[str, Any]) -> list[str]:
    """Where a Segment-Net from another run comes from (pipeline.segment_net), and why it has no scores here."""
    from tatl.pipeline.segment_net import describe

    notes = [] if "jaccard" in s1 else ["No lesion masks in this run's data: no Stage-1 scores on it."]
    return notes + ([describe(s1["segment_net"])] if s1.get("segment_net") else [])


def _table(metrics: dict[str, Any], variants: list[str], attributes: list[str]) -> list[str]:
    picked = {v: _variant_scores(metrics[v]) for v in variants}
    header = "| attribute | " + " | ".join(f"stages {v[8:]} Jaccard | stages {v[8:]} Dice" for v in variants) + " |"
    lines = [
        "## Stage 3: attribute segmentation (ISIC 2018 Task 2 scores, validation split, original size)",
        "",
        "Networks: " + "; ".join(f"stages {v[8:]}: {picked[v][0]}" for v in variants) + ".",
        "",
        header,
        "|---|" + "---|---|" * len(variants),
    ]
    for row in [*attributes, "macro_average", "micro_average"]:
        label = {"macro_average": "**Average (macro)**", "micro_average": "micro (leaderboard)"}.get(row, row)
        cells = [f"{picked[v][1][row]['jaccard']:.3f} | {picked[v][1][row]['dice']:.3f}" for v in variants]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, "", MACRO_NOTE, ""]


SHAPE_NAMES = {"unet": "U", "linknet": "Link", "ensemble": "U+Link ensemble"}


def _shape_table(metrics: dict[str, Any], variants: list[str]) -> list[str]:
    """Macro and micro Jaccard of U, Link and their ensemble per variant, so a reader sees where a gain comes from
    (the table above shows the ensemble only); nothing when every variant has one shape."""
    shapes = [s for s in SHAPE_NAMES if any(s in metrics[v] for v in variants)]
    if len(shapes) < 2:
        return []
    lines = ["## Stage 3 by shape: macro Jaccard / micro Jaccard", "",
             "| stages | " + " | ".join(SHAPE_NAMES[s] for s in shapes) + " |", "|---|" + "---|" * len(shapes)]
    for v in variants:
        cells = [f"{metrics[v][s]['macro_average']['jaccard']:.3f} / {metrics[v][s]['micro_average']['jaccard']:.3f}"
                 if s in metrics[v] else "n/a" for s in shapes]
        lines.append(f"| {v[8:]} | " + " | ".join(cells) + " |")
    return [*lines, ""]
