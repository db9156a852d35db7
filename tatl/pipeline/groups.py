"""One group of networks, the unit every stage trains: heads sharing one encoder, built, started from the given
weights and trained by tatl.training.engine.fit; reloaded when its done.json says it finished, or copied from
another run that trained it with the same settings (pipeline.reuse_stages_from). Also the datasets a group reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tatl import distributed
from tatl.checkpoints import load_checkpoint
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
from tatl.models.weights import transfer_weights
from tatl.pipeline import parent, reuse
from tatl.pipeline.context import RunContext
from tatl.training.engine import Objective, fit
from tatl.training.feature_cache import cache_features
from tatl.training.losses import build_loss

log = logging.getLogger(__name__)


def stage_dataset(ctx: RunContext, samples: list[Sample], targets: list[str], size: int,
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


def train_group(ctx: RunContext, shape: str, start_state: dict | None, names: list[str], train_set, val_set,
                 group_dir: Path, train_encoder: bool, label: str, head_dirs: dict[str, Path] | None = None,
                 encoder_weights: str | None = "configured", monitor: str | None = None) -> MultiHeadSegmenter:
    """Build, initialise and train (or, if already done, reload) one group of heads sharing an encoder; `monitor`
    replaces train.monitor (Stage 1's thresholded Jaccard). A run with a parent (pipeline.init_from) starts every
    head from the parent's, or copies the group from it (pipeline.init_copied; tatl.pipeline.parent)."""
    cfg = ctx.config
    train_cfg = replace(cfg.train, monitor=monitor) if monitor else cfg.train
    torch.manual_seed(cfg.train.seed)  # the same initial weights in every variant that builds this network
    weights = cfg.model.encoder_weights if encoder_weights == "configured" else encoder_weights
    if cfg.pipeline.init_from:
        weights = None  # every weight comes from the parent run: nothing to download or read
    model = build_model(shape, cfg.model.encoder_name, weights if start_state is None else None)
    done = group_dir / DONE
    if start_state is not None and not done.exists():  # a trained group reloads its own weights below
        reinitialised = transfer_weights(start_state, model)
        if reinitialised:
            log.info(f"{label}: re-initialised {', '.join(reinitialised)} (shape differs from the source)")
    group = MultiHeadSegmenter.from_model(model, names)
    head_dirs = head_dirs or {names[0]: group_dir}
    if not done.exists() and cfg.pipeline.reuse_stages_from:
        copy_if_trained_elsewhere(ctx, group_dir, label)
    if not done.exists() and parent.is_copied(cfg, ctx.layout, group_dir):
        distributed.main_process_first(lambda: parent.copy_from_parent(cfg, ctx.layout, group_dir))
        label += f", copied from {cfg.pipeline.init_from}"
    if done.exists():
        for name in names:
            best = head_dirs[name] / BEST
            group.load_head_state(name, load_checkpoint(best)["model"], best)
        if cfg.train.channels_last:  # the layout fit leaves a trained group in: a resumed run scores the same bits
            group.to(memory_format=torch.channels_last)
        log.info(f"{label}: already trained, reusing {group_dir}")
        return group
    if cfg.pipeline.init_from:
        parent.start_heads(cfg, ctx.layout, group, head_dirs, train_encoder, label)
    started = time.perf_counter()
    if cfg.pipeline.feature_cache and not train_encoder:  # Stage 3, frozen encoder: its features once
        train_set, val_set = (cache_features(group.encoder, data, ctx.device, cfg.train.batch_size,
                                             cfg.train.channels_last) for data in (train_set, val_set))
        log.info(f"{label}: encoder features cached in {time.perf_counter() - started:.0f} s")
    progress = fit(group, train_set, val_set, train_cfg, head_dirs, train_encoder, label,
                   to_dict(cfg), cfg.pipeline.threshold, Objective(build_loss(cfg.train.loss)))
    best = {n: {"best_epoch": p.best_epoch + 1, "best_score": p.best_score, "epochs": len(p.history)}
            for n, p in progress.items()}
    write_json(done, {"heads": best, **ctx.data_identity})  # tatl.pipeline.reuse checks it
    summary = ", ".join(f"{n} {train_cfg.monitor} {p.best_score:.3f} @ epoch {p.best_epoch + 1}"
                        for n, p in progress.items())
    log.info(f"{label}: done in {time.perf_counter() - started:.0f} s; best {summary}")
    return group


def copied_heads(ctx: RunContext, shape: str, start_state: dict, names: list[str], head_dirs: dict[str, Path],
                 label: str) -> MultiHeadSegmenter:
    """Frozen-encoder Stage-3 heads copied unchanged from the parent run (pipeline.init_copied), on this run's Stage-2
    encoder (then the parent's too: Stage 2 is copied with them)."""
    model = build_model(shape, ctx.config.model.encoder_name, None)
    transfer_weights(start_state, model)
    group = MultiHeadSegmenter.from_model(model, names)
    for name in names:
        distributed.main_process_first(lambda d=head_dirs[name]: parent.copy_from_parent(ctx.config, ctx.layout, d))
        best = head_dirs[name] / BEST
        group.load_head_state(name, load_checkpoint(best)["model"], best)
    log.info(f"{label}: {', '.join(names)} copied from {ctx.config.pipeline.init_from}")
    return group


def copy_if_trained_elsewhere(ctx: RunContext, group_dir: Path, label: str) -> None:
    """Stage 1-2 of another run on the same data with the same settings and split (pipeline.reuse_stages_from):
    copied, not trained."""
    source = None
    if distributed.is_main_process():
        source = reuse.find_trained_group(ctx.layout.root, group_dir, ctx.config, ctx.data_identity)
        if source is not None:
            reuse.copy_group(source, group_dir)
    source = distributed.broadcast_from_main(source)  # the other ranks wait for the copy, then read it
    if source is not None:
        log.info(f"{label}: copied from {source} (trained there with the same settings and split)")
