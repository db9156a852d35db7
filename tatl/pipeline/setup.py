"""Run folders: refuse to overwrite, find or generate the data (tatl.pipeline.context), validate it, record it, and
fix the split.

Everything a run needs is checked here, before the first epoch: a bad mask found at hour five costs far more than
reading every mask header now.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from tatl.config import Config
from tatl.data.checks import DataReport, check_dataset, merge_reports, require_valid
from tatl.data.isic import ATTRIBUTE_INFIX, attribute_names
from tatl.data.splits import make_splits, read_splits, write_splits
from tatl.device import resolve_device
from tatl.errors import ConfigError, DataError
from tatl.folders import check_output_folder
from tatl.io import LockHeld, hold_lock
from tatl.layout import RunLayout, variant_stages
from tatl.models.networks import build_model, check_encoder_name
from tatl.models.weights import check_lite0_fits, lite0_weights_path, parse_encoder_weights
from tatl.pipeline import parent
from tatl.pipeline.context import (
    SYNTHETIC,
    Data,
    TrainingContext,
    data_list,
    record_data,
    resolve_data,
    split_ids,
    tune_ids,
)

log = logging.getLogger(__name__)

# Settings a resumed run cannot change: the networks' architecture, what and how big the images are, and the split.
RESUME_FIXED = (
    "model.encoder_name", "model.stage1_shape", "pipeline.encoder_mode", "data.attributes", "data.stage1_size",
    "data.image_size", "data.val_fraction", "data.tune_fraction", "data.n_folds", "data.fold", "pipeline.stages",
    "pipeline.segment_net", "pipeline.init_from", "pipeline.init_with_original", "pipeline.init_copied",
)
RESUME_FIXED_SYNTHETIC = ("synth.n", "synth.size", "synth.seed")  # the run's synthetic-data/ is reused as it is
_held_locks: dict[Path, object] = {}  # lock files this process holds; the OS releases them when it dies


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a new (or empty) folder; --resume needs an existing run folder."""
    check_output_folder(run_dir, "run folder")
    layout = RunLayout(run_dir)
    # RUN/log.txt: a run stopped by its checks has logged why; the next attempt appends to it
    content = {p.name for p in run_dir.iterdir()} - {layout.lock.name, layout.log.name} if run_dir.is_dir() else set()
    if content == {layout.config.name} and not resume:  # a run stopped by its checks before anything else was written
        log.warning(f"{run_dir} holds only the config.yaml of a run that stopped before its data was accepted; "
                    "starting afresh")
        content = set()
    if resume and not layout.config.exists():
        raise DataError(f"{run_dir}: nothing to resume (no config.yaml); start a new run without --resume")
    if content and not resume:
        raise DataError(f"{run_dir}: run folder exists and is not empty; use --resume to continue it or choose "
                        "another --out (nothing was overwritten)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a parent is a file, no permission, read-only file system
        raise DataError(f"{run_dir}: cannot create the run folder ({error.strerror or error})") from None
    lock_run_dir(run_dir)


def lock_run_dir(run_dir: Path) -> None:
    """One run, one writer: an exclusive lock on RUN/.lock, which a killed process cannot leave stuck."""
    if run_dir.resolve() in _held_locks:
        return  # this process already holds it (e.g. a resume called from the same Python session)
    try:
        handle = hold_lock(RunLayout(run_dir).lock, f"pid {os.getpid()}\n")
    except LockHeld as held:
        raise DataError(f"{run_dir}: another tatl process ({held.holder}) is writing this run folder; wait for it "
                        "or stop it first") from None
    except OSError as error:
        raise DataError(f"{run_dir}: cannot write in the run folder ({error.strerror or error})") from None
    _held_locks[run_dir.resolve()] = handle


def check_data_path(data: Data, config: Config | None = None) -> None:
    """A dataset folder that is missing or a file is named before anything is written; several DATA folders train
    the Segment-Net alone (pipeline.stages 1), each folder given once, none generated."""
    given = data_list(data)
    if len(given) > 1:
        if config is not None and config.pipeline.stages != "1":
            raise ConfigError(f"DATA {' '.join(given)}: several folders train the Segment-Net alone (--stages 1); "
                              "Stages 2-3 read one dataset folder")
        resolved = [Path(name).resolve() for name in given]
        twice = next((name for name, path in zip(given, resolved, strict=True) if resolved.count(path) > 1), None)
        if SYNTHETIC in given or twice:
            raise DataError(f"{twice or SYNTHETIC}: " + ("given twice as DATA" if twice else "generated data cannot "
                            "be one of several DATA folders"))
    for name in given:
        root = Path(name)
        if name != SYNTHETIC and not root.is_dir():
            raise DataError(f"{root}: is a file, not a dataset folder" if root.exists()
                            else f"{root}: dataset folder does not exist")


def check_model_settings(config: Config) -> None:
    """Refuse, before any data is read, the model settings that would fail when the first network is built: an
    unknown encoder, encoder weights that are missing, unsafe or do not fit it, an unavailable device."""
    m = config.model
    check_encoder_name(m.encoder_name)
    source = parse_encoder_weights(m.encoder_weights)
    if source == "lite0":
        check_lite0_fits(m.encoder_name)
        lite0_weights_path()
    elif isinstance(source, Path):  # loaded once now: an unsafe, damaged or unfitting file is named at once
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the run's random state
            build_model(m.stage1_shape, m.encoder_name, source)
    resolve_device(config.train.device)


def check_resume_settings(saved: Config, config: Config, run_dir: Path, data: str) -> None:
    """--resume continues the networks of the saved config: refuse changes that would not fit its checkpoints
    (another encoder) or would silently mix two experiments (other images, sizes, split or encoder mode).

    A run that stopped before its split was written (e.g. on a data error) has trained nothing: any change goes,
    except to the synthetic data it may have generated."""
    layout = RunLayout(run_dir)
    keys = RESUME_FIXED if layout.splits.exists() else ()
    if data == SYNTHETIC and layout.synthetic_data.exists():
        keys += RESUME_FIXED_SYNTHETIC
    for key in keys:
        section, name = key.split(".")
        before, after = getattr(getattr(saved, section), name), getattr(getattr(config, section), name)
        if before != after:
            raise ConfigError(f"--resume: {key} is {before!r} in {layout.config}, not {after!r}: the run "
                              f"was started with {before!r}; start a new run (another --out) to change it")


def prepare_context(data: Data, run_dir: Path, config: Config, stage1_only: bool | None = None) -> TrainingContext:
    """The context of a run being trained: its data found (or generated, or converted) and checked, its split
    made (or read back), and RUN/data.json written, so the finished run knows its data. Several DATA folders (a
    Segment-Net on several lesion datasets) are checked one by one, then joined. stage1_only: the Segment-Net
    alone (default: pipeline.stages)."""
    stage1_only = config.pipeline.stages == "1" if stage1_only is None else stage1_only
    roots = [resolve_data(name, run_dir, config) for name in data_list(data)]
    roots = parent.joined_data(roots, run_dir, config)  # a fine-tuned run: its parent's validation images joined
    uses_stage1 = stage1_only or any(1 in variant_stages(v) for v in config.pipeline.variants)
    own_stage1 = stage1_only or (uses_stage1 and not config.pipeline.segment_net)  # trained here on lesion masks
    needs_lesion = own_stage1 or (uses_stage1 and config.pipeline.crop_source == "truth")
    needed = [] if stage1_only else parent.attributes_trained(config)  # the masks every image needs
    reports = [check_dataset(root, config.data.attributes, need_lesion=needs_lesion, need_attributes=needed,
                             binarize_threshold=config.data.binarize_threshold) for root in roots]
    for report in reports:
        if needs_lesion and not stage1_only:
            _require_lesion_masks(report, config)
        if not stage1_only:
            _require_attribute_masks(report)
        require_valid(report)
        log.info(report.summary_table())
    report = merge_reports(reports)  # an id in two folders: named here
    layout = RunLayout(run_dir)
    splits = _splits(layout, report.presence, config)
    (train, val), tuning = split_ids(splits, config), tune_ids(splits, config)
    by_id = {s.image_id: s for s in report.samples}
    missing = [i for i in train + val + tuning if i not in by_id]
    if missing:
        raise DataError(f"{layout.splits}: ids not in {', '.join(map(str, roots))}: {', '.join(missing[:5])}")
    record_data(layout, data, roots)
    return TrainingContext(layout, config, train, val, tuning, roots, by_id, report=report)


def _require_lesion_masks(report: DataReport, config: Config) -> None:
    """Data without a single lesion mask cannot train Stage 1 (nor crop at true lesions): one line saying what to do,
    instead of an error per image."""
    if not report.samples or any(sample.lesion_mask_path for sample in report.samples):
        return
    if config.pipeline.segment_net:
        raise ConfigError(f"pipeline.crop_source=truth crops training images at their lesion masks, and {report.root} "
                          "has none (<id>_segmentation.png): use pipeline.crop_source=predicted")
    with_stage1 = " ".join(v for v in config.pipeline.variants if 1 in variant_stages(v))
    raise DataError(f"{report.root}: no image has a lesion mask (<id>_segmentation.png), which Stage 1 of variant(s) "
                    f"{with_stage1} needs: crop with a Segment-Net trained elsewhere (--segment-net RUN1, e.g. from "
                    "`tatl run LESION_DATA --out RUN1 --stages 1`) or run --variants 3 2,3")


def _require_attribute_masks(report: DataReport) -> None:
    """An attribute with no mask in the whole dataset is a wrong name in data.attributes, not N missing files."""
    found = {name for sample in report.samples for name in sample.attribute_mask_paths}
    absent = [name for name in report.attributes if name not in found]
    if not absent or not report.samples:
        return
    example = f"{report.samples[0].image_id}{ATTRIBUTE_INFIX}{absent[0]}.png"
    present = attribute_names(report.root)
    raise ConfigError(
        f"data.attributes: no image in {report.root} has a mask for {', '.join(absent)} (e.g. {example}); the "
        f"dataset has masks for {', '.join(present) or 'no attribute'}: set data.attributes to those you want"
    )


def _splits(layout: RunLayout, presence: dict, config: Config) -> dict:
    path = layout.splits
    if path.exists():  # a resumed run keeps its split
        return read_splits(path)
    d = config.data
    splits = parent.split(layout, presence, config) or make_splits(  # a fine-tuned run: its parent's validation
        presence, d.val_fraction, d.n_folds, config.train.seed, d.tune_fraction)
    write_splits(path, splits)
    return splits
