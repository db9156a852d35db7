"""One image's prediction at its original size, thresholded: shared by `tatl predict` and `tatl.load(...).predict`.

`full_size_maps` gives each map in turn with its mask, thresholded as a run's evaluation does: the lesion at
pipeline.threshold, the abnormal region and each attribute at their tuned threshold when the run tuned them
(pipeline.tune_thresholds), else at pipeline.threshold. `tatl predict` writes each map's files and drops it before
the next (one full-size map at a time, whatever the image size); `predict` keeps them all in a `PredictedImage`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tatl.constants import LESION, UNION
from tatl.data.crops import Box
from tatl.inference.predictor import ImagePrediction, Predictor


def full_size_maps(predictor: Predictor, prediction: ImagePrediction) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, probabilities (H, W) float32, mask (H, W) bool) at the original size: "lesion" (with Stage 1) first,
    then "union" (with Stage 2), then each attribute. Each map is dropped here before the next is made."""
    settings = predictor.settings
    names = [LESION] * (LESION in prediction.maps) + [UNION] * (2 in settings.stages) + list(settings.attributes)
    for name in names:
        probabilities = prediction.full_size(name)
        mask = probabilities > threshold_of(predictor, name)
        yield name, probabilities, mask
        del probabilities, mask  # before the next map, not when the next replaces it


def threshold_of(predictor: Predictor, name: str) -> float:
    """The lesion's threshold is pipeline.threshold; the others' may be tuned per attribute."""
    settings = predictor.settings
    return settings.threshold if name == LESION else settings.threshold_for(name)


@dataclass
class PredictedImage:
    """Probabilities (float32, 0..1) and masks (bool) of one image, each (height, width) at its original size.

    lesion: the Stage-1 lesion (None for variants without Stage 1); abnormal: the Stage-2 attribute-agnostic region
    (None without Stage 2); attributes: {name: probabilities}; masks: {"lesion", "abnormal", attribute: mask}, the
    ones there are, thresholded as `tatl predict` thresholds them (thresholds: the values used). box: the Stage-1
    lesion box (left, top, right, bottom) the later stages saw; the whole image without Stage 1 or when Stage 1
    found no plausible lesion (lesion_fallback)."""

    name: str  # the path, or what the in-memory image was
    size: tuple[int, int]  # (width, height)
    box: Box
    lesion_fallback: bool
    lesion: np.ndarray | None
    abnormal: np.ndarray | None
    attributes: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    thresholds: dict[str, float]

    @property
    def present(self) -> list[str]:
        """The attributes whose mask has at least one pixel, in the run's attribute order."""
        return [name for name in self.attributes if self.masks[name].any()]

    def __repr__(self) -> str:  # the arrays would flood a console
        return (f"PredictedImage({self.name!r}, size={self.size}, box={self.box}, present={self.present}, "
                f"thresholds={self.thresholds})")


def predict(predictor: Predictor, image: Any) -> PredictedImage:
    """Predict one image (a path, a PIL image or an RGB uint8 array (H, W, 3)) and keep every full-size map."""
    prediction = predictor.predict(image)
    probabilities: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    thresholds: dict[str, float] = {}
    for name, p, mask in full_size_maps(predictor, prediction):
        key = "abnormal" if name == UNION else name
        probabilities[key], masks[key] = p, mask
        thresholds[key] = threshold_of(predictor, name)
    return PredictedImage(
        name=prediction.source.name, size=prediction.size, box=tuple(prediction.box),
        lesion_fallback=prediction.lesion_fallback, lesion=probabilities.pop(LESION, None),
        abnormal=probabilities.pop("abnormal", None), attributes=probabilities, masks=masks, thresholds=thresholds,
    )
