"""One group of networks, the unit every stage trains: heads sharing one encoder, built, started as the run's plan
says (tatl.pipeline.plan: its own finished weights, a finished network copied, given weights, or fresh) and trained
by tatl.training.engine.fit, or reloaded when finished. Also the datasets a group reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from tatl import distributed
from tatl.checkpoints import load_checkpoint, save_checkpoint
from tatl.config import Config, to_dict
from tatl.constants import LESION
from tatl.data.crops import Box
from tatl.data.dataset import SegmentationDataset, load_images, load_masks
from tatl.data.isic import Sample
from tatl.data.sampling import rare_weights
from tatl.io import write_json
from tatl.layout import BEST, DONE
from tatl.models.multihead import MultiHeadSegmenter
from tatl.models.networks import build_model
from tatl.models.weights import repeat_output_channel, transfer_weights
from tatl.pipeline import parent, reuse, segment_net
from tatl.pipeline.context import TrainingContext
from tatl.pipeline.plan import BY_PARENT, BY_SEGMENT_NET, COPY, FRESH, OWN, WEIGHTS, GroupStart
from tatl.training.engine import Objective, fit
from tatl.training.feature_cache import cache_features
from tatl.training.losses import build_loss

log = logging.getLogger(__name__)


def stage_dataset(ctx: TrainingContext, samples: list[Sample], targets: list[str], size: int,
                  boxes: dict[str, Box] | None, augment: bool, strong: bool = False) -> SegmentationDataset:
    """The images (cropped to `boxes` when given) and `targets` masks of `samples` at `size`, decoded once into
    the cache."""
    images = load_images(samples, size, boxes, ctx.cache_dir)
    masks = load_masks(samples, targets, size, boxes, ctx.report.sizes, ctx.cache_dir,
                       ctx.config.data.binarize_threshold)
    dataset = training_set(images, masks, ctx.config, targets, augment, strong)
    if samples is ctx.train and LESION not in targets and ctx.config.train.sampling == "rare":  # Stage 2 and 3
        dataset.weights = rare_weights([s.image_id for s in samples], ctx.report.presence)
    return dataset


def training_set(images: np.ndarray, masks: np.ndarray, config: Config, targets: list[str], augment: bool,
                 strong: bool = False) -> SegmentationDataset:
    """What a stage trains on: `augment` with train.augment's flips and jitter; `strong` (init augmentation) with
    pipeline.augmentation_copies copies of every image through the strong transform (tatl.evaluation.bound too)."""
    copies = config.pipeline.augmentation_copies if strong else 1
    return SegmentationDataset(images, masks, augment=augment and config.train.augment, seed=config.train.seed,
                               copies=copies, strong=strong, targets=list(targets))


@dataclass(frozen=True)
class GroupSpec:
    """One group of heads sharing an encoder, as a stage asks for it."""

    shape: str  # the decoder: "unet" or "linknet"
    heads: dict[str, Path]  # head name -> its folder (best.pt, last.pt, log.csv); a one-head group: the group's folder
    train_encoder: bool  # False: the encoder stays as it starts (TATL-FE's Stage 3)
    label: str  # how the log names the group
    monitor: str | None = None  # replaces train.monitor (Stage 1: ISIC Task 1's thresholded Jaccard)
    epochs: int | None = None  # replaces train.epochs (Stage 2: train.stage2_epochs)
    # A joint Stage 3 (one head, JOINT, an output channel per attribute): attribute -> the folder its channel is
    # written to as a network of its own (best.pt, done.json) once the group is done. Empty: one target per head.
    channel_dirs: dict[str, Path] = field(default_factory=dict)


Datasets = tuple[SegmentationDataset, SegmentationDataset]  # (training set, the set that picks the best epoch)


def train_group(ctx: TrainingContext, spec: GroupSpec, start: GroupStart, data: Datasets | None) -> MultiHeadSegmenter:
    """Build the group, load its planned start (tatl.pipeline.plan), and train it on `data`; a finished group (its
    own, or one copied into its folder) is reloaded instead, and needs no data."""
    if start.kind == COPY:
        _copy(ctx, start, spec.label)
    group = _built(ctx, spec, start)
    if start.finished:
        return _reloaded(ctx, group, spec, start)
    if data is None:
        raise ValueError(f"{spec.label}: {start.folder} is not finished, and no data was given to train it on")
    return _fitted(ctx, group, spec, start, data)


def _built(ctx: TrainingContext, spec: GroupSpec, start: GroupStart) -> MultiHeadSegmenter:
    """The group's network, built (from the start's encoder weights when FRESH) and started from the start's state
    and head weights (WEIGHTS); a finished group's weights are all loaded over it."""
    cfg = ctx.config
    torch.manual_seed(cfg.train.seed)  # the same initial weights in every variant that builds this network
    classes = len(spec.channel_dirs) or 1
    model = build_model(spec.shape, cfg.model.encoder_name, start.encoder_weights if start.kind == FRESH else None,
                        classes=classes)
    if start.kind == WEIGHTS and start.state is not None:
        state = load_checkpoint(start.state)["model"]
        if spec.channel_dirs:  # a joint network: every attribute's channel starts as Stage 2's union channel
            state = repeat_output_channel(state, classes)
        reinitialised = transfer_weights(state, model)
        if reinitialised:
            log.info(f"{spec.label}: re-initialised {', '.join(reinitialised)} (shape differs from the source)")
    if spec.channel_dirs:
        return MultiHeadSegmenter.joint(model, list(spec.channel_dirs))
    group = MultiHeadSegmenter.from_model(model, list(spec.heads))
    if start.kind == WEIGHTS and start.head_starts:
        _load_head_starts(group, start.head_starts, spec.train_encoder)
        log.info(f"{spec.label}: starts from {', '.join(str(p.parent) for p in start.head_starts.values())}")
    return group


def _load_head_starts(group: MultiHeadSegmenter, head_starts: dict[str, Path], train_encoder: bool) -> None:
    """Each head's best.pt loaded strictly; with a frozen encoder its decoder only (the encoder stays the one the
    group was started with: TATL-FE's Stage 2)."""
    for name, source in head_starts.items():
        state = load_checkpoint(source)["model"]
        if not train_encoder:
            own = {k: v for k, v in group.head_state(name).items() if k.startswith("encoder.")}
            state = {**{k: v for k, v in state.items() if not k.startswith("encoder.")}, **own}
        group.load_head_state(name, state, source)


def _reloaded(ctx: TrainingContext, group: MultiHeadSegmenter, spec: GroupSpec,
              start: GroupStart) -> MultiHeadSegmenter:
    """A finished group's best.pt of every head, in the memory layout fit leaves a trained group in (a resumed run
    scores the same bits)."""
    for name, head_dir in spec.heads.items():
        best = head_dir / BEST
        group.load_head_state(name, load_checkpoint(best)["model"], best)
    if ctx.config.train.channels_last:
        group.to(memory_format=torch.channels_last)
    if start.kind == OWN:  # a copy has said where it came from
        log.info(f"{spec.label}: already trained, reusing {start.folder}")
    return group


def _fitted(ctx: TrainingContext, group: MultiHeadSegmenter, spec: GroupSpec, start: GroupStart,
            data: Datasets) -> MultiHeadSegmenter:
    """The group trained by engine.fit (frozen encoder: its features computed once when pipeline.feature_cache);
    done.json written last."""
    cfg = ctx.config
    train_cfg = replace(cfg.train, monitor=spec.monitor or cfg.train.monitor, epochs=spec.epochs or cfg.train.epochs)
    train_set, val_set = data
    started = time.perf_counter()
    if cfg.pipeline.feature_cache and not spec.train_encoder:  # Stage 3, frozen encoder: its features once
        train_set, val_set = (cache_features(group.encoder, dataset, ctx.device, cfg.train.batch_size,
                                             cfg.train.channels_last) for dataset in (train_set, val_set))
        log.info(f"{spec.label}: encoder features cached in {time.perf_counter() - started:.0f} s")
    progress = fit(group, train_set, val_set, train_cfg, spec.heads, spec.train_encoder, spec.label,
                   to_dict(cfg), cfg.pipeline.threshold, Objective(build_loss(cfg.train.loss)))
    best = {n: {"best_epoch": p.best_epoch + 1, "best_score": p.best_score, "epochs": len(p.history)}
            for n, p in progress.items()}
    if spec.channel_dirs:
        write_channel_networks(group, spec, progress, to_dict(cfg), ctx.data_identity)
    write_json(start.folder / DONE, {"heads": best, **ctx.data_identity})  # tatl.pipeline.reuse checks it
    summary = ", ".join(f"{n} {train_cfg.monitor} {p.best_score:.3f} @ epoch {p.best_epoch + 1}"
                        for n, p in progress.items())
    log.info(f"{spec.label}: done in {time.perf_counter() - started:.0f} s; best {summary}")
    return group


def write_channel_networks(group: MultiHeadSegmenter, spec: GroupSpec, progress: dict, config_dict: dict,
                           data_identity: dict) -> None:
    """Each channel of a trained joint group (its best epoch, loaded) as a one-attribute network in its own folder:
    best.pt (the single-network format, the last convolution cut to the channel) and done.json, as TATL-NF writes
    them, so prediction, rescoring and fine-tuning read a joint run as a trainable-encoder one (rank 0 writes)."""
    if not distributed.is_main_process():
        return
    (joint, joint_dir), = spec.heads.items()
    history = progress[joint].history
    best = next(row for row in history if row["epoch"] == progress[joint].best_epoch)
    for target, folder in spec.channel_dirs.items():
        state = {"model": group.head_state(target), "epoch": progress[joint].best_epoch, "config": config_dict,
                 "best_epoch": progress[joint].best_epoch, "best_score": best.get(f"jaccard_{target}"),
                 "label": f"{spec.label}/{target}", "channel_of": str(joint_dir / BEST)}
        save_checkpoint(state, folder / BEST)
        write_json(folder / DONE, {"heads": {target: {"best_epoch": progress[joint].best_epoch + 1,
                                                      "epochs": len(history)}},
                                   "channel_of": str(joint_dir), **data_identity})


def copied_heads(ctx: TrainingContext, spec: GroupSpec, starts: list[GroupStart]) -> MultiHeadSegmenter:
    """One-head groups copied unchanged (frozen-encoder Stage-3 heads of the parent run, pipeline.init_copied), each
    into its folder, and loaded into one network (every weight of each head's best.pt, its encoder too: the parent's
    Stage 2, copied with them)."""
    for start in starts:
        if start.kind == COPY:
            _copy(ctx, start, spec.label)
    model = build_model(spec.shape, ctx.config.model.encoder_name, None)
    group = MultiHeadSegmenter.from_model(model, list(spec.heads))
    for name, head_dir in spec.heads.items():
        best = head_dir / BEST
        group.load_head_state(name, load_checkpoint(best)["model"], best)
    log.info(f"{spec.label}: {', '.join(spec.heads)} loaded unchanged from {', '.join(map(str, spec.heads.values()))}")
    return group


def _copy(ctx: TrainingContext, start: GroupStart, label: str) -> None:
    """The finished network the plan names copied into the group's folder (once: a copy's done.json is written
    last), on rank 0 first."""
    cfg, layout, folder = ctx.config, ctx.layout, start.folder
    if start.copied_by == BY_SEGMENT_NET:
        distributed.main_process_first(lambda: segment_net.copy_into(cfg, layout))
    elif start.copied_by == BY_PARENT:
        distributed.main_process_first(lambda: parent.copy_from_parent(cfg, layout, folder))
    else:  # BY_REUSE: another run trained it on the same data with the same settings and split
        distributed.main_process_first(lambda: (folder / DONE).is_file() or reuse.copy_group(start.source, folder))
    log.info(f"{label}: {start.describe()}")
