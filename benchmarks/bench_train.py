"""Training throughput: tatl's loop versus a straightforward smp loop, same model, same loss, same batches.

Plain loop: a torch DataLoader whose dataset decodes and resizes the JPEG (and reads the mask) on every access,
fp32 NCHW. tatl: images decoded once into the (dataset, size) cache, channels_last, the engine's epoch function.
Real-size JPEGs: ../shared/data/ph2 when present (765x574), else generated 1022x767 synthetic images. 256 px,
batch 8, the faithful EfficientNet-b0 U-Net. Prints images/s of both and the ratio (median of repeats, measured in
this one run) and writes benchmarks/out/train.json.

On a CUDA GPU (--device cuda, or auto when there is one) both loops run there: the plain one fp32 NCHW, tatl's with
channels_last, pinned memory and autocast (bf16, or fp16 with a gradient scaler), as `tatl run` trains; the
figures go to benchmarks/out/train-cuda.json.

    .venv/bin/python benchmarks/bench_train.py [--images 32] [--repeats 3] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import add_device_argument, interleaved_medians, machine, pick_device, write_result
from tatl.config import TrainConfig
from tatl.data.dataset import SegmentationDataset, load_images, load_masks, normalize
from tatl.data.isic import find_samples
from tatl.data.synth import write_synthetic_dataset
from tatl.models.multihead import MultiHeadSegmenter
from tatl.models.networks import build_model
from tatl.training.engine import TrainingSetup, autocast_dtype, train_one_epoch
from tatl.training.losses import TatlLoss

PH2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ph2"
SIZE, BATCH = 256, 8


class DecodeEveryTime(torch.utils.data.Dataset):
    """What a plain script does: open, decode and resize the JPEG and its mask at every access."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        with Image.open(sample.image_path) as image:
            rgb = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        with Image.open(sample.lesion_mask_path) as mask:
            target = np.asarray(mask.resize((SIZE, SIZE), Image.Resampling.NEAREST)) > 128
        return normalize(rgb), torch.from_numpy(target[None].astype(np.float32))


def plain_epoch(model, loader, optimizer, loss_fn, device: torch.device) -> None:
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        loss_fn(model(x.to(device)), y.to(device)).backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    add_device_argument(parser)
    args = parser.parse_args()
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        if PH2.is_dir():
            root, source = PH2, "PH2 765x574 JPEGs"
        else:
            root, source = Path(folder) / "synth", "synthetic 1022x767 JPEGs"
            write_synthetic_dataset(root, n=args.images, size=1022, image_size_range=(1022, 1022))
        samples = find_samples(root, ())[: args.images]
        torch.manual_seed(0)
        base = build_model("unet", "paper-efficientnet-b0")
        # plain smp-style loop
        plain_model = build_model("unet", "paper-efficientnet-b0")
        plain_model.load_state_dict(base.state_dict())
        plain_model.to(device)
        optimizer = torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9)
        loader = torch.utils.data.DataLoader(DecodeEveryTime(samples), batch_size=BATCH, shuffle=True)
        # tatl: cache once (timed separately), then epochs from memory, channels_last
        started = time.perf_counter()
        cache = Path(folder) / "cache"
        images = load_images(samples, SIZE, None, cache)
        sizes = {s.image_id: Image.open(s.image_path).size for s in samples}
        masks = load_masks(samples, ["lesion"], SIZE, None, sizes, cache)
        cache_s = time.perf_counter() - started
        dataset = SegmentationDataset(images, masks, augment=False)
        cfg = TrainConfig(batch_size=BATCH, device=device.type, channels_last=True)
        amp_dtype = autocast_dtype(device, cfg)  # as engine.fit: None on the CPU
        model = MultiHeadSegmenter.from_model(base, ["lesion"]).to(device, memory_format=torch.channels_last)
        optimizers = {"lesion": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)}
        setup = TrainingSetup(model, optimizers, cfg, train_encoder=True, label="bench", device=device,
                              amp_dtype=amp_dtype)
        epoch = iter(range(1000))
        times = interleaved_medians({  # taking turns: a drift in the machine's speed hits both alike
            "plain": lambda: plain_epoch(plain_model, loader, optimizer, TatlLoss(), device),
            "tatl": lambda: train_one_epoch(setup, ["lesion"], dataset, next(epoch)),
        }, args.repeats)
        plain_s, tatl_s = times["plain"], times["tatl"]
    n = len(samples)
    rows = {"plain_images_per_s": n / plain_s, "tatl_images_per_s": n / tatl_s, "ratio": plain_s / tatl_s,
            "tatl_cache_build_s": cache_s, "images": n, "source": source, "size": SIZE, "batch": BATCH,
            "tatl_autocast": str(amp_dtype).removeprefix("torch.") if amp_dtype else "none (fp32)"}
    print(f"training step, {source}, {SIZE} px, batch {BATCH}, faithful EfficientNet-b0 U-Net; {machine(device)}")
    print("| loop | images/s |\n|---|---:|")
    print(f"| plain smp loop (decode every access, fp32 NCHW) | {rows['plain_images_per_s']:.2f} |")
    print(f"| tatl (decoded cache, channels_last, autocast {rows['tatl_autocast']}) "
          f"| {rows['tatl_images_per_s']:.2f} |")
    print(f"ratio tatl / plain: {rows['ratio']:.2f}x (cache built once in {cache_s:.1f} s, reused by every epoch)")
    print(f"wrote {write_result('train', rows, device)}")


if __name__ == "__main__":
    main()
