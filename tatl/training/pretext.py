"""Context restoration pretext training (Chen et al. 2019, after Pathak et al. 2016), a baseline initialisation.

The paper's Table 7 compares TATL with a network first trained to restore images whose context was disturbed,
then fine-tuned on each attribute. Here the disturbance is Chen et al.'s: pairs of small random patches swapped,
repeatedly, so the colour histogram is unchanged and only the context is wrong. The network (same shape and
encoder as the Target-Segmenters, 3 output channels) learns to output the original image (mean squared error on
normalised pixels). Stage 3 then starts from every weight but the 3-channel head, which is re-initialised.

The network trains with the stages' loop (tatl.training.engine.fit) as one "restoration" head whose target is the
whole clean image: RUN/pretext-<inputs>/<shape>/ gets best.pt (lowest validation MSE), last.pt and log.csv, so it
resumes, stops on a NaN loss, uses mixed precision on CUDA and shares each batch out under torchrun like the stages.
done.json marks it finished (and a folder with one is reused as it is).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tatl.checkpoints import load_checkpoint
from tatl.config import TrainConfig
from tatl.data.dataset import normalize
from tatl.io import write_json
from tatl.layout import BEST, DONE
from tatl.models.multihead import MultiHeadSegmenter
from tatl.models.networks import build_model
from tatl.training.engine import Objective, fit

HEAD = "restoration"  # the name of the pretext network's one head (in messages and checkpoint labels)
# The target is the whole clean image; nn.MSELoss averages over its pixels, so the validation loss is the per-image
# mean squared error on normalised pixels.
RESTORATION = Objective(nn.MSELoss(), segmentation=False)

log = logging.getLogger(__name__)


def swap_patches(image: np.ndarray, rng: np.random.Generator, swaps: int = 10, patch_fraction: float = 0.1):
    """A copy of uint8 HxWx3 `image` with `swaps` pairs of random square patches exchanged."""
    out = image.copy()
    height, width = image.shape[:2]
    side = max(2, int(min(height, width) * patch_fraction))
    for _ in range(swaps):
        (y1, y2), (x1, x2) = rng.integers(0, height - side, 2), rng.integers(0, width - side, 2)
        first = out[y1 : y1 + side, x1 : x1 + side].copy()
        out[y1 : y1 + side, x1 : x1 + side] = out[y2 : y2 + side, x2 : x2 + side]
        out[y2 : y2 + side, x2 : x2 + side] = first
    return out


class RestorationDataset(torch.utils.data.Dataset):
    """(disturbed image, original image), both normalised; the disturbance depends on (seed, epoch, index)."""

    def __init__(self, images: np.ndarray, seed: int = 0):
        self.images, self.seed, self.epoch = images, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = np.asarray(self.images[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return normalize(swap_patches(image, rng)), normalize(image)


def train_context_restoration(
    shape: str, encoder_name: str, encoder_weights: str | None, train_images: np.ndarray, val_images: np.ndarray,
    cfg: TrainConfig, out_dir: Path,
) -> dict[str, torch.Tensor]:
    """Train (or reload, or resume) the pretext network; return its best state (single-network keys, 3-channel
    head)."""
    if (out_dir / DONE).exists():
        return load_checkpoint(out_dir / BEST)["model"]
    torch.manual_seed(cfg.seed)
    model = MultiHeadSegmenter.from_model(build_model(shape, encoder_name, encoder_weights, classes=3), [HEAD])
    train_set, val_set = RestorationDataset(train_images, cfg.seed), RestorationDataset(val_images, cfg.seed + 1)
    progress = fit(model, train_set, val_set, replace(cfg, monitor="loss"), {HEAD: out_dir}, train_encoder=True,
                   label=f"context restoration ({shape})", objective=RESTORATION)
    write_json(out_dir / DONE, {"best_val_mse": -progress[HEAD].best_score})
    return model.head_state(HEAD)  # fit left the best weights loaded, on every rank
