"""Rare-attribute oversampling (train.sampling: rare), beyond the paper.

Each training image is put in the stratum of the rarest attribute it shows (tatl.data.splits.stratify: images with
none form their own stratum). An image weighs 1 / sqrt(size of its stratum), so a stratum's share of the draws
grows as the square root of its size: on ISIC 2018 Task 2 an image with streaks is drawn about four times as often
as one whose rarest attribute is pigment network, and no stratum vanishes. An epoch draws as many images as the
training set holds, with replacement, in an order that depends on (seed, epoch) only (tatl.training.engine).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from tatl.data.splits import stratify


def rare_weights(ids: list[str], presence: Mapping[str, Iterable[str]]) -> np.ndarray:
    """(len(ids),) float64 sampling weights summing to 1, in the order of `ids`; presence: id -> attributes shown."""
    strata = stratify({image_id: presence[image_id] for image_id in ids})
    size_of = {image_id: len(members) for members in strata.values() for image_id in members}
    weights = np.array([1.0 / np.sqrt(size_of[image_id]) for image_id in ids])
    return weights / weights.sum()

