"""Reading a 6000x4000 JPEG at 512 px: draft-mode decoding (read_image) versus a full decode and resize.

Writes a smooth random 6000x4000 JPEG (quality 90, like a dermoscopy photograph) into a temporary folder, times
each way at 512 px and at 256 px (the default stage input, where 1/8 DCT scaling applies), median of 5 after one
warm-up, prints a table with the ratio and the mean absolute pixel difference between the two results, and writes
the figures to benchmarks/out/decode.json.

    .venv/bin/python benchmarks/bench_decode.py
"""

from __future__ import annotations

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


def main() -> dict:
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


if __name__ == "__main__":
    main()
