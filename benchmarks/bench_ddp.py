"""Several processes: one training epoch and one validation pass, 1 process against N torchrun processes.

The same work both ways: the faithful EfficientNet-b0 U-Net with a trainable encoder (Stage 1-2 style), synthetic
images, the same global batch (each of the N processes takes 1/N of it, DistributedDataParallel averages the
gradients; validation images are dealt out and the sums added up). The single process gets all the cores as
threads, each of the N processes cores/N threads, so both use the whole machine. Prints seconds per epoch and per
validation pass (median over epochs after a warm-up one) and the speed-up, and writes benchmarks/out/ddp.json.
On a CPU this measures the cost of DDP (gloo all-reduce of every gradient, once per step) against one process's
threads; on several GPUs the same script measures scaling (`--device cuda`, one GPU per process, NCCL).

    .venv/bin/python benchmarks/bench_ddp.py [--processes 2] [--images 48] [--size 128] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import machine, synchronize, write_result

BATCH = 8


def worker(args: argparse.Namespace) -> None:
    """One process's part (under torchrun or alone): time its epochs; rank 0 writes the times to args.times."""
    from bench_stage3 import synthetic_arrays

    from tatl import distributed
    from tatl.config import TrainConfig
    from tatl.data.dataset import SegmentationDataset
    from tatl.models.multihead import MultiHeadSegmenter
    from tatl.models.networks import build_model
    from tatl.training import parallel
    from tatl.training.engine import TrainingSetup, autocast_dtype, evaluate_heads, train_one_epoch

    torch.set_num_threads(args.threads)
    distributed.setup(args.device)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    images, masks = synthetic_arrays(args.images, args.size)
    train_set, val_set = SegmentationDataset(images, masks[:, :1]), SegmentationDataset(images, masks[:, :1])
    cfg = TrainConfig(batch_size=BATCH, device=device.type, augment=False)
    torch.manual_seed(0)
    model = MultiHeadSegmenter.from_model(build_model("unet", "paper-efficientnet-b0"), ["a"])
    model.to(device, memory_format=torch.channels_last)
    parallel.freeze_unused_parameters(model, train_set[0][0][None].to(device))
    optimizers = {"a": torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)}
    setup = TrainingSetup(model, optimizers, cfg, train_encoder=True, label="bench", device=device,
                          amp_dtype=autocast_dtype(device, cfg))
    step_model = parallel.training_forward(model, ["a"], True, device)
    train_times, val_times = [], []
    for epoch in range(args.epochs):
        distributed.barrier()
        started = time.perf_counter()
        train_one_epoch(setup, ["a"], train_set, epoch, step_model)
        synchronize()
        distributed.barrier()
        validated = time.perf_counter()
        evaluate_heads(setup, ["a"], val_set)
        synchronize()
        distributed.barrier()
        train_times.append(validated - started)
        val_times.append(time.perf_counter() - validated)
    if distributed.is_main_process():
        Path(args.times).write_text(json.dumps({"train": train_times[1:], "val": val_times[1:],
                                                "world": distributed.world_size()}))
    distributed.teardown()


def measure(args: argparse.Namespace, processes: int, times: Path) -> dict:
    cores = os.cpu_count() or 1
    threads = max(1, cores // processes) if args.device == "cpu" else 1
    own = [str(Path(__file__).resolve()), "--worker", "--times", str(times), "--threads", str(threads),
           "--images", str(args.images), "--size", str(args.size), "--epochs", str(args.epochs),
           "--device", args.device]
    launch = [sys.executable, *own] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *own]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(launch, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(launch)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(times.read_text())
    return {"processes": processes, "threads_per_process": threads, "world": result["world"],
            "train_s_per_epoch": statistics.median(result["train"]), "val_s_per_pass": statistics.median(result["val"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs + 1 warm-up")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--times", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(args, n, Path(folder) / f"times{n}.json") for n in (1, args.processes)]
    one, many = rows
    speedup = {"train": one["train_s_per_epoch"] / many["train_s_per_epoch"],
               "val": one["val_s_per_pass"] / many["val_s_per_pass"]}
    device = torch.device(args.device)
    print(f"one epoch of the faithful U-Net (trainable encoder), {args.images} synthetic images at {args.size} px, "
          f"global batch {BATCH}; {machine(device)}")
    print("| processes x threads | train s/epoch | validation s/pass |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['processes']} x {row['threads_per_process']} | {row['train_s_per_epoch']:.2f} "
              f"| {row['val_s_per_pass']:.2f} |")
    print(f"speed-up of {args.processes} processes: training {speedup['train']:.2f}x, validation {speedup['val']:.2f}x")
    result = {"rows": rows, "speedup": speedup, "images": args.images, "size": args.size}
    print(f"wrote {write_result('ddp', result, device)}")


if __name__ == "__main__":
    main()
