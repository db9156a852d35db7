"""ISIC 2018 Task 1 (lesion segmentation) scores of two folders of `<id>_segmentation.png` masks: what
`tatl predict --truth` prints for a Segment-Net alone, with the official rules of tatl.metrics.isic2018.Task1Scorer
(masks binarised at > 128; per-image Jaccard, thresholded Jaccard and Dice, averaged over images)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from tatl.errors import DataError
from tatl.metrics.isic2018 import PNG_THRESHOLD, Task1Scorer, index_masks, read_score_png

LESION_MASK_SUFFIX = "_segmentation"  # <id>_segmentation.png


def score_task1_folders(prediction_dir: Path, truth_dir: Path, image_ids: Sequence[str] | None = None) -> dict:
    """Task 1 scores of the lesion masks in `prediction_dir` against those in `truth_dir` (matched by the ISIC id in
    the name, as the official scorer, else the whole id), over the truth masks of `image_ids` (all when None):
    {"jaccard", "threshold_jaccard", "dice", "images"}."""
    truth_index = _index_lesion_masks(Path(truth_dir), "truth")
    prediction_index = _index_lesion_masks(Path(prediction_dir), "prediction")
    if image_ids is not None:
        wanted = {scorer_id(i) for i in image_ids}
        truth_index = {key: path for key, path in truth_index.items() if key in wanted}
        if not truth_index:
            raise DataError(f"truth folder {truth_dir}: no <id>{LESION_MASK_SUFFIX}.png of the predicted images")
    missing = [path.name for key, path in truth_index.items() if key not in prediction_index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} truth mask(s) have no prediction in {prediction_dir}: {shown}")
    scorer = Task1Scorer()
    for key, truth_path in sorted(truth_index.items()):
        prediction_path = prediction_index[key]
        truth, prediction = read_score_png(truth_path), read_score_png(prediction_path)
        if truth.shape != prediction.shape:
            raise DataError(f"prediction {prediction_path} is {prediction.shape[1]}x{prediction.shape[0]} (WxH) but "
                            f"truth {truth_path.name} is {truth.shape[1]}x{truth.shape[0]}")
        scorer.update(truth > PNG_THRESHOLD, prediction > PNG_THRESHOLD)
    return {**scorer.result(), "images": scorer.image_count}


def format_task1_scores(scores: dict) -> str:
    """A Markdown table of score_task1_folders' scores."""
    return ("| ISIC 2018 Task 1 (lesion) | Jaccard | thresholded Jaccard (< 0.65 -> 0) | Dice | images |\n"
            "|---|---:|---:|---:|---:|\n"
            f"| mean per image | {scores['jaccard']:.4f} | {scores['threshold_jaccard']:.4f} | {scores['dice']:.4f} | "
            f"{scores['images']} |")


def scorer_id(stem: str) -> str:
    """The ISIC_nnnnnnn in a name, as the official scorer matches files; else the whole stem."""
    isic_id = re.search(r"ISIC_[0-9]{7}", stem)
    return isic_id.group(0) if isic_id else stem


def _index_lesion_masks(folder: Path, role: str) -> dict[str, Path]:
    """{image id: path} of the `<stem>_segmentation.png` masks in `folder`; DataError on duplicates or none."""

    def image_id(path: Path) -> str | None:
        stem = path.stem.removesuffix(LESION_MASK_SUFFIX)
        return scorer_id(stem) if stem != path.stem and stem else None  # attribute masks, overlays: skipped

    return index_masks(folder, role, image_id, f"<image>{LESION_MASK_SUFFIX}.png")
