"""ISIC 2018 scoring with the official semantics (`isic-challenge-scoring` 5.6.0), in memory and on PNG folders.

Task 2 (attributes), as `isic_challenge_scoring.task2.score`:
- truth and prediction are binarised at `> 128` (PNG grey levels; a 1-bit PNG counts as 0/255);
- each image's confusion matrix (TP, FP, FN, TN) is divided by that image's pixel count, so every image weighs
  the same whatever its size;
- the normalised matrices are summed per attribute over its images -> per-attribute Jaccard TP/(TP+FP+FN) and
  Dice 2TP/(2TP+FP+FN); summed over every attribute and image -> `micro_average` (the leaderboard's "overall");
- when TP + FP + FN is 0 (truth and prediction empty everywhere) Jaccard and Dice are 1.0, a perfect answer.
We add `macro_average`, the unweighted mean of the per-attribute scores: the scale of the paper's tables, which is
NOT comparable with the leaderboard's micro average.

Task 1 (lesion), as `isic_challenge_scoring.segmentation.SegmentationScore`: per-image Jaccard, thresholded
Jaccard (a Jaccard below 0.65 counts 0) and Dice, each averaged over images; an image with empty truth and empty
prediction scores 1.0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tatl.errors import DataError

PNG_THRESHOLD = 128  # the scorer's `> 128` on 8-bit grey levels
THRESHOLD_JACCARD = 0.65  # ISIC 2018 Task 1: a per-image Jaccard below this counts 0
TP, FP, FN, TN = range(4)
Mask = np.ndarray | torch.Tensor


def _binary(mask: Mask, threshold: float) -> Mask:
    """A bool mask: bool as is, uint8 grey levels `> 128` (as the scorer reads PNGs), floats `> threshold`."""
    if isinstance(mask, torch.Tensor):
        is_bool, is_uint8, is_float = mask.dtype == torch.bool, mask.dtype == torch.uint8, mask.is_floating_point()
    else:
        is_bool, is_uint8, is_float = mask.dtype == np.bool_, mask.dtype == np.uint8, mask.dtype.kind == "f"
    if is_bool:
        return mask
    if is_uint8:
        return mask > PNG_THRESHOLD
    if is_float:
        return mask > threshold
    # An int64 {0, 1} mask would be silently empty under `> 128`: make the caller say what it means.
    raise TypeError(f"mask dtype {mask.dtype} is ambiguous: pass bool masks, uint8 grey levels or float probabilities")


def _same_kind(truth: Mask, prediction: Mask) -> tuple[Mask, Mask]:
    """Both numpy arrays, or both tensors on the device of the (first) tensor."""
    if isinstance(truth, torch.Tensor):
        return truth, torch.as_tensor(prediction, device=truth.device)
    if isinstance(prediction, torch.Tensor):
        return torch.as_tensor(truth, device=prediction.device), prediction
    return np.asarray(truth), np.asarray(prediction)


def _confusion_counts(truth: Mask, prediction: Mask, threshold: float) -> tuple[Mask, int]:
    """Per-image (TP, FP, FN, TN) pixel counts, shape (B, 4) int64, and the pixel count of one image."""
    truth, prediction = _same_kind(truth, prediction)
    if tuple(truth.shape) != tuple(prediction.shape):
        raise ValueError(f"truth {tuple(truth.shape)} and prediction {tuple(prediction.shape)} differ in shape")
    if truth.ndim not in (2, 3):
        raise ValueError(f"expected one (H, W) mask or a (B, H, W) batch, got shape {tuple(truth.shape)}")
    pixels = int(truth.shape[-1] * truth.shape[-2])
    truth = _binary(truth, 0.5).reshape(-1, pixels)
    prediction = _binary(prediction, threshold).reshape(-1, pixels)
    if isinstance(truth, torch.Tensor):
        tp, fp, fn = (truth & prediction).sum(1), (~truth & prediction).sum(1), (truth & ~prediction).sum(1)
        counts = torch.stack([tp, fp, fn, pixels - tp - fp - fn], dim=1)
        return (counts.cpu() if counts.device.type == "mps" else counts), pixels  # MPS has no float64
    tp, fp, fn = (np.count_nonzero(a, axis=1) for a in (truth & prediction, ~truth & prediction, truth & ~prediction))
    return np.stack([tp, fp, fn, pixels - tp - fp - fn], axis=1).astype(np.int64), pixels


def _jaccard_dice(matrix: Sequence[float]) -> dict[str, float]:
    """Jaccard and Dice of one (TP, FP, FN, TN) matrix; 1.0 when TP + FP + FN is 0, as the scorer does."""
    tp, fp, fn = float(matrix[TP]), float(matrix[FP]), float(matrix[FN])
    if tp + fp + fn == 0:
        return {"jaccard": 1.0, "dice": 1.0}
    return {"jaccard": tp / (tp + fp + fn), "dice": 2 * tp / (2 * tp + fp + fn)}


class Task2Scorer:
    """Streaming ISIC 2018 Task 2 scores: call `update` per image or batch, then `result`.

    Masks are bool, uint8 grey levels (`> 128`) or float probabilities (truth `> 0.5`, prediction `> threshold`).
    Torch tensors are counted on their own device and read back only in `result`.
    """

    def __init__(self, attributes: Sequence[str], threshold: float = 0.5) -> None:
        self.attributes = list(attributes)
        self.threshold = threshold
        self._sums: dict[str, np.ndarray] = {name: np.zeros(4) for name in self.attributes}
        self._device_sums: dict[str, list[torch.Tensor]] = {name: [] for name in self.attributes}
        self.image_counts: dict[str, int] = dict.fromkeys(self.attributes, 0)

    def update(self, attribute: str, truth: Mask, prediction: Mask) -> None:
        """Add one (H, W) image or a (B, H, W) batch of the same size for `attribute`."""
        if attribute not in self._sums:
            raise ValueError(f"unknown attribute {attribute!r}; this scorer has {self.attributes}")
        counts, pixels = _confusion_counts(truth, prediction, self.threshold)
        self.image_counts[attribute] += counts.shape[0]
        if isinstance(counts, torch.Tensor):
            # Normalise each image by its pixel count; one batch shares the size, so divide the batch sum.
            self._device_sums[attribute].append(counts.sum(0, dtype=torch.float64) / pixels)
        else:
            self._sums[attribute] += counts.sum(0, dtype=np.float64) / pixels

    def normalised_matrix(self, attribute: str) -> np.ndarray:
        """The sum over images of `attribute` of their pixel-normalised (TP, FP, FN, TN) matrices."""
        parts = self._device_sums[attribute]
        if parts:  # one device-to-host copy per attribute; later batches keep adding on the host side
            self._sums[attribute] += torch.stack(parts).sum(0).cpu().numpy()
            parts.clear()
        return self._sums[attribute].copy()

    def totals(self) -> np.ndarray:
        """Everything `result` depends on, one row per attribute: the normalised (TP, FP, FN, TN) sums and the
        image count. Rows add up: the totals of two scorers over disjoint images are those of one over both."""
        return np.array([[*self.normalised_matrix(n), self.image_counts[n]] for n in self.attributes])

    def set_totals(self, totals: np.ndarray) -> None:
        """Replace the sums with `totals` (e.g. the sum over torchrun processes of their `totals()`)."""
        for name, row in zip(self.attributes, np.asarray(totals, dtype=np.float64), strict=True):
            self._device_sums[name].clear()
            self._sums[name] = row[:4].copy()
            self.image_counts[name] = int(round(row[4]))

    def result(self) -> dict[str, dict[str, float]]:
        """{attribute: {"jaccard", "dice"}, ..., "micro_average": {...}, "macro_average": {...}}."""
        unseen = [name for name, count in self.image_counts.items() if count == 0]
        if unseen:
            raise ValueError(f"no image was scored for attribute(s) {unseen}")
        matrices = {name: self.normalised_matrix(name) for name in self.attributes}
        scores = {name: _jaccard_dice(matrix) for name, matrix in matrices.items()}
        micro = _jaccard_dice(np.sum(list(matrices.values()), axis=0))
        macro = {key: float(np.mean([scores[name][key] for name in self.attributes])) for key in ("jaccard", "dice")}
        return {**scores, "micro_average": micro, "macro_average": macro}


class Task1Scorer:
    """Streaming ISIC 2018 Task 1 scores: mean per-image Jaccard, thresholded Jaccard (< 0.65 -> 0) and Dice."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self._sums: list[np.ndarray | torch.Tensor] = []  # per batch: sums of jaccard, threshold_jaccard, dice
        self.image_count = 0

    def update(self, truth: Mask, prediction: Mask) -> None:
        """Add one (H, W) image or a (B, H, W) batch."""
        counts, _ = _confusion_counts(truth, prediction, self.threshold)
        lib = torch if isinstance(counts, torch.Tensor) else np
        counts = counts.double() if lib is torch else counts.astype(np.float64)
        tp, fp, fn = counts[:, TP], counts[:, FP], counts[:, FN]
        empty = tp + fp + fn == 0  # empty truth and empty prediction: a perfect answer, as the scorer rules
        jaccard = lib.where(empty, 1.0, tp / lib.where(empty, 1.0, tp + fp + fn))
        dice = lib.where(empty, 1.0, 2 * tp / lib.where(empty, 1.0, 2 * tp + fp + fn))
        thresholded = lib.where(jaccard >= THRESHOLD_JACCARD, jaccard, 0.0)
        self._sums.append(lib.stack([jaccard, thresholded, dice], 1).sum(0))
        self.image_count += counts.shape[0]

    def totals(self) -> np.ndarray:
        """[sum of Jaccard, of thresholded Jaccard, of Dice, image count]: totals over disjoint images add up."""
        sums = np.zeros(3)
        for part in self._sums:  # device tensors are read back here, once per batch
            sums += part.cpu().numpy() if isinstance(part, torch.Tensor) else part
        return np.array([*sums, self.image_count])

    def set_totals(self, totals: np.ndarray) -> None:
        """Replace the sums with `totals` (e.g. the sum over torchrun processes of their `totals()`)."""
        totals = np.asarray(totals, dtype=np.float64)
        self._sums, self.image_count = [totals[:3].copy()], int(round(totals[3]))

    def result(self) -> dict[str, float]:
        """{"jaccard", "threshold_jaccard", "dice"}, each the mean over images."""
        if not self.image_count:
            raise ValueError("no image was scored")
        means = self.totals()[:3] / self.image_count
        return dict(zip(("jaccard", "threshold_jaccard", "dice"), map(float, means), strict=True))


def _mask_key(path: Path) -> tuple[str, str] | None:
    """(image id, attribute) of `<stem>_attribute_<name>.png`; the image id is the ISIC_nnnnnnn in the stem if any."""
    stem, found, attribute = path.stem.rpartition("_attribute_")
    if not found or not stem or not attribute:
        return None
    isic_id = re.search(r"ISIC_[0-9]{7}", stem)
    return (isic_id.group(0) if isic_id else stem), attribute


def index_masks(folder: Path, role: str, key_of, what: str) -> dict:
    """{key_of(path): path} of the PNG masks in `folder` (key_of returns None to skip a file); DataError when the
    folder is missing, a key comes twice or no mask is found. `what`: the file names expected, for messages."""
    if not folder.is_dir():
        raise DataError(f"{role} folder {folder} does not exist or is not a folder")
    index: dict = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".png":
            continue  # ATTRIBUTION.txt, LICENSE.txt, macOS resource forks
        key = key_of(path)
        if key is None:
            continue
        if key in index:
            name = " / ".join(key) if isinstance(key, tuple) else key
            raise DataError(f"duplicated {role} mask for {name}: {index[key].name} and {path.name}")
        index[key] = path
    if not index:
        raise DataError(f"{role} folder {folder} holds no {what} mask")
    return index


def _attribute_mask_key(path: Path, role: str) -> tuple[str, str] | None:
    """(image id, attribute) of an attribute PNG; a truth PNG named otherwise is an error, a prediction one is
    skipped (as the scorer ignores prediction files that match no truth mask)."""
    key = _mask_key(path)
    if key is None and role == "truth":
        raise DataError(f"truth mask {path} is not named <image>_attribute_<name>.png")
    return key


def read_score_png(path: Path) -> np.ndarray:
    """An 8-bit greyscale PNG as (H, W) uint8, with the scorer's rules: mode 'L', or '1' read as 0/255."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "1":
                image = image.convert("L")
            if image.mode != "L":
                raise DataError(f"mask {path} is not single-channel 8-bit greyscale (PIL mode {image.mode!r})")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"mask {path} cannot be decoded as an image: {error}") from error


def score_task2_folders(prediction_dir: Path, truth_dir: Path, attributes: Sequence[str] | None = None) -> dict:
    """Official Task 2 scores of the PNG masks in `prediction_dir` against `truth_dir`, one image pair at a time."""
    truth_index = index_masks(Path(truth_dir), "truth", lambda path: _attribute_mask_key(path, "truth"),
                              "<image>_attribute_<name>.png")
    prediction_index = index_masks(Path(prediction_dir), "prediction",
                                   lambda path: _attribute_mask_key(path, "prediction"), "<image>_attribute_<name>.png")
    present = sorted({attribute for _, attribute in truth_index})
    if attributes is None:
        attributes = present
    unknown = sorted(set(attributes) - set(present))
    if unknown:
        raise DataError(f"attribute(s) {unknown} have no mask in truth folder {truth_dir} (it has {present})")
    pairs = {key: path for key, path in truth_index.items() if key[1] in attributes}
    missing = [path.name for key, path in pairs.items() if key not in prediction_index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} truth mask(s) have no prediction in {prediction_dir}: {shown}")
    scorer = Task2Scorer(sorted(attributes))
    for key, truth_path in pairs.items():
        prediction_path = prediction_index[key]
        truth, prediction = read_score_png(truth_path), read_score_png(prediction_path)
        if truth.shape != prediction.shape:
            raise DataError(
                f"prediction {prediction_path} is {prediction.shape[1]}x{prediction.shape[0]} (WxH) but truth "
                f"{truth_path.name} is {truth.shape[1]}x{truth.shape[0]}"
            )
        scorer.update(key[1], truth, prediction)
    return scorer.result()


ROW_LABELS = {
    "micro_average": '**micro average** (leaderboard "overall")',
    "macro_average": "**macro average** (mean of attributes, paper tables)",
}


def format_scores(scores: dict) -> str:
    """A Markdown table of Task 2 scores: one row per attribute, then the micro and macro averages, labelled."""
    lines = ["| attribute | Jaccard | Dice |", "|---|---:|---:|"]
    for name, row in scores.items():
        if isinstance(row, dict) and "jaccard" in row:
            lines.append(f"| {ROW_LABELS.get(name, name)} | {row['jaccard']:.4f} | {row['dice']:.4f} |")
    return "\n".join(lines)
