"""Run trained segmenters over stage inputs, paste predictions back at original size, and score them.

Scores are always computed the official way: on full-size masks at each image's original resolution (crops are
pasted back into their box), per-image normalised confusion matrices (see tatl.metrics.isic2018).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tatl import distributed, logs
from tatl.data.crops import Box, full_size_probabilities, whole_image_box
from tatl.data.dataset import SegmentationDataset, full_size_target
from tatl.data.isic import Sample
from tatl.metrics.isic2018 import Task1Scorer, Task2Scorer
from tatl.models.multihead import MultiHeadSegmenter

THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05, 0.1, ..., 0.95


@torch.no_grad()
def predict_probabilities(
    model: MultiHeadSegmenter, images: np.ndarray, device: torch.device, batch_size: int = 8,
    channels_last: bool = True,
) -> dict[str, np.ndarray]:
    """{target: (N, S, S) float32 probabilities} for uint8 images (N, S, S, 3), a target per head (or per output
    channel of a joint head); one encoder pass per batch.

    N may be 0 (a torchrun rank with no image of its own): empty (0, S, S) maps."""
    model.to(device).eval()
    dataset = SegmentationDataset(images, None, augment=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in model.targets}
    for x, _ in logs.progress(loader, f"predicting {', '.join(model.targets)}", unit="batch"):
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for name, logits in model(x).items():
            outputs[name].append(torch.sigmoid(logits.float())[:, 0].cpu().numpy())
    empty = np.zeros((0, *images.shape[1:3]), np.float32)
    return {name: np.concatenate(parts) if parts else empty for name, parts in outputs.items()}


def score_attributes(
    probabilities: dict[str, np.ndarray],
    samples: Sequence[Sample],
    boxes: dict[str, Box] | None,
    sizes: dict[str, tuple[int, int]],
    thresholds: float | dict[str, float] = 0.5,
    binarize_threshold: int | None = None,
    across_ranks: bool = False,
) -> dict:
    """Official ISIC 2018 Task 2 scores of stage-input probabilities, pasted back at each original size.

    across_ranks: under torchrun each rank passes its own share of the images and every rank gets the scores of all
    of them (the sums are added up); every rank must call it."""
    per_attribute = thresholds if isinstance(thresholds, dict) else dict.fromkeys(probabilities, thresholds)
    scorer = Task2Scorer(list(probabilities))
    pairs = _full_size_pairs(probabilities, samples, boxes, sizes, binarize_threshold, "scoring at original size")
    for attribute, full_size, truth in pairs:
        scorer.update(attribute, truth, full_size > per_attribute[attribute])
    return _summed(scorer, across_ranks).result()


def tune_thresholds(
    probabilities: dict[str, np.ndarray],
    samples: Sequence[Sample],
    boxes: dict[str, Box] | None,
    sizes: dict[str, tuple[int, int]],
    grid: Sequence[float] = THRESHOLD_GRID,
    binarize_threshold: int | None = None,
    across_ranks: bool = False,
) -> dict[str, float]:
    """Per attribute, the grid threshold with the best official Jaccard on these images (the tuning split).

    One pass over the images scores every threshold at once; ties go to the threshold nearest 0.5. across_ranks:
    as in score_attributes.
    """
    scorers = {t: Task2Scorer(list(probabilities)) for t in grid}
    pairs = _full_size_pairs(probabilities, samples, boxes, sizes, binarize_threshold, "tuning thresholds")
    for attribute, full_size, truth in pairs:
        for threshold, scorer in scorers.items():
            scorer.update(attribute, truth, full_size > threshold)
    results = {t: _summed(scorer, across_ranks).result() for t, scorer in scorers.items()}
    ordered = sorted(grid, key=lambda t: abs(t - 0.5))
    return {a: max(ordered, key=lambda t: results[t][a]["jaccard"]) for a in probabilities}


def _full_size_pairs(probabilities, samples, boxes, sizes, binarize_threshold, desc: str):
    """(attribute, full-size probabilities, full-size truth) for every image and attribute."""
    for index, sample in enumerate(logs.progress(samples, desc, unit="image")):
        size = sizes[sample.image_id]
        box = boxes[sample.image_id] if boxes else whole_image_box(size)
        for attribute, maps in probabilities.items():
            full_size = full_size_probabilities(maps[index], box, size)
            yield attribute, full_size, full_size_target(sample, attribute, size, binarize_threshold)


def score_lesions(
    probabilities: np.ndarray,
    samples: Sequence[Sample],
    sizes: dict[str, tuple[int, int]],
    threshold: float = 0.5,
    binarize_threshold: int | None = None,
    across_ranks: bool = False,
) -> dict:
    """ISIC 2018 Task 1 scores (mean Jaccard, thresholded Jaccard, Dice) of whole-image lesion probabilities.

    across_ranks: as in score_attributes."""
    scorer = Task1Scorer()
    for index, sample in enumerate(logs.progress(samples, "scoring lesions at original size", unit="image")):
        size = sizes[sample.image_id]
        prediction = full_size_probabilities(probabilities[index], whole_image_box(size), size) > threshold
        scorer.update(full_size_target(sample, "lesion", size, binarize_threshold), prediction)
    return _summed(scorer, across_ranks).result()


def _summed(scorer, across_ranks: bool):
    return distributed.sum_scorer_over_ranks(scorer) if across_ranks else scorer
