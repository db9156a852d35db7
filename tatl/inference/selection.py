"""Which unlabelled images to label first: the scores of `tatl select`, in plain numpy.

An image's ensemble members are the maps its U and Link networks give (with flip TTA, each shape on each of the
four flips, flipped back: 8 members for U + Link); every map is on the same grid, the Stage-1 lesion box at
data.image_size (the whole image for variants without Stage 1). Per attribute a, over the pixels i of the
predicted lesion L on that grid (every pixel when there is no Stage 1, Stage 1 found no plausible lesion, or the
lesion misses the grid), with p_m,a(i) the probability of member m and p_a(i) their mean:

    uncertainty   u_a = mean_{i in L} H(p_a(i)),   H(p) = -p log2 p - (1 - p) log2(1 - p)   (bits, 0 log 0 = 0)
    disagreement  d_a = mean_{i in L} var_m p_m,a(i)   (population variance over the members, at most 0.25)

so H is 1 at p = 0.5 and 0 at p in {0, 1}, and d_a is 0 when every member gives the same map. The image's score
is the weighted mean over the attributes, score = sum_a w_a v_a with sum_a w_a = 1 (v = u or d): higher is
better to label. Rare attributes weigh more, so an image likely to show streaks or negative network is not
drowned by pigment network, which most images show:

    w_a proportional to 1 / q_a,   q_a = (n_a + 1) / (n + 2)

where n_a of the run's n training images (the train split of RUN/splits.json, read from the data folder
RUN/data.json records) have a non-empty mask of a. The +1/+2 (Laplace's rule) keeps an attribute no training image
shows finite. When the training masks cannot be read (data folder moved, an ONNX export), every attribute weighs
the same, w_a = 1 / A. `random` gives every image a uniform score in [0, 1) from a generator seeded with `seed`,
drawn in sorted-id order, so a seed always ranks the same pool the same way.

The K selected are exactly the K highest scores, ties broken by image id (`top_k`); never a shuffle of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

UNCERTAINTY, DISAGREEMENT, RANDOM = "uncertainty", "disagreement", "random"
STRATEGIES = (UNCERTAINTY, DISAGREEMENT, RANDOM)
VALUE_NAME = {UNCERTAINTY: "entropy", DISAGREEMENT: "variance"}  # what per_attribute holds, per strategy

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in the image's pixels


@dataclass(frozen=True)
class ImageScore:
    """One image's score (higher: label it sooner) and, per attribute, the value behind it (mean entropy in bits
    or mean variance inside the lesion; empty for `random`)."""

    score: float
    per_attribute: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # attribute -> its weight in the score (sum 1)
    image_id: str = ""  # set by ranking.rank_pool
    path: str = ""  # the file, or "" for an image given in memory


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H(p) in bits, elementwise, float64: 1 at 0.5, 0 at 0 and 1 (0 log 0 = 0); p is clipped into [0, 1]."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p), 0.0) + np.where(q > 0, q * np.log2(q), 0.0)
    return -terms


def member_variance(maps: Sequence[np.ndarray]) -> np.ndarray:
    """The population variance over the members' maps, pixel by pixel (0 for one member)."""
    return np.var(np.stack([np.asarray(m, dtype=np.float64) for m in maps]), axis=0)


def attribute_values(members: Mapping[str, Mapping[str, np.ndarray]], lesion: np.ndarray | None,
                     attributes: Sequence[str], strategy: str) -> dict[str, float]:
    """u_a (uncertainty) or d_a (disagreement) of each attribute: member name -> attribute -> (H, W) map."""
    if not members:
        raise ValueError("no ensemble members to score")
    values = {}
    for attribute in attributes:
        maps = [m[attribute] for m in members.values()]
        if strategy == UNCERTAINTY:
            per_pixel = binary_entropy(np.mean([np.asarray(m, dtype=np.float64) for m in maps], axis=0))
        elif strategy == DISAGREEMENT:
            per_pixel = member_variance(maps)
        else:
            raise ValueError(f"strategy {strategy!r}: scored per image are {UNCERTAINTY} and {DISAGREEMENT}")
        region = _region(lesion, per_pixel.shape)
        values[attribute] = float(per_pixel[region].mean())
    return values


def _region(lesion: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The lesion's pixels, or every pixel when there is no lesion (or it is empty)."""
    if lesion is None or not np.any(lesion):
        return np.ones(shape, dtype=bool)
    if lesion.shape != shape:
        raise ValueError(f"lesion mask of shape {lesion.shape} for maps of shape {shape}")
    return np.asarray(lesion, dtype=bool)


def score_image(members: Mapping[str, Mapping[str, np.ndarray]], lesion: np.ndarray | None,
                attribute_weights: Mapping[str, float], strategy: str) -> ImageScore:
    """The image's score: the weighted mean of its attribute values (module docstring). members: member name ->
    attribute -> probabilities (H, W); lesion: (H, W) bool on the same grid, or None for the whole grid;
    attribute_weights: attribute -> weight (normalised here, so any positive scale)."""
    weights = normalised(attribute_weights)
    values = attribute_values(members, lesion, list(weights), strategy)
    return ImageScore(sum(weights[a] * values[a] for a in weights), values, weights)


def normalised(weights: Mapping[str, float]) -> dict[str, float]:
    """The weights divided by their sum; ValueError for none, a negative one, or a zero sum."""
    if not weights or any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"attribute weights must be non-negative with a positive sum, not {dict(weights)}")
    total = sum(weights.values())
    return {a: w / total for a, w in weights.items()}


def equal_weights(attributes: Sequence[str]) -> dict[str, float]:
    return {a: 1 / len(attributes) for a in attributes}


def prevalence_weights(counts: Mapping[str, int], n_images: int) -> dict[str, float]:
    """w_a proportional to 1 / q_a, q_a = (n_a + 1) / (n + 2): counts = attribute -> training images showing it."""
    return normalised({a: (n_images + 2) / (n_a + 1) for a, n_a in counts.items()})


def lesion_on_grid(lesion: np.ndarray, image_size: tuple[int, int], box: Box, grid: tuple[int, int]) -> np.ndarray:
    """A whole-image mask (h, w) (Stage 1's, at stage1_size) sampled at the pixel centres of a (rows, columns) grid
    laid over `box` of the (width, height) image: the lesion on the grid of the attribute maps (nearest pixel)."""
    width, height = image_size
    left, top, right, bottom = box
    rows, columns = grid
    xs = left + (np.arange(columns) + 0.5) * (right - left) / columns
    ys = top + (np.arange(rows) + 0.5) * (bottom - top) / rows
    cols = np.clip((xs * lesion.shape[1] / width).astype(int), 0, lesion.shape[1] - 1)
    lines = np.clip((ys * lesion.shape[0] / height).astype(int), 0, lesion.shape[0] - 1)
    return np.asarray(lesion, dtype=bool)[np.ix_(lines, cols)]


def random_scores(image_ids: Sequence[str], seed: int) -> dict[str, ImageScore]:
    """Uniform scores in [0, 1), drawn in sorted-id order from numpy's generator seeded with `seed`."""
    ids = sorted(image_ids)
    draws = np.random.default_rng(seed).random(len(ids))
    return {image_id: ImageScore(float(draw)) for image_id, draw in zip(ids, draws, strict=True)}


def top_k(scores: Sequence[ImageScore], n: int | None) -> list[ImageScore]:
    """The n highest scores, best first, ties broken by image id; all of them when n is None or above their count."""
    ranked = sorted(scores, key=lambda s: (-s.score, s.image_id))
    return ranked if n is None else ranked[:n]
