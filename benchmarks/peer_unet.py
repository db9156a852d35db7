"""The peer a user would write instead of TATL (issue 22): one smp U-Net with a sigmoid output channel per attribute.

Multi-label, BCE + Dice (smp's DiceLoss in multilabel mode), Adam, flips and 90-degree rotations, from the same
encoder and ImageNet start as `--config isic-cpu` (EfficientNet-Lite0, offline) at the same input size, on whole
images. It trains for a wall-clock budget (minutes of training; each epoch ends the loop once another would not
fit), keeps the epoch with the best macro Jaccard on the tuning split, tunes a threshold per attribute on the tuning
split (tatl's grid) and scores the validation split with tatl's official ISIC 2018 Task 2 code at original size.

The split is that of a tatl run (`--split-from RUN`: its splits.json and config, so train, tuning and validation
images are the run's), or made here as `tatl run` makes it (`--tune-fraction`, seed 0). Resumable: OUT/peer.pt is
written after every epoch and a rerun continues from it with the time already spent.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peer_unet.py ../shared/data/isic2018-task2-256 --out runs/peer \
        --split-from runs/recipe --size 128 --minutes 55
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tatl.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from tatl.config import Config, load_config  # noqa: E402
from tatl.constants import ATTRIBUTES_2018  # noqa: E402
from tatl.data.dataset import SegmentationDataset, load_images, load_masks  # noqa: E402
from tatl.data.images import image_size  # noqa: E402
from tatl.data.isic import find_samples  # noqa: E402
from tatl.data.splits import make_splits, read_splits  # noqa: E402
from tatl.io import write_json  # noqa: E402
from tatl.layout import RunLayout  # noqa: E402
from tatl.metrics.isic2018 import Task2Scorer  # noqa: E402
from tatl.models.networks import build_model  # noqa: E402
from tatl.models.weights import repeat_output_channel  # noqa: E402
from tatl.pipeline.context import split_ids, tune_ids  # noqa: E402
from tatl.pipeline.scoring import score_attributes, tune_thresholds  # noqa: E402

ATTRIBUTES = list(ATTRIBUTES_2018)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="an ISIC 2018 Task 2 folder (all five attribute masks per image)")
    parser.add_argument("--out", type=Path, required=True, help="folder for peer.pt, metrics.json and the cache")
    parser.add_argument("--split-from", type=Path, help="a tatl run whose train/tuning/validation split is used")
    parser.add_argument("--tune-fraction", type=float, default=0.1, help="without --split-from: the tuning share")
    parser.add_argument("--size", type=int, default=128, help="input side in pixels (whole images, resized)")
    parser.add_argument("--minutes", type=float, default=55.0, help="wall-clock budget of the training loop")
    parser.add_argument("--max-epochs", type=int, default=1000, help="stop after this many epochs in any case")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--encoder", default="paper-efficientnet-lite0", help="smp/tatl encoder name")
    parser.add_argument("--weights", default="lite0", help="encoder weights: lite0 (ImageNet, offline) or none")
    parser.add_argument("--no-augment", action="store_true", help="no flips or 90-degree rotations")
    parser.add_argument("--init-from", type=Path, help="a tatl Stage-2 best.pt (the union network, same encoder and "
                        "shape): its encoder and decoder start the U-Net, its one output channel copied to all five "
                        "(TATL's transfer, Stage 3 as one multi-label network); default: --weights")
    parser.add_argument("--boxes-from", type=Path, help="a tatl run with Stage 1 (its boxes.json): train and score on "
                        "its lesion crops, as TATL's variants with stage 1 do; default: whole images")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    return parser.parse_args(argv)


def split(args: argparse.Namespace, samples: dict) -> tuple[list[str], list[str], list[str]]:
    """(train, tune, val) ids: a tatl run's, or made here the way `tatl run` makes them."""
    if args.split_from:
        layout = RunLayout(args.split_from)
        config, splits = load_config(layout.config), read_splits(layout.splits)
    else:
        config = Config()
        config.data.tune_fraction = args.tune_fraction
        presence = {i: [a for a, p in s.attribute_mask_paths.items() if _shows(p)] for i, s in samples.items()}
        splits = make_splits(presence, config.data.val_fraction, config.data.n_folds, 0, args.tune_fraction)
    train, val = split_ids(splits, config)
    tune = tune_ids(splits, config)
    if not tune:
        raise SystemExit("the split has no tuning split: pass --tune-fraction > 0 or a run with data.tune_fraction")
    return train, tune, val


def _shows(mask_path: Path) -> bool:
    from PIL import Image

    return bool(np.asarray(Image.open(mask_path)).max() > 0)


def arrays(samples: list, size: int, sizes: dict, cache: Path, boxes: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Images and the five masks at `size`: whole, or cropped to `boxes` (loaded once into the cache)."""
    return load_images(samples, size, boxes, cache), load_masks(samples, ATTRIBUTES, size, boxes, sizes, cache)


def read_boxes(run: Path, ids: list[str]) -> dict:
    """A tatl run's Stage-1 boxes (RUN/boxes.json), one for each of `ids`."""
    path = RunLayout(run).boxes
    if not path.is_file():
        raise SystemExit(f"{path}: missing (that run has not finished Stage 1's boxes)")
    boxes = {image_id: tuple(box) for image_id, box in json.loads(path.read_text()).items()}
    missing = [i for i in ids if i not in boxes]
    if missing:
        raise SystemExit(f"{path}: no box for {len(missing)} image(s), e.g. {missing[0]} (a run on other data?)")
    return boxes


class BceDice(nn.Module):
    """BCE + smp's multilabel soft Dice: what a user of segmentation_models_pytorch writes for five channels."""

    def __init__(self) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.dice = smp.losses.DiceLoss("multilabel", from_logits=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce(logits, target) + self.dice(logits, target)


@torch.no_grad()
def probabilities(model: nn.Module, images: np.ndarray, device: torch.device, batch: int = 32) -> dict:
    """{attribute: (N, S, S) float32} for uint8 images (N, S, S, 3)."""
    model.eval()
    loader = torch.utils.data.DataLoader(SegmentationDataset(images, None), batch_size=batch)
    maps = [torch.sigmoid(model(x.to(device).contiguous(memory_format=torch.channels_last))).cpu() for x, _ in loader]
    stacked = torch.cat(maps).numpy()
    return {a: stacked[:, k] for k, a in enumerate(ATTRIBUTES)}


def quick_jaccard(maps: dict, masks: np.ndarray) -> float:
    """Macro official Jaccard at threshold 0.5 and the training size: the best-epoch criterion."""
    scorer = Task2Scorer(ATTRIBUTES)
    for k, a in enumerate(ATTRIBUTES):
        scorer.update(a, masks[:, k] > 0, maps[a] > 0.5)
    return scorer.result()["macro_average"]["jaccard"]


def train(args: argparse.Namespace, train_set: SegmentationDataset, tune: tuple, device: torch.device) -> dict:
    """Epochs until the budget is spent; returns the checkpoint state (best weights included)."""
    weights = None if args.weights == "none" or args.init_from else args.weights
    model = build_model("unet", args.encoder, weights, classes=5)
    if args.init_from:
        load_union_network(model, args.init_from)
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    path = args.out / "peer.pt"
    state = {"epoch": 0, "seconds": 0.0, "best_score": -1.0, "history": [], "model": model.state_dict()}
    if path.is_file():
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"resumed after epoch {state['epoch']} ({state['seconds'] / 60:.1f} min spent)", flush=True)
    loss_fn, budget = BceDice(), args.minutes * 60
    while state["epoch"] < args.max_epochs:
        last = state["history"][-1]["seconds"] if state["history"] else 0.0
        if state["seconds"] + last > budget:
            break
        started = time.perf_counter()
        loss = one_epoch(model, optimizer, loss_fn, train_set, state["epoch"], args.batch_size, device)
        score = quick_jaccard(probabilities(model, tune[0], device), tune[1])
        seconds = time.perf_counter() - started
        state["seconds"] += seconds
        state["history"].append({"epoch": state["epoch"] + 1, "loss": loss, "tune_jaccard": score, "seconds": seconds})
        if score > state["best_score"]:
            state["best_score"], state["best_model"] = score, {k: v.clone() for k, v in model.state_dict().items()}
        state.update(epoch=state["epoch"] + 1, model=model.state_dict(), optimizer=optimizer.state_dict())
        save_checkpoint(state, path)
        print(f"epoch {state['epoch']}: loss {loss:.4f}, tuning-split macro Jaccard {score:.3f}, {seconds:.0f} s "
              f"({state['seconds'] / 60:.1f} of {args.minutes:g} min)", flush=True)
    model.load_state_dict(state.get("best_model", state["model"]))
    state["network"] = model
    return state


def load_union_network(model: nn.Module, path: Path) -> None:
    """Stage 2's single-channel union network into the five-channel U-Net: every weight strictly, except the last
    convolution, whose one output channel is repeated for each attribute (every attribute starts as the union)."""
    five = repeat_output_channel(load_checkpoint(path)["model"], len(ATTRIBUTES))
    try:
        model.load_state_dict(five, strict=True)
    except RuntimeError as error:
        raise SystemExit(f"{path}: not a Stage-2 union network of this encoder and shape: {error}") from None
    print(f"started from {path} (output channel repeated for {len(ATTRIBUTES)} attributes)", flush=True)


def one_epoch(model, optimizer, loss_fn, dataset, epoch: int, batch_size: int, device: torch.device) -> float:
    model.train()
    dataset.set_epoch(epoch)
    generator = torch.Generator().manual_seed(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                         drop_last=len(dataset) > batch_size)
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x.to(device).contiguous(memory_format=torch.channels_last)), y.to(device))
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / max(len(loader), 1)


def table(scores: dict) -> str:
    rows = ["| attribute | Jaccard | Dice |", "|---|---|---|"]
    for name in [*ATTRIBUTES, "macro_average", "micro_average"]:
        rows.append(f"| {name} | {scores[name]['jaccard']:.3f} | {scores[name]['dice']:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    samples = {s.image_id: s for s in find_samples(args.data, ATTRIBUTES)}
    train_ids, tune_id_list, val_ids = split(args, samples)
    parts = {name: [samples[i] for i in ids] for name, ids in
             (("train", train_ids), ("tune", tune_id_list), ("val", val_ids))}
    sizes = {s.image_id: image_size(s.image_path) for s in samples.values()}
    boxes = read_boxes(args.boxes_from, list(samples)) if args.boxes_from else None
    data = {name: arrays(part, args.size, sizes, args.out / "cache", boxes) for name, part in parts.items()}
    train_set = SegmentationDataset(*data["train"], augment=not args.no_augment, targets=ATTRIBUTES)
    print(f"{len(train_ids)} training, {len(tune_id_list)} tuning, {len(val_ids)} validation images at "
          f"{args.size} px{', lesion crops of ' + str(args.boxes_from) if boxes else ''}", flush=True)
    state = train(args, train_set, data["tune"], device)
    model = state.pop("network")
    tune_maps = probabilities(model, data["tune"][0], device)
    thresholds = tune_thresholds(tune_maps, parts["tune"], boxes, sizes)
    val_maps = probabilities(model, data["val"][0], device)
    scores = score_attributes(val_maps, parts["val"], boxes, sizes, thresholds)
    at_half = score_attributes(val_maps, parts["val"], boxes, sizes, 0.5)
    result = {"epochs": state["epoch"], "training_minutes": state["seconds"] / 60, "best_tune_jaccard":
              state["best_score"], "thresholds": thresholds, "validation": scores, "validation_at_0.5": at_half,
              "wall_minutes_this_call": (time.perf_counter() - started) / 60, "args": {k: str(v) for k, v in
                                                                                      vars(args).items()}}
    write_json(args.out / "metrics.json", result, indent=1)
    print(f"peer U-Net, {state['epoch']} epochs, {state['seconds'] / 60:.1f} min of training; validation "
          f"({len(val_ids)} images, original size), thresholds tuned on the tuning split {thresholds}:")
    print(table(scores))
    print(f"at threshold 0.5: macro Jaccard {at_half['macro_average']['jaccard']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
