"""ISIC 2017 Part 2 scoring: per-superpixel feature probabilities against the superpixel labels.

The official 2017 way (isic-challenge-scoring's `scoreP2`), for each of the four features:
- every superpixel of every image is one sample: values are pooled over the images (an image with many
  superpixels weighs more), predictions being floats in [0, 1] from `<id>_features.json` files;
- ROC AUC (the ranking metric: the leaderboard ranked the mean AUC of the four features) and average precision,
  with scikit-learn on the raw prediction values;
- accuracy, sensitivity and specificity with truth > 0.5 and prediction > 0.5.
Where the pooled truth of a feature has one class only (e.g. no streak in a small subset), ROC AUC, average
precision and sensitivity (or specificity) are undefined: NaN with a note, where the official scorer would crash.

Added, for the scale of the paper's Table 3: Jaccard and Dice of masks rasterised from the superpixels
(prediction > 0.5 per superpixel) with the ISIC 2018 Task 2 semantics of `tatl.metrics.isic2018.Task2Scorer` (per-image
normalised confusion matrices), labelled as such. They need the superpixel maps: TRUTH_DIR is then the dataset
folder, or an `ISIC-2017_<split>_Part2_GroundTruth` folder next to its `ISIC-2017_<split>_Data` folder.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from tatl.constants import ATTRIBUTES_2017
from tatl.data.images import ImageFileError
from tatl.data.isic2017 import (
    FEATURES_SUFFIX,
    dataset_folders,
    index_files,
    rasterize,
    read_feature_values,
    read_features,
    read_superpixels,
    superpixel_means,
)
from tatl.errors import DataError
from tatl.metrics.isic2018 import Task2Scorer

RANKED_METRICS = ("roc_auc", "average_precision", "accuracy", "sensitivity", "specificity")
MASK_METRICS = ("jaccard", "dice")
_ISIC_ID = re.compile(r"ISIC_[0-9]{7}")
_PART2_FOLDER = re.compile(r"^ISIC-2017_(?P<split>.+)_Part2_GroundTruth$")


def predictions_to_features(probabilities: Mapping[str, np.ndarray], superpixels: np.ndarray) -> dict[str, list[float]]:
    """{feature: mean probability of each superpixel}: the content of a 2017 submission's `<id>_features.json`
    (write it with `tatl.data.isic2017.write_features_json`). `probabilities` are (H, W) maps at the superpixel
    map's size; a submission needs all four features."""
    unknown = sorted(set(probabilities) - set(ATTRIBUTES_2017))
    if unknown:
        raise ValueError(f"{unknown} are not ISIC 2017 features ({', '.join(ATTRIBUTES_2017)})")
    # Rounding in the mean can step just outside [0, 1], which the scorer refuses.
    return {name: np.clip(superpixel_means(superpixels, p), 0.0, 1.0).tolist() for name, p in probabilities.items()}


def read_prediction_features(path: Path) -> dict[str, np.ndarray]:
    """{feature: float64 values} of a submitted features JSON; ImageFileError unless every value is in [0, 1]."""
    values = read_feature_values(path)
    for name, array in values.items():
        outside = ~((array >= 0.0) & (array <= 1.0))  # NaN too
        if outside.any():
            reason = f"feature {name!r} has values outside [0, 1] ({array[outside][:3].tolist()}): give probabilities"
            raise ImageFileError(path, reason)
    return values


def pooled_scores(truth: np.ndarray, prediction: np.ndarray) -> tuple[dict[str, float], list[str]]:
    """The official metrics of one feature from pooled truth labels and predicted values; notes on NaNs."""
    truth, prediction = np.asarray(truth, dtype=np.float64), np.asarray(prediction, dtype=np.float64)
    positive, predicted = truth > 0.5, prediction > 0.5
    tp, tn = int(np.sum(positive & predicted)), int(np.sum(~positive & ~predicted))
    fp, fn = int(np.sum(~positive & predicted)), int(np.sum(positive & ~predicted))
    scores = {
        "accuracy": (tp + tn) / truth.size if truth.size else math.nan,
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "roc_auc": math.nan,
        "average_precision": math.nan,
    }
    if 0 < tp + fn < truth.size:
        scores["roc_auc"] = float(roc_auc_score(positive, prediction))
        scores["average_precision"] = float(average_precision_score(positive, prediction))
        return scores, []
    which = "no positive" if tp + fn == 0 else "no negative"
    return scores, [f"{which} superpixel in the truth: ROC AUC and average precision are undefined (NaN)"]


def score_isic2017(prediction_dir: Path, truth_dir: Path) -> dict:
    """Official ISIC 2017 Part 2 scores of the `<id>_features.json` files in `prediction_dir`, plus Jaccard and
    Dice of rasterised masks when the superpixel maps are found. NaN marks an undefined score (see "notes")."""
    truth, superpixels = _truth_files(Path(truth_dir))
    predictions = _prediction_files(Path(prediction_dir))
    missing = [truth[i].name for i in truth if i not in predictions]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} truth file(s) have no prediction in {prediction_dir}: {shown}")
    with_masks = all(i in superpixels for i in truth)
    scorer = Task2Scorer(ATTRIBUTES_2017)
    pooled: dict[str, tuple[list, list]] = {name: ([], []) for name in ATTRIBUTES_2017}
    for image_id, truth_path in sorted(truth.items()):
        labels, predicted = _read_pair(truth_path, predictions[image_id])
        for name in ATTRIBUTES_2017:
            pooled[name][0].append(labels[name])
            pooled[name][1].append(predicted[name])
        if with_masks:
            _update_masks(scorer, superpixels[image_id], truth_path, labels, predicted)
    return _result(pooled, scorer if with_masks else None, len(truth), Path(truth_dir))


def _truth_files(truth_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """{id: features JSON} and {id: superpixel map} under `truth_dir` (or, for a Part 2 folder, its Data folder)."""
    if not truth_dir.is_dir():
        raise DataError(f"truth folder {truth_dir} does not exist or is not a folder")
    index = index_files(dataset_folders(truth_dir)[0])
    part2 = _PART2_FOLDER.match(truth_dir.name)
    data_dir = truth_dir.parent / f"ISIC-2017_{part2['split']}_Data" if part2 else None
    if not index["superpixels"] and data_dir is not None and data_dir.is_dir():
        index["superpixels"] = index_files([data_dir])["superpixels"]
    for kind in ("features", "superpixels"):
        repeated = {i: paths for i, paths in index[kind].items() if len(paths) > 1}
        if repeated:
            image_id, paths = next(iter(sorted(repeated.items())))
            raise DataError(f"{truth_dir}: several {kind} files for {image_id}: {', '.join(map(str, paths))}")
    if not index["features"]:
        raise DataError(f"truth folder {truth_dir} holds no <id>{FEATURES_SUFFIX}.json file")
    return ({_key(i): p[0] for i, p in index["features"].items()},
            {_key(i): p[0] for i, p in index["superpixels"].items()})


def _prediction_files(prediction_dir: Path) -> dict[str, Path]:
    if not prediction_dir.is_dir():
        raise DataError(f"prediction folder {prediction_dir} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(prediction_dir.glob("*.json")):
        if path.name.startswith("."):
            continue
        image_id = _key(path.stem.removesuffix(FEATURES_SUFFIX))
        if image_id in found:
            raise DataError(f"duplicated prediction for {image_id}: {found[image_id].name} and {path.name}")
        found[image_id] = path
    return found


def _key(stem: str) -> str:
    """The image id that pairs files: the ISIC_nnnnnnn in the name if any (as the official scorer matches), else
    the whole stem."""
    isic_id = _ISIC_ID.search(stem)
    return isic_id.group(0) if isic_id else stem


def _read_pair(truth_path: Path, prediction_path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    labels, predicted = read_features(truth_path), read_prediction_features(prediction_path)
    for name in ATTRIBUTES_2017:
        if len(predicted[name]) != len(labels[name]):
            raise DataError(f"{prediction_path}: feature {name!r} has {len(predicted[name])} values but "
                            f"{truth_path.name} has {len(labels[name])} superpixels (one value per superpixel)")
    return labels, predicted


def _update_masks(scorer: Task2Scorer, superpixels_path: Path, truth_path: Path, labels: dict[str, np.ndarray],
                  predicted: dict[str, np.ndarray]) -> None:
    superpixels = read_superpixels(superpixels_path)
    count, expected = int(superpixels.max()) + 1, len(next(iter(labels.values())))
    if count != expected:
        raise DataError(f"{superpixels_path}: {count} superpixels but {truth_path.name} labels {expected}")
    for name in ATTRIBUTES_2017:
        scorer.update(name, rasterize(superpixels, labels[name]), rasterize(superpixels, predicted[name] > 0.5))


def _result(pooled: dict[str, tuple[list, list]], scorer: Task2Scorer | None, images: int, truth_dir: Path) -> dict:
    features, notes = {}, []
    masks = scorer.result() if scorer is not None else None
    for name, (truth, prediction) in pooled.items():
        truth, prediction = np.concatenate(truth), np.concatenate(prediction)
        scores, feature_notes = pooled_scores(truth, prediction)
        notes += [f"{name}: {note}" for note in feature_notes]
        scores.update({k: masks[name][k] if masks else math.nan for k in MASK_METRICS})
        features[name] = {**scores, "superpixels": int(truth.size), "positive_superpixels": int(np.sum(truth))}
    mean = {k: _mean([f[k] for f in features.values()]) for k in (*RANKED_METRICS, *MASK_METRICS)}
    if any(math.isnan(f[k]) for f in features.values() for k in RANKED_METRICS):
        notes.append("each mean is over the features where that score is defined")
    if masks is None:
        notes.append(f"no Jaccard/Dice: superpixel maps not found for every image under {truth_dir}")
    rasterised = {k: masks[k] for k in ("macro_average", "micro_average")} if masks else None
    return {"features": features, "mean": mean, "rasterised": rasterised, "images": images, "notes": notes}


def _mean(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def scores_to_json(scores: dict) -> str:
    """JSON text of a score dict, NaN written as null (JSON has no NaN)."""

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return None if isinstance(value, float) and math.isnan(value) else value

    return json.dumps(clean(scores), indent=2)


def format_scores_2017(scores: dict) -> str:
    """A Markdown table: the official per-feature metrics, their mean, the rasterised-mask scores, the notes."""
    lines = [
        f"ISIC 2017 Part 2, {scores['images']} images; superpixels pooled over images (official scoring, "
        "ranked by mean ROC AUC)",
        "",
        "| feature | ROC AUC | AP | accuracy | sensitivity | specificity | Jaccard (masks) | Dice (masks) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = {**scores["features"], "**mean**": scores["mean"]}
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_number(row[k]) for k in (*RANKED_METRICS, *MASK_METRICS)) + " |")
    if scores["rasterised"]:
        micro = scores["rasterised"]["micro_average"]
        lines += ["", "Jaccard and Dice: masks rasterised from the superpixels (prediction > 0.5), ISIC 2018 Task 2 "
                  "semantics; their mean is the macro average (the paper's Table 3 scale); micro average "
                  f"(ISIC 2018 leaderboard style): Jaccard {_number(micro['jaccard'])}, Dice {_number(micro['dice'])}"]
    lines += [f"note: {note}" for note in scores["notes"]]
    return "\n".join(lines)


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"
