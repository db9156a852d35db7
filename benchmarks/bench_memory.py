"""Peak resident memory (RSS) of training steps and of `tatl predict` on folders of 6000x4000 JPEGs.

Every case runs in a fresh process and its peak is that process's own ru_maxrss (os.wait4), so peaks never mix:
- python with torch and tatl imported, nothing run: the floor every case includes;
- tatl's training epoch function (channels_last, SGD, loss Eq. 1) on the faithful EfficientNet-b0 U-Net at --size
  px, batch --batch, for each number of --steps (random images held in memory);
- Stage 3 of TATL-FE (five attribute decoders on the frozen encoder) for the first number of --steps, as tatl
  trains it (head by head: one head's activations alive at a time) and as a plain loop would (one backward of the
  summed losses, bench_stage3.summed_backward_epoch);
- load_predictor on the run folder below, nothing predicted: the networks' share of the predict peaks;
- `tatl predict RUN FOLDER --out OUT` on folders of --folders generated 6000x4000 JPEGs (q90, ~3.6 MB each), with the
  run predicting at --predict-size px (tatl's default stage size). The claim under test is bounded memory: one image
  at a time, at most one full-size (96 MB) probability map held, so the peak must not grow with the folder.
The run folder is trained here (`tatl run synthetic`, 1 epoch, 20 images at 64 px: about a minute on 2 cores)
unless --run names one. Prints a table of peak RSS and wall time per case and the growth of the predict peak from
the smallest to the largest folder, and writes benchmarks/out/memory.json.

    .venv/bin/python benchmarks/bench_memory.py [--size 256] [--batch 8] [--steps 2 6] [--folders 2 4 8]
        [--predict-size 256] [--run RUN]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, resized_run, tiny_run, write_result

HERE = Path(__file__).resolve()


def peak_rss(command: list[str], folder: Path) -> dict:
    """Run `command` in a new process; its peak RSS in MiB (Linux ru_maxrss is in KiB) and its wall time."""
    log = folder / f"child-{time.monotonic_ns()}.log"
    started = time.perf_counter()
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "seconds": seconds}


def child_idle() -> None:
    import torch  # noqa: F401

    import tatl.inference.predictor  # noqa: F401


def child_load(run: Path) -> None:
    from tatl.inference.predictor import load_predictor

    load_predictor(run, device="cpu")


def random_data(count: int, size: int, channels: int):
    """`count` random RGB images and `channels`-channel binary masks (30% positive) as a SegmentationDataset."""
    import numpy as np

    from tatl.data.dataset import SegmentationDataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    masks = (rng.random((count, channels, size, size)) > 0.7).astype(np.uint8)
    return SegmentationDataset(images, masks)


def child_train(size: int, batch: int, steps: int) -> None:
    import torch

    from tatl.config import TrainConfig
    from tatl.models.multihead import MultiHeadSegmenter
    from tatl.models.networks import build_model
    from tatl.training.engine import TrainingSetup, train_one_epoch

    dataset = random_data(steps * batch, size, 1)
    torch.manual_seed(0)
    model = MultiHeadSegmenter.from_model(build_model("unet", "paper-efficientnet-b0"), ["lesion"])
    model = model.to(memory_format=torch.channels_last)
    optimizers = {"lesion": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)}
    cfg = TrainConfig(batch_size=batch, device="cpu", channels_last=True, augment=False)
    train_one_epoch(TrainingSetup(model, optimizers, cfg, train_encoder=True, label="bench"), ["lesion"], dataset, 0)


def child_stage3(size: int, batch: int, steps: int, plain: bool) -> None:
    import torch
    from bench_stage3 import frozen_encoder_heads, summed_backward_epoch

    from tatl.config import TrainConfig
    from tatl.constants import ATTRIBUTES_2018
    from tatl.models.networks import build_model
    from tatl.training.engine import TrainingSetup, train_one_epoch

    names, device = list(ATTRIBUTES_2018), torch.device("cpu")
    dataset = random_data(steps * batch, size, len(names))
    torch.manual_seed(0)
    model, optimizers = frozen_encoder_heads(build_model("unet", "paper-efficientnet-b0"), names, device)
    if plain:
        return summed_backward_epoch(model, optimizers, dataset, device)
    cfg = TrainConfig(batch_size=batch, device="cpu", channels_last=True, augment=False)
    train_one_epoch(TrainingSetup(model, optimizers, cfg, train_encoder=False, label="bench"), names, dataset, 0)


def write_large_jpegs(folder: Path, count: int) -> list[Path]:
    from bench_decode import write_test_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"large_{index:02d}.jpg" for index in range(count)]
    for index, path in enumerate(paths):
        write_test_jpeg(path, seed=index)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="training input side in px")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 6], help="training steps per case")
    parser.add_argument("--folders", type=int, nargs="+", default=[2, 4, 8], help="JPEGs per predicted folder")
    parser.add_argument("--predict-size", type=int, default=256, help="stage input side of the predicting run")
    parser.add_argument("--run", type=Path, help="a trained run folder (default: train a tiny one)")
    parser.add_argument("--child", choices=["idle", "load", "train", "stage3", "stage3-plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "idle":
        return child_idle()
    if args.child == "load":
        return child_load(args.run)
    if args.child == "train":
        return child_train(args.size, args.batch, args.steps[0])
    if args.child in ("stage3", "stage3-plain"):
        return child_stage3(args.size, args.batch, args.steps[0], plain=args.child == "stage3-plain")
    me = [sys.executable, str(HERE)]
    tatl = str(Path(sys.executable).with_name("tatl"))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        rows.append({"case": "python + import torch, tatl.inference.predictor (nothing run)",
                     **peak_rss([*me, "--child", "idle"], folder)})
        for steps in args.steps:
            command = [*me, "--child", "train", "--size", str(args.size), "--batch", str(args.batch),
                       "--steps", str(steps)]
            rows.append({"case": f"train: {steps} steps, faithful U-Net, {args.size} px, batch {args.batch}",
                         "kind": "train", "count": steps, **peak_rss(command, folder)})
        for child, how in (("stage3", "tatl, head by head"), ("stage3-plain", "plain, summed backward")):
            command = [*me, "--child", child, "--size", str(args.size), "--batch", str(args.batch),
                       "--steps", str(args.steps[0])]
            rows.append({"case": f"Stage 3 TATL-FE: {args.steps[0]} steps, 5 U decoders on the frozen encoder, "
                                 f"{args.size} px, batch {args.batch} ({how})", **peak_rss(command, folder)})
        run = args.run or tiny_run(folder)
        view = resized_run(run, args.predict_size, folder)
        rows.append({"case": f"load the run's networks only ({args.predict_size} px run, load_predictor)",
                     **peak_rss([*me, "--child", "load", "--run", str(view)], folder)})
        jpegs = write_large_jpegs(folder / "all", max(args.folders))
        for count in args.folders:
            images = folder / f"folder-{count}"
            images.mkdir()
            for path in jpegs[:count]:
                os.link(path, images / path.name)
            command = [tatl, "predict", str(view), str(images), "--out", str(folder / f"out-{count}")]
            rows.append({"case": f"tatl predict: {count} JPEGs of 6000x4000, {args.predict_size} px stages",
                         "kind": "predict", "count": count, **peak_rss(command, folder)})
    predict = [r for r in rows if r.get("kind") == "predict"]
    train = [r for r in rows if r.get("kind") == "train"]
    growth = predict[-1]["peak_rss_mib"] - predict[0]["peak_rss_mib"]
    print(f"peak resident memory, each case in a fresh process (ru_maxrss); {machine()}")
    print("| case | peak RSS MiB | wall s |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.1f} |")
    print(f"tatl predict peak from {predict[0]['count']} to {predict[-1]['count']} images: {growth:+.0f} MiB "
          f"({predict[-1]['peak_rss_mib'] / predict[0]['peak_rss_mib']:.2f}x); training from {train[0]['count']} "
          f"to {train[-1]['count']} steps: {train[-1]['peak_rss_mib'] - train[0]['peak_rss_mib']:+.0f} MiB")
    result = {"rows": rows, "predict_growth_mib": growth, "size": args.size, "batch": args.batch,
              "predict_size": args.predict_size, "run": str(args.run) if args.run else "tiny synthetic run"}
    print(f"wrote {write_result('memory', result)}")


if __name__ == "__main__":
    main()
