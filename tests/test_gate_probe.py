"""benchmarks/gate_probe.py: the official Jaccard from per-image normalised counts, with an image-level gate."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from gate_probe import GRID, HALF, best_pair, jaccard  # noqa: E402


def _counts(*images: tuple[float, float, float]) -> np.ndarray:
    """The same normalised (TP, FP, FN) at every threshold of the grid, per image."""
    return np.array([[image] * len(GRID) for image in images], dtype=float)


def test_a_gate_clears_the_masks_of_images_whose_peak_is_below_it_and_their_hits_become_misses():
    counts = _counts((0.1, 0.1, 0.0), (0.0, 0.3, 0.0), (0.05, 0.0, 0.05))  # a hit, a false alarm, a weak hit
    peaks = np.array([0.9, 0.4, 0.5])
    assert jaccard(counts, peaks, 0, 0.0) == pytest.approx(0.15 / (0.15 + 0.4 + 0.05))  # no gate: pooled
    # gate 0.45: the false alarm (peak 0.4) is cleared; the others stay
    assert jaccard(counts, peaks, 0, 0.45) == pytest.approx(0.15 / (0.15 + 0.1 + 0.05))
    # gate 0.6: the weak hit is cleared too, its TP counted as FN
    assert jaccard(counts, peaks, 0, 0.6) == pytest.approx(0.1 / (0.1 + 0.1 + 0.1))
    assert jaccard(_counts((0.0, 0.0, 0.0)), np.array([0.1]), 0, 0.0) == 0.0  # nothing anywhere: 0, not a NaN


def test_the_best_pair_prefers_the_threshold_nearest_half_and_no_gate_on_ties():
    counts, peaks = _counts((0.1, 0.0, 0.0)), np.array([0.9])
    index, gate = best_pair(counts, peaks, (0.0, 0.5))
    assert GRID[index] == 0.5 and gate == 0.0
    counts = _counts((0.1, 0.1, 0.0), (0.0, 0.3, 0.0))
    assert best_pair(counts, np.array([0.9, 0.4]), (0.0, 0.5))[1] == 0.5  # the gate that clears the false alarm


def test_the_fixed_column_scores_at_threshold_half_of_the_grid():
    assert GRID[HALF] == pytest.approx(0.5)  # the "at 0.5" column is the untuned baseline of the tuned thresholds
