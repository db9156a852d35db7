"""Does an image-level "present" gate pay on a finished run? A training-free probe of issue 22's optional lever.

    python benchmarks/gate_probe.py RUN [--data DATA] [--variant 1,2,3] [--tta]

The 2018 fifth place gated each attribute's mask with an image-level classifier, so that an image without the
attribute gets an empty mask (the official Jaccard pools every image's pixels: false positives on the many images
without a rare attribute weigh on it). This probe gates with what the run already has: an attribute's mask is cleared
when its largest probability in the crop is below a gate g. Per attribute, the pair (threshold, gate) with the best
official Jaccard is chosen on the run's tuning split (splits.json "tune"), over tatl's threshold grid and the gates
below, and reported on its validation split beside the threshold alone chosen the same way. Nothing is tuned on the
images reported. With --tta every prediction averages the four flips (tatl.load(RUN, tta=True)), thresholds and gates
chosen on the TTA maps: compare its "threshold alone" column with a run without --tta to see what flip averaging pays.
The "at 0.5" column is every attribute at threshold 0.5, nothing chosen: the tuned thresholds' own worth.

The Jaccards are computed from per-image pixel-normalised (TP, FP, FN) counts, as the official metric sums them
(tatl.metrics.isic2018); the ungated scores are checked against tatl's Task2Scorer. Predictions come from
`tatl.load(RUN)` (Stage-1 box, crop, the run's networks), so the ungated row is the run's own validation score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import tatl
from tatl.data.dataset import full_size_target
from tatl.data.isic import find_samples
from tatl.metrics.isic2018 import Task2Scorer
from tatl.pipeline.scoring import THRESHOLD_GRID

GATES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # 0.0: no gate
GRID = np.array(THRESHOLD_GRID)
HALF = int(np.argmin(np.abs(GRID - 0.5)))  # the grid index of threshold 0.5: the "at 0.5" column


def per_image_counts(predictions: list, samples: list, attributes: list[str]) -> dict[str, tuple]:
    """{attribute: (counts (N, thresholds, 3) of normalised TP, FP, FN; peaks (N,) largest probability)} of the
    samples' predictions (ImagePrediction, in the same order)."""
    counts: dict[str, list] = {a: [] for a in attributes}
    peaks: dict[str, list] = {a: [] for a in attributes}
    for prediction, sample in zip(predictions, samples, strict=True):
        for attribute in attributes:
            probabilities = prediction.full_size(attribute)
            truth = full_size_target(sample, attribute, prediction.size)
            predicted = probabilities[None] > GRID[:, None, None]
            tp = (predicted & truth).sum((1, 2))
            fp = (predicted & ~truth).sum((1, 2))
            fn = (~predicted & truth).sum((1, 2))
            counts[attribute].append(np.stack([tp, fp, fn], 1) / truth.size)
            peaks[attribute].append(float(prediction.maps[attribute].max()))
    return {a: (np.array(counts[a]), np.array(peaks[a])) for a in attributes}


def jaccard(counts: np.ndarray, peaks: np.ndarray, threshold_index: int, gate: float) -> float:
    """Official Jaccard at one threshold, masks of images whose peak is below `gate` cleared (their TP become FN)."""
    chosen = counts[:, threshold_index].copy()
    cleared = peaks < gate
    chosen[cleared, 2] += chosen[cleared, 0]
    chosen[cleared, :2] = 0
    tp, fp, fn = chosen.sum(0)
    return float(tp / (tp + fp + fn)) if tp + fp + fn > 0 else 0.0


def best_pair(counts: np.ndarray, peaks: np.ndarray, gates: tuple[float, ...]) -> tuple[int, float]:
    """(threshold index, gate) with the best Jaccard; ties to the threshold nearest 0.5 and the smaller gate."""
    order = sorted(range(len(GRID)), key=lambda k: abs(GRID[k] - 0.5))
    return max(((k, g) for g in gates for k in order), key=lambda pair: jaccard(counts, peaks, *pair))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, help="the run's data folder (default: the one RUN/data.json names)")
    parser.add_argument("--variant", help="default: the run's last variant")
    parser.add_argument("--tta", action="store_true", help="average each prediction over the four flips")
    args = parser.parse_args()
    data = args.data or Path(json.loads((args.run / "data.json").read_text())["folder"])
    splits = json.loads((args.run / "splits.json").read_text())
    if not splits.get("tune"):
        parser.error(f"{args.run}: no tuning split (data.tune_fraction 0): nothing to choose the gate on")
    model = tatl.load(args.run, variant=args.variant, tta=args.tta)
    attributes = list(model.predictor.settings.attributes)
    samples = {s.image_id: s for s in find_samples(data, tuple(attributes))}
    tune_samples, val_samples = ([samples[i] for i in splits[split]] for split in ("tune", "val"))
    tune = per_image_counts([model.predictor.predict(s.image_path) for s in tune_samples], tune_samples, attributes)
    val_predictions = [model.predictor.predict(s.image_path) for s in val_samples]
    val = per_image_counts(val_predictions, val_samples, attributes)
    tta = ", flip TTA" if args.tta else ""
    print(f"{args.run}, variant {model.predictor.settings.variant}{tta}: chosen on {len(splits['tune'])} tuning "
          f"images, reported on {len(val_samples)} validation images (official Jaccard)")
    print("| attribute | at 0.5 | threshold alone | validation | threshold, gate | validation |\n"
          "|---|---:|---:|---:|---:|---:|")
    fixed, plain, gated, chosen = [], [], [], {}
    for attribute in attributes:
        fixed.append(jaccard(*val[attribute], HALF, 0.0))
        k0, _ = best_pair(*tune[attribute], (0.0,))
        k1, gate = best_pair(*tune[attribute], GATES)
        plain.append(jaccard(*val[attribute], k0, 0.0))
        gated.append(jaccard(*val[attribute], k1, gate))
        chosen[attribute] = float(GRID[k0])
        print(f"| {attribute} | {fixed[-1]:.3f} | {GRID[k0]:.2f} | {plain[-1]:.3f} | {GRID[k1]:.2f}, {gate:.2f} "
              f"| {gated[-1]:.3f} |")
    print(f"| macro | {np.mean(fixed):.3f} | | {np.mean(plain):.3f} | | {np.mean(gated):.3f} |")
    check = official_scores(val_predictions, val_samples, chosen)
    print(f"check: ungated scores by tatl's Task2Scorer {', '.join(f'{a} {check[a]:.3f}' for a in attributes)}")


def official_scores(predictions: list, samples: list, thresholds: dict[str, float]) -> dict[str, float]:
    scorer = Task2Scorer(list(thresholds))
    for prediction, sample in zip(predictions, samples, strict=True):
        for attribute, threshold in thresholds.items():
            scorer.update(attribute, full_size_target(sample, attribute, prediction.size),
                          prediction.full_size(attribute) > threshold)
    result = scorer.result()
    return {a: result[a]["jaccard"] for a in thresholds}


if __name__ == "__main__":
    main()
