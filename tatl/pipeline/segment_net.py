"""A Segment-Net trained by another run: `tatl run DATA --out RUN --segment-net RUN1` (pipeline.segment_net).

ISIC 2018 Task 2 ships its attribute masks without lesion masks, and the paper trains its Segment-Net on Task 1
data. A run given pipeline.segment_net = RUN1 trains no Stage 1: it crops its images (training, validation and
prediction) with RUN1's finished one. Before anything is written RUN1 must be a finished run (config.yaml,
metrics.json) with a trained Stage 1 (stage1/<shape>/done.json). The run takes RUN1's Stage-1 settings,
data.stage1_size and model.stage1_shape (only Stage 1 reads them; a change is logged), and refuses another
model.encoder_name: one encoder name builds every network of a run, Stages 2-3 included.

The network is copied into RUN/stage1/<shape>/ (hard links where the file system allows: RUN keeps working, and
resumes, after RUN1 is deleted). Its done.json keeps RUN1's record of the data the network saw (data_folder,
data_fingerprint) and adds "segment_net": its origin, {"run": RUN1, "data": the DATA RUN1 was trained on,
"data_folder", "data_fingerprint", "scores": RUN1's Stage-1 validation scores (ISIC Task 1)}; a network RUN1 had
itself copied keeps the origin of the run that trained it. The run's metrics.json repeats the origin under
"stage1", and its summary and report show it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tatl.config import Config, load_config
from tatl.errors import CheckpointError, ConfigError, DataError
from tatl.layout import BEST, DONE, RunLayout, variant_stages
from tatl.pipeline import reuse

log = logging.getLogger(__name__)

TAKEN = ("data.stage1_size", "model.stage1_shape")  # Stage-1 settings a run takes from RUN1
SCORES = ("jaccard", "threshold_jaccard", "dice")  # ISIC 2018 Task 1


def uses_segment_net(config: Config) -> bool:
    """pipeline.segment_net is set and a variant of this run crops with Stage 1."""
    p = config.pipeline
    return bool(p.segment_net) and p.stages != "1" and any(1 in variant_stages(v) for v in p.variants)


def prepare(config: Config, run_dir: Path) -> None:
    """Check RUN1 and take its Stage-1 settings into `config`, before anything is written; nothing to check when
    this run already holds the copied network (a resume: RUN1 may be gone, and the run's config keeps the settings)."""
    p = config.pipeline
    if not p.segment_net:
        return
    p.segment_net = str(Path(p.segment_net).expanduser().resolve())  # the config records where RUN1 was
    if not uses_segment_net(config):
        log.warning(f"pipeline.segment_net: no variant of this run ({' '.join(p.variants)}) uses Stage 1; the "
                    f"Segment-Net of {p.segment_net} is not used")
    elif not (RunLayout(run_dir).stage1(config.model.stage1_shape) / DONE).is_file():
        _take_settings(config, _open_source(Path(p.segment_net))[1])


def copy_into(config: Config, run: RunLayout) -> Path:
    """RUN1's Segment-Net copied into RUN/stage1/<shape> (once), its origin recorded in done.json; the folder."""
    destination = run.stage1(config.model.stage1_shape)
    if (destination / DONE).is_file():
        return destination
    source, _, group, done = _open_source(Path(config.pipeline.segment_net))
    reuse.copy_group(group, destination, done={**done, "segment_net": _origin(source, done)})
    log.info(f"stage 1: Segment-Net copied from {group} into {destination}")
    return destination


def source_folder(config: Config) -> Path:
    """RUN1's stage1/<shape> folder, which `copy_into` copies (checked: RUN1 must be a finished run with a trained
    Stage 1)."""
    return _open_source(Path(config.pipeline.segment_net))[2]


def recorded_origin(run: RunLayout, shape: str) -> dict:
    """The origin of the Segment-Net copied into RUN/stage1/<shape> (its done.json's "segment_net")."""
    return _read_json(run.stage1(shape) / DONE).get("segment_net", {})


def describe(origin: dict) -> str:
    """One sentence for summary.md and the report: where the Segment-Net comes from and how it scored there."""
    data = origin.get("data")
    data = ", ".join(data) if isinstance(data, list) else data or "data not recorded"
    fingerprint = str(origin.get("data_fingerprint") or "none")[:12]
    scores = origin.get("scores") or {}
    scored = (f"Jaccard {scores['jaccard']:.3f}, thresholded Jaccard {scores['threshold_jaccard']:.3f}, Dice "
              f"{scores['dice']:.3f} on its validation split" if all(k in scores for k in SCORES) else "no scores")
    return (f"Segment-Net trained by the run {origin.get('run')} on {data} (data fingerprint {fingerprint}; "
            f"ISIC Task 1 there: {scored}), copied into this run.")


# ------------------------------------------------------------------------------------------------- helpers
def _open_source(path: Path) -> tuple[RunLayout, Config, Path, dict]:
    """(RUN1, its config, its stage1/<shape> folder, that folder's done.json); a one-line error naming the path
    when RUN1 is no finished run with a trained Stage 1."""
    run = RunLayout(path)
    if not run.root.is_dir():
        raise DataError(f"--segment-net {path}: no such run folder")
    if not run.config.is_file():
        raise DataError(f"--segment-net {path}: not a run folder of `tatl run` (no {run.config.name})")
    config = load_config(run.config)
    group = run.stage1(config.model.stage1_shape)
    if not (group / DONE).is_file():
        raise DataError(f"--segment-net {path}: no trained Stage 1 ({group / DONE} missing); train one with "
                        f"`tatl run LESION_DATA --out {path} --stages 1`")
    if not run.metrics.is_file():
        raise DataError(f"--segment-net {path}: not a finished run (no {run.metrics.name}); finish it first "
                        "(tatl run ... --resume)")
    if not (group / BEST).is_file():
        raise CheckpointError(f"{group / BEST}: the Segment-Net's checkpoint is missing")
    return run, config, group, _read_json(group / DONE)


def _take_settings(config: Config, source: Config) -> None:
    """RUN1's Stage-1 settings (TAKEN) into `config`; a ConfigError for another encoder."""
    path = config.pipeline.segment_net
    theirs, mine = source.model.encoder_name, config.model.encoder_name
    if theirs != mine:
        raise ConfigError(f"model.encoder_name: the Segment-Net of {path} is a {theirs} network, this run builds "
                          f"{mine}; set model.encoder_name={theirs} or give a Segment-Net trained with {mine}")
    for key in TAKEN:
        section, name = key.split(".")
        theirs, mine = getattr(getattr(source, section), name), getattr(getattr(config, section), name)
        if theirs != mine:
            log.info(f"{key}: {theirs!r}, as the Segment-Net of {path} was trained (not {mine!r})")
            setattr(getattr(config, section), name, theirs)


def _origin(run: RunLayout, done: dict) -> dict:
    if isinstance(done.get("segment_net"), dict):  # RUN1 copied it too: the run that trained it
        return done["segment_net"]
    scores = _read_json(run.metrics).get("stage1") or {}
    data = _read_json(run.data_record).get("data") if run.data_record.is_file() else None
    return {"run": str(run.root.resolve()), "data": data, "data_folder": done.get("data_folder"),
            "data_fingerprint": done.get("data_fingerprint"),
            "scores": {key: scores[key] for key in SCORES if key in scores}}


def _read_json(path: Path) -> dict:
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    return values if isinstance(values, dict) else {}
