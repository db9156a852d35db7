"""The training loop: one encoder feeding one or more decoders, each with its own loss, optimizer, best-on-validation
checkpoint and early stopping.

One loop serves every stage. Stage 1 and 2 train one decoder with a trainable encoder. TATL-FE (frozen encoder)
trains all attribute decoders at once on one shared encoder pass per batch: the encoder runs under no_grad in eval
mode (its weights and BatchNorm statistics never change) and each decoder sees only its own loss, so each decoder
follows exactly the updates it would get if trained alone, at a fraction of the cost. TATL-NF trains one decoder and
its own encoder per attribute.

Files (tatl.training.head_progress): each head's folder gets `best.pt` and `last.pt` (a plain model state in the
single-network key format, the optimizer, epoch, early-stopping counters and history, config), both replaced
atomically, and `log.csv`. `last.pt` is all a resume needs: heads on a frozen encoder are independent, so after a
kill between two heads' writes each head simply continues from its own last epoch, with the same batches (they
depend on seed and epoch only).

What the heads learn is an Objective: segmentation (every stage: each head its own mask channel, the Eq. 1-3 loss,
official Jaccard/Dice in validation) or image restoration (the context-restoration pretext of tatl.training.pretext:
the whole target image, mean squared error, validation loss as the monitor).

Under torchrun (tatl.distributed) the same loop runs on every rank: each takes a slice of every batch, the training
forward is wrapped in DistributedDataParallel, validation sums are added up across ranks, and rank 0 writes.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tatl import distributed, logs
from tatl.checkpoints import load_checkpoint
from tatl.config import TrainConfig
from tatl.device import resolve_device
from tatl.errors import TatlError
from tatl.layout import BEST, LAST
from tatl.metrics.isic2018 import Task1Scorer, Task2Scorer
from tatl.models.multihead import MultiHeadSegmenter, TrainingForward
from tatl.training import parallel, schedule
from tatl.training.head_progress import THRESHOLD_JACCARD, HeadProgress, resume_head, save_epoch, update_progress
from tatl.training.losses import TatlLoss
from tatl.training.targets import head_loss, head_scores, target_parts

log = logging.getLogger(__name__)


class TrainingDiverged(TatlError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Objective:
    """What each head learns from a batch (x, y): `loss(logits, target)`, with target its own mask channel of y
    (`segmentation`, and validation adds the official Jaccard and Dice) or all of y (an image to restore, and the
    validation loss is the only score: train with monitor "loss")."""

    loss: nn.Module
    segmentation: bool = True


SEGMENTATION = Objective(TatlLoss())


@dataclass
class TrainingSetup:
    """What every epoch of one training uses, made once by fit (a benchmark makes its own)."""

    model: MultiHeadSegmenter
    optimizers: dict[str, torch.optim.Optimizer]  # one per head
    cfg: TrainConfig
    train_encoder: bool
    label: str  # names the network in messages, e.g. "stage 2 (crops, unet)"
    objective: Objective = SEGMENTATION
    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None  # autocast_dtype(device, cfg); None: fp32
    scaler: torch.amp.GradScaler | None = None  # None: one that scales the losses under fp16 autocast only

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)


def fit(
    model: MultiHeadSegmenter,
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset,
    cfg: TrainConfig,
    head_dirs: dict[str, Path],
    train_encoder: bool,
    label: str,
    config_dict: dict[str, Any] | None = None,
    threshold: float = 0.5,
    objective: Objective = SEGMENTATION,
) -> dict[str, HeadProgress]:
    """Train every head of `model` for `objective` with early stopping on cfg.monitor; leave the best weights of each
    head loaded."""
    if not objective.segmentation and cfg.monitor != "loss":
        raise ValueError(f"{label}: validation scores no masks here, only the loss: train with monitor 'loss'")
    device = resolve_device(cfg.device)
    names = list(model.heads)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    model.encoder.requires_grad_(train_encoder)
    if cfg.sync_batchnorm and distributed.is_distributed() and device.type == "cuda":
        parallel.use_sync_batchnorm(model)  # CPU has no SyncBatchNorm: each rank normalises its own slice there
    if train_encoder and distributed.is_distributed():
        example = train_set[0][0][None]  # augmentation is seeded per (seed, epoch, index): no random state moves
        unused = parallel.freeze_unused_parameters(model, _to_device(example, example, device, cfg)[0])
        if unused:
            log.info(f"[{label}] the encoder never uses {len(unused)} parameter(s) ({', '.join(unused[:3])}"
                     f"{' ...' if len(unused) > 3 else ''}): not trained, not synchronised")
    if cfg.compile:  # in place: the state dict keys stay those of the plain modules
        for module in (model.encoder, *model.heads.values()):
            module.compile()
    optimizers = {n: _optimizer(model, n, train_encoder, cfg) for n in names}
    progress = {n: HeadProgress() for n in names}
    for n in names:
        resume_head(model, n, optimizers[n], progress, head_dirs[n] / LAST, device, cfg.lr)
    setup = TrainingSetup(model, optimizers, cfg, train_encoder, label, objective, device, autocast_dtype(device, cfg))
    for epoch in range(min(len(p.history) for p in progress.values()), cfg.epochs):
        active = [n for n in names if not progress[n].stopped and len(progress[n].history) == epoch]
        if not active:
            continue
        started = time.perf_counter()
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # stochastic depth etc.: same per epoch, also after resume
        step_model = parallel.training_forward(model, active, train_encoder, device)  # the heads still training
        train_loss = train_one_epoch(setup, active, train_set, epoch, step_model)
        distributed.broadcast_buffers(model)  # under torchrun: validate (and save) rank 0's network on every rank
        val = evaluate_heads(setup, active, val_set, threshold)
        _stop_if_diverged(val, label, epoch, cfg)  # before saving: a diverged network must not become last.pt
        for n in active:
            row = {"epoch": epoch, "train_loss": train_loss[n], **val[n], "seconds": time.perf_counter() - started}
            update_progress(progress[n], row, cfg)
        if distributed.is_main_process():
            save_epoch(model, optimizers, progress, active, head_dirs, epoch, config_dict, label)
            summary = "  ".join(f"{n}: {cfg.monitor} {val[n][cfg.monitor]:.3f}" for n in active)
            log.info(f"[{label}] epoch {epoch + 1}/{cfg.epochs}  {summary}")
        distributed.barrier()  # the other ranks read best.pt below: wait until rank 0 has written it
    for n in names:
        model.load_head_state(n, load_checkpoint(head_dirs[n] / BEST)["model"], head_dirs[n] / BEST)
    return progress


def _stop_if_diverged(val: dict[str, dict], label: str, epoch: int, cfg: TrainConfig) -> None:
    """Weights can blow up while every training loss stays finite (one huge step); validation then says so."""
    diverged = {n: scores["loss"] for n, scores in val.items() if not math.isfinite(scores["loss"])}
    if diverged:
        name, value = next(iter(diverged.items()))
        raise TrainingDiverged(
            f"{label}: validation loss of {name} is {value} after epoch {epoch + 1} (the weights diverged); the last "
            f"good checkpoint is kept: rerun with --resume and a lower rate, e.g. --set train.lr={cfg.lr / 10}"
        )


def _optimizer(model: MultiHeadSegmenter, name: str, train_encoder: bool, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(model.heads[name].parameters())
    if train_encoder:
        if len(model.heads) > 1:
            raise ValueError("a trainable encoder is trained with one head only (TATL-NF trains one network each)")
        params += list(model.encoder.parameters())
    return make_optimizer(params, cfg)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """train.optimizer over `params`: momentum SGD (the paper) or Adam."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def autocast_dtype(device: torch.device, cfg: TrainConfig) -> torch.dtype | None:
    """The mixed-precision type of training and validation on `device`: bf16 or fp16 on CUDA, None (fp32) else."""
    if device.type != "cuda" or not cfg.amp:
        return None  # bf16 autocast does not pay on AVX2 CPUs: measured, see benchmarks/RESULTS.md
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _loader(dataset, cfg: TrainConfig, epoch: int | None, device: torch.device) -> torch.utils.data.DataLoader:
    """Training (epoch given): this rank's share of each shuffled batch. Evaluation: this rank's images, in order."""
    if epoch is None:
        mine = distributed.my_share(list(range(len(dataset))))
        batches = [mine[i : i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
    else:  # the order depends on (seed, epoch) only, so a resumed run replays the same batches
        batches = distributed.rank_batches(schedule.epoch_order(dataset, cfg, epoch), cfg.batch_size)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=cfg.num_workers,
                                       pin_memory=device.type == "cuda")


def _to_device(x: torch.Tensor | list[torch.Tensor], y: torch.Tensor, device: torch.device, cfg: TrainConfig):
    """x: images, or a list of cached encoder features (tatl.training.feature_cache)."""
    if isinstance(x, list):
        return [_to_device(level, y, device, cfg)[0] for level in x], y.to(device, non_blocking=True)
    x = x.to(device, non_blocking=True)
    if cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def train_one_epoch(setup: TrainingSetup, active: list[str], dataset: torch.utils.data.Dataset, epoch: int,
                    step_model: nn.Module | None = None) -> dict[str, float]:
    """One epoch of every active head; `step_model` runs the forward (default: TrainingForward, no DDP). Returns
    each head's mean training loss."""
    model, cfg, device, label, train_encoder = setup.model, setup.cfg, setup.device, setup.label, setup.train_encoder
    optimizers, scaler, amp_dtype, loss_fn = setup.optimizers, setup.scaler, setup.amp_dtype, setup.objective.loss
    step_model = step_model or TrainingForward(model, active, train_encoder)
    channel = target_parts(dataset, model, setup.objective.segmentation)
    model.train()
    if not train_encoder:
        model.encoder.eval()  # frozen: BatchNorm running statistics must not move either
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    totals = {n: 0.0 for n in active}
    seen = 0
    loader = _loader(dataset, cfg, epoch, device)
    bar = logs.progress(loader, f"{label} {epoch + 1}", unit="batch")
    for batch_index, (x, y) in enumerate(bar):
        schedule.set_learning_rate(optimizers, schedule.learning_rate(cfg, epoch, batch_index, len(loader)))
        x, y = _to_device(x, y, device, cfg)
        for n in active:
            optimizers[n].zero_grad(set_to_none=True)
        targets = {n: y[:, channel[n]] for n in active}
        if train_encoder:
            with _autocast(device, amp_dtype):
                logits = step_model(x)
                losses = {n: head_loss(loss_fn, logits[n], targets[n], channel[n]) for n in active}
            scaler.scale(sum(losses.values())).backward()
        else:
            losses = _backward_head_by_head(step_model, x, targets, loss_fn, scaler, device, amp_dtype)
        diverged = [n for n, loss in losses.items() if not torch.isfinite(loss)]
        if distributed.any_rank(bool(diverged)):  # every rank stops, not only the one that saw it
            value = losses[diverged[0]].item() if diverged else "not finite on another rank"
            raise TrainingDiverged(
                f"{label}: loss of {', '.join(diverged) or 'a head'} is {value} at epoch {epoch + 1}, batch "
                f"{batch_index + 1}; the last good checkpoint is kept: rerun with --resume and a lower rate, e.g. "
                f"--set train.lr={cfg.lr / 10}"
            )
        for n in active:  # after the check: a diverged step never reaches the weights
            scaler.step(optimizers[n])
        scaler.update()
        for n in active:
            totals[n] += losses[n].item() * len(y)
        seen += len(y)
        bar.set_postfix(loss=f"{sum(losses.values()).item() / len(losses):.4f}")
    return distributed.per_image_means(totals, seen)


def _backward_head_by_head(step_model: TrainingForward, x: torch.Tensor, targets: dict[str, torch.Tensor], loss_fn,
                           scaler, device: torch.device, amp_dtype) -> dict[str, torch.Tensor]:
    """Frozen encoder: its features once, then each head's forward and backward in turn; returns the losses.

    The decoders are disjoint, so each gets exactly the gradient one backward of the summed losses would give it,
    but only one head's activations are alive at a time instead of all of them: a fifth of the activation memory,
    and on a CPU 1.24x (U) and 1.46x (Link) faster with five heads at 256 px, no faster at 128 px
    (benchmarks/RESULTS.md, Stage 3)."""
    with _autocast(device, amp_dtype):
        features = x if isinstance(x, list) else step_model.features(x)  # a list: cached features
    losses = {}
    for name, target in targets.items():
        with _autocast(device, amp_dtype):
            loss = loss_fn(step_model.heads[name](features), target)  # frozen encoder: one target per head
        scaler.scale(loss).backward()
        losses[name] = loss.detach()
    return losses


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()


@torch.no_grad()
def evaluate_heads(setup: TrainingSetup, active: list[str], dataset: torch.utils.data.Dataset,
                   threshold: float = 0.5) -> dict[str, dict]:
    """Validation loss per head (a per-image mean) and, for segmentation, official-semantics Jaccard/Dice, at the
    training resolution (a joint head: the macro average of its channels, each channel's Jaccard beside it); with
    monitor "threshold_jaccard" also ISIC 2018 Task 1's thresholded Jaccard of each head (per-image Jaccard, 0 below
    0.65, averaged over the images), at the training resolution too."""
    model, cfg, device, amp_dtype, loss_fn = setup.model, setup.cfg, setup.device, setup.amp_dtype, setup.objective.loss
    channel = target_parts(dataset, model, setup.objective.segmentation)
    model.eval()
    targets = [t for n in active for t in model.channels[n]]
    scorer = Task2Scorer(targets) if setup.objective.segmentation else None
    per_image = {n: Task1Scorer() for n in active} if scorer is not None and cfg.monitor == THRESHOLD_JACCARD else {}
    loss_sums = {n: 0.0 for n in active}
    seen = 0
    for x, y in _loader(dataset, cfg, None, device):
        x, y = _to_device(x, y, device, cfg)
        with _autocast(device, amp_dtype):
            features = x if isinstance(x, list) else model.encoder(x)  # a list: cached features
            for n in active:
                logits = model.heads[n](features).float()
                truth = y[:, channel[n]]
                loss_sums[n] += head_loss(loss_fn, logits, truth, channel[n]).item() * len(y)
                if scorer is None:
                    continue
                truths = truth if isinstance(channel[n], list) else truth[:, None]  # a joint head: several masks
                for c, target in enumerate(model.channels[n]):
                    predicted = torch.sigmoid(logits[:, c]) > threshold
                    scorer.update(target, truths[:, c] > 0.5, predicted)
                    if n in per_image:
                        per_image[n].update(truths[:, c] > 0.5, predicted)
        seen += len(y)
    losses = distributed.per_image_means(loss_sums, seen)
    # each rank scored its share of the images: the sums added up
    totals = distributed.sum_scorer_over_ranks(scorer).result() if scorer is not None else {}
    scores = {n: head_scores(totals, model.channels[n]) for n in active}
    for n, task1 in per_image.items():
        scores[n][THRESHOLD_JACCARD] = distributed.sum_scorer_over_ranks(task1).result()[THRESHOLD_JACCARD]
    return {n: {"loss": losses[n], **scores[n]} for n in active}
