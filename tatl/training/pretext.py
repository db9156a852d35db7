"""Context restoration pretext training (Chen et al. 2019, after Pathak et al. 2016), a baseline initialisation.

The paper's Table 7 compares TATL with a network first trained to restore images whose context was disturbed,
then fine-tuned on each attribute. Here the disturbance is Chen et al.'s: pairs of small random patches swapped,
repeatedly, so the colour histogram is unchanged and only the context is wrong. The network (same shape and
encoder as the Target-Segmenters, 3 output channels) learns to output the original image (mean squared error on
normalised pixels). Stage 3 then starts from every weight but the 3-channel head, which is re-initialised.

Under torchrun the pretext network trains like the stages do: each rank takes a slice of every batch (DDP) and
validates its share of the images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tatl import distributed
from tatl.checkpoints import load_checkpoint, save_checkpoint
from tatl.config import TrainConfig
from tatl.data.dataset import normalize
from tatl.device import resolve_device
from tatl.errors import TatlError
from tatl.io import write_json
from tatl.models.networks import build_model
from tatl.training import parallel

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
    """Train (or reload) the pretext network; return its best state (single-network keys, 3-channel head)."""
    best_path = out_dir / "best.pt"
    if (out_dir / "done.json").exists():
        return load_checkpoint(best_path)["model"]
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(shape, encoder_name, encoder_weights, classes=3).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    train_set, val_set = RestorationDataset(train_images, cfg.seed), RestorationDataset(val_images, cfg.seed + 1)
    # A whole smp network: some encoders (smp's efficientnet-b0) hold parameters the forward never uses.
    step_model = parallel.data_parallel(model, device, find_unused_parameters=True)
    best, bad_epochs, best_state = float("inf"), 0, None
    for epoch in range(cfg.epochs):
        train_set.set_epoch(epoch)
        model.train()
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(train_set), generator=generator).tolist()
        batches = distributed.rank_batches(order, cfg.batch_size)  # this rank's slice of each global batch
        for x, y in torch.utils.data.DataLoader(train_set, batch_sampler=batches):
            optimizer.zero_grad(set_to_none=True)
            loss = F.mse_loss(step_model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
        distributed.broadcast_buffers(model)  # one network validated and kept: rank 0's BatchNorm statistics
        val_loss = _validation_loss(model, val_set, cfg.batch_size, device)
        log.info(f"[context restoration ({shape})] epoch {epoch + 1}/{cfg.epochs}  val MSE {val_loss:.4f}")
        if val_loss < best:
            best, bad_epochs = val_loss, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            save_checkpoint({"model": best_state, "epoch": epoch, "best_score": -val_loss}, best_path)
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    if best_state is None:
        raise TatlError(f"context restoration ({shape}): the validation loss was never finite; try a lower train.lr")
    write_json(out_dir / "done.json", {"best_val_mse": best})
    return best_state  # from memory: under torchrun only rank 0 writes best.pt


@torch.no_grad()
def _validation_loss(model, dataset, batch_size: int, device: torch.device) -> float:
    """Mean per-image MSE; under torchrun each rank scores its share of the images and the sums are added up."""
    model.eval()
    total, seen = 0.0, 0
    mine = torch.utils.data.Subset(dataset, distributed.my_share(list(range(len(dataset)))))
    for x, y in torch.utils.data.DataLoader(mine, batch_size):
        total += F.mse_loss(model(x.to(device)), y.to(device), reduction="sum").item() / y[0].numel()
        seen += len(x)
    return distributed.per_image_means({"mse": total}, seen)["mse"]
