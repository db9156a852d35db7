"""The learning curves of an active-learning experiment: curves.csv, the area under each curve and the labels each
strategy needs to reach 95% of the random strategy's final score.

- A curve is a score (default: macro Jaccard on the fixed validation split) against the number of labelled
  images, one point per round. The mean curve of a strategy averages its seeds round by round (every seed of a
  round has the same number of labels: N0 + r x B).
- The area under a curve is the trapezoid rule over the labels, divided by the labels' range (last - first), so
  it is the curve's mean height, in the score's units (0-1), whatever N0, B and R: a strategy with a higher
  normalised area was better on average over the labelling budget. It is computed per seed, then mean ± sample
  standard deviation over the seeds that finished every round; a single point has its own score as area.
- Labels to 95%: the fewest labels at which a strategy's mean curve reaches 95% of the random strategy's mean
  score at its last round (the first measured point at or above it; no interpolation between rounds); None when
  it never does, or when random was not run.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tatl.experiments.active_learning import RANDOM, STRATEGIES, RoundState
from tatl.experiments.grid import mean_std
from tatl.io import write_csv

METRICS = ("jaccard", "dice")
DEFAULT_KEY = "macro jaccard"  # the curve's score: a curves.csv column
REACH = 0.95  # share of the random strategy's final score that "labels to reach" asks for


def curve_rows(states: Sequence[RoundState]) -> list[dict[str, Any]]:
    """One row per strategy x seed x round: its labels and, per attribute and macro, Jaccard and Dice."""
    rows = []
    for state in states:
        row: dict[str, Any] = {"strategy": state.strategy, "seed": state.seed, "round": state.round,
                               "labels": state.labels}
        for name, values in state.scores.items():
            label = "macro" if name == "macro_average" else name
            row.update({f"{label} {metric}": values[metric] for metric in METRICS})
        rows.append(row)
    return rows


def write_curves(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """curves.csv: a row per strategy x seed x round (curve_rows); the header alone before any round finished."""
    write_csv(path, rows, None if rows else ["strategy", "seed", "round", "labels"])


def read_curves(text: str) -> list[dict[str, Any]]:
    """curves.csv back into rows (numbers as numbers)."""
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = {"strategy": raw.pop("strategy")}
        row.update({key: int(raw.pop(key)) for key in ("seed", "round", "labels")})
        row.update({key: float(value) for key, value in raw.items() if value != ""})
        rows.append(row)
    return rows


def strategies_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The strategies in the rows, known ones in STRATEGIES' order."""
    present = list(dict.fromkeys(row["strategy"] for row in rows))
    return sorted(present, key=lambda s: (STRATEGIES.index(s) if s in STRATEGIES else len(STRATEGIES), s))


def mean_curve(rows: Sequence[dict[str, Any]], strategy: str, key: str = DEFAULT_KEY) -> list[dict[str, Any]]:
    """Per round of the strategy: labels, mean and sample std over its seeds, and how many seeds reached it."""
    by_round: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row["strategy"] == strategy and key in row:
            by_round.setdefault(row["round"], []).append(row)
    curve = []
    for number in sorted(by_round):
        mean, std = mean_std([row[key] for row in by_round[number]])
        curve.append({"round": number, "labels": by_round[number][0]["labels"], "mean": mean, "std": std,
                      "n": len(by_round[number])})
    return curve


def normalised_area(labels: Sequence[float], scores: Sequence[float]) -> float:
    """Trapezoid area under scores(labels), divided by the labels' range: the curve's mean height."""
    if len(labels) != len(scores) or not labels:
        raise ValueError("an area needs as many scores as labels, at least one")
    points = sorted(zip(labels, scores, strict=True))
    if len(points) == 1:
        return float(points[0][1])
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False))
    return area / (points[-1][0] - points[0][0])


def labels_to_reach(curve: Sequence[dict[str, Any]], target: float) -> int | None:
    """The labels of the first point of a mean curve at or above target; None when none is."""
    return next((point["labels"] for point in curve if point["mean"] >= target), None)


def summarise(rows: Sequence[dict[str, Any]], key: str = DEFAULT_KEY) -> dict[str, Any]:
    """Per strategy: the normalised area (mean ± std over seeds with every round), the final mean score and the
    labels to reach 95% of random's final mean score; and that target."""
    last_round = max((row["round"] for row in rows), default=0)
    random_curve = mean_curve(rows, RANDOM, key)
    target = REACH * random_curve[-1]["mean"] if random_curve else None
    summary: dict[str, Any] = {"metric": key, "reach": REACH, "target": target, "rounds": last_round,
                               "strategies": {}}
    for strategy in strategies_of(rows):
        areas = []
        for seed in sorted({row["seed"] for row in rows if row["strategy"] == strategy}):
            mine = sorted((row for row in rows if row["strategy"] == strategy and row["seed"] == seed and key in row),
                          key=lambda row: row["round"])
            if mine and mine[-1]["round"] == last_round and len(mine) == last_round + 1:
                areas.append(normalised_area([row["labels"] for row in mine], [row[key] for row in mine]))
        curve = mean_curve(rows, strategy, key)
        area, area_std = mean_std(areas)
        summary["strategies"][strategy] = {
            "area": area, "area_std": area_std, "seeds": len(areas),
            "final": curve[-1]["mean"] if curve else None, "final_labels": curve[-1]["labels"] if curve else None,
            "labels_to_reach": None if target is None else labels_to_reach(curve, target)}
    return summary
