"""Predict an image with one model version and keep what `tatl predict` writes for it, per model version.

The files are those of `tatl predict --probabilities` (tatl.inference.outputs.predict_image), written into
FOLDER/.tatl-serve/predictions/<model>/, and <id>.json holds the image's predictions.json record plus:
  "model": the model version, "uncertainty": the mean binary entropy (bits, 0..1) of the attribute probabilities
  over the image's pixels, averaged over the attributes (from the 8-bit probability maps): 0 when the model is
  sure of every pixel, 1 when every pixel is a coin toss. The gallery sorts by it ("most uncertain first").
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tatl.inference.outputs import OutputOptions, predict_image
from tatl.inference.selection import UNCERTAINTY, ImageScore, score_image
from tatl.io import write_json
from tatl.serving.folder import ServedFolder
from tatl.serving.masks import read_stored, shown
from tatl.serving.security import check_id, check_name
from tatl.serving.store import NotFound

if TYPE_CHECKING:
    from tatl.inference.predictor import Predictor

SCORE_SIDE = 512  # longest side of the maps the uncertainty is computed on
OVERLAY_SIZE = 768  # unused (no overlays are written), but OutputOptions checks it

_PREDICTING = threading.Lock()  # one prediction at a time: the networks are not shared between threads


def prediction_folder(folder: Path, model: str) -> Path:
    return ServedFolder(folder).predictions(check_name(model, "model version"))


def record(folder: Path, model: str, image_id: str) -> dict | None:
    """The image's stored record for `model`, or None when that model has not predicted it."""
    path = prediction_folder(folder, model) / f"{check_id(image_id)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def predict_and_store(predictor: Predictor, weights: dict[str, float], folder: Path, model: str, image_id: str,
                      image_path: Path) -> dict:
    """Predict one image (kept once per model version: an existing prediction is returned as it is); weights:
    attribute -> weight of the uncertainty score."""
    known = record(folder, model, image_id)
    if known is not None:
        return known
    out = prediction_folder(folder, model)
    options = OutputOptions(out, overlays=False, overlay_size=OVERLAY_SIZE, probabilities=True, truth=None)
    with _PREDICTING:
        options.prepare()
        result = predict_image(predictor, image_path, image_id, options)
    result["file"] = image_path.name  # relative: the folder may move
    result["model"] = model
    if result.get("attributes"):
        score = uncertainty(out, image_id, result, weights)
        result["uncertainty"] = round(score.score, 6)
        result["uncertainty_per_attribute"] = {a: round(v, 6) for a, v in score.per_attribute.items()}
    write_json(out / f"{image_id}.json", result)
    return result


def uncertainty(out: Path, image_id: str, record: dict, weights: dict[str, float]) -> ImageScore:
    """`tatl select`'s uncertainty score of the maps just written (module docstring)."""
    maps = {}
    for attribute in record["attributes"]:
        with Image.open(out / "probabilities" / f"{image_id}_attribute_{attribute}.png") as image:
            image.thumbnail((SCORE_SIDE, SCORE_SIDE))  # a mean over a 6000x4000 map needs no more pixels
            maps[attribute] = np.asarray(image, dtype=np.float32) / 255.0
    grid = next(iter(maps.values())).shape
    lesion = None
    if "lesion" in record and not record["lesion"]["whole_image_fallback"]:
        lesion = shown(read_stored(out / f"{image_id}_segmentation.png"), (grid[1], grid[0]))
    return score_image({"ensemble mean": maps}, lesion, weights, UNCERTAINTY)


def layer_path(folder: Path, model: str, image_id: str, layer: str, probabilities: bool = False) -> Path:
    """The PNG of one predicted layer: "lesion", "abnormal" or an attribute name."""
    check_id(image_id)
    check_name(layer, "layer")
    stem = {"lesion": f"{image_id}_segmentation", "abnormal": f"{image_id}_abnormal"}.get(
        layer, f"{image_id}_attribute_{layer}")
    out = prediction_folder(folder, model)
    path = out / "probabilities" / f"{stem}.png" if probabilities else out / f"{stem}.png"
    if not path.is_file():
        raise NotFound(f"{image_id}: no predicted {'probabilities of ' if probabilities else ''}{layer} "
                       f"from model {model}")
    return path

