"""Reading a 6000x4000 JPEG at 512 px: draft-mode decoding (read_image) versus a full decode and resize; and what
decoding costs a training epoch: tatl's decoded-image cache versus decoding every JPEG (and mask) every epoch.

Writes a smooth random 6000x4000 JPEG (quality 90, like a dermoscopy photograph) into a temporary folder, times
each way at 512 px and at 256 px (the default stage input, where 1/8 DCT scaling applies), median of 5 after one
warm-up, prints a table with the ratio and the mean absolute pixel difference between the two results, and writes
the figures to benchmarks/out/decode.json.

Then one training epoch (tatl's train_one_epoch, the faithful EfficientNet-b0 U-Net, 256 px, batch 8,
channels_last, no augmentation) of --epoch-images images, twice in the same run: from tatl's cache (load_images /
load_masks: decoded once into .npy files, read back as memory maps) and from a dataset that calls the same readers
(read_image, read_mask, resize_mask) at every access, as training without a cache would. The two give the same
tensors (checked), so only the decoding differs. Sources: the real PH2 JPEGs (765x574) and generated 6000x4000
JPEGs with 6000x4000 lesion masks (ISIC 2018's largest photographs). Median of --epoch-repeats epochs after a
warm-up; figures in benchmarks/out/cache_epoch.json.

    .venv/bin/python benchmarks/bench_decode.py [--epoch-images 16] [--epoch-repeats 3] [--epoch-sources ph2 large]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tatl.data.images import read_image

SOURCE_SIZE = (6000, 4000)  # (width, height): a typical ISIC 2018 full-resolution photograph
TARGET_SIDES = (512, 256)  # 512: the brief; 256: the default stage input size (1/8 DCT scale applies)
REPEATS = 5
OUT = Path(__file__).parent / "out" / "decode.json"


def write_test_jpeg(path: Path, seed: int = 0) -> None:
    """Smooth colour blobs plus mild grain: compresses like a photograph, unlike pure noise or a flat colour."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(40, 220, size=(30, 45, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize(SOURCE_SIZE, Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-6, 7, size=smooth.shape, dtype=np.int16)
    Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path, quality=90)


def full_decode(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as image:
        image.load()  # every one of the 24 million pixels
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return np.array(rgb.resize(size, Image.Resampling.BILINEAR))


def median_seconds(read: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    result = read()  # warm-up: file cache, libjpeg tables
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = read()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def time_both(path: Path, side: int) -> dict:
    size = (side, side)
    draft_s, draft = median_seconds(lambda: read_image(path, size=size))
    full_s, full = median_seconds(lambda: full_decode(path, size))
    return {
        "target": f"{side}x{side}",
        "draft_read_image_s": round(draft_s, 4),
        "full_decode_resize_s": round(full_s, 4),
        "speedup": round(full_s / draft_s, 2),
        "mean_abs_diff": round(float(np.abs(draft.astype(np.int16) - full).mean()), 3),
    }


def decode() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "large.jpg"
        write_test_jpeg(path)
        source = f"{SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} JPEG q90, {path.stat().st_size / 1e6:.1f} MB"
        rows = [time_both(path, side) for side in TARGET_SIDES]
    print(f"reading a {source} (median of {REPEATS} after a warm-up)")
    print("| target | read_image (draft) s | full decode + resize s | speed-up | mean abs diff (0..255) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['target']} | {r['draft_read_image_s']:.4f} | {r['full_decode_resize_s']:.4f} | {r['speedup']}x "
            f"| {r['mean_abs_diff']} |"
        )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, Pillow {Image.__version__}"
    )
    figures = {"source": source, "repeats": REPEATS, "results": rows, "machine": machine}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


# ---------------------------------------------------------------------------------- cached vs uncached epoch
EPOCH_SIZE, EPOCH_BATCH = 256, 8


def write_large_dataset(folder: Path, count: int) -> Path:
    """count 6000x4000 JPEGs with an elliptic 6000x4000 lesion mask each, in a flat folder."""
    from PIL import ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    width, height = SOURCE_SIZE
    for index in range(count):
        write_test_jpeg(folder / f"large_{index:02d}.jpg", seed=index)
        mask = Image.new("L", SOURCE_SIZE, 0)
        inset = 300 + 40 * index
        ImageDraw.Draw(mask).ellipse((inset, inset, width - inset, height - inset), fill=255)
        mask.save(folder / f"large_{index:02d}_segmentation.png")
    return folder


def epoch_comparison(source: str, count: int, repeats: int, folder: Path) -> dict:
    import copy
    import itertools

    import torch

    from common import PH2, median_seconds
    from tatl.config import TrainConfig
    from tatl.data.dataset import SegmentationDataset, load_images, load_masks, normalize
    from tatl.data.images import image_size, read_mask, resize_mask
    from tatl.data.isic import find_samples
    from tatl.models.multihead import MultiHeadSegmenter
    from tatl.models.networks import build_model
    from tatl.training.engine import TrainingSetup, train_one_epoch

    class DecodeEveryEpoch(torch.utils.data.Dataset):
        """tatl's own readers at every access: the work the cache saves."""

        def __init__(self, samples):
            self.samples = samples

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, index: int):
            sample, side = self.samples[index], (EPOCH_SIZE, EPOCH_SIZE)
            mask = resize_mask(read_mask(sample.lesion_mask_path, image_size(sample.image_path)), side)
            return normalize(read_image(sample.image_path, side)), torch.from_numpy(mask[None].astype(np.float32))

    if source == "ph2":
        if not PH2.is_dir():
            return {"source": source, "skipped": f"{PH2} not found"}
        root, what = PH2, "PH2 765x574 JPEGs"
    else:
        root, what = write_large_dataset(folder / "large", count), "generated 6000x4000 JPEGs + masks"
    samples = find_samples(root, ())[:count]
    started = time.perf_counter()
    sizes = {s.image_id: image_size(s.image_path) for s in samples}
    cache = folder / f"cache-{source}"
    cached = SegmentationDataset(load_images(samples, EPOCH_SIZE, None, cache),
                                 load_masks(samples, ["lesion"], EPOCH_SIZE, None, sizes, cache))
    cache_s = time.perf_counter() - started
    uncached = DecodeEveryEpoch(samples)
    for index in (0, len(samples) - 1):
        for ours, theirs in zip(cached[index], uncached[index], strict=True):
            assert torch.equal(ours, theirs), f"{samples[index].image_path}: cache and decoder differ"
    torch.manual_seed(0)
    base = build_model("unet", "paper-efficientnet-b0")
    cfg = TrainConfig(batch_size=EPOCH_BATCH, device="cpu", channels_last=True, augment=False)

    def epoch_seconds(dataset) -> float:
        model = MultiHeadSegmenter.from_model(copy.deepcopy(base), ["lesion"]).to(memory_format=torch.channels_last)
        optimizers = {"lesion": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)}
        setup = TrainingSetup(model, optimizers, cfg, train_encoder=True, label="bench")
        epochs = itertools.count()
        return median_seconds(lambda: train_one_epoch(setup, ["lesion"], dataset, next(epochs)), repeats)

    uncached_s, cached_s = epoch_seconds(uncached), epoch_seconds(cached)
    return {"source": what, "images": len(samples), "uncached_epoch_s": uncached_s, "cached_epoch_s": cached_s,
            "ratio": uncached_s / cached_s, "cache_build_s": cache_s}


def epochs(count: int, repeats: int, sources: list[str]) -> dict:
    from common import machine, write_result

    with tempfile.TemporaryDirectory() as folder:
        rows = [epoch_comparison(source, count, repeats, Path(folder)) for source in sources]
    print(f"training epoch, faithful EfficientNet-b0 U-Net, {EPOCH_SIZE} px, batch {EPOCH_BATCH}, channels_last, "
          f"median of {repeats} after a warm-up; {machine()}")
    print("| images | decode every epoch, s/epoch | tatl cache, s/epoch | speed-up | cache built once in s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['source']} | skipped: {r['skipped']} | | | |")
            continue
        print(f"| {r['images']} {r['source']} | {r['uncached_epoch_s']:.2f} | {r['cached_epoch_s']:.2f} "
              f"| {r['ratio']:.2f}x | {r['cache_build_s']:.1f} |")
    figures = {"rows": rows, "size": EPOCH_SIZE, "batch": EPOCH_BATCH, "repeats": repeats}
    print(f"wrote {write_result('cache_epoch', figures)}")
    return figures


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epoch-images", type=int, default=16, help="images per epoch; 0: skip the epoch part")
    parser.add_argument("--epoch-repeats", type=int, default=3)
    parser.add_argument("--epoch-sources", nargs="+", choices=["ph2", "large"], default=["ph2", "large"])
    args = parser.parse_args()
    figures = decode()
    if args.epoch_images:
        figures["epochs"] = epochs(args.epoch_images, args.epoch_repeats, args.epoch_sources)
    return figures


if __name__ == "__main__":
    main()
