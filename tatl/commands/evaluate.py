"""Score a folder of predicted attribute masks against the ground truth with the official ISIC 2018 Task 2 metric.

Files are named `<image>_attribute_<name>.png` (8-bit greyscale; > 128 is positive) in both folders; every truth
mask needs exactly one prediction of the same size. Prints per-attribute Jaccard and Dice, the micro average (the
leaderboard's "overall": pixel-normalised confusion matrices summed over every attribute and image) and the macro
average (the mean of the attributes: the scale of the paper's tables, not comparable with the leaderboard).

--format isic2017 scores ISIC 2017 Part 2 submissions the official 2017 way: PRED_DIR holds one
`<image>_features.json` per image (a probability in [0, 1] per superpixel and feature), TRUTH_DIR the dataset (or
its Part2_GroundTruth folder); per feature, superpixels pooled over images: ROC AUC (the ranking metric), average
precision, accuracy, sensitivity, specificity; plus Jaccard and Dice of the rasterised masks (paper scale).
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  tatl evaluate runs/demo/predictions data/synth/ISIC2018_Task2_Training_GroundTruth_v3
  tatl evaluate preds/ truth/ --json
  tatl evaluate preds/ truth/ --attributes streaks,negative_network
  tatl evaluate --format isic2017 preds2017/ ISIC2017/validation --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prediction_dir", metavar="PRED_DIR", help="folder of predicted <image>_attribute_<name>.png")
    parser.add_argument("truth_dir", metavar="TRUTH_DIR", help="folder of ground-truth <image>_attribute_<name>.png")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON instead of a Markdown table")
    parser.add_argument("--format", choices=["isic2018", "isic2017"], default="isic2018",
                        help="isic2018: attribute mask PNGs (default); isic2017: per-superpixel features JSONs")
    parser.add_argument(
        "--attributes",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=None,
        help="comma-separated attributes to score (default: every attribute in TRUTH_DIR)",
    )


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    if args.format == "isic2017":
        from tatl.errors import ConfigError
        from tatl.metrics.isic2017 import format_scores_2017, score_isic2017, scores_to_json

        if args.attributes:
            raise ConfigError("--attributes applies to --format isic2018; ISIC 2017 scores its four features")
        scores = score_isic2017(Path(args.prediction_dir), Path(args.truth_dir))
        print(scores_to_json(scores) if args.json else format_scores_2017(scores))
        return 0
    from tatl.metrics.isic2018 import format_scores, score_task2_folders

    scores = score_task2_folders(Path(args.prediction_dir), Path(args.truth_dir), args.attributes or None)
    print(json.dumps(scores, indent=2) if args.json else format_scores(scores))
    return 0
