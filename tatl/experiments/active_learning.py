"""Simulated active learning (`tatl active-learning`): the plan, the folder, the fixed split and each round's state.

A simulated annotator labels images with DATA's own masks. The experiment folder DIR holds:

    DIR/active-learning.json            the settings (DATA, N0, B, R, strategies, seeds, config, --set)
    DIR/split.json                      the fixed validation split and the pool (every other image), made once
    DIR/initial/seed-<s>/labelled.json  the N0 images labelled first, drawn with seed s
    DIR/initial/seed-<s>/run/           the model trained on them (a `tatl run` folder): round 0 of every strategy
    DIR/<strategy>/seed-<s>/round-<r>/  one round: selected.json (the B images chosen, written before training),
                                        new-labels/ (those images and their masks: symlinks into DATA in the ISIC
                                        2018 layout), run/ (round r-1's model fine-tuned on them and on its own
                                        training images: tatl finetune --with-original), state.json (written last)
    DIR/curves.csv, summary.json, report.md, report.html, report/learning-curve.png   the results
    DIR/jobs.json, logs/<job>.log       with --workers or --ray: each job's status and output

The validation split is stratified as tatl.data.splits does it, seeded by train.seed of the base config, and never
offered for selection. The N0 initial images depend on the seed alone, so every strategy starts at the same point
of its curve. A round is finished when its state.json exists: a killed experiment resumes at the first round
without one, with the images already selected for it (selected.json), so no round is repeated or lost.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tatl.errors import ConfigError, DataError
from tatl.inference.selection import RANDOM
from tatl.inference.selection import STRATEGIES as SELECTION_STRATEGIES
from tatl.io import write_json
from tatl.layout import ReportFiles

# tatl.inference.selection's strategies, random (the baseline) first: the order of the report and the chart
STRATEGIES = (RANDOM, *(s for s in SELECTION_STRATEGIES if s != RANDOM))
# Settings a resumed experiment cannot change: they define it. Rounds, strategies and seeds may grow.
FIXED = ("data", "initial", "per_round", "config", "overrides")


@dataclass(frozen=True)
class Settings:
    data: str  # DATA, absolute
    initial: int  # N0: images labelled before the first round
    per_round: int  # B: images selected and labelled in each round
    rounds: int  # R: rounds after the initial model
    strategies: tuple[str, ...]  # selection strategies compared
    seeds: tuple[int, ...]  # one chain of rounds per strategy and seed; the seed draws the initial images
    config: str | None  # base config file or preset of every run (None: the defaults)
    overrides: tuple[str, ...]  # --set of every run; train.seed is set to the chain's seed after them

    def run_overrides(self, seed: int) -> list[str]:
        return [*self.overrides, f"train.seed={seed}"]

    def recorded(self) -> dict[str, Any]:
        """What DIR/active-learning.json holds (`from_record` reads it back)."""
        return {**asdict(self), "strategies": list(self.strategies), "seeds": list(self.seeds),
                "overrides": list(self.overrides)}

    @classmethod
    def from_record(cls, recorded: dict[str, Any]) -> Settings:
        """The settings DIR/active-learning.json records; KeyError or TypeError when it is not such a record."""
        return cls(**{**recorded, "strategies": tuple(recorded["strategies"]), "seeds": tuple(recorded["seeds"]),
                      "overrides": tuple(recorded["overrides"])})


@dataclass(frozen=True)
class ExperimentDir(ReportFiles):
    """Every path inside DIR (its report's from layout.ReportFiles). Nothing here touches the disk."""

    root: Path

    @property
    def settings(self) -> Path:
        return self.root / "active-learning.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    def initial(self, seed: int) -> Path:
        return self.root / "initial" / f"seed-{seed}"

    def initial_labelled(self, seed: int) -> Path:
        return self.initial(seed) / "labelled.json"

    def initial_run(self, seed: int) -> Path:
        return self.initial(seed) / "run"

    def chain(self, strategy: str, seed: int) -> Path:
        return self.root / strategy / f"seed-{seed}"

    def round(self, strategy: str, seed: int, number: int) -> Path:
        return self.chain(strategy, seed) / f"round-{number}"

    def state(self, strategy: str, seed: int, number: int) -> Path:
        return self.round(strategy, seed, number) / "state.json"

    def selected(self, strategy: str, seed: int, number: int) -> Path:
        return self.round(strategy, seed, number) / "selected.json"

    def new_labels(self, strategy: str, seed: int, number: int) -> Path:
        return self.round(strategy, seed, number) / "new-labels"

    def run(self, strategy: str, seed: int, number: int) -> Path:
        """The model of a round: round 0 is the seed's initial run, shared by the strategies."""
        return self.initial_run(seed) if number == 0 else self.round(strategy, seed, number) / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs.json"

    @property
    def curves(self) -> Path:
        return self.root / "curves.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


# ------------------------------------------------------------------------------------------------- settings
def check_settings(settings: Settings) -> None:
    """The numbers and names, before any file is read: one-line ConfigErrors naming the option."""
    for option, value, least in (("--initial", settings.initial, 1), ("--per-round", settings.per_round, 1),
                                 ("--rounds", settings.rounds, 0)):
        if value < least:
            raise ConfigError(f"{option} {value}: use {least} or more")
    for option, values in (("--strategies", settings.strategies), ("--seeds", settings.seeds)):
        if not values:
            raise ConfigError(f"{option}: name at least one")
        if len(set(values)) != len(values):
            raise ConfigError(f"{option}: listed twice: {' '.join(map(str, values))}")
    unknown = [s for s in settings.strategies if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"--strategies: unknown strategy {unknown[0]!r} (known: {', '.join(STRATEGIES)})")
    if not Path(settings.data).is_dir():
        raise DataError(f"{settings.data}: " + ("is a file, not a dataset folder" if Path(settings.data).exists()
                                                else "dataset folder does not exist"))


def check_same_experiment(settings: Settings, folder: ExperimentDir) -> None:
    """A DIR that holds an experiment continues it only with the settings that define it (FIXED)."""
    if not folder.settings.is_file():
        return
    try:
        saved = json.loads(folder.settings.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{folder.settings}: cannot read ({error}); use another --out") from None
    now = settings.recorded()
    for key in FIXED:
        if saved.get(key) != now[key]:
            raise ConfigError(f"{folder.settings}: {key} is {saved.get(key)!r} there, not {now[key]!r}: DIR holds "
                              "another experiment; use another --out (or the same settings to continue it)")


def record_settings(settings: Settings, folder: ExperimentDir) -> None:
    write_json(folder.settings, settings.recorded())


# ------------------------------------------------------------------------------------------------- the split
def fixed_split(presence: dict[str, frozenset[str]], val_fraction: float, seed: int) -> dict[str, Any]:
    """{"seed", "val_fraction", "val", "pool"}: tatl.data.splits' stratified validation split; the pool is every
    other image, the only ones ever labelled."""
    from tatl.data.splits import make_splits

    splits = make_splits(presence, val_fraction, n_folds=1, seed=seed)
    return {"seed": seed, "val_fraction": val_fraction, "val": splits["val"], "pool": splits["train"]}


def read_or_make_split(folder: ExperimentDir, presence: dict[str, frozenset[str]], val_fraction: float,
                       seed: int) -> dict[str, Any]:
    """DIR/split.json when it exists (a resumed experiment keeps it; its images must still be in DATA), else a new
    split, not written yet (write_split, once every check has passed)."""
    if not folder.split.is_file():
        return fixed_split(presence, val_fraction, seed)
    try:
        split = json.loads(folder.split.read_text())
        ids = [*split["val"], *split["pool"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{folder.split}: not a split written by tatl active-learning ({error})") from None
    missing = [i for i in ids if i not in presence]
    if missing:
        raise DataError(f"{folder.split}: image {missing[0]} is no longer in DATA ({len(missing)} missing)")
    return split


def write_split(folder: ExperimentDir, split: dict[str, Any]) -> None:
    if not folder.split.is_file():
        write_json(folder.split, split, indent=1)


def check_pool_size(settings: Settings, split: dict[str, Any]) -> None:
    """N0 + R x B labels must fit in the pool (the images outside the validation split)."""
    needed = settings.initial + settings.rounds * settings.per_round
    if needed > len(split["pool"]):
        raise ConfigError(f"--initial {settings.initial} + --rounds {settings.rounds} x --per-round "
                          f"{settings.per_round} = {needed} labels, but DATA has {len(split['pool'])} images outside "
                          f"its validation split of {len(split['val'])}: use fewer or smaller rounds")


def initial_ids(pool: list[str], n: int, seed: int) -> list[str]:
    """The N0 images labelled first: a uniform draw from the pool, the same for every strategy of a seed."""
    return sorted(random.Random(f"active-learning-initial-{seed}").sample(sorted(pool), n))


# ------------------------------------------------------------------------------------------------- round states
@dataclass
class RoundState:
    """A finished round, as DIR/<strategy>/seed-<s>/round-<r>/state.json records it."""

    strategy: str
    seed: int
    round: int
    labelled: list[str]  # every image labelled so far, sorted
    selected: list[str]  # the images this round added, best first (round 0: the initial ones)
    run: str  # the round's model, relative to DIR
    scores: dict[str, dict[str, float]]  # attribute and macro_average -> {jaccard, dice} on the validation split

    @property
    def labels(self) -> int:
        return len(self.labelled)


def write_state(folder: ExperimentDir, state: RoundState) -> None:
    write_json(folder.state(state.strategy, state.seed, state.round), asdict(state))


def read_state(folder: ExperimentDir, strategy: str, seed: int, number: int) -> RoundState | None:
    """The round's state, None when it has not finished."""
    path = folder.state(strategy, seed, number)
    if not path.is_file():
        return None
    try:
        return RoundState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise DataError(f"{path}: not a round state of tatl active-learning ({error}); delete the round's folder "
                        "to redo it") from None


def finished_states(folder: ExperimentDir, settings: Settings) -> list[RoundState]:
    """Every finished round of the settings' strategies, seeds and rounds, in that order."""
    states = []
    for strategy in settings.strategies:
        for seed in settings.seeds:
            for number in range(settings.rounds + 1):
                state = read_state(folder, strategy, seed, number)
                if state is None:
                    break
                states.append(state)
    return states
