"""Inference per image: tatl's pipeline (Predictor.predict) versus every network run separately from the image.

Both do the same work for variant 1,2,3 with U+Link: the Stage-1 lesion Segment-Net on the whole image, the lesion
box (+ margin), the crop, then the Stage-2 abnormal region and the five attributes for each shape, averaged over
U and Link. They are given the same weights (one run folder) and must give the same probabilities (the largest
difference is printed). The work is counted the same way: stage-resolution maps, no paste-back, no files.

- separate: each of the 13 networks on its own, as 13 independent scripts would run them: the JPEG fully decoded
  (then cropped and resized) for every network, fp32 NCHW, each attribute network with its own encoder pass.
- tatl, no sharing: `load_predictor(share_encoders=False)`: tatl's reader (JPEG draft mode, one decode per stage),
  channels_last and BatchNorm folded into the convolutions (tatl.models.fusion), but each network with its own encoder
  pass.
- tatl, decoders not merged: `load_predictor(merge_decoders=False)`: encoders shared, every head's decoder run.
- tatl: `load_predictor`, as `tatl predict` runs it: the frozen Stage-2/3 encoder, bit-identical in every
  checkpoint of a TATL-FE run, found by comparing the weights and run once per shape for all six heads; and for a
  joint run (pipeline.encoder_mode joint, --run RUN) the attributes' bit-identical decoders run once as one head with
  a channel each. For a TATL-FE run the last two rows do the same work.

The run folder is trained here (`tatl run synthetic`, 1 epoch, 20 images at 64 px: about a minute on 2 cores) unless
--run names one; it is predicted at --size px (Stage 1 and Stages 2-3, weights are fully convolutional). Images:
the real PH2 JPEGs (765x574) of ../shared/data/ph2, or with --large generated 6000x4000 JPEGs. Prints images/s of
the three and the ratios (median of repeats after a warm-up, measured in this one run) and writes
benchmarks/out/infer.json (infer-cuda.json when the networks run on a GPU: --device cuda, or auto when there
is one; fp32 for all three, as `tatl predict` runs).

    .venv/bin/python benchmarks/bench_infer.py [--images 4] [--size 512] [--repeats 3] [--large] [--run RUN]
        [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from common import (
    PH2,
    add_device_argument,
    interleaved_medians,
    machine,
    pick_device,
    resized_run,
    tiny_run,
    write_result,
)
from tatl.checkpoints import load_checkpoint
from tatl.constants import LESION
from tatl.data.crops import lesion_box
from tatl.data.dataset import normalize
from tatl.data.images import read_image
from tatl.data.isic import find_samples
from tatl.inference.predictor import Predictor, load_predictor
from tatl.layout import BEST, RunLayout
from tatl.models.ensemble import average_probabilities
from tatl.models.networks import build_model


class SeparateNetwork:
    """One checkpoint as a plain single network: fp32 NCHW, eval mode, its own encoder."""

    def __init__(self, shape: str, encoder_name: str, path: Path, device: torch.device):
        self.model = build_model(shape, encoder_name)
        self.model.load_state_dict(load_checkpoint(path)["model"])
        self.model.eval().to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        return torch.sigmoid(self.model(normalize(image)[None].to(self.device)))[0, 0].cpu().numpy()


def plain_read(path: Path, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A full decode of every pixel, then crop and bilinear resize."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        if box is not None:
            rgb = rgb.crop(box)
        return np.asarray(rgb.resize(size, Image.Resampling.BILINEAR))


class SeparatePipeline:
    """The same pipeline with 13 independent networks, each decoding the JPEG itself."""

    def __init__(self, predictor: Predictor, run: Path, device: torch.device, reader=plain_read):
        s = self.settings = predictor.settings
        self.read = reader
        layout = RunLayout(run)
        self.stage1 = SeparateNetwork(s.stage1_shape, s.encoder_name, layout.stage1(s.stage1_shape) / BEST, device)
        self.targets = {shape: {name: SeparateNetwork(shape, s.encoder_name, path, device)
                                for name, path in layout.checkpoints(s.variant, shape, s.attributes).items()}
                        for shape in s.shapes}

    def predict(self, path: Path) -> tuple[tuple[int, ...], dict[str, np.ndarray]]:
        s = self.settings
        with Image.open(path) as image:
            size = image.size
        maps = {LESION: self.stage1(self.read(path, (s.stage1_size,) * 2))}
        box, _ = lesion_box(maps[LESION] > s.threshold, size, s.crop_margin, s.min_lesion_fraction)
        per_shape = [{name: network(self.read(path, (s.image_size,) * 2, box)) for name, network in networks.items()}
                     for networks in self.targets.values()]
        maps.update(average_probabilities(per_shape))
        return box, maps

    @property
    def networks(self) -> int:
        return 1 + sum(len(networks) for networks in self.targets.values())


def encoder_passes(predictor: Predictor) -> int:
    return len(predictor.networks.stage1) + sum(len(n) for n in predictor.networks.targets.values())


def decoder_passes(predictor: Predictor) -> int:
    networks = [*predictor.networks.stage1, *(n for group in predictor.networks.targets.values() for n in group)]
    return sum(len(network.module.model.heads) for network in networks)


def largest_difference(predictor: Predictor, separate: SeparatePipeline, paths: list[Path]) -> tuple[float, bool]:
    worst, same_boxes = 0.0, True
    for path in paths:
        ours = predictor.predict(path)
        box, theirs = separate.predict(path)
        same_boxes &= tuple(ours.box) == tuple(box)
        worst = max(worst, *(float(np.abs(ours.maps[k] - theirs[k]).max()) for k in theirs))
    return worst, same_boxes


def gflop_per_image(predict, path: Path) -> float:
    """Convolution FLOPs of one image's networks (FlopCounterMode): the work, free of timing noise."""
    with FlopCounterMode(display=False) as counter:
        predict(path)
    return counter.get_total_flops() / 1e9


def passes_over(paths: list[Path], predict) -> Callable[[], list]:
    return lambda: [predict(path) for path in paths]


def image_paths(folder: Path, count: int, large: bool) -> tuple[list[Path], str]:
    if large or not PH2.is_dir():
        from bench_decode import write_test_jpeg

        paths = [folder / f"large_{index:02d}.jpg" for index in range(count)]
        for index, path in enumerate(paths):
            write_test_jpeg(path, seed=index)
        return paths, "generated 6000x4000 JPEGs (q90)"
    return [s.image_path for s in find_samples(PH2, ())[:count]], "PH2 765x574 JPEGs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=512, help="stage input side in px (multiple of 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="6000x4000 JPEGs instead of PH2")
    parser.add_argument("--run", type=Path, help="a trained variant-1,2,3 run folder (default: train a tiny one)")
    add_device_argument(parser)
    args = parser.parse_args()
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        run = args.run or tiny_run(folder)
        view = resized_run(run, args.size, folder)
        paths, source = image_paths(folder, args.images, args.large)
        torch.manual_seed(0)
        shared = load_predictor(view, device=device.type)
        alone = load_predictor(view, device=device.type, share_encoders=False)
        unmerged = load_predictor(view, device=device.type, merge_decoders=False)
        separate = SeparatePipeline(shared, view, device)
        difference, same_boxes = largest_difference(shared, separate, paths[:2])
        separate.read = read_image  # the same pixels as tatl's: only the networks' arithmetic may differ
        network_difference, _ = largest_difference(shared, separate, paths[:2])
        separate.read = plain_read
        checked = len(paths[:2])
        gflop = {"separate": gflop_per_image(separate.predict, paths[0]),
                 "tatl_no_sharing": gflop_per_image(alone.predict, paths[0]),
                 "tatl_decoders_not_merged": gflop_per_image(unmerged.predict, paths[0]),
                 "tatl": gflop_per_image(shared.predict, paths[0])}

        # warm-up: the checks above have run every pipeline
        pipelines = {"separate": separate.predict, "tatl_no_sharing": alone.predict,
                     "tatl_decoders_not_merged": unmerged.predict, "tatl": shared.predict}
        times = interleaved_medians({name: passes_over(paths, p) for name, p in pipelines.items()}, args.repeats,
                                    warmup=0)
    n = len(paths)
    rows = {f"{k}_images_per_s": n / t for k, t in times.items()}
    rows.update(ratio=times["separate"] / times["tatl"], ratio_sharing_only=times["tatl_no_sharing"] / times["tatl"],
                ratio_merging_only=times["tatl_decoders_not_merged"] / times["tatl"],
                decoder_passes={"separate": separate.networks, "tatl_no_sharing": decoder_passes(alone),
                                "tatl_decoders_not_merged": decoder_passes(unmerged), "tatl": decoder_passes(shared)},
                gflop_per_image=gflop,
                encoder_passes={"separate": separate.networks, "tatl_no_sharing": encoder_passes(alone),
                                "tatl_decoders_not_merged": encoder_passes(unmerged), "tatl": encoder_passes(shared)},
                max_probability_difference=difference, max_difference_same_pixels=network_difference,
                same_boxes=same_boxes, images=n, source=source,
                size=args.size, run=str(args.run) if args.run else "tiny synthetic run (1 epoch, 64 px)")
    passes, decoders = rows["encoder_passes"], rows["decoder_passes"]
    print(f"inference per image, variant 1,2,3, {'+'.join(shared.settings.shapes)}, {source}, {args.size} px stage "
          f"inputs, {n} images; {machine(device)}")
    print("| pipeline | encoder passes per image | decoder passes | GFLOP per image | images/s |")
    print("|---|---:|---:|---:|---:|")
    labels = {"separate": "separate networks (full JPEG decode per network, fp32 NCHW)",
              "tatl_no_sharing": "tatl, encoders not shared (draft decode once per stage, channels_last, BatchNorm "
                                 "folded)",
              "tatl_decoders_not_merged": "tatl, encoders shared, decoders not merged",
              "tatl": "tatl (shared encoders, merged bit-identical decoders)"}
    for key, label in labels.items():
        print(f"| {label} | {passes[key]} | {decoders[key]} | {gflop[key]:.1f} "
              f"| {rows[key + '_images_per_s']:.3f} |")
    print(f"ratio tatl / separate: {rows['ratio']:.2f}x (sharing and merging: {rows['ratio_sharing_only']:.2f}x, "
          f"merging alone: {rows['ratio_merging_only']:.2f}x); FLOP ratio {gflop['separate'] / gflop['tatl']:.2f}x")
    print(f"check on {checked} image(s): largest probability difference tatl vs separate {difference:.1e} (their "
          f"full decode vs tatl's reader: draft mode where the image is >= 2x the stage size), "
          f"{network_difference:.1e} given the same pixels; same lesion boxes: {same_boxes}")
    print(f"wrote {write_result('infer', rows, device)}")


if __name__ == "__main__":
    main()
