"""Rank a pool of unlabelled images for labelling with a trained run: what `tatl select` does, callable without it.

    from tatl.experiments.ranking import attribute_weights, rank_pool, write_ranked_csv
    model = tatl.load("runs/pn")
    weights = attribute_weights(model)                      # once: reads the run's training masks
    ranked = rank_pool(model, "pool/", "uncertainty", n=50, weights=weights)   # best first, list[ImageScore]
    write_ranked_csv("ranked.csv", ranked, "uncertainty")

`rank_pool` takes a run or export folder, a loaded `tatl.load(...)` model or a `Predictor`; the images as a folder,
a list of files, or a mapping id -> image (a path, a PIL image or an RGB uint8 array). Every image is checked
(decoded) before any is scored, and a bad one is a DataError naming it. The formulas are in
tatl.inference.selection. `disagreement` always adds flip TTA (members: each shape on each of 4 flips), so a run
with one shape still has members to disagree; `uncertainty` uses the ensemble as loaded (`tta=True`: with flips).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from tatl import logs
from tatl.constants import LESION
from tatl.data.images import inspect_image, read_mask
from tatl.data.sources import image_source
from tatl.errors import ConfigError, DataError
from tatl.inference.outputs import find_images
from tatl.inference.predictor import Predictor, load_predictor
from tatl.inference.selection import (
    DISAGREEMENT,
    RANDOM,
    STRATEGIES,
    VALUE_NAME,
    ImageScore,
    equal_weights,
    lesion_on_grid,
    normalised,
    prevalence_weights,
    random_scores,
    score_image,
    top_k,
)
from tatl.io import write_csv
from tatl.layout import RunLayout

log = logging.getLogger(__name__)

Images = str | Path | Sequence[str | Path] | Mapping[str, Any]


def pool_images(images: Images) -> dict[str, Any]:
    """Image id -> image of a pool, every file decoded once to check it: a folder (its .jpg .jpeg .png .bmp, not
    recursive), a list of files (id: the file name without extension), or a mapping id -> image. DataError for a
    missing or empty folder, two files with one id, or an unreadable image (naming it), before any scoring."""
    if isinstance(images, (str, Path)):
        folder = Path(images)
        if not folder.is_dir():
            raise DataError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'} (POOL is a folder "
                            "of images)")
        images = find_images(folder)
    if isinstance(images, Mapping):
        pool = dict(images)
    else:
        pool = {}
        for path in map(Path, images):
            if path.stem in pool:
                raise DataError(f"{path}: same image id {path.stem!r} as {pool[path.stem]}; rename one of them")
            pool[path.stem] = path
    if not pool:
        raise DataError("the pool holds no images")
    for image in logs.progress(pool.values(), "checking the pool", len(pool), "image"):
        if isinstance(image, (str, Path)):
            inspect_image(Path(image))  # the whole file decoded: an ImageFileError names it
        else:
            image_source(image)  # an array of the wrong shape or dtype: a DataError
    return pool


def attribute_weights(run: str | Path | Any, attributes: Sequence[str] | None = None) -> dict[str, float]:
    """Rarer attributes weigh more: w_a proportional to 1 / q_a from the run's training masks (selection module
    docstring); equal weights, with a warning, when the run's data cannot be read. run: a run folder, or a loaded
    model / Predictor (an ONNX export has no training data: equal weights)."""
    predictor = _predictor_of(run) if not isinstance(run, (str, Path)) else None
    run_dir = Path(run) if predictor is None else predictor.source
    if attributes is None:
        attributes = predictor.settings.attributes if predictor else _run_attributes(run_dir)
    counts, why = training_counts(run_dir, attributes)
    if counts is None:
        log.warning(f"equal attribute weights: {why}")
        return equal_weights(attributes)
    n_images, per_attribute = counts
    return prevalence_weights(per_attribute, n_images)


def _run_attributes(run_dir: Path) -> list[str]:
    from tatl.config import load_config

    layout = RunLayout(run_dir)
    if not layout.config.is_file():
        raise DataError(f"{run_dir}: not a run folder (no {layout.config.name})")
    return list(load_config(layout.config).data.attributes)


def training_counts(run_dir: Path, attributes: Sequence[str]) -> tuple[tuple[int, dict[str, int]] | None, str]:
    """((n training images, attribute -> how many show it), "") from RUN's train split and data folder, or
    (None, why not)."""
    from tatl.pipeline.context import RunContext

    if not RunLayout(run_dir).splits.is_file():
        return None, f"{run_dir} has no training split (an ONNX export, or an unfinished run)"
    try:
        run = RunContext.open(run_dir, need_data=False)
    except DataError as error:
        return None, f"the training data of {run_dir} cannot be read ({error})"
    if not run.samples:
        return None, f"the data folder of {run_dir} is not known or not found (RUN/data.json)"
    threshold = run.config.data.binarize_threshold

    def shown(sample) -> set[str]:
        paths = sample.attribute_mask_paths
        return {a for a in attributes if a in paths and read_mask(paths[a], None, threshold).any()}

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:  # PNG inflating releases the GIL
            presence = list(logs.progress(pool.map(shown, run.train), "reading training masks", len(run.train),
                                          "image"))
    except DataError as error:
        return None, f"a training mask cannot be read ({error})"
    return (len(presence), {a: sum(a in p for p in presence) for a in attributes}), ""


def _predictor_of(model: Any) -> Predictor:
    """A Predictor from itself, a tatl.api.Model (its .predictor), or a run / export folder."""
    if isinstance(model, Predictor):
        return model
    if isinstance(getattr(model, "predictor", None), Predictor):
        return model.predictor
    if isinstance(model, (str, Path)):
        return load_predictor(Path(model))
    raise ConfigError(f"model of type {type(model).__name__}: expected a run folder, tatl.load(...) or a Predictor")


def rank_pool(model_or_run: Any, images: Images, strategy: str = "uncertainty", n: int | None = None,
              seed: int = 0, weights: Mapping[str, float] | None = None) -> list[ImageScore]:
    """The pool's images ranked for labelling, best first: the n highest scores (all when n is None or larger
    than the pool), ties broken by id. weights: attribute -> weight (default: attribute_weights of the run)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy}: use one of {', '.join(STRATEGIES)}")
    if n is not None and n < 1:
        raise ConfigError(f"--n {n}: use 1 or more")
    predictor = None if strategy == RANDOM else _predictor_of(model_or_run)  # a wrong RUN: before the pool check
    if predictor is not None and not predictor.settings.attributes:
        raise ConfigError(f"{predictor.source}: a Segment-Net alone predicts no attributes to rank images by")
    if predictor is not None and weights is not None and set(weights) != set(predictor.settings.attributes):
        raise ConfigError(f"attribute weights for {', '.join(weights)}: the run predicts "
                          f"{', '.join(predictor.settings.attributes)}")
    pool = pool_images(images)
    paths = {i: str(image) if isinstance(image, (str, Path)) else "" for i, image in pool.items()}
    if predictor is None:
        scores = random_scores(list(pool), seed)
        return top_k([replace(s, image_id=i, path=paths[i]) for i, s in scores.items()], n)
    weights = normalised(weights if weights is not None else attribute_weights(predictor))
    scores = []
    for image_id, image in logs.progress(pool.items(), f"scoring ({strategy})", len(pool), "image"):
        score = score_prediction(predictor, image, weights, strategy)
        scores.append(replace(score, image_id=image_id, path=paths[image_id]))
    return top_k(scores, n)


def score_prediction(model: Any, image: Any, weights: Mapping[str, float], strategy: str) -> ImageScore:
    """One image (a path, a PIL image or an RGB uint8 array) scored as rank_pool scores it: predicted by `model`
    (a tatl.load(...) model or a Predictor; with flip TTA added for disagreement) with its ensemble members kept,
    scored inside the predicted lesion (strategy: uncertainty or disagreement; weights: attribute -> weight)."""
    predictor = _predictor_of(model)
    if strategy == DISAGREEMENT and not predictor.tta:  # flips: members to disagree even with one shape
        predictor = Predictor(predictor.settings, predictor.networks, predictor.engine, predictor.source, tta=True)
    prediction = predictor.predict(image, keep_members=True)
    members = {name: {a: maps[a] for a in weights} for name, maps in prediction.members.items()}
    grid = next(iter(next(iter(members.values())).values())).shape
    lesion = None
    if LESION in prediction.maps and not prediction.lesion_fallback:
        mask = prediction.maps[LESION] > predictor.settings.threshold
        lesion = lesion_on_grid(mask, prediction.size, prediction.box, grid)
    return score_image(members, lesion, weights, strategy)


def ranked_rows(ranked: Sequence[ImageScore], strategy: str) -> list[dict]:
    """The rows of ranked.csv: rank, image_id, path, score, then per attribute its value and its weight."""
    value = VALUE_NAME.get(strategy)
    rows = []
    for rank, item in enumerate(ranked, 1):
        row = {"rank": rank, "image_id": item.image_id, "path": item.path, "score": f"{item.score:.6g}"}
        for attribute, weight in item.weights.items() if value else ():
            row[f"{attribute}_{value}"] = f"{item.per_attribute[attribute]:.6g}"
            row[f"{attribute}_weight"] = f"{weight:.6g}"
        rows.append(row)
    return rows


def write_ranked_csv(path: str | Path, ranked: Sequence[ImageScore], strategy: str) -> None:
    """ranked.csv, best first, written atomically (columns: ranked_rows)."""
    rows = ranked_rows(ranked, strategy)
    write_csv(Path(path), rows, None if rows else ["rank", "image_id", "path", "score"], line_end="\n")
