"""What `tatl predict` writes for each image: masks in the ISIC format, probability maps, overlays, the
predictions.json record, and the official scores against a truth folder.

area_fraction = (attribute pixels inside the predicted lesion) / (lesion pixels), so always in [0, 1]. Without
Stage 1, or when Stage 1 finds no lesion, the lesion is the whole image ("area_reference": "image").
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tatl.constants import ATTRIBUTES_2017, LESION, UNION
from tatl.data.images import pixel_limit
from tatl.data.isic2017 import read_superpixels, superpixel_means, write_features_json
from tatl.errors import DataError
from tatl.inference.overlays import OverlayView
from tatl.inference.results import full_size_maps
from tatl.io import remove_stale_temporaries, write_png
from tatl.metrics.isic2018 import PNG_THRESHOLD, format_scores, read_score_png, score_task2_folders
from tatl.metrics.task1_folders import format_task1_scores, score_task1_folders, scorer_id

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
NOT_INPUTS = ("_segmentation", "_abnormal", "_superpixels")  # masks beside ISIC images, or our own outputs


def find_images(input_path: Path) -> list[Path]:
    """The image itself, or the image files of a folder (not recursive), sorted; DataError when there are none."""
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise DataError(f"{input_path}: no such image or folder")
    images = sorted(
        path for path in input_path.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        and "_attribute_" not in path.stem and not path.stem.endswith(NOT_INPUTS)
    )
    if not images:
        raise DataError(f"{input_path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return images


def check_image_id(image_id: str) -> str:
    """An id that names a file inside OUT: no path separators, not '.', '..' or empty, no NUL; else DataError."""
    if image_id in ("", ".", "..") or any(c in image_id for c in "/\\\0") or Path(image_id).is_absolute():
        raise DataError(f"image id {image_id!r} would write outside the output folder: rename the file")
    return image_id


class OutputOptions:
    """Where and what to write."""

    def __init__(self, out: Path, overlays: bool, overlay_size: int, probabilities: bool, truth: Path | None):
        self.out, self.overlays, self.overlay_size = Path(out), overlays, overlay_size
        self.probabilities, self.truth = probabilities, truth

    def prepare(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise DataError(f"{self.out}: output path exists and is not a folder")
        if self.truth is not None and not self.truth.is_dir():
            raise DataError(f"--truth {self.truth}: no such folder")
        if not 128 <= self.overlay_size <= 4096:
            raise DataError(f"--overlay-size {self.overlay_size}: use 128 to 4096 pixels")
        for folder in (self.out, self.out / "overlays", self.out / "probabilities"):
            remove_stale_temporaries(folder)  # left by a killed run; the ISIC scorer would see them
        self.out.mkdir(parents=True, exist_ok=True)

    def image_id(self, path: Path, done: dict) -> str:
        image_id = check_image_id(path.stem)
        if image_id in done:
            raise DataError(f"{path}: same id {image_id!r} as {done[image_id]['file']}; its masks would be replaced")
        return image_id

    def truth_mask(self, image_id: str, attribute: str, size: tuple[int, int]):
        """The ground-truth mask (H, W) bool, or None when the truth folder has none of the right size."""
        for stem in dict.fromkeys([image_id, scorer_id(image_id)]):
            path = self.truth / f"{stem}_attribute_{attribute}.png"
            if path.is_file():
                try:
                    mask = read_score_png(path) > PNG_THRESHOLD
                except DataError:  # a broken truth mask costs its panel, not the prediction
                    return None
                return mask if mask.shape == (size[1], size[0]) else None
        return None


def as_grey(mask):
    """A bool mask as 8-bit 0/255 without a wider temporary (np.where would make an int64 copy)."""
    return mask.view("uint8") * 255


def describe(mask, max_probability: float, reference) -> dict:
    """present, area_fraction (share of the reference region covered: never above 1) and maximum probability."""
    if reference is None:
        area = np.count_nonzero(mask) / mask.size
    else:
        area = np.count_nonzero(mask & reference) / np.count_nonzero(reference)
    return {"present": bool(mask.any()), "area_fraction": round(float(area), 6),
            "max_probability": float(max_probability)}


def predict_image(predictor, path: Path, image_id: str, options: OutputOptions) -> dict:
    """Predict one image and write its files; returns its predictions.json record. Holds at most one full-size
    probability map at a time, plus the full-size lesion mask. The model's pixel limit holds for every read of the
    image (the overlays read it again)."""
    with pixel_limit(predictor.settings.max_image_pixels):
        return _predict_image(predictor, path, image_id, options)


def _predict_image(predictor, path: Path, image_id: str, options: OutputOptions) -> dict:
    prediction = predictor.predict(path)
    maps, out = full_size_maps(predictor, prediction), options.out
    record: dict = {"file": str(path), "width": prediction.size[0], "height": prediction.size[1]}
    s = predictor.settings
    view = OverlayView(prediction, options.overlay_size, zoom=bool(s.attributes)) if options.overlays else None
    lesion = shown_lesion = shown_abnormal = None
    if LESION in prediction.maps:  # the first of the maps
        _, _, lesion = next(maps)
        write_png(out / f"{image_id}_segmentation.png", as_grey(lesion))
        record["lesion"] = {"box": list(prediction.box), "whole_image_fallback": prediction.lesion_fallback,
                            "area_fraction_of_image": round(float(lesion.mean()), 6)}
        shown_lesion = view.shrink(lesion) if view else None
    reference = lesion if lesion is not None and lesion.any() else None
    record["area_reference"] = "lesion" if reference is not None else "image"
    layers: dict = {}
    superpixels = _superpixels_beside(path)  # ISIC 2017: also write the per-superpixel submission format
    features_2017: dict = {}
    for name, probabilities, mask in maps:  # the abnormal region (with Stage 2), then each attribute
        if superpixels is not None and name in ATTRIBUTES_2017:
            features_2017[name] = superpixel_means(superpixels, probabilities).clip(0.0, 1.0).tolist()
        summary = describe(mask, probabilities.max(), reference)
        stem = f"{image_id}_abnormal" if name == UNION else f"{image_id}_attribute_{name}"
        write_png(out / f"{stem}.png", as_grey(mask))
        if options.probabilities:  # in place: a 6000 x 4000 map is 96 MB
            np.rint(np.multiply(probabilities, 255, out=probabilities), out=probabilities)
            write_png(out / "probabilities" / f"{stem}.png", probabilities.astype(np.uint8))
        if name == UNION:
            record["abnormal"] = summary
            shown_abnormal = view.shrink(mask) if view else None
        else:
            record.setdefault("attributes", {})[name] = summary
            if view:
                truth = options.truth_mask(image_id, name, prediction.size) if options.truth else None
                layers[name] = view.layer(mask, summary, truth, record["area_reference"])
        del probabilities, mask
    if features_2017:
        write_features_json(out / f"{image_id}_features.json", features_2017)
        record["isic2017_features_file"] = f"{image_id}_features.json"
    if view:
        networks = (f"TATL variant {s.variant}, {' + '.join(s.shapes)}" if s.shapes
                    else f"Segment-Net (Stage 1), {s.stage1_shape}")
        title = (f"{image_id}: {view.what}; {networks}, "
                 + ("tuned thresholds" if s.attribute_thresholds else f"threshold {s.threshold:g}")
                 + (", flip TTA" if predictor.tta else ""))
        with_truth = options.truth is not None and bool(layers)  # truth panels are per attribute
        picture = view.render(title, shown_lesion, shown_abnormal, layers, with_truth=with_truth)
        write_png(out / "overlays" / f"{image_id}.png", picture, compress_level=6)
    return record


def _superpixels_beside(path: Path):
    """The ISIC 2017 superpixel map next to an image (ISIC_<id>_superpixels.png), if there is one."""
    candidate = path.with_name(f"{path.stem}_superpixels.png")
    return read_superpixels(candidate) if candidate.is_file() else None


def run_report(predictor, records: dict[str, dict], failed: dict[str, str]) -> dict:
    return {
        "model": str(predictor.source), "engine": predictor.engine, "tta": predictor.tta,
        "settings": asdict(predictor.settings),
        "area_fraction": "attribute pixels inside the predicted lesion / lesion pixels (area_reference 'lesion'); "
                         "/ image pixels when there is no lesion mask (area_reference 'image')",
        "images": records, "failed": failed,
    }


def score_against_truth(out: Path, truth: Path, attributes: list[str], image_ids: list[str]) -> dict:
    """Official Task 2 scores (tatl.metrics.isic2018.score_task2_folders) of OUT against the truth masks of the images
    predicted now, on the attributes both have: a truth folder may hold more images (a subset was predicted). A
    Segment-Net alone (no attributes): Task 1 scores of the lesion masks (tatl.metrics.task1_folders)."""
    if not attributes:
        log.info(f"scoring the lesion masks of the predicted image(s) against {truth}")
        return score_task1_folders(out, truth, image_ids)
    wanted = {scorer_id(i) for i in image_ids}
    kept = [p for p in sorted(truth.glob("*_attribute_*.png")) if p.stem.rpartition("_attribute_")[2] in attributes
            and scorer_id(p.stem.rpartition("_attribute_")[0]) in wanted]
    if not kept:
        raise DataError(f"--truth {truth}: no mask of the predicted images and attributes ({', '.join(attributes)})")
    with tempfile.TemporaryDirectory(prefix="tatl-truth-") as folder:
        for path in kept:  # the subset of the truth folder that this prediction answers
            try:
                (Path(folder) / path.name).symlink_to(path.resolve())
            except OSError:  # no symlinks (some Windows set-ups)
                shutil.copyfile(path, Path(folder) / path.name)
        scored = {scorer_id(p.stem.rpartition("_attribute_")[0]) for p in kept}
        log.info(f"scoring {len(scored)} of the {len(image_ids)} predicted image(s) against {truth}")
        return score_task2_folders(out, Path(folder), sorted({p.stem.rpartition("_attribute_")[2] for p in kept}))


def format_truth_scores(scores: dict) -> str:
    """score_against_truth's scores as a Markdown table: Task 1 (a lesion) or Task 2 (attributes)."""
    return format_task1_scores(scores) if "threshold_jaccard" in scores else format_scores(scores)
