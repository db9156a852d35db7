"""Run folders: refuse to overwrite, find or generate the data, validate it, and fix the split.

Everything a run needs is checked here, before the first epoch: a bad mask found at hour five costs far more than
reading every mask header now.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from tatl.config import Config
from tatl.data.checks import check_dataset, require_valid
from tatl.data.splits import make_splits, read_splits, write_splits
from tatl.errors import DataError
from tatl.pipeline import RunContext

SYNTHETIC = "synthetic"
_held_locks: dict[Path, object] = {}  # lock files this process holds; the OS releases them when it dies


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a new (or empty) folder; --resume needs an existing run folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(f"{run_dir}: output path exists and is a file, not a folder")
    has_content = run_dir.is_dir() and any(p.name != ".lock" for p in run_dir.iterdir())
    if resume and not (run_dir / "config.yaml").exists():
        raise DataError(f"{run_dir}: nothing to resume (no config.yaml); start a new run without --resume")
    if has_content and not resume:
        raise DataError(f"{run_dir}: run folder exists and is not empty; use --resume to continue it or choose "
                        "another --out (nothing was overwritten)")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(run_dir)


def lock_run_dir(run_dir: Path) -> None:
    """One run, one writer: an exclusive lock on RUN/.lock, which a killed process cannot leave stuck."""
    if run_dir.resolve() in _held_locks:
        return  # this process already holds it (e.g. a resume called from the same Python session)
    handle = open(run_dir / ".lock", "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise DataError(f"{run_dir}: another tatl process ({owner}) is writing this run folder; wait for it "
                        "or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    _held_locks[run_dir.resolve()] = handle


def resolve_data(data: str, run_dir: Path, config: Config) -> Path:
    """DATA as given, ISIC 2017 Part 2 data converted once into the run folder (ISIC 2018 layout, the four 2017
    features), or the synthetic default generated once into the run folder."""
    if data != SYNTHETIC:
        from tatl.config import ATTRIBUTES_2018
        from tatl.data.isic2017 import ATTRIBUTES_2017, convert_to_isic2018_layout, is_isic2017
        from tatl.errors import ConfigError

        root = Path(data)
        if not is_isic2017(root):
            return root
        if list(config.data.attributes) == ATTRIBUTES_2018:  # the default names globules, which 2017 lacks
            print(f"note: ISIC 2017 data: data.attributes set to its four features ({', '.join(ATTRIBUTES_2017)})",
                  file=sys.stderr)
            config.data.attributes = list(ATTRIBUTES_2017)
        unknown = sorted(set(config.data.attributes) - set(ATTRIBUTES_2017))
        if unknown:
            raise ConfigError(f"data.attributes: {root} is ISIC 2017 data, with the features "
                              f"{', '.join(ATTRIBUTES_2017)} only, not {', '.join(unknown)}")
        print(f"ISIC 2017 data: superpixel labels rasterised into {run_dir / 'isic2017-converted'}", file=sys.stderr)
        return convert_to_isic2018_layout(root, run_dir / "isic2017-converted", config.data.binarize_threshold)
    from tatl.data.synth import write_synthetic_dataset

    root = run_dir / "synthetic-data"
    if not (root / "README.txt").exists():
        s = config.synth
        print(f"generating {s.n} synthetic images ({s.size} px wide, seed {s.seed}) in {root}", file=sys.stderr)
        write_synthetic_dataset(root, n=s.n, size=s.size, seed=s.seed)
    return root


def prepare_context(data: str, run_dir: Path, config: Config, stage1_only: bool) -> RunContext:
    if config.data.max_image_pixels:
        from tatl.data.images import set_max_image_pixels

        set_max_image_pixels(config.data.max_image_pixels)
    root = resolve_data(data, run_dir, config)
    needs_lesion = stage1_only or any("1" in v.split(",") for v in config.pipeline.variants)
    report = check_dataset(root, config.data.attributes, need_lesion=needs_lesion, need_attributes=not stage1_only,
                           binarize_threshold=config.data.binarize_threshold)
    require_valid(report)
    print(report.summary_table(), file=sys.stderr)
    splits = _splits(run_dir, report.presence, config)
    by_id = {s.image_id: s for s in report.samples}
    train, val = _train_val(splits, config)
    missing = [i for i in train + val if i not in by_id]
    if missing:
        raise DataError(f"{run_dir / 'splits.json'}: ids not in {root}: {', '.join(missing[:5])}")
    return RunContext(config, run_dir, report, [by_id[i] for i in train], [by_id[i] for i in val])


def _splits(run_dir: Path, presence: dict, config: Config) -> dict:
    path = run_dir / "splits.json"
    if path.exists():  # a resumed run keeps its split
        return read_splits(path)
    splits = make_splits(presence, config.data.val_fraction, config.data.n_folds, config.train.seed)
    write_splits(path, splits)
    return splits


def _train_val(splits: dict, config: Config) -> tuple[list[str], list[str]]:
    if config.data.fold is None:
        return list(splits["train"]), list(splits["val"])
    folds = splits["folds"]
    val = list(folds[config.data.fold])
    train = sorted(i for k, fold in enumerate(folds) if k != config.data.fold for i in fold)
    return train, val

