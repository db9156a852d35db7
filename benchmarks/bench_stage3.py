"""Stage 3 in TATL-FE: one epoch training all attribute decoders on the shared frozen encoder versus the same
attributes trained one by one (one network per attribute, each with its own frozen-encoder pass).

Both compute the same updates (tests/test_engine.py checks equality); only the cost differs. Synthetic lesion crops
at 128 px, batch 8, faithful EfficientNet-b0 (U and Link) or --encoder (e.g. resnet152, a Table 6 backbone whose
encoder outweighs its decoders). Prints seconds per epoch of both and the ratio (median of repeats, measured in
this one run) and writes benchmarks/out/stage3-ENCODER-SIZEpx.json (ending -cuda.json on a GPU, where both run with
autocast, as `tatl run` trains).

Two more measurements of how tatl's shared step is computed, each against the plain way in the same run:
- "summed backward": the shared epoch done as a plain loop would, one backward of the five summed losses (all five
  decoders' activations alive at once) instead of tatl's head-by-head backward;
- the faithful U decoder's convolution of [upsampled x, frozen skip] at each block where x needs a gradient, as
  one convolution of the concatenation vs tatl's two convolutions that never compute the skip's gradient
  (tatl.models.faithful.concatenated_conv), forward + backward of five heads.

    .venv/bin/python benchmarks/bench_stage3.py [--images 32] [--size 128] [--repeats 3] [--device auto|cpu|cuda]
        [--encoder paper-efficientnet-b0]
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools

import numpy as np
import torch
import torch.nn.functional as F

from common import add_device_argument, interleaved_medians, machine, pick_device, write_result
from tatl.config import TrainConfig
from tatl.constants import ATTRIBUTES_2018
from tatl.data.dataset import SegmentationDataset
from tatl.data.synth import render_sample
from tatl.models.faithful import FAITHFUL_BODIES, UNET_FILTERS, concatenated_conv
from tatl.models.multihead import MultiHeadSegmenter
from tatl.models.networks import build_model
from tatl.training.engine import TrainingSetup, autocast_dtype, train_one_epoch
from tatl.training.losses import TatlLoss


def synthetic_arrays(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, masks = [], []
    for index in range(n):
        sample = render_sample(index, seed=0, size=size)
        images.append(np.asarray(Image.fromarray(sample.image).resize((size, size))))
        masks.append(np.stack([np.asarray(Image.fromarray(sample.attributes[a]).resize((size, size))) > 0
                               for a in ATTRIBUTES_2018]).astype(np.uint8))
    return np.stack(images), np.stack(masks)


def tatl_epoch(base: torch.nn.Module, names: list[str], dataset, cfg: TrainConfig, device: torch.device):
    """A function running one more epoch of tatl's train_one_epoch for `names` on the frozen encoder."""
    model, optimizers = frozen_encoder_heads(base, names, device)
    epochs = itertools.count()
    setup = TrainingSetup(model, optimizers, cfg, train_encoder=False, label="bench", device=device,
                          amp_dtype=autocast_dtype(device, cfg))  # as engine.fit: None on the CPU
    return lambda: train_one_epoch(setup, names, dataset, next(epochs))


def frozen_encoder_heads(base: torch.nn.Module, names: list[str], device: torch.device):
    """A TATL-FE group as Stage 3 trains it: the encoder frozen in eval mode, one SGD per head."""
    model = MultiHeadSegmenter.from_model(copy.deepcopy(base), names).to(device, memory_format=torch.channels_last)
    model.encoder.requires_grad_(False)
    model.train()
    model.encoder.eval()
    return model, {n: torch.optim.SGD(model.heads[n].parameters(), lr=0.01, momentum=0.9) for n in names}


def summed_backward_epoch(model: MultiHeadSegmenter, optimizers: dict, dataset, device: torch.device) -> None:
    """The shared epoch as a plain loop: frozen features once per batch, one backward of the summed losses."""
    loss_fn = TatlLoss()
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True):
        x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            features = model.encoder(x)
        sum(loss_fn(model.heads[n](features), y[:, k : k + 1]) for k, n in enumerate(optimizers)).backward()
        for optimizer in optimizers.values():
            optimizer.step()


def block_steps(convs: list[torch.nn.Conv2d], xs: list[torch.Tensor], skip: torch.Tensor, split: bool) -> None:
    for conv, x in zip(convs, xs, strict=True):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        out = concatenated_conv(conv, x, skip) if split else conv(torch.cat([x, skip], dim=1))
        out.sum().backward()


def concatenation_vs_split(size: int, repeats: int, device: torch.device, heads: int = 5) -> list[dict]:
    """Per U block with a skip after the first (whose input has no gradient either way): seconds of forward and
    backward of `heads` convolutions, of the concatenation vs split (tatl.models.faithful.concatenated_conv)."""
    encoder_channels = [96, 144, 240, 672, 1280]  # faithful EfficientNet-b0 skips and bottleneck
    rows = []
    for level in range(1, 4):
        up, skip_channels = UNET_FILTERS[level - 1], encoder_channels[-2 - level]
        side = size // 2 ** (4 - level)
        conv = torch.nn.Conv2d(up + skip_channels, UNET_FILTERS[level], 3, padding=1, bias=False)
        convs = [copy.deepcopy(conv).to(device, memory_format=torch.channels_last) for _ in range(heads)]
        xs = [torch.randn(8, up, side // 2, side // 2, device=device).contiguous(memory_format=torch.channels_last)
              .requires_grad_() for _ in range(heads)]
        skip = torch.randn(8, skip_channels, side, side, device=device).contiguous(memory_format=torch.channels_last)
        times = interleaved_medians({"plain": functools.partial(block_steps, convs, xs, skip, False),
                                     "tatl": functools.partial(block_steps, convs, xs, skip, True)}, repeats)
        plain, tatl = times["plain"], times["tatl"]
        rows.append({"block": level + 1, "in": f"{up}+{skip_channels}", "out": UNET_FILTERS[level], "side": side,
                     "concatenation_s": plain, "split_s": tatl, "ratio": plain / tatl})
    return rows


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
        names, dataset = list(ATTRIBUTES_2018), SegmentationDataset(images, masks)
        alone = [tatl_epoch(base, [a], SegmentationDataset(images, masks[:, k : k + 1]), cfg, device)
                 for k, a in enumerate(names)]
        summed_model, summed_optimizers = frozen_encoder_heads(base, names, device)
        times = interleaved_medians({  # taking turns: a drift in the machine's speed hits all three alike
            "shared": tatl_epoch(base, names, dataset, cfg, device),
            "one_by_one": lambda alone=alone: [epoch() for epoch in alone],
            "summed": lambda m=summed_model, o=summed_optimizers, d=dataset: summed_backward_epoch(m, o, d, device),
        }, args.repeats)
        shared, alone, summed = times["shared"], times["one_by_one"], times["summed"]
        rows.append({"shape": shape, "shared_encoder_s": shared, "one_by_one_s": alone, "ratio": alone / shared,
                     "summed_backward_s": summed, "head_by_head_ratio": summed / shared})
    blocks = concatenation_vs_split(args.size, args.repeats, device) if args.encoder in FAITHFUL_BODIES else []
    print(f"Stage 3 TATL-FE, {args.encoder}, {len(ATTRIBUTES_2018)} attributes, {args.images} images at "
          f"{args.size} px, batch 8; {machine(device)}")
    print("| shape | shared frozen encoder, s/epoch | one by one, s/epoch | speed-up | shared, summed backward "
          "(plain), s/epoch | head-by-head speed-up |\n|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['shape']} | {row['shared_encoder_s']:.2f} | {row['one_by_one_s']:.2f} | {row['ratio']:.2f}x "
              f"| {row['summed_backward_s']:.2f} | {row['head_by_head_ratio']:.2f}x |")
    if blocks:
        print("\nU decoder, convolution of [upsampled x, frozen skip], forward + backward of 5 heads, batch 8:")
        print("| block | in channels | out | side px | concatenation s | split (tatl) s | speed-up |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for b in blocks:
            print(f"| {b['block']} | {b['in']} | {b['out']} | {b['side']} | {b['concatenation_s']:.3f} "
                  f"| {b['split_s']:.3f} | {b['ratio']:.2f}x |")
    result = {"rows": rows, "blocks": blocks, "images": args.images, "size": args.size, "encoder": args.encoder}
    print(f"wrote {write_result(f'stage3-{args.encoder}-{args.size}px', result, device)}")


if __name__ == "__main__":
    main()
