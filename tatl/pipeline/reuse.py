"""Reusing another run's trained Stage 1 and Stage 2 networks when they are the ones this run would train.

In a grid (Tables 6-7) the settings of one backbone, shape, fold and seed differ only in Stage 3: TATL-FE and TATL-NF
train the same Segment-Net and the same Attribute-Agnostic Segmenter, and the baselines on lesion crops the same
Segment-Net. `pipeline.reuse_stages_from` (which `tatl experiment` fills in with the grid's earlier jobs of the same
backbone, shape, fold and seed) names run folders to take them from: a Stage-1 or Stage-2 group folder is copied
(hard links where the file system allows: no extra disk) instead of trained when the source has finished it on the
same data (its done.json records the folder and a fingerprint of every file the run read: path, size and
modification time, so data regenerated or edited in place is not mistaken for the old) with the same split, and was
configured identically except for the settings that only Stage 3 and the evaluation use (STAGE3_ONLY). Otherwise
this run trains the group itself, exactly as without the option.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from tatl.config import Config, load_config, to_dict
from tatl.data.cache import file_fingerprint
from tatl.data.isic import Sample
from tatl.errors import ConfigError
from tatl.io import link_or_copy, write_json
from tatl.layout import DONE, INPUTS, RunLayout

# Settings a Stage-1 or Stage-2 network does not depend on (group folders are per shape: model.shapes neither).
STAGE3_ONLY = frozenset({
    "pipeline.variants", "pipeline.encoder_mode", "pipeline.init", "pipeline.augmentation_copies",
    "pipeline.tune_thresholds", "pipeline.reuse_stages_from", "model.shapes", "pipeline.stages",
    "pipeline.feature_cache",
})


def settings_that_differ(a: Config, b: Config, stage: int | None = None) -> list[str]:
    """The `section.key` settings, outside STAGE3_ONLY, whose values differ between `a` and `b`; for `stage` 1 or
    2, the epochs and patience compared are those that stage's networks train with (`_stage_schedule`)."""
    flat_a, flat_b = _stage_schedule(_flat(to_dict(a)), stage), _stage_schedule(_flat(to_dict(b)), stage)
    return sorted(key for key in flat_a.keys() | flat_b.keys()
                  if key not in STAGE3_ONLY and flat_a.get(key) != flat_b.get(key))


def _stage_schedule(flat: dict, stage: int | None) -> dict:
    """Stage 1 trains for train.epochs, Stage 2 for train.stage2_epochs (or train.epochs when null), and a patience of
    at least that many epochs never stops a network early: so a Stage-2 group of a run that changed only its Stage-3
    epochs (with train.stage2_epochs set) is the same network, and so is every patience >= the epochs."""
    if stage not in (1, 2):
        return flat
    flat = dict(flat)
    stage2_epochs = flat.pop("train.stage2_epochs", None)
    epochs = (stage2_epochs if stage == 2 else None) or flat["train.epochs"]
    flat["train.epochs"], flat["train.patience"] = epochs, min(flat["train.patience"], epochs)
    return flat


def data_identity(root: Path | Sequence[Path], samples: Sequence[Sample]) -> dict:
    """What a group's done.json records of the data it was trained on: the folder (a list of folders for a
    Segment-Net trained on several), and a SHA-256 over the path, size and modification time of every image and
    mask of `samples` (the same stat the decoded-image cache keys on: no file is read)."""
    files = sorted({str(path) for s in samples
                    for path in (s.image_path, s.lesion_mask_path, *s.attribute_mask_paths.values()) if path})
    listing = json.dumps([file_fingerprint(Path(path)) for path in files])
    roots = [str(Path(r).resolve()) for r in ([root] if isinstance(root, (str, Path)) else root)]
    return {"data_folder": roots[0] if len(roots) == 1 else roots,
            "data_fingerprint": hashlib.sha256(listing.encode()).hexdigest()}


def find_trained_group(run_dir: Path, group_dir: Path, config: Config, data: dict[str, str]) -> Path | None:
    """The first `pipeline.reuse_stages_from` run holding a finished copy of `group_dir` (a folder of `run_dir`)
    trained on the same `data` (`data_identity`) with this run's Stage 1-2 settings and split; None when there is
    none."""
    run = RunLayout(run_dir)
    stage = _stage_of(run, group_dir)
    if stage is None:
        return None
    relative = group_dir.relative_to(run.root)
    for source in map(RunLayout, config.pipeline.reuse_stages_from):
        candidate = source.root / relative
        if source.root.resolve() == run.root.resolve() or not (candidate / DONE).is_file():
            continue
        try:
            source_config = load_config(source.config)
            same_split = _read_json(source.splits) == _read_json(run.splits)
            done = _read_json(candidate / DONE)
            same_data = all(done.get(key) == value for key, value in data.items())  # older runs lack a key: not reused
        except (ConfigError, OSError, ValueError, AttributeError):
            continue  # a source that cannot be read is no source; this run trains the group itself
        if same_data and same_split and not settings_that_differ(source_config, config, stage):
            return candidate
    return None


def copy_group(source: Path, destination: Path, done: dict | None = None) -> None:
    """Copy a finished group folder; its done.json last (`done` instead, when given), so a copy cut short is
    trained or copied again, not reused."""
    staging = destination.with_name(destination.name + ".copying")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, copy_function=link_or_copy, ignore=shutil.ignore_patterns(DONE))
    shutil.rmtree(destination, ignore_errors=True)  # an unfinished attempt of this run's own
    staging.rename(destination)
    if done is None:
        link_or_copy(source / DONE, destination / DONE)
    else:
        write_json(destination / DONE, done)


def _stage_of(run: RunLayout, group_dir: Path) -> int | None:
    """1 or 2 for a group folder RUN/stage1/<shape> or RUN/stage2-<inputs>/<shape> (the networks a grid's jobs
    share), None for any other folder."""
    shape = group_dir.name
    if group_dir == run.stage1(shape):
        return 1
    return 2 if group_dir in [run.stage2(inputs, shape) for inputs in INPUTS] else None


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_json(path: Path):
    return json.loads(path.read_text())
