"""One run, being trained or finished: its folder (tatl.layout.RunLayout), config, data and split.

`tatl run` builds its RunContext in tatl.pipeline.setup.prepare_context once the data has passed its checks;
`RunContext.open(RUN)` reads a finished run back (`tatl bound`, `tatl report`): RUN/config.yaml, splits.json and
the data folder that RUN/data.json records, so the data need not be named again.

RUN/data.json holds {"data": DATA as given to `tatl run`, "folder": the dataset folder it resolved to (absolute),
"folder_in_run": that folder relative to RUN when the run generated or converted it there (synthetic-data/,
isic2017-converted/), else null}. So a run folder moved elsewhere still finds the data it keeps (relative) and an
outside dataset left where it was (absolute); a dataset moved elsewhere is named with `--data`, which always wins.
A Segment-Net trained on several DATA folders (`tatl run A B --stages 1`) records {"data": [A, B], "folders": [one
such record per folder]}; its images are the union of the folders' (an id in two folders is an error).
Runs written before data.json existed find the synthetic-data/ or isic2017-converted/ they keep, or ask for --data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from tatl.config import Config, load_config
from tatl.constants import ATTRIBUTES_2017, ATTRIBUTES_2018
from tatl.data.checks import DataReport
from tatl.data.crops import Box
from tatl.data.dataset import load_images, load_masks
from tatl.data.images import image_size
from tatl.data.isic import Sample, find_samples, join_samples
from tatl.data.isic2017 import convert_to_isic2018_layout, is_isic2017
from tatl.data.splits import read_splits, training_ids
from tatl.data.synth import write_synthetic_dataset
from tatl.device import resolve_device
from tatl.errors import ConfigError, DataError
from tatl.io import write_json
from tatl.layout import RunLayout
from tatl.pipeline import reuse

log = logging.getLogger(__name__)
SYNTHETIC = "synthetic"  # the DATA that generates the embedded synthetic dataset into the run folder
Data = str | Path | Sequence[str | Path]  # DATA of `tatl run`: one dataset folder (or "synthetic"), or several


@dataclass
class RunContext:
    """A run read back from its folder (RunContext.open: `tatl bound`, `tatl report`, a fine-tuning's scores): where
    its files are, its config and its split, and its data when that could be found. A run being trained is a
    TrainingContext, whose data is always there and checked. `train`, `val` and `tune` are the split's samples
    (empty while the data folder is not known)."""

    layout: RunLayout
    config: Config
    train_ids: list[str]
    val_ids: list[str]
    tune_ids: list[str] = field(default_factory=list)  # the tuning split (data.tune_fraction), none by default
    data_roots: list[Path] = field(default_factory=list)  # every data folder; empty: not known (opened without data)
    samples: dict[str, Sample] = field(default_factory=dict)  # id -> sample of every image in data_roots
    train: list[Sample] = field(init=False)
    val: list[Sample] = field(init=False)
    tune: list[Sample] = field(init=False)

    def __post_init__(self) -> None:
        self.train = [self.samples[i] for i in self.train_ids] if self.samples else []
        self.val = [self.samples[i] for i in self.val_ids] if self.samples else []
        self.tune = [self.samples[i] for i in self.tune_ids] if self.samples else []

    @property
    def data_root(self) -> Path | None:
        """The data folder (the first of several); None when the run was opened without its data."""
        return self.data_roots[0] if self.data_roots else None

    @property
    def selection(self) -> list[Sample]:
        """The images that pick each network's best epoch: the tuning split if there is one, else validation."""
        return self.tune or self.val

    @classmethod
    def open(cls, run_dir: Path, data: Data | None = None, need_data: bool = True) -> RunContext:
        """A finished run: RUN/config.yaml, splits.json and its data, `data` (DATA as given to `tatl run`) when
        given, else the folder(s) RUN/data.json records, else the synthetic or converted ISIC 2017 data kept in RUN.
        need_data=False: a run whose data cannot be found opens without it (no samples)."""
        layout = RunLayout(run_dir)
        if not layout.config.is_file():
            raise DataError(f"{layout.root}: not a run folder (no {layout.config.name})")
        config = load_config(layout.config)
        splits = read_splits(layout.splits)
        (train_ids, val_ids), tuning = split_ids(splits, config), tune_ids(splits, config)
        if data is not None:
            roots = [resolve_data(str(given), layout.root, config) for given in data_list(data)]
        else:
            try:
                roots = stored_data_folders(layout)
            except DataError:
                if need_data:
                    raise
                return cls(layout, config, train_ids, val_ids, tuning)
        samples = samples_of(roots, config, train_ids + val_ids + tuning, hint="; wrong --data?")
        return cls(layout, config, train_ids, val_ids, tuning, roots, samples)

    @property
    def cache_dir(self) -> Path | None:
        return self.layout.cache if self.config.data.cache else None

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.train.device)

    @cached_property
    def data_identity(self) -> dict[str, str]:
        """The data folder and a fingerprint of its files, recorded in each group's done.json (tatl.pipeline.reuse)."""
        return reuse.data_identity(self.data_roots, list(self.samples.values()))

    def boxes(self) -> dict[str, Box]:
        """The Stage-1 lesion boxes of every image, as Stage 2 and 3 cropped them."""
        path = self.layout.boxes
        if not path.is_file():
            raise DataError(f"{path}: missing (Stage 1 was not run); choose a variant without stage 1")
        return {image_id: tuple(box) for image_id, box in json.loads(path.read_text()).items()}

    def image_sizes(self, samples: list[Sample]) -> dict[str, tuple[int, int]]:
        """Image id -> (width, height) at original size of `samples` (read from their files)."""
        return {s.image_id: image_size(s.image_path) for s in samples}

    def stage_inputs(self, samples: list[Sample], boxes: dict[str, Box] | None) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, S, S, 3) and attribute masks (N, A, S, S) at image_size, as Stage 3 reads them (cached)."""
        sizes = self.image_sizes(samples)
        d = self.config.data
        images = load_images(samples, d.image_size, boxes, self.cache_dir)
        masks = load_masks(samples, d.attributes, d.image_size, boxes, sizes, self.cache_dir, d.binarize_threshold)
        return images, masks



@dataclass(kw_only=True)
class TrainingContext(RunContext):
    """A run being trained (tatl.pipeline.setup.prepare_context), or a finished run's networks scored on checked data
    (tatl.pipeline.rescore): its data folders are known and every image passed the data check, whose report (each
    image's size, each attribute's presence) the stages read."""

    report: DataReport  # the data check of `tatl run`: every image's size and which attributes it shows

    def __post_init__(self) -> None:
        if not self.data_roots or not self.samples:
            raise ValueError("a TrainingContext needs its data: data_roots and samples")  # a programming error
        super().__post_init__()

    @classmethod
    def of(cls, run: RunContext, report: DataReport) -> TrainingContext:
        """A finished run with its data (opened with it) and the report of a check of that data."""
        return cls(run.layout, run.config, run.train_ids, run.val_ids, run.tune_ids, run.data_roots, run.samples,
                   report=report)

    def image_sizes(self, samples: list[Sample]) -> dict[str, tuple[int, int]]:
        """Image id -> (width, height), as the data check measured them (no file read again)."""
        return {s.image_id: self.report.sizes[s.image_id] for s in samples}


# ------------------------------------------------------------------------------------------- the run's data
def resolve_data(data: str, run_dir: Path, config: Config) -> Path:
    """DATA as given, ISIC 2017 Part 2 data converted once into the run folder (ISIC 2018 layout, the four 2017
    features), or the synthetic default generated once into the run folder."""
    layout = RunLayout(run_dir)
    if data != SYNTHETIC:
        root = Path(data)
        if not is_isic2017(root):
            return root
        unknown = sorted(set(config.data.attributes) - set(ATTRIBUTES_2017))
        if unknown:
            raise ConfigError(f"data.attributes: {root} is ISIC 2017 data, with the features "
                              f"{', '.join(ATTRIBUTES_2017)} only, not {', '.join(unknown)}")
        log.info(f"ISIC 2017 data: superpixel labels rasterised into {layout.isic2017_converted}")
        return convert_to_isic2018_layout(root, layout.isic2017_converted, config.data.binarize_threshold)
    root = layout.synthetic_data
    if not (root / "README.txt").exists():
        s = config.synth
        log.info(f"generating {s.n} synthetic images ({s.size} px wide, seed {s.seed}) in {root}")
        write_synthetic_dataset(root, n=s.n, size=s.size, seed=s.seed)
    return root


def attributes_for_data(data: Data, config: Config) -> Config:
    """The config with data.attributes fitted to DATA, while the config is resolved (before it is saved, once): ISIC
    2017 Part 2 data has four features and no globules, so the default (the 2018 five) becomes those four."""
    given = data_list(data)
    if len(given) == 1 and given[0] != SYNTHETIC and tuple(config.data.attributes) == ATTRIBUTES_2018 \
            and is_isic2017(Path(given[0])):
        log.warning(f"ISIC 2017 data: data.attributes set to its four features ({', '.join(ATTRIBUTES_2017)})")
        config.data.attributes = list(ATTRIBUTES_2017)
    return config


def data_list(data: Data) -> list[str]:
    """DATA as a list of strings: one folder (or "synthetic") or several."""
    return [str(data)] if isinstance(data, (str, Path)) else [str(given) for given in data]


def record_data(layout: RunLayout, data: Data, roots: Sequence[Path]) -> None:
    """RUN/data.json: DATA as given and the folder(s) it resolved to (see the module's docstring)."""
    given = data_list(data)
    records = [_folder_record(layout, name, root) for name, root in zip(given, roots, strict=True)]
    write_json(layout.data_record, records[0] if len(records) == 1 else {"data": given, "folders": records})


def _folder_record(layout: RunLayout, data: str, root: Path) -> dict:
    folder = Path(root).resolve()
    try:
        in_run = str(folder.relative_to(layout.root.resolve()))
    except ValueError:  # outside the run folder
        in_run = None
    return {"data": data, "folder": str(folder), "folder_in_run": in_run}


def samples_of(roots: Sequence[Path], config: Config, ids: Sequence[str], hint: str = "") -> dict[str, Sample]:
    """Image id -> sample of the data folders `roots` of a run; DataError (ending with `hint`) when an image `ids`
    names is not there."""
    samples = join_samples([find_samples(root, config.data.attributes) for root in roots])
    missing = [i for i in ids if i not in samples]
    if missing:
        raise DataError(f"{', '.join(map(str, roots))}: does not hold the run's images ({', '.join(missing[:3])} "
                        f"...){hint}")
    return samples


def stored_data_folders(layout: RunLayout) -> list[Path]:
    """The data folder(s) of a finished run: those RUN/data.json records, else the synthetic or converted ISIC 2017
    data kept in RUN (runs from before data.json); DataError asking for --data when there is none."""
    record = layout.data_record
    if record.is_file():
        try:
            values = json.loads(record.read_text())
            records = values["folders"] if "folders" in values else [values]
            folders = [layout.root / r["folder_in_run"] if r.get("folder_in_run") else Path(r["folder"])
                       for r in records]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{record}: not a data record of `tatl run` ({error}); pass --data DIR") from None
        for folder in folders:
            if not folder.is_dir():
                raise DataError(f"{record}: the run's data folder {folder} no longer exists; pass --data DIR (where "
                                "that data is now)")
        return folders
    kept = (folder for folder in (layout.synthetic_data, layout.isic2017_converted) if folder.is_dir())
    folder = next(kept, None)
    if folder is None:
        raise DataError(f"{layout.root}: its data folder is not stored in the run; pass --data DIR (the DATA of "
                        "`tatl run`)")
    return [folder]


def split_ids(splits: dict, config: Config) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) of the configured fold (data.fold), else of the train/validation split; the
    training ids leave the tuning split out (tune_ids)."""
    if config.data.fold is None:
        return training_ids(splits, list(splits["train"])), list(splits["val"])
    folds = splits["folds"]
    val = list(folds[config.data.fold])
    train = sorted(i for k, fold in enumerate(folds) if k != config.data.fold for i in fold)
    return training_ids(splits, train), val


def tune_ids(splits: dict, config: Config) -> list[str]:
    """The tuning split (data.tune_fraction; splits.json "tune"), without the configured fold's validation ids."""
    val = set(split_ids(splits, config)[1])
    return [i for i in splits.get("tune", []) if i not in val]
