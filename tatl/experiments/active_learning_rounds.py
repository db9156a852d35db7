"""The rounds of a simulated active-learning experiment: the initial model of a seed, then each strategy's chain of
rounds (select B images with the previous round's model, label them from DATA's masks, fine-tune, score).

Training is tatl.pipeline.train (the initial model, with the experiment's split written into its run folder
before it starts, so it validates on the fixed validation split) and tatl.pipeline.finetune (each round, from
the previous round's best weights); selection is tatl.experiments.ranking.rank_pool. After every round the run's
own split is checked against the experiment's: training on exactly the labelled images, validating on exactly
the fixed validation split, so a score on the curve is never one of a leaked or mismatched split.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tatl.config import Config, load_config, save_config
from tatl.data.isic import ATTRIBUTE_DIR, INPUT_DIR, LESION_DIR, Sample, find_samples
from tatl.data.splits import write_splits
from tatl.errors import ConfigError, DataError
from tatl.experiments.active_learning import (
    ExperimentDir,
    RoundState,
    Settings,
    check_pool_size,
    check_same_experiment,
    check_settings,
    initial_ids,
    read_or_make_split,
    read_state,
    record_settings,
    write_split,
    write_state,
)
from tatl.io import write_json
from tatl.layout import RunLayout, default_variant, reported_model

log = logging.getLogger(__name__)


@dataclass
class Experiment:
    """An experiment ready to run: its settings, folder, fixed split, DATA's samples and the base config."""

    settings: Settings
    folder: ExperimentDir
    split: dict[str, Any]  # {"seed", "val_fraction", "val", "pool"}
    samples: dict[str, Sample]  # id -> sample of every image of DATA
    config: Config  # the runs' config for the first seed (the split and the scores read it)


def prepare(settings: Settings, out: Path, check_data: bool = True) -> Experiment:
    """Everything checked before the first network trains: options, config, DATA (every mask read once, with
    check_data), the split, the pool size; then DIR/active-learning.json and split.json written."""
    from tatl.folders import check_output_folder

    check_settings(settings)
    check_output_folder(out, "experiment folder")
    folder = ExperimentDir(Path(out))
    check_same_experiment(settings, folder)
    config = load_config(settings.config, settings.run_overrides(settings.seeds[0]))
    if config.data.fold is not None:
        raise ConfigError("data.fold: the experiment makes its own validation split (data.val_fraction); "
                          "leave data.fold unset")
    if not config.data.attributes:
        raise ConfigError("data.attributes: active learning needs at least one attribute to label")
    presence = _presence(settings.data, config) if check_data else None
    samples = {s.image_id: s for s in find_samples(Path(settings.data), config.data.attributes)}
    if presence is None and not folder.split.is_file():
        raise DataError(f"{folder.split}: missing; run the experiment without --job first")
    split = read_or_make_split(folder, presence or dict.fromkeys(samples, frozenset()),
                               config.data.val_fraction, config.train.seed)
    check_pool_size(settings, split)
    record_settings(settings, folder)  # first: a split.json is always that of the recorded settings
    write_split(folder, split)
    return Experiment(settings, folder, split, samples, config)


def _presence(data: str, config: Config) -> dict[str, frozenset[str]]:
    """Which attributes each image of DATA shows; DATA's problems as tatl run reports them."""
    from tatl.data.checks import check_dataset, require_valid

    report = check_dataset(Path(data), config.data.attributes, binarize_threshold=config.data.binarize_threshold)
    require_valid(report)
    return report.presence


# ------------------------------------------------------------------------------------------------- round 0
def run_initial(exp: Experiment, seed: int) -> Path:
    """The seed's model on its N0 initial images, validated on the fixed split; its run folder. A finished one is
    kept, a started one continued (tatl run --resume)."""
    from tatl.pipeline.train import train

    folder, settings = exp.folder, exp.settings
    labelled = _initial_labelled(exp, seed)
    run_dir = folder.initial_run(seed)
    layout = RunLayout(run_dir)
    if layout.metrics.is_file():
        return run_dir
    overrides = settings.run_overrides(seed)
    if not layout.config.is_file():  # the run's split is the experiment's, written before it starts; its config
        #                              last, so that a run with a config always has this split
        train_and_val = sorted([*labelled, *exp.split["val"]])
        write_splits(layout.splits, {"seed": seed, "val_fraction": exp.split["val_fraction"], "train": labelled,
                                     "val": list(exp.split["val"]), "folds": [train_and_val]})
        save_config(load_config(settings.config, overrides), layout.config)
    log.info(f"seed {seed}: training the initial model on {len(labelled)} labelled images in {run_dir}")
    train(settings.data, run_dir, resume=True, overrides=overrides)
    return run_dir


def _initial_labelled(exp: Experiment, seed: int) -> list[str]:
    path = exp.folder.initial_labelled(seed)
    if path.is_file():
        return json.loads(path.read_text())["labelled"]
    labelled = initial_ids(exp.split["pool"], exp.settings.initial, seed)
    write_json(path, {"seed": seed, "labelled": labelled})
    return labelled


def round_zero(exp: Experiment, strategy: str, seed: int) -> RoundState:
    """Round 0 of a chain: the seed's initial model (trained first by run_initial), the same for every strategy."""
    state = read_state(exp.folder, strategy, seed, 0)
    if state is not None:
        return state
    run_dir = exp.folder.initial_run(seed)
    if not RunLayout(run_dir).metrics.is_file():
        raise DataError(f"{run_dir}: the initial model of seed {seed} has not finished; run the experiment again")
    labelled = _initial_labelled(exp, seed)
    check_run_split(run_dir, labelled, exp.split["val"])
    state = RoundState(strategy, seed, 0, labelled, labelled, _relative(run_dir, exp.folder.root),
                       run_scores(run_dir))
    write_state(exp.folder, state)
    return state


# ------------------------------------------------------------------------------------------------- a chain
def run_chain(exp: Experiment, strategy: str, seed: int) -> list[RoundState]:
    """Rounds 1..R of one strategy and seed, each from the previous one's model; finished rounds are read back."""
    states = [round_zero(exp, strategy, seed)]
    for number in range(1, exp.settings.rounds + 1):
        state = read_state(exp.folder, strategy, seed, number)
        states.append(state or run_round(exp, states[-1], number))
    return states


def run_round(exp: Experiment, previous: RoundState, number: int) -> RoundState:
    """Select B images with the previous model (or read the selection of an interrupted attempt), label them (a
    view of DATA holding them), fine-tune the previous model on them and its own training images, score it;
    state.json last."""
    folder, strategy, seed = exp.folder, previous.strategy, previous.seed
    selected = _selection(exp, previous, number)
    labelled = sorted([*previous.labelled, *selected])
    run_dir = folder.run(strategy, seed, number)
    if not RunLayout(run_dir).metrics.is_file():
        view = write_view(folder.new_labels(strategy, seed, number), [exp.samples[i] for i in selected])
        previous_run = folder.root / previous.run
        log.info(f"{strategy}, seed {seed}, round {number}: fine-tuning {previous_run} on {len(labelled)} labels")
        fine_tune(previous_run, view, run_dir, exp.settings.run_overrides(seed))
    check_run_split(run_dir, labelled, exp.split["val"])
    state = RoundState(strategy, seed, number, labelled, selected, _relative(run_dir, folder.root),
                       run_scores(run_dir))
    write_state(folder, state)
    return state


def _selection(exp: Experiment, previous: RoundState, number: int) -> list[str]:
    """The round's B images: read back when an interrupted attempt chose them, else chosen now and written."""
    folder, strategy, seed = exp.folder, previous.strategy, previous.seed
    path = folder.selected(strategy, seed, number)
    if path.is_file():
        return json.loads(path.read_text())["selected"]
    taken = set(previous.labelled) | set(exp.split["val"])
    pool = [i for i in exp.split["pool"] if i not in taken]
    selected = select_images(folder.root / previous.run, [exp.samples[i] for i in pool], strategy,
                             exp.settings.per_round, seed * 1000 + number)
    if len(selected) != exp.settings.per_round or len(set(selected)) != len(selected) or set(selected) & taken:
        raise DataError(f"{path}: the {strategy} selection gave {len(selected)} images, not "
                        f"{exp.settings.per_round} new ones from the unlabelled pool")
    write_json(path, {"strategy": strategy, "seed": seed, "round": number, "selected": selected})
    return selected


def select_images(run_dir: Path, pool: list[Sample], strategy: str, n: int, seed: int) -> list[str]:
    """The ids of the n images of `pool` that `strategy` ranks first with the run's model, best first."""
    from tatl.experiments.ranking import rank_pool

    ranked = rank_pool(run_dir, {s.image_id: s.image_path for s in pool}, strategy, n=n, seed=seed)
    return [score.image_id for score in ranked]


def fine_tune(previous_run: Path, new_data: Path, out: Path, overrides: list[str]) -> None:
    """`out` = the previous run fine-tuned on its own training images plus `new_data` (with_original: every label
    so far), validated on its validation split; a fine-tuning that was interrupted continues (its config.yaml is
    written: tatl finetune --resume)."""
    from tatl.pipeline.finetune import finetune

    resume = RunLayout(out).config.is_file()
    if resume:
        log.info(f"{out}: continuing the fine-tuning of an interrupted attempt")
    finetune(previous_run, new_data, out, with_original=True, overrides=overrides, resume=resume)


# ------------------------------------------------------------------------------------------------- helpers
def write_view(view: Path, samples: list[Sample]) -> Path:
    """A dataset folder of symlinks to the samples' image and masks, in the ISIC 2018 layout; made beside `view`
    and renamed into place, so it is whole or absent."""
    building = view.with_name(f".{view.name}.{os.getpid()}.building")
    shutil.rmtree(building, ignore_errors=True)
    for sample in samples:
        links = [(building / INPUT_DIR / sample.image_path.name, sample.image_path)]
        links += [(building / ATTRIBUTE_DIR / path.name, path) for path in sample.attribute_mask_paths.values()]
        if sample.lesion_mask_path is not None:
            links.append((building / LESION_DIR / sample.lesion_mask_path.name, sample.lesion_mask_path))
        for link, target in links:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target.resolve())
    if view.exists():
        shutil.rmtree(view)  # a view of an interrupted attempt: links only
    building.rename(view)
    return view


def check_run_split(run_dir: Path, labelled: list[str], val: list[str]) -> None:
    """The run trained on exactly the labelled images and validated on exactly the fixed validation split."""
    from tatl.data.splits import read_splits

    splits = read_splits(RunLayout(run_dir).splits)
    if set(splits["val"]) != set(val):
        raise DataError(f"{RunLayout(run_dir).splits}: its validation split is not the experiment's fixed one")
    if set(splits["train"]) != set(labelled):
        extra = sorted(set(splits["train"]) - set(labelled))
        example = f" (e.g. {extra[0]} was never labelled)" if extra else ""
        raise DataError(f"{RunLayout(run_dir).splits}: trained on {len(splits['train'])} images, not the "
                        f"{len(labelled)} labelled so far{example}")


def run_scores(run_dir: Path) -> dict[str, dict[str, float]]:
    """Attribute and macro_average -> {jaccard, dice} on the validation split: the run's reported variant (1,2,3
    when trained, else the last) and its U+Link ensemble (the one shape when it has one)."""
    layout = RunLayout(run_dir)
    config = load_config(layout.config)
    metrics = json.loads(layout.metrics.read_text())
    scores = metrics.get(f"variant {default_variant(config.pipeline.variants)}", {})
    scores = scores.get(reported_model(config.model.shapes))
    if not scores:
        raise DataError(f"{layout.metrics}: no validation scores of its variant to put on the curve")
    return {name: {"jaccard": values["jaccard"], "dice": values["dice"]} for name, values in scores.items()
            if name != "micro_average"}


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()
