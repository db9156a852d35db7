"""Stage 3 on a frozen encoder with and without pipeline.feature_cache: one epoch (training + validation) of the five
attribute decoders, the encoder run every epoch (the paper's way) against features computed once.

Both give the same updates (tests/test_recipe_options.py); only the cost differs. Synthetic lesion crops at
--size px, batch 16, EfficientNet-Lite0 (the isic-cpu preset's encoder, random weights: the cost does not depend on
them), U shape. Prints seconds per epoch of both (median of repeats, taking turns in this one run), the one-time
cost of caching, the ratio per epoch and over --epochs epochs with the caching included, and the cache's memory;
writes benchmarks/out/feature-cache-SIZEpx.json.

    .venv/bin/python benchmarks/bench_feature_cache.py [--images 48] [--size 128] [--epochs 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time

import torch
from bench_stage3 import frozen_encoder_heads, synthetic_arrays

from common import add_device_argument, interleaved_medians, machine, pick_device, write_result
from tatl.config import TrainConfig
from tatl.constants import ATTRIBUTES_2018
from tatl.data.dataset import SegmentationDataset
from tatl.models.networks import build_model
from tatl.training.engine import TrainingSetup, autocast_dtype, evaluate_heads, train_one_epoch
from tatl.training.feature_cache import cache_features


def epoch_runner(model, optimizers, train_set, val_set, cfg: TrainConfig, device: torch.device):
    """A function running one more epoch (training, then validation) of every head."""
    names = list(optimizers)
    setup = TrainingSetup(model, optimizers, cfg, train_encoder=False, label="bench", device=device,
                          amp_dtype=autocast_dtype(device, cfg))
    epochs = itertools.count()

    def epoch() -> None:
        train_one_epoch(setup, names, train_set, next(epochs))
        evaluate_heads(setup, names, val_set)

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="training images (validation: a quarter as many)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the whole-training ratio (isic-cpu: 6)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--encoder", default="paper-efficientnet-lite0")
    add_device_argument(parser)
    args = parser.parse_args()
    device = pick_device(args.device)
    names = list(ATTRIBUTES_2018)
    images, masks = synthetic_arrays(args.images + args.images // 4, args.size)
    split = args.images
    datasets = [SegmentationDataset(images[part], masks[part], targets=names)
                for part in (slice(split), slice(split, None))]
    cfg = TrainConfig(batch_size=16, device=device.type, augment=False)
    torch.manual_seed(0)
    base = build_model("unet", args.encoder)
    plain_model, plain_optimizers = frozen_encoder_heads(base, names, device)
    cached_model, cached_optimizers = frozen_encoder_heads(copy.deepcopy(base), names, device)
    started = time.perf_counter()
    cached = [cache_features(cached_model.encoder, d, device, cfg.batch_size) for d in datasets]
    caching_s = time.perf_counter() - started
    cached_model.train()
    cached_model.encoder.eval()
    memory_mb = sum(level.numel() * level.element_size() for d in cached for level in d.features) / 2**20
    times = interleaved_medians({
        "encoder_every_epoch": epoch_runner(plain_model, plain_optimizers, *datasets, cfg, device),
        "cached_features": epoch_runner(cached_model, cached_optimizers, *cached, cfg, device),
    }, args.repeats)
    plain, fast = times["encoder_every_epoch"], times["cached_features"]
    whole = args.epochs * plain / (args.epochs * fast + caching_s)
    print(f"Stage 3 TATL-FE, U, {args.encoder}, 5 attributes, {args.images} training + {len(images) - split} "
          f"validation crops at {args.size} px, batch 16; {machine(device)}")
    print("| encoder every epoch, s/epoch | cached features, s/epoch | caching once, s | speed-up per epoch | "
          f"speed-up over {args.epochs} epochs (caching included) | cache memory MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {plain:.2f} | {fast:.2f} | {caching_s:.2f} | {plain / fast:.2f}x | {whole:.2f}x | {memory_mb:.0f} |")
    result = {"encoder_every_epoch_s": plain, "cached_features_s": fast, "caching_s": caching_s,
              "ratio_per_epoch": plain / fast, "ratio_whole": whole, "epochs": args.epochs, "memory_mib": memory_mb,
              "images": args.images, "size": args.size, "encoder": args.encoder}
    print(f"wrote {write_result(f'feature-cache-{args.size}px', result, device)}")


if __name__ == "__main__":
    main()
