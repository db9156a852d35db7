"""Shared by the benchmarks: the machine's description, a median-of-repeats timer, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

OUT_DIR = Path(__file__).parent / "out"


def machine() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
    }


def median_seconds(work: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `work()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def write_result(name: str, result: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    return path


PH2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ph2"
TINY_RUN_SETTINGS = ("train.epochs=1", "synth.n=20", "synth.size=64", "data.image_size=64", "data.stage1_size=64")


def tiny_run(folder: Path) -> Path:
    """Train the smallest real TATL run (variant 1,2,3, U+Link, frozen Stage-3 encoder) into `folder`/run.

    One epoch on 20 synthetic 64 px images: about a minute on 2 cores. The weights are as good as random, which is
    all a timing needs, but the run folder is the real thing: `tatl predict` loads it, compares its checkpoints'
    encoders and shares the frozen one, exactly as for a fully trained run.
    """
    import subprocess
    import sys

    run = Path(folder) / "run"
    command = [str(Path(sys.executable).with_name("tatl")), "run", "synthetic", "--out", str(run)]
    for setting in TINY_RUN_SETTINGS:
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"training the tiny run failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    for last in run.rglob("last.pt"):  # resume state only: predict reads best.pt
        last.unlink()
    return run


def resized_run(run: Path, size: int, folder: Path) -> Path:
    """A view of `run` predicting at `size` px (Stage 1 and Stages 2-3): its own config.yaml, the same checkpoint
    folders (symbolic links). The networks are fully convolutional, so trained-at-64 weights run at any multiple
    of 32; the work per image is that of a run trained at `size`."""
    from tatl.config import load_config, save_config

    view = Path(folder) / f"run-{size}px"
    view.mkdir(parents=True, exist_ok=True)
    config = load_config(run / "config.yaml")
    config.data.image_size = config.data.stage1_size = size
    save_config(config, view / "config.yaml")
    for entry in run.iterdir():
        if entry.name.startswith("stage") or entry.name == "thresholds.json":
            (view / entry.name).symlink_to(entry.resolve())
    return view
