"""What changes with the epoch and step of training: the order of the images and the learning rate.

Both depend on (seed, epoch, step) only, never on state kept between steps, so a resumed run replays the same
batches at the same rates. train.sampling "uniform" is a permutation per epoch (the paper); "rare" draws as many
items with replacement, each with the probability its dataset's `weights` give (tatl.data.sampling). train.schedule
"constant" keeps train.lr (the paper); "cosine" anneals it from train.lr towards 0 over train.epochs, step by step;
"onecycle" (Smith's one-cycle, as torch.optim.lr_scheduler.OneCycleLR with its defaults) rises from train.lr / 25 to
train.lr over the first 30% of the steps, then falls to train.lr / 2.5e5, both halves cosine-shaped.
"""

from __future__ import annotations

import math

import torch

from tatl.config import TrainConfig

# train.schedule "onecycle": torch.optim.lr_scheduler.OneCycleLR's defaults (pct_start, div_factor, final_div_factor)
ONECYCLE_WARMUP = 0.3
ONECYCLE_START_DIVISOR = 25.0
ONECYCLE_FINAL_DIVISOR = 1e4


def epoch_order(dataset: torch.utils.data.Dataset, cfg: TrainConfig, epoch: int) -> list[int]:
    """The dataset's item indices in this epoch's order."""
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    weights = getattr(dataset, "weights", None)
    if weights is None or cfg.sampling == "uniform":
        return torch.randperm(len(dataset), generator=generator).tolist()
    per_item = torch.as_tensor(weights, dtype=torch.float64).repeat(len(dataset) // len(weights))  # copies
    return torch.multinomial(per_item, len(dataset), replacement=True, generator=generator).tolist()


def learning_rate(cfg: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """The rate of step `step` (0-based) of `steps` in epoch `epoch` (0-based)."""
    if cfg.schedule == "constant":
        return cfg.lr
    done = min((epoch + step / max(steps, 1)) / cfg.epochs, 1.0)
    if cfg.schedule == "cosine":
        return _cosine_between(cfg.lr, 0.0, done)
    if done < ONECYCLE_WARMUP:
        return _cosine_between(cfg.lr / ONECYCLE_START_DIVISOR, cfg.lr, done / ONECYCLE_WARMUP)
    final = cfg.lr / ONECYCLE_START_DIVISOR / ONECYCLE_FINAL_DIVISOR
    return _cosine_between(cfg.lr, final, (done - ONECYCLE_WARMUP) / (1.0 - ONECYCLE_WARMUP))


def _cosine_between(start: float, end: float, fraction: float) -> float:
    """A half cosine from `start` (fraction 0) to `end` (fraction 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def set_learning_rate(optimizers: dict[str, torch.optim.Optimizer], rate: float) -> None:
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = rate
