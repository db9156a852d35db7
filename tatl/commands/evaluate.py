"""Score a folder of predicted attribute masks against the ground truth with the official ISIC 2018 Task 2 metric.

Files are named `<image>_attribute_<name>.png` (8-bit greyscale; > 128 is positive) in both folders; every truth
mask needs exactly one prediction of the same size. Prints per-attribute Jaccard and Dice, the micro average (the
leaderboard's "overall": pixel-normalised confusion matrices summed over every attribute and image) and the macro
average (the mean of the attributes: the scale of the paper's tables, not comparable with the leaderboard).
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  tatl evaluate runs/demo/predictions data/synth/ISIC2018_Task2_Training_GroundTruth_v3
  tatl evaluate preds/ truth/ --json
  tatl evaluate preds/ truth/ --attributes streaks,negative_network
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prediction_dir", metavar="PRED_DIR", help="folder of predicted <image>_attribute_<name>.png")
    parser.add_argument("truth_dir", metavar="TRUTH_DIR", help="folder of ground-truth <image>_attribute_<name>.png")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON instead of a Markdown table")
    parser.add_argument(
        "--attributes",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=None,
        help="comma-separated attributes to score (default: every attribute in TRUTH_DIR)",
    )


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tatl.metrics import format_scores, score_task2_folders

    scores = score_task2_folders(Path(args.prediction_dir), Path(args.truth_dir), args.attributes or None)
    print(json.dumps(scores, indent=2) if args.json else format_scores(scores))
    return 0
