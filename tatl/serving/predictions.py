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

import numpy as np
from PIL import Image

from tatl.errors import DataError
from tatl.inference.outputs import OutputOptions, predict_image
from tatl.io import write_json
from tatl.serving.security import check_id, check_name
from tatl.serving.store import SERVER_FOLDER, NotFound

OVERLAY_SIZE = 768  # unused (no overlays are written), but OutputOptions checks it

_PREDICTING = threading.Lock()  # one prediction at a time: the networks are not shared between threads


def prediction_folder(folder: Path, model: str) -> Path:
    return Path(folder) / SERVER_FOLDER / "predictions" / check_name(model, "model version")


def record(folder: Path, model: str, image_id: str) -> dict | None:
    """The image's stored record for `model`, or None when that model has not predicted it."""
    path = prediction_folder(folder, model) / f"{check_id(image_id)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def predict_and_store(predictor, folder: Path, model: str, image_id: str, image_path: Path) -> dict:
    """Predict one image (kept once per model version: an existing prediction is returned as it is)."""
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
    result["uncertainty"] = round(uncertainty(out, image_id, list(result.get("attributes", {}))), 6)
    write_json(out / f"{image_id}.json", result)
    return result


def uncertainty(out: Path, image_id: str, attributes: list[str]) -> float:
    """Mean binary entropy of the attribute probability maps (see the module docstring)."""
    if not attributes:
        return 0.0
    entropies = []
    for attribute in attributes:
        with Image.open(out / "probabilities" / f"{image_id}_attribute_{attribute}.png") as image:
            image.thumbnail((512, 512))  # the mean over a 6000x4000 map needs no more pixels than this
            p = np.clip(np.asarray(image, dtype=np.float32) / 255.0, 1e-6, 1 - 1e-6)
        entropies.append(float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))))
    return float(np.mean(entropies))


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


def read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L")) > 127
    except OSError as error:
        raise DataError(f"{path}: cannot read the mask ({error})") from error
