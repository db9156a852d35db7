"""Inference helpers on hand-made arrays: threshold tuning picks the known best, the ensemble is the mean."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tatl.data.isic import Sample
from tatl.models.ensemble import average_probabilities
from tatl.pipeline.scoring import THRESHOLD_GRID, score_attributes, tune_thresholds

SIZE = 16  # probabilities at the original size: pasting back is the identity, so the hand-made values are scored


def _samples(tmp_path: Path, truths: dict[str, list[np.ndarray]]) -> list[Sample]:
    """One Sample per image, with a {0, 255} PNG per attribute written from the bool masks in `truths`."""
    n = len(next(iter(truths.values())))
    samples = []
    for index in range(n):
        image_id = f"img{index}"
        paths = {}
        for attribute, masks in truths.items():
            path = tmp_path / f"{image_id}_attribute_{attribute}.png"
            Image.fromarray(masks[index].astype(np.uint8) * 255, mode="L").save(path)
            paths[attribute] = path
        samples.append(Sample(image_id, tmp_path / f"{image_id}.png", None, paths))
    return samples


def _hand_made(tmp_path: Path):
    """Two images; per attribute, probabilities whose best grid threshold is known by construction."""
    truth = np.zeros((SIZE, SIZE), dtype=bool)
    truth[0:4] = True  # image 0: attribute rows 0-3; image 1: attribute absent
    empty = np.zeros_like(truth)
    decoy = np.zeros((SIZE, SIZE), dtype=bool)
    decoy[8:12] = True  # false-positive rows, on both images
    a = np.zeros((2, SIZE, SIZE), dtype=np.float32)
    a[0][truth], a[0][decoy], a[1][decoy] = 0.75, 0.65, 0.65  # only [0.65, 0.75) is perfect: 0.65, 0.7; tie: 0.65
    b = np.full((2, SIZE, SIZE), 0.05, dtype=np.float32)
    b[0][truth] = 0.25  # 0.05-0.2 are perfect, 0.25 and above predict nothing: the tie goes to 0.2
    c = np.zeros((2, SIZE, SIZE), dtype=np.float32)
    c[0][truth] = 0.95  # every grid threshold below 0.95 is perfect: the tie goes to 0.5
    probabilities = {"a": a, "b": b, "c": c}
    samples = _samples(tmp_path, dict.fromkeys(probabilities, [truth, empty]))
    sizes = {s.image_id: (SIZE, SIZE) for s in samples}
    return probabilities, samples, sizes


def test_tune_thresholds_finds_the_known_best_threshold_and_breaks_ties_towards_one_half(tmp_path: Path):
    probabilities, samples, sizes = _hand_made(tmp_path)
    tuned = tune_thresholds(probabilities, samples, None, sizes)
    assert tuned == {"a": 0.65, "b": 0.2, "c": 0.5}
    assert all(t in THRESHOLD_GRID for t in tuned.values())
    at_tuned = score_attributes(probabilities, samples, None, sizes, tuned)
    at_half = score_attributes(probabilities, samples, None, sizes, 0.5)
    for attribute in probabilities:
        assert at_tuned[attribute]["jaccard"] == at_tuned[attribute]["dice"] == 1.0
    # At 0.5 the decoys of "a" are predicted (64 true, 64 + 64 false pixels) and "b" predicts nothing.
    assert at_half["a"]["jaccard"] == pytest.approx(64 / (64 + 128))
    assert at_half["b"]["jaccard"] == 0.0
    assert at_half["c"]["jaccard"] == 1.0


def test_tune_thresholds_maximises_the_official_jaccard_over_the_grid(tmp_path: Path):
    """Random probabilities: the tuned threshold's Jaccard is the grid's maximum, attribute by attribute."""
    rng = np.random.default_rng(0)
    truths = {name: [rng.random((SIZE, SIZE)) < 0.3 for _ in range(3)] for name in ("x", "y")}
    samples = _samples(tmp_path, truths)
    sizes = {s.image_id: (SIZE, SIZE) for s in samples}
    probabilities = {  # present pixels score U(0.35, 0.75), absent ones U(0, 0.4): about 0.4 is best, not 0.5
        name: (np.stack(masks) * 0.35 + rng.random((3, SIZE, SIZE)) * 0.4).astype(np.float32)
        for name, masks in truths.items()
    }
    tuned = tune_thresholds(probabilities, samples, None, sizes)
    per_threshold = {t: score_attributes(probabilities, samples, None, sizes, t) for t in THRESHOLD_GRID}
    for name in probabilities:
        best = max(per_threshold[t][name]["jaccard"] for t in THRESHOLD_GRID)
        assert per_threshold[tuned[name]][name]["jaccard"] == best
        assert best > per_threshold[0.5][name]["jaccard"]  # tuning matters here: 0.5 is not the best
    assert set(tuned.values()) != {0.5}


def test_average_probabilities_is_the_mean_of_the_shapes():
    rng = np.random.default_rng(1)
    unet = {"a": rng.random((2, 4, 4), dtype=np.float32), "b": rng.random((2, 4, 4), dtype=np.float32)}
    linknet = {"a": rng.random((2, 4, 4), dtype=np.float32), "b": rng.random((2, 4, 4), dtype=np.float32)}
    ensemble = average_probabilities([unet, linknet])
    assert set(ensemble) == {"a", "b"}
    for name in ensemble:
        assert ensemble[name].shape == (2, 4, 4)
        np.testing.assert_allclose(ensemble[name], (unet[name] + linknet[name]) / 2, rtol=0, atol=1e-7)
    third = {name: np.ones((2, 4, 4), dtype=np.float32) for name in unet}
    three = average_probabilities([unet, linknet, third])
    np.testing.assert_allclose(three["a"], (unet["a"] + linknet["a"] + 1) / 3, rtol=0, atol=1e-7)
    single = average_probabilities([unet])
    np.testing.assert_array_equal(single["b"], unet["b"])
