"""The U+Link ensemble (paper Section 5.3): the mean of the shapes' probabilities, shared by the pipeline's scoring
and by prediction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def average_probabilities(per_shape: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The U+Link ensemble: the mean of the shapes' probabilities (paper Section 5.3)."""
    names = per_shape[0].keys()
    return {name: np.mean([p[name] for p in per_shape], axis=0) for name in names}
