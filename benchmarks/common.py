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


def machine(device: torch.device | None = None) -> dict:
    """The machine a benchmark ran on; `device` is the one its timed work used (default: a GPU if there is one)."""
    on_gpu = torch.cuda.is_available() if device is None else device.type == "cuda"
    device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
    }


def add_device_argument(parser) -> None:
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where the timed work runs (auto: a CUDA GPU when there is one)")


def pick_device(name: str) -> torch.device:
    from tatl.device import resolve_device

    return resolve_device(name)


def synchronize() -> None:
    """Wait for queued GPU work: CUDA calls return before the GPU has finished them."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_seconds(work: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `work()` over `repeats` runs after `warmup` runs (GPU work included: synchronised)."""
    for _ in range(warmup):
        work()
    synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved_medians(works: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each of `works` over `repeats` rounds after `warmup` rounds. They take turns within each
    round, so a change in the machine's load (this CPU's speed drifts by 10-20% over minutes) affects all alike."""
    for _ in range(warmup):
        for work in works.values():
            work()
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            synchronize()
            started = time.perf_counter()
            work()
            synchronize()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def write_result(name: str, result: dict, device: torch.device | None = None) -> Path:
    """benchmarks/out/NAME.json, or NAME-cuda.json for figures measured on a GPU (both kept, side by side)."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / (f"{name}-cuda.json" if device is not None and device.type == "cuda" else f"{name}.json")
    path.write_text(json.dumps({"machine": machine(device), **result}, indent=2) + "\n")
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
    command = [sys.executable, "-m", "tatl", "run", "synthetic", "--out", str(run)]  # also without the entry point
    for setting in TINY_RUN_SETTINGS:
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"training the tiny run failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    from tatl.layout import LAST

    for last in run.rglob(LAST):  # resume state only: predict reads best.pt
        last.unlink()
    return run


def resized_run(run: Path, size: int, folder: Path) -> Path:
    """A view of `run` predicting at `size` px (Stage 1 and Stages 2-3): its own config.yaml, the same checkpoint
    folders (symbolic links). The networks are fully convolutional, so trained-at-64 weights run at any multiple
    of 32; the work per image is that of a run trained at `size`."""
    from tatl.config import load_config, save_config
    from tatl.layout import RunLayout

    source, view = RunLayout(run), RunLayout(Path(folder) / f"run-{size}px")
    view.root.mkdir(parents=True, exist_ok=True)
    config = load_config(source.config)
    config.data.image_size = config.data.stage1_size = size
    save_config(config, view.config)
    for entry in [*source.stage_folders(), source.thresholds]:
        if entry.exists():
            (view.root / entry.name).symlink_to(entry.resolve())
    return view.root
