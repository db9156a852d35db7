"""Run under torchrun by tests/test_distributed.py: `tatl.training.engine.fit` on a tiny network without BatchNorm.

Without BatchNorm, N processes each taking 1/N of every batch compute exactly the update one process computes on the
whole batch (the loss is a per-image mean), so the test can ask for equality, not a tolerance. The encoder carries a
parameter its forward never uses, as smp's efficientnet-b0 does, which DDP must survive.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py OUT frozen|trainable|pretext

"pretext" trains the context-restoration network (tatl.training.pretext) instead, the same BatchNorm-free way.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tatl import distributed
from tatl.config import TrainConfig
from tatl.data.dataset import SegmentationDataset
from tatl.models.multihead import DecoderHead, MultiHeadSegmenter
from tatl.training.engine import TrainingSetup, evaluate_heads, fit

NAMES = ["a", "b"]


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.down = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.never_called = nn.Linear(4, 4)

    def forward(self, x):
        a = F.relu(self.stem(x))
        return [x, a, F.relu(self.down(a))]


class TinyDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.out = nn.Conv2d(16, 8, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, features):
        _, a, b = features
        return F.relu(self.out(torch.cat([F.interpolate(F.relu(self.up(b)), scale_factor=2), a], 1)))


def data(n: int = 20, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, len(NAMES), size, size), dtype=np.uint8)
    for i in range(n):
        for k in range(len(NAMES)):
            y, x = rng.integers(0, size - 6, 2)
            masks[i, k, y : y + 6, x : x + 6] = 1
            images[i, y : y + 6, x : x + 6, k] = 255
    return images, masks


class CountingEncoder(TinyEncoder):
    """TinyEncoder counting the images this rank encodes in training and in validation (eval mode, no_grad)."""

    def __init__(self):
        super().__init__()
        self.images_seen = {"train": 0, "eval": 0}

    def forward(self, x):
        if self.training:
            self.images_seen["train"] += len(x)
        elif not torch.is_grad_enabled():  # not the eval-mode probe for unused parameters (engine.fit, torchrun)
            self.images_seen["eval"] += len(x)
        return super().forward(x)


class TinyRestorer(nn.Module):
    """A 3-channel image-to-image network without BatchNorm, with one parameter it never uses, built like smp's
    (encoder, decoder, segmentation_head)."""

    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = CountingEncoder(), TinyDecoder()
        self.segmentation_head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.segmentation_head(self.decoder(self.encoder(x)))


def pretext(out: Path) -> None:
    from tatl.training import pretext

    built = []

    def build_model(*args, **kwargs):  # the stand-in for the U/Link network, built where tatl builds its own
        built.append(TinyRestorer())
        return built[-1]

    pretext.build_model = build_model
    images, _ = data()
    cfg = TrainConfig(epochs=3, patience=5, batch_size=4, lr=0.05, device="cpu", seed=3, channels_last=False)
    state = pretext.train_context_restoration("unet", "tiny", None, images, images[:7], cfg, out / "pretext")
    torch.save({"state": state, "world": distributed.world_size(), "images_seen": built[0].encoder.images_seen},
               out / f"rank{distributed.rank()}.pt")


def main(out: Path, mode: str) -> None:
    distributed.setup("cpu")
    if mode == "pretext":
        pretext(out)
        distributed.teardown()
        return
    torch.manual_seed(0)
    names = NAMES if mode == "frozen" else NAMES[:1]
    heads = {name: DecoderHead(TinyDecoder(), nn.Conv2d(8, 1, 1)) for name in names}
    model = MultiHeadSegmenter(TinyEncoder(), heads)
    images, masks = data()
    train_set = SegmentationDataset(images, masks, augment=True, seed=1, targets=NAMES)
    val_set = SegmentationDataset(images[:7], masks[:7], targets=NAMES)  # 7: the ranks get 4 and 3 images
    cfg = TrainConfig(epochs=3, patience=5, batch_size=4, lr=0.05, device="cpu", seed=3, channels_last=False)
    progress = fit(model, train_set, val_set, cfg, {n: out / "heads" / n for n in names},
                   train_encoder=mode == "trainable", label=f"ddp {mode}")
    val = evaluate_heads(TrainingSetup(model, {}, cfg, train_encoder=False, label="check"), names, val_set)
    result = {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "val": val,
              "history": {n: p.history for n, p in progress.items()}, "world": distributed.world_size()}
    torch.save(result, out / f"rank{distributed.rank()}.pt")
    distributed.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
