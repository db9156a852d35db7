"""Each head's early-stopping bookkeeping and the files it lives in: best.pt, last.pt and log.csv in the head's folder.

`last.pt` carries the whole HeadProgress, so a resumed head continues with the same best score, patience count and
history (tatl.training.engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tatl.checkpoints import load_checkpoint, save_checkpoint
from tatl.config import TrainConfig
from tatl.io import write_csv
from tatl.layout import BEST, LAST, LOG_CSV

# A monitor beside train.monitor's: ISIC 2018 Task 1's score (per-image Jaccard, 0 below 0.65, averaged over the
# images), on which Stage 1 picks its best epoch (tatl.pipeline.stages); engine validation computes it only then.
THRESHOLD_JACCARD = "threshold_jaccard"


@dataclass
class HeadProgress:
    """Early-stopping bookkeeping of one target."""

    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def update_progress(progress: HeadProgress, row: dict[str, float], cfg: TrainConfig) -> None:
    """Add one epoch's row (marked "improved" or not) and decide whether the head stops: `patience` epochs without
    a better cfg.monitor ("loss": lower is better; see `ranking`)."""
    best = next((r for r in progress.history if r["epoch"] == progress.best_epoch), None)
    score = ranking(row, cfg.monitor)
    row["improved"] = score > (ranking(best, cfg.monitor) if best is not None else (-math.inf, -math.inf))
    if row["improved"]:
        progress.best_score, progress.best_epoch, progress.bad_epochs = score[0], int(row["epoch"]), 0
    else:
        progress.bad_epochs += 1
        progress.stopped = progress.bad_epochs >= cfg.patience
    progress.history.append(row)


def ranking(row: dict[str, float], monitor: str) -> tuple[float, float]:
    """How an epoch's validation row ranks (higher is better): its monitor ("loss": negated), then, for the
    thresholded Jaccard, the plain Jaccard. Early on, when no image reaches a Jaccard of 0.65, every epoch's
    thresholded Jaccard is 0: the tie-break keeps the best of them rather than the first, and a 0 that gets closer
    to the threshold counts as progress for early stopping."""
    if monitor == "loss":
        return -row["loss"], 0.0
    # A row from a run resumed across this change may lack the monitor: it ranks lowest.
    return row.get(monitor, -math.inf), row.get("jaccard", -math.inf) if monitor == THRESHOLD_JACCARD else 0.0


def save_epoch(model, optimizers, progress, active, head_dirs, epoch, config_dict, label) -> None:
    """Each active head's last.pt and log.csv, and its best.pt when this epoch improved it (rank 0 writes)."""
    for n in active:
        head = {"model": model.head_state(n), "optimizer": optimizers[n].state_dict(), "epoch": epoch,
                "best_score": progress[n].best_score, "best_epoch": progress[n].best_epoch,
                "progress": vars(progress[n]), "config": config_dict, "label": f"{label}/{n}"}
        if progress[n].history[-1]["improved"]:
            save_checkpoint(head, head_dirs[n] / BEST)
        # A kill here leaves best.pt one epoch ahead of last.pt: the resumed epoch recomputes the same best.
        save_checkpoint(head, head_dirs[n] / LAST)
        _write_log(head_dirs[n] / LOG_CSV, progress[n].history)


def resume_head(model, name, optimizer, progress, path: Path, device: torch.device, lr: float) -> None:
    """Load head `name`'s weights, optimizer and progress from its last.pt, when there is one."""
    if not path.exists():
        return
    state = load_checkpoint(path, map_location=device)
    model.load_head_state(name, state["model"], path)
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = lr  # the configured rate wins, so a diverged run can resume with a lower one
    progress[name] = HeadProgress(**state["progress"])


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    write_csv(path, history, durable=True)  # columns: every row's (rows of a resumed run may differ)
