"""Stage 3 in TATL-FE: one epoch training all attribute decoders on the shared frozen encoder versus the same
attributes trained one by one (one network per attribute, each with its own frozen-encoder pass).

Both compute the same updates (tests/test_engine.py checks equality); only the cost differs. Synthetic lesion crops
at 128 px, batch 8, faithful EfficientNet-b0 (U and Link) or --encoder (e.g. resnet152, a Table 6 backbone whose
encoder outweighs its decoders). Prints seconds per epoch of both and the ratio (median
of repeats, measured in this one run) and writes benchmarks/out/stage3.json (stage3-cuda.json on a GPU, where
both run with autocast, as `tatl run` trains).

    .venv/bin/python benchmarks/bench_stage3.py [--images 32] [--size 128] [--repeats 3] [--device auto|cpu|cuda]
        [--encoder paper-efficientnet-b0]
"""

from __future__ import annotations

import argparse
import copy
import itertools

import numpy as np
import torch

from common import add_device_argument, machine, median_seconds, pick_device, write_result
from tatl.config import ATTRIBUTES_2018, TrainConfig
from tatl.data.dataset import SegmentationDataset
from tatl.data.synth import render_sample
from tatl.engine import autocast_dtype, train_one_epoch
from tatl.losses import TatlLoss
from tatl.models import build_model
from tatl.multihead import MultiHeadSegmenter


def synthetic_arrays(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, masks = [], []
    for index in range(n):
        sample = render_sample(index, seed=0, size=size)
        images.append(np.asarray(Image.fromarray(sample.image).resize((size, size))))
        masks.append(np.stack([np.asarray(Image.fromarray(sample.attributes[a]).resize((size, size))) > 0
                               for a in ATTRIBUTES_2018]).astype(np.uint8))
    return np.stack(images), np.stack(masks)


def epoch_seconds(base: torch.nn.Module, names: list[str], dataset, cfg: TrainConfig, repeats: int,
                  device: torch.device) -> float:
    model = MultiHeadSegmenter.from_model(copy.deepcopy(base), names).to(device, memory_format=torch.channels_last)
    model.encoder.requires_grad_(False)
    optimizers = {n: torch.optim.SGD(model.heads[n].parameters(), lr=0.01, momentum=0.9) for n in names}
    epochs = itertools.count()
    amp_dtype = autocast_dtype(device, cfg)  # as engine.fit: None on the CPU
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return median_seconds(lambda: train_one_epoch(model, names, dataset, cfg, next(epochs), device, TatlLoss(),
                                                  optimizers, scaler, amp_dtype, False, "bench"), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encoder", default="paper-efficientnet-b0", help="model.encoder_name of both shapes")
    add_device_argument(parser)
    args = parser.parse_args()
    device = pick_device(args.device)
    images, masks = synthetic_arrays(args.images, args.size)
    cfg = TrainConfig(batch_size=8, device=device.type, augment=False)
    rows = []
    for shape in ("unet", "linknet"):
        torch.manual_seed(0)
        base = build_model(shape, args.encoder)
        shared = epoch_seconds(base, list(ATTRIBUTES_2018), SegmentationDataset(images, masks), cfg, args.repeats,
                               device)
        alone = sum(
            epoch_seconds(base, [a], SegmentationDataset(images, masks[:, k : k + 1]), cfg, args.repeats,
                          device)
            for k, a in enumerate(ATTRIBUTES_2018)
        )
        rows.append({"shape": shape, "shared_encoder_s": shared, "one_by_one_s": alone, "ratio": alone / shared})
    print(f"Stage 3 TATL-FE, {args.encoder}, {len(ATTRIBUTES_2018)} attributes, {args.images} images at "
          f"{args.size} px, batch 8; {machine(device)}")
    print("| shape | shared frozen encoder, s/epoch | one by one, s/epoch | speed-up |\n|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['shape']} | {row['shared_encoder_s']:.2f} | {row['one_by_one_s']:.2f} | {row['ratio']:.2f}x |")
    result = {"rows": rows, "images": args.images, "size": args.size, "encoder": args.encoder}
    print(f"wrote {write_result(f'stage3-{args.encoder}', result, device)}")


if __name__ == "__main__":
    main()
