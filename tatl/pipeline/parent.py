"""The parent of a fine-tuned run (pipeline.init_from = RUN, what `tatl finetune` sets): its data joined to the new
data, its validation split, its networks as the starts of this run's, and the networks copied from it unchanged.

A run with a parent is trained by the usual pipeline (tatl.pipeline.stages, read top to bottom); this module is what
differs, each part called from the place the usual run does the same thing:

- data (`joined_data`, `compose_data`, from setup.prepare_context): DATA holds the new training images.
  RUN2/finetune-data/ is one flat folder of hard links (copies across file systems) to DATA's images and masks, to
  the parent's validation images and masks when the parent's data is reachable (the folder its data.json records),
  and, with pipeline.init_with_original, to the parent's training images too. An image of DATA whose id is in the
  parent's validation split is left out (a warning names it): it is scored, not trained on. An id both in DATA and
  in the parent's training images is DATA's (a corrected mask wins). finetune-data/sources.json, written last,
  records what was joined; a resumed run reuses the folder as it is. `attributes_trained`: the masks it needs.
- split (`split`, from setup): validation on the parent's validation split when its images are in the folder (so the
  scores of the parent and this run are comparable), else a stratified split of DATA; every other image trains.
- starts (`head_starts`, from the run's plan, tatl.pipeline.plan; loaded by groups.train_group): every network's
  heads start from the parent's best.pt of the same network, strictly (keys and shapes must match). A
  frozen-encoder Stage-3 head takes its decoder from the parent and keeps this run's Stage-2 encoder, as TATL-FE
  does; with Stage 2 copied that encoder is the parent's.
- copies (`is_copied` and `source_of`, from the plan; `copy_from_parent`, from groups): the networks of
  pipeline.init_copied (stage2 and attribute heads) are copied from the parent (hard links), not trained; the
  copy's done.json adds "copied_from".
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tatl.config import Config, load_config
from tatl.data.isic import Sample, find_samples
from tatl.data.splits import make_splits, read_splits
from tatl.errors import DataError
from tatl.io import link_or_copy, write_json
from tatl.layout import BEST, DONE, INPUTS, RunLayout, variant_stages
from tatl.pipeline.context import samples_of, split_ids, stored_data_folders
from tatl.pipeline.reuse import copy_group

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parent:
    """A finished run as a parent: its folder, config, split and, when its data is reachable, its samples."""

    layout: RunLayout
    config: Config
    train_ids: list[str]
    val_ids: list[str]
    samples: dict[str, Sample]  # id -> sample of its data; empty when the data cannot be found
    unreachable: str | None  # why its data cannot be found; None when it can


def open_parent(path: str | Path) -> Parent:
    """A finished run (config.yaml, splits.json, metrics.json, every network's best.pt); a one-line DataError naming
    what is missing otherwise. Its data is looked up where its data.json says (`unreachable` says why not)."""
    layout = RunLayout(Path(path))
    if not layout.root.is_dir():
        raise DataError(f"{path}: no such run folder")
    if not layout.config.is_file():
        raise DataError(f"{path}: not a run folder of `tatl run` (no {layout.config.name})")
    config = load_config(layout.config)
    if not layout.metrics.is_file():
        raise DataError(f"{path}: not a finished run (no {layout.metrics.name}); finish it first (tatl run ... "
                        "--resume)")
    if config.pipeline.stages == "1":
        raise DataError(f"{path}: trained the Segment-Net alone (--stages 1); fine-tune a run of every stage")
    missing = next((p for p in _checkpoints(layout, config) if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"{path}: not a finished run ({missing} missing)")
    train, val = split_ids(read_splits(layout.splits), config)
    samples, unreachable = _samples(layout, config, train + val)
    return Parent(layout, config, train, val, samples, unreachable)


def _checkpoints(layout: RunLayout, config: Config) -> list[Path]:
    """The best.pt of every network the run trained (the Segment-Net, Stage 2 and the Stage-3 heads)."""
    variants, shapes = config.pipeline.variants, config.model.shapes
    found = [layout.stage1(config.model.stage1_shape) / BEST] if any(1 in variant_stages(v) for v in variants) else []
    return found + [path for v in variants for s in shapes
                    for path in layout.checkpoints(v, s, config.data.attributes).values()]


def _samples(layout: RunLayout, config: Config, ids: list[str]) -> tuple[dict[str, Sample], str | None]:
    """The samples of the run's split from its stored data folders, or ({}, why they cannot be found)."""
    try:
        return samples_of(stored_data_folders(layout), config, ids), None
    except DataError as error:
        return {}, str(error)


def has_parent(config: Config) -> bool:
    """Is this run fine-tuned from another (pipeline.init_from)?"""
    return bool(config.pipeline.init_from)


def attributes_trained(config: Config) -> list[str]:
    """The attributes whose heads this run trains: all but those copied from the parent (pipeline.init_copied),
    which need no masks in a fine-tuned run's new data."""
    return [a for a in config.data.attributes if a not in config.pipeline.init_copied]


# ------------------------------------------------------------------------------------------------- the data
def joined_data(roots: list[Path], run_dir: Path, config: Config) -> list[Path]:
    """The data folders a run reads: `roots`, or for a fine-tuned run RUN2/finetune-data/ (`compose_data`)."""
    return [compose_data(roots[0], run_dir, config)] if has_parent(config) else roots


def compose_data(new_data: Path, run_dir: Path, config: Config) -> Path:
    """RUN2/finetune-data/: DATA's images and the parent's validation (and, with init_with_original, training)
    images, linked into one folder (see the module's docstring); composed once, reused on resume."""
    layout = RunLayout(run_dir)
    folder = layout.finetune_data
    if layout.finetune_sources.is_file():  # a resume: the images it started with, from the same new data only
        joined = sources(layout)["new_data"]
        if joined != str(Path(new_data).resolve()):
            raise DataError(f"{new_data}: {run_dir} was fine-tuned on {joined}; resume it with that folder")
        return folder
    parent = open_parent(config.pipeline.init_from)
    new = {s.image_id: s for s in find_samples(Path(new_data), config.data.attributes)}
    chosen, held_out = _joined_samples(parent, new, new_data, config.pipeline.init_with_original)
    staging = folder.with_name(folder.name + ".composing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _link_samples(chosen.values(), staging)
    validation = "parent" if parent.samples else "new_data"
    write_json(staging / layout.finetune_sources.name, {  # written last: its presence says the folder is whole
        "parent": str(parent.layout.root.resolve()), "new_data": str(Path(new_data).resolve()),
        "with_original": config.pipeline.init_with_original, "validation": validation,
        "validation_ids": parent.val_ids if parent.samples else None, "new_ids": sorted(set(new) - set(held_out)),
        "left_out": held_out, "parent_data": parent.unreachable or "reachable"})
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    if not parent.samples:
        log.warning(f"the parent's images are not reachable ({parent.unreachable}): validation on a split of "
                    f"{new_data} instead, so its scores are not those of the parent's split")
    return folder


def _joined_samples(parent: Parent, new: dict[str, Sample], new_data: Path,
                    with_original: bool) -> tuple[dict[str, Sample], list[str]]:
    """(id -> sample of every image joined, the ids of DATA left out because the parent validates on them)."""
    chosen: dict[str, Sample] = {}
    held_out: list[str] = []
    if parent.samples:
        held_out = sorted(set(new) & set(parent.val_ids))
        if held_out:
            log.warning(f"{new_data}: {len(held_out)} image(s) of the parent's validation split left out of training "
                        f"(scored with the parent's masks instead): {', '.join(held_out[:10])}")
        chosen.update({i: parent.samples[i] for i in parent.val_ids})
        if with_original:
            chosen.update({i: parent.samples[i] for i in parent.train_ids})
    chosen.update({i: s for i, s in new.items() if i not in held_out})  # after the parent's: DATA's masks win
    return chosen, held_out


def _link_samples(samples: Iterable[Sample], folder: Path) -> None:
    """Each sample's image and masks linked (or copied) into one flat folder."""
    for sample in samples:
        for path in (sample.image_path, sample.lesion_mask_path, *sample.attribute_mask_paths.values()):
            if path is not None:
                link_or_copy(path, folder / path.name)


def sources(run: RunLayout) -> dict:
    """RUN2/finetune-data/sources.json: what was joined."""
    return json.loads(run.finetune_sources.read_text())


def split(run: RunLayout, presence: dict, config: Config) -> dict | None:
    """The parent's validation split when its images were joined, else a stratified split of the new data; the
    folds (unused: init_from needs data.fold null) of every image, so the file reads as any splits.json. None for a
    run without a parent."""
    if not has_parent(config):
        return None
    d = config.data
    splits = make_splits(presence, d.val_fraction, d.n_folds, config.train.seed)
    val_ids = sources(run)["validation_ids"]
    if not val_ids:
        return splits
    val = sorted(i for i in val_ids if i in presence)
    return {**splits, "train": sorted(set(presence) - set(val)), "val": val}


# -------------------------------------------------------------------------------------------- the networks
def head_starts(config: Config, run: RunLayout, head_dirs: dict[str, Path]) -> dict[str, Path]:
    """Head name -> the parent's best.pt of the same network, which that head of this run starts from."""
    return {name: source_of(config, run, head_dir) / BEST for name, head_dir in head_dirs.items()}


def source_of(config: Config, run: RunLayout, folder: Path) -> Path:
    """The parent's folder of the network in `folder` (a folder of this run)."""
    return Path(config.pipeline.init_from) / Path(folder).relative_to(run.root)


def is_copied(config: Config, run: RunLayout, group_dir: Path) -> bool:
    """Is `group_dir` a Stage-2 network or a one-attribute Stage-3 network that pipeline.init_copied names?"""
    p, copied = config.pipeline, config.pipeline.init_copied
    if not p.init_from or not copied:
        return False
    shapes = config.model.shapes
    stage2 = {run.stage2(inputs, s) for inputs in INPUTS for s in shapes} if "stage2" in copied else set()
    heads = {run.stage3_head(v, s, a) for v in p.variants for s in shapes for a in copied if a != "stage2"}
    return Path(group_dir) in stage2 | heads


def copy_from_parent(config: Config, run: RunLayout, folder: Path) -> None:
    """The parent's network folder copied into `folder` (once: its done.json, written last, marks a whole copy)."""
    if (folder / DONE).is_file():
        return
    source = source_of(config, run, folder)
    done = json.loads((source / DONE).read_text()) if (source / DONE).is_file() else {}
    copy_group(source, folder, done={**done, "copied_from": str(source.resolve())})
