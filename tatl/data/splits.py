"""Deterministic, stratified train/validation split and k folds, written once per run to `splits.json`.

Attributes are very unbalanced (ISIC 2018: pigment network in ~60% of the images, streaks in ~4%), so a plain
random split can leave a fold without a single streak, and that fold's streak score undefined. Each image is put
in the stratum of the RAREST attribute it shows (images with none form their own stratum); each stratum is
shuffled with the seed and dealt round-robin into the folds, the rarest stratum first, so every fold gets an
example of every attribute that has at least k images. The validation split takes `val_fraction` of each
stratum, and at least one image of every stratum that has two or more. Id lists are sorted, so the file diffs
cleanly; the same presence, fraction, k and seed always give the same file.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from tatl.errors import ConfigError, DataError
from tatl.io import write_json

NO_ATTRIBUTE = ""  # stratum of the images that show no attribute
SPLIT_KEYS = ("seed", "val_fraction", "train", "val", "folds")


def make_splits(
    presence: Mapping[str, Iterable[str]], val_fraction: float = 0.2, n_folds: int = 5, seed: int = 0,
    tune_fraction: float = 0.0,
) -> dict:
    """{"seed", "val_fraction", "train", "val", "folds"}: train/val disjoint and covering every id; every id in
    exactly one of the `n_folds` folds. tune_fraction > 0 adds "tune_fraction" and "tune": that share of all ids,
    taken from train the way val is taken (stratified), which training then leaves out (`training_ids`)."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), not {val_fraction}")
    if n_folds < 1:
        raise ConfigError(f"n_folds must be at least 1, not {n_folds}")
    if not 0 <= tune_fraction < 1 - val_fraction:
        raise ConfigError(f"tune_fraction must be in [0, 1 - val_fraction), not {tune_fraction}")
    strata = stratify(presence)
    val = _validation_ids(strata, val_fraction, random.Random(f"val-{seed}"))
    folds = _folds(strata, n_folds, random.Random(f"folds-{seed}"))
    train = sorted(set(presence) - set(val))
    splits = {"seed": seed, "val_fraction": val_fraction, "train": train, "val": sorted(val), "folds": folds}
    if tune_fraction > 0:  # the same per-stratum draw on what val left, at the share of all images asked for
        taken = set(val)
        left = {s: [i for i in ids if i not in taken] for s, ids in strata.items()}
        tune = _validation_ids(left, tune_fraction / (1 - val_fraction), random.Random(f"tune-{seed}"))
        splits.update(tune_fraction=tune_fraction, tune=sorted(tune))
    return splits


def training_ids(splits: dict, train: list[str]) -> list[str]:
    """`train` without the tuning split's ids (splits.json "tune"; none in files without it)."""
    tune = set(splits.get("tune", []))
    return [i for i in train if i not in tune]


def stratify(presence: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Stratum (rarest attribute shown, or NO_ATTRIBUTE) -> sorted ids, rarest stratum first."""
    shown = {image_id: set(attributes) for image_id, attributes in presence.items()}
    frequency = Counter(a for attributes in shown.values() for a in attributes)
    strata: dict[str, list[str]] = {}
    for image_id in sorted(shown):
        rarest = min(shown[image_id], key=lambda a: (frequency[a], a), default=NO_ATTRIBUTE)
        strata.setdefault(rarest, []).append(image_id)
    order = sorted(strata, key=lambda s: (s == NO_ATTRIBUTE, len(strata[s]), s))
    return {s: strata[s] for s in order}


def _validation_ids(strata: dict[str, list[str]], fraction: float, rng: random.Random) -> list[str]:
    total = sum(len(ids) for ids in strata.values())
    wanted = round(fraction * total)
    quota = {s: math.floor(fraction * len(ids)) for s, ids in strata.items()}
    if fraction > 0:  # one of each stratum that can spare one, rare ones first, even if val grows a little
        quota = {s: max(q, 1) if len(strata[s]) >= 2 else q for s, q in quota.items()}
    by_remainder = sorted(strata, key=lambda s: -(fraction * len(strata[s]) - math.floor(fraction * len(strata[s]))))
    for stratum in by_remainder:  # largest remainders get the images still missing from round(fraction * total)
        if sum(quota.values()) >= wanted:
            break
        if quota[stratum] < len(strata[stratum]) - 1:
            quota[stratum] += 1
    val = []
    for stratum, ids in strata.items():
        shuffled = list(ids)
        rng.shuffle(shuffled)
        val += shuffled[: quota[stratum]]
    return val


def _folds(strata: dict[str, list[str]], n_folds: int, rng: random.Random) -> list[list[str]]:
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    dealt = 0  # continues across strata, so fold sizes differ by at most one
    for ids in strata.values():
        shuffled = list(ids)
        rng.shuffle(shuffled)
        for image_id in shuffled:
            folds[dealt % n_folds].append(image_id)
            dealt += 1
    return [sorted(fold) for fold in folds]


def write_splits(path: Path, splits: dict) -> None:
    write_json(path, splits, indent=1)


def read_splits(path: Path) -> dict:
    """The splits in `path`, after checking their structure; DataError naming the file and the defect."""
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise DataError(f"{path}: splits file does not exist") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable JSON splits file ({error})") from error
    problem = _structure_problem(splits)
    if problem:
        raise DataError(f"{path}: broken splits file: {problem}")
    return splits


def _structure_problem(splits: object) -> str | None:
    if not isinstance(splits, dict):
        return "the top level is not an object"
    missing = [k for k in SPLIT_KEYS if k not in splits]
    if missing:
        return f"missing keys {', '.join(missing)}"
    lists = {
        "train": splits["train"],
        "val": splits["val"],
        **{f"folds[{i}]": f for i, f in enumerate(_folds_of(splits))},
    }
    for name, ids in lists.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return f"{name} is not a list of image ids"
        if len(set(ids)) != len(ids):
            return f"{name} lists an id twice"
    if not isinstance(splits["folds"], list) or not splits["folds"]:
        return "folds is not a non-empty list of id lists"
    tune = splits.get("tune", [])
    if not isinstance(tune, list) or not all(isinstance(i, str) for i in tune) or not set(tune) <= set(splits["train"]):
        return "tune is not a list of ids of train"
    if set(splits["train"]) & set(splits["val"]):
        return f"train and val share ids, e.g. {sorted(set(splits['train']) & set(splits['val']))[0]}"
    every = set(splits["train"]) | set(splits["val"])
    in_folds = [i for fold in splits["folds"] for i in fold]
    if len(in_folds) != len(set(in_folds)) or set(in_folds) != every:
        return "the folds do not hold every id of train + val exactly once"
    return None


def _folds_of(splits: dict) -> list:
    return splits["folds"] if isinstance(splits["folds"], list) else []
