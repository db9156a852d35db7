"""One run of the TATL pipeline in one run folder, up to RUN/metrics.json: what `tatl run` and `tatl.train` do.

The order of the checks is the promise that a mistake costs nothing: the config (a typo in a key or value) is
resolved first and creates no folder; then the model settings (an unknown encoder, an unusable weights file), the
data path(s) and the Segment-Net of another run (pipeline.segment_net); only then is the run folder created (or,
with resume, locked) and RUN/log.txt opened, and the data checked and split. Under torchrun every rank runs this
function; rank 0 alone writes, and the process group is left on success only (after an error the other ranks may
sit in a collective, and leaving would hang them).

summary.md and the report are written by a higher layer (tatl.reporting, through tatl.api): `finish` is called on
rank 0 with the metrics, inside the run's log and before the process group is left, for what it writes.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tatl import distributed
from tatl.config import Config, apply_override, load_config, save_config, to_dict, validate
from tatl.data.images import pixel_limit
from tatl.errors import ConfigError, DataError
from tatl.folders import check_output_folder
from tatl.io import write_json
from tatl.layout import STAGES, RunLayout, stated_stages
from tatl.logs import log_to_file
from tatl.pipeline import segment_net
from tatl.pipeline.context import attributes_for_data, data_list
from tatl.pipeline.setup import (
    check_data_path,
    check_model_settings,
    check_resume_settings,
    prepare_context,
    prepare_run_dir,
)
from tatl.pipeline.stages import run_pipeline

log = logging.getLogger(__name__)

Finish = Callable[[dict, Config, Any], None]  # (metrics, resolved config, data folder read, or several) -> None


def train(data: str | Path | Sequence[str | Path], out: str | Path, config: str | Path | None = None, *,
          resume: bool = False, stages: str | None = None, variants: Sequence[str] | None = None,
          device: str | None = None, compile: bool = False, overrides: Sequence[str] | Mapping[str, Any] | None = None,
          segment_net: str | Path | None = None, finish: Finish | None = None) -> dict:
    """Train and score a run in `out` on `data` (a dataset folder, "synthetic", or several lesion dataset folders
    for the Segment-Net alone); return its metrics.

    config: a YAML file or preset name ("demo", "paper"); with resume, the run's own config.yaml is used instead.
    overrides: config values, as "section.key=value" strings (the CLI's --set) or a mapping {"section.key": value}.
    stages, variants, device, compile and segment_net set pipeline.stages ("1": the Segment-Net alone; default:
    the config's, which a resumed run keeps), pipeline.variants, train.device, train.compile and
    pipeline.segment_net (a finished run whose Segment-Net crops this run's images), after the overrides."""
    if stages is not None and stages not in STAGES:
        raise ConfigError(f"stages {stages!r}: use one of {', '.join(STAGES)}")
    given, out = data_list(data), Path(out)
    data = given[0] if len(given) == 1 else given
    settings = override_list(overrides, variants, device, compile, stages=stages, segment_net=segment_net)
    if resume and _nothing_written(out):  # no config.yaml either: nothing to continue
        # nnU-Net's --c: the same command line starts a run and continues it after a stop, so a long run can be
        # launched with --resume from the first time on
        log.info("%s: nothing to resume yet; starting a new run", out)
        resume = False
    resolved = resolved_config(data, out, config, resume, settings, stages)  # before the heavy work: a typo fails
    distributed.setup(resolved.train.device)  # under torchrun: join the other processes (a no-op otherwise)
    distributed.check_batch_size(resolved.train.batch_size)  # before anything is written
    with ExitStack() as run_log:  # RUN/log.txt, from the moment the folder is prepared
        metrics = _train_and_score(data, out, resolved, resume, finish, run_log)
    distributed.teardown()  # on success only: after an error the others may sit in a collective (NCCL would hang)
    return metrics


def override_strings(overrides: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    """Config values as "section.key=value" strings (what --set takes), from a mapping or a list of such strings."""
    if isinstance(overrides, Mapping):
        # JSON is YAML: the values are read back exactly (numbers, booleans, None, lists, strings).
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise ConfigError(f"overrides {overrides!r}: give a list of strings or a mapping, not one string")
    return list(overrides or [])


def override_list(overrides: Sequence[str] | Mapping[str, Any] | None, variants: Sequence[str] | None,
                  device: str | None, compile: bool, stages: str | None = None,
                  segment_net: str | Path | None = None) -> list[str]:
    """Every override as a "section.key=value" string, in the order the CLI has always applied them."""
    listed = override_strings(overrides)
    if variants:
        listed.append("pipeline.variants=[" + ", ".join(f'"{v}"' for v in variants) + "]")
    if device:
        listed.append(f"train.device={device}")
    if compile:
        listed.append("train.compile=true")
    if stages:
        listed.append(f"pipeline.stages={json.dumps(stages)}")
    if segment_net:  # where it is, not where it is from the working folder: a resume may start elsewhere
        listed.append(f"pipeline.segment_net={json.dumps(str(Path(segment_net).expanduser().resolve()))}")
    return listed


def resolved_config(data: Any, out: Path, config: str | Path | None, resume: bool, overrides: list[str],
                    stages: str | None = None) -> Config:
    """The run's config: defaults + config + overrides, or, when resuming, the saved one + overrides (checked).
    stages: as given (it is in `overrides` too); a run from before pipeline.stages was saved takes it as its own."""
    if not resume:
        return attributes_for_data(data, load_config(config, overrides))
    layout = RunLayout(out)
    check_output_folder(out, "run folder")
    if not layout.config.is_file():
        raise DataError(f"{out}: nothing to resume (no config.yaml); start a new run without --resume")
    saved = load_config(layout.config)
    saved.pipeline.stages = stated_stages(layout) or stages or saved.pipeline.stages  # a resume keeps the stages
    resolved = copy.deepcopy(saved)
    for override in overrides:
        apply_override(resolved, override)
    validate(resolved)
    if config:  # the command that started the run, given again: fine while it says what the run was started with
        _check_same_config(load_config(config, overrides), resolved, layout.config)
    check_resume_settings(saved, resolved, out, data)
    return resolved


def _nothing_written(out: Path) -> bool:
    """No folder, an empty one, or one with only the lock and log of a run stopped before its config was saved."""
    if not out.is_dir():
        return not out.exists()  # a file there: prepare_run_dir names the problem
    layout = RunLayout(out)
    return set(out.iterdir()) <= {layout.lock, layout.log}


def _check_same_config(given: Config, saved: Config, saved_path: Path) -> None:
    """--resume --config C: C (with the overrides) must give the run's own config, key for key."""
    before, after = to_dict(saved), to_dict(given)
    for section, values in before.items():
        for key, value in values.items():
            if after.get(section, {}).get(key) != value and key != "stages":  # a resume keeps its stages
                raise ConfigError(f"--resume: {section}.{key} is {value!r} in {saved_path}, not "
                                  f"{after[section][key]!r} as --config says; drop --config to continue the run "
                                  "(use --set to change a value)")


def _train_and_score(data: Any, run_dir: Path, config: Config, resume: bool, finish: Finish | None,
                     run_log: ExitStack) -> dict:
    layout = RunLayout(run_dir)
    check_model_settings(config)  # an unknown encoder or unusable weights file: named before any data is read
    check_data_path(data, config)
    segment_net.prepare(config, run_dir)  # another run's Segment-Net: checked, its Stage-1 settings taken
    stage1_only = config.pipeline.stages == "1"

    def prepare():
        if distributed.is_main_process():  # the folder, its lock and config; the data generated or converted
            prepare_run_dir(run_dir, resume=resume)
            run_log.enter_context(log_to_file(layout.log))  # appends: a resumed run's log goes on
            log.debug("%s run in %s on %s", "resumed" if resume else "new", run_dir, data)
            save_config(config, layout.config)
        return prepare_context(data, run_dir, config)  # the other ranks read rank 0's split

    try:
        with pixel_limit(config.data.max_image_pixels):  # this run's reads only: Pillow's limit is process-wide
            ctx = distributed.main_process_first(prepare)
            if not stage1_only and not ctx.train:
                raise DataError(f"{data}: no training images left after the split")
            metrics = run_pipeline(ctx)
    except Exception as error:  # the console shows it (tatl.cli); the log file keeps why the run stopped
        log.debug("run stopped: %s: %s", type(error).__name__, error)
        raise
    if distributed.is_main_process():
        write_json(layout.metrics, metrics)
        if finish is not None:
            finish(metrics, ctx.config, ctx.data_roots if len(ctx.data_roots) > 1 else ctx.data_root)
    return metrics
