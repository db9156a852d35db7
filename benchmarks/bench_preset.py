"""How long a preset's `tatl run` takes here: one measured epoch of each kind of network, times the networks it trains.

Measured on --images images of DATA (default ../shared/data/isic2018-task2-256) at the preset's image_size and batch
size, with its encoder, weights and train.augment, through the engine's own epoch and validation functions:
- a whole network with a trainable encoder and one head (Stage 2, and Stage 3 without Stage 2 or with TATL-NF):
  one training epoch and one validation pass, U and Link, in seconds per image;
- a TATL-FE group (every attribute's decoder on one frozen encoder pass, Stage 3 after Stage 2): the same;
- the Segment-Net's prediction at stage1_size (its boxes crop variants 1,3 and 1,2,3; it is trained elsewhere and
  passed with --segment-net, so not trained here).
Then counts what the preset trains (tatl.layout.variant_stages: Stage 2 once per input kind and shape, Stage 3 per
variant and shape: one frozen group or one network per attribute), assumes every network runs all train.epochs
(the upper bound early stopping can only shorten) and prints the arithmetic, network by network. Not counted:
decoding the images into the cache and the official scoring at original size (seconds at 256 px).

    .venv/bin/python benchmarks/bench_preset.py [--config isic-cpu] [--set data.image_size=96] [--images 64]
        [--data DIR] [--repeats 1] [--from-cpu] [--count N] [--train-stage1]

One run takes a few minutes. On a machine shared with other work wall times are meaningless: --from-cpu estimates
from one thread's CPU time (see WALL_PER_CPU), to perhaps 20%.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import machine, write_result
from tatl.config import load_config
from tatl.data.dataset import SegmentationDataset, load_images, load_masks
from tatl.data.isic import find_samples
from tatl.layout import inputs_of, variant_stages
from tatl.models.multihead import MultiHeadSegmenter
from tatl.models.networks import build_model
from tatl.training.engine import TrainingSetup, evaluate_heads, train_one_epoch

TASK2_256 = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic2018-task2-256"
# On a machine shared with other work the wall time says more about the others than about tatl, and so does the CPU
# time of 2 threads (each spins while it waits for the other). One thread's CPU time is steady; times WALL_PER_CPU it
# estimates a whole run's wall time on the idle 2-core machine, both threads, every overhead (checkpoints, scoring,
# decoding) included. Calibrated on two whole runs of 2 threads: the demo (8 min 13 s on the idle machine, README;
# this script --config demo --train-stage1 --from-cpu: 410 s of one thread's CPU, 1.20x) and variants 3 and 2,3 of
# b0 U from a random start on 600 images at 128 px, 6 epochs, augmented (48 min, an earlier session; 2,140 s, 1.35x).
# The larger, for a preset that must finish in time.
WALL_PER_CPU = 1.35


def seconds_per_image(work, dataset: SegmentationDataset, warmup: SegmentationDataset, repeats: int,
                      from_cpu: bool) -> float:
    """Median seconds per image of `work(dataset)`, after one pass over the small `warmup` set: wall time, or
    (from_cpu, on a busy machine, one thread) this process's CPU time x WALL_PER_CPU."""
    work(warmup)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        work(dataset)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return (cpu * WALL_PER_CPU if from_cpu else wall) / len(dataset)


def measure(config, images: np.ndarray, masks: np.ndarray, shape: str, frozen_group: bool, repeats: int,
            from_cpu: bool) -> dict:
    """Seconds per image of one training epoch and of one validation pass of a whole network or a frozen group."""
    attributes = config.data.attributes
    names = attributes if frozen_group else attributes[:1]
    torch.manual_seed(0)
    model = MultiHeadSegmenter.from_model(build_model(shape, config.model.encoder_name,
                                                     config.model.encoder_weights), names)
    model.to(memory_format=torch.channels_last)
    model.encoder.requires_grad_(not frozen_group)
    optimizers = {n: torch.optim.SGD([*model.heads[n].parameters(), *([] if frozen_group else
                                      model.encoder.parameters())], lr=0.01, momentum=0.9) for n in names}
    setup = TrainingSetup(model, optimizers, config.train, train_encoder=not frozen_group, label="bench")
    channels = masks[:, : len(names)]
    dataset = SegmentationDataset(images, channels, augment=config.train.augment, targets=names)
    warmup = SegmentationDataset(images[: config.train.batch_size], channels[: config.train.batch_size],
                                 targets=names)
    epochs = iter(range(1000))
    train = seconds_per_image(lambda d: train_one_epoch(setup, names, d, next(epochs)), dataset, warmup, repeats,
                              from_cpu)
    validate = seconds_per_image(lambda d: evaluate_heads(setup, names, d), dataset, warmup, repeats, from_cpu)
    return {"train_s_per_image": train, "val_s_per_image": validate}


def networks_trained(config, stage1: bool) -> list[tuple[str, str, bool, int]]:
    """(what, shape, frozen group?, epochs) of every network or group the preset trains, Stage 2 once per kind and
    shape (train.stage2_epochs); `stage1`: the Segment-Net too (measured at image_size)."""
    t, mode = config.train, config.pipeline.encoder_mode
    trained, seen = [("stage 1", config.model.stage1_shape, False, t.epochs)] if stage1 else [], set()
    for variant in config.pipeline.variants:
        stages, kind = variant_stages(variant), inputs_of(variant)
        for shape in config.model.shapes:
            if 2 in stages and (kind, shape) not in seen:
                seen.add((kind, shape))
                trained.append((f"stage 2 ({kind})", shape, False, t.stage2_epochs or t.epochs))
            if mode == "joint":  # one whole network, an output channel per attribute
                trained.append((f"stage 3 v{variant} (joint)", shape, False, t.epochs))
            elif 2 in stages and mode == "frozen":
                trained.append((f"stage 3 v{variant} (frozen group)", shape, True, t.epochs))
            else:
                trained += [(f"stage 3 v{variant} ({a})", shape, False, t.epochs) for a in config.data.attributes]
    return trained


def predictions(config) -> list[tuple[str, str, bool]]:
    """Prediction passes over the validation images after training: every variant and Stage-2 kind, per shape."""
    passes, kinds = [], set()
    for variant in config.pipeline.variants:
        stages, kind = variant_stages(variant), inputs_of(variant)
        for shape in config.model.shapes:
            # a joint run's attribute networks share one encoder (bit-identical): predicted like a frozen group
            mode = config.pipeline.encoder_mode
            shared = mode == "joint" or (2 in stages and mode == "frozen")
            passes += [(f"v{variant}", shape, True)] if shared else [(f"v{variant}", shape, False)] * len(
                config.data.attributes)
            if 2 in stages and kind not in kinds:
                passes.append((f"stage 2 ({kind})", shape, False))
        kinds.add(kind)
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="isic-cpu")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--data", type=Path, default=TASK2_256)
    parser.add_argument("--images", type=int, default=64, help="images per measured epoch")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--from-cpu", action="store_true",
                        help=f"on a busy machine: one thread's CPU time x {WALL_PER_CPU} estimates the idle wall time")
    parser.add_argument("--count", type=int, help="images the run would use (default: every image of DATA)")
    parser.add_argument("--train-stage1", action="store_true",
                        help="count training the Segment-Net too, as a run without --segment-net does (the demo)")
    args = parser.parse_args()
    if args.from_cpu:
        torch.set_num_threads(1)
    config = load_config(args.config, args.overrides)
    config.train.device = "cpu"
    all_samples = find_samples(args.data, config.data.attributes)
    samples = all_samples[: args.images]
    size = config.data.image_size
    sizes = {s.image_id: Image.open(s.image_path).size for s in samples}
    images = load_images(samples, size, None, None)
    masks = load_masks(samples, config.data.attributes, size, None, sizes, None)
    measured = {(shape, group): measure(config, images, masks, shape, group, args.repeats, args.from_cpu)
                for shape in config.model.shapes for group in (False, True)}
    count = args.count or len(all_samples)
    n_val = round(count * config.data.val_fraction)
    n_train = count - n_val
    print(f"{args.config} {' '.join(args.overrides)}: {count} images ({n_train} train, {n_val} val) at "
          f"{size} px, batch {config.train.batch_size}, {config.model.encoder_name} ({config.model.encoder_weights}),"
          f" augment {config.train.augment}, {config.pipeline.encoder_mode} Stage 3; measured on {len(samples)} "
          f"images; "
          f"{f'one thread CPU time x {WALL_PER_CPU}' if args.from_cpu else 'wall time'}; {machine()}")
    print("\n| network | shape | s/image train | s/image val | s/epoch | x epochs = s |\n|---|---|---:|---:|---:|---:|")
    total = 0.0
    for what, shape, group, epochs in networks_trained(config, args.train_stage1):
        m = measured[(shape, group)]
        per_epoch = n_train * m["train_s_per_image"] + n_val * m["val_s_per_image"]
        total += epochs * per_epoch
        print(f"| {what} | {shape} | {m['train_s_per_image']:.3f} | {m['val_s_per_image']:.3f} | {per_epoch:.0f} "
              f"| {epochs * per_epoch:.0f} |")
    predicting = sum(n_val * measured[(shape, group)]["val_s_per_image"] for _, shape, group in predictions(config))
    boxes = 0.0
    if any(1 in variant_stages(v) for v in config.pipeline.variants):
        stage1 = config.data.stage1_size  # the Segment-Net's input; an attribute mask stands in for the lesion's
        stage1_images = load_images(samples, stage1, None, None)
        stage1_masks = load_masks(samples, config.data.attributes[:1], stage1, None, sizes, None)
        boxes = count * measure(config, stage1_images, stage1_masks, config.model.stage1_shape, False,
                                           args.repeats, args.from_cpu)["val_s_per_image"]
    print(f"\ntraining {total:.0f} s + predicting the validation images {predicting:.0f} s + Segment-Net boxes of "
          f"all images {boxes:.0f} s = {(total + predicting + boxes) / 60:.1f} min")
    per_kind = {f"{shape}-{'group' if group else 'whole'}": m for (shape, group), m in measured.items()}
    result = {"config": args.config, "overrides": args.overrides, "from_cpu": args.from_cpu, "measured": per_kind,
              "train_s": total, "predict_s": predicting, "boxes_s": boxes}
    print(f"wrote {write_result('preset-' + args.config, result)}")


if __name__ == "__main__":
    main()
