"""benchmarks/learning_curve.py: Stage-3 macro Jaccard against minutes, read from a run's log.txt."""
# ruff: noqa: E501 (the log lines are written as tatl writes them, longer than 120 columns)

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG = """\
2026-12-06 10:00:00 DEBUG   tatl.pipeline.train: new run in runs/x on data
2026-12-06 10:09:00 INFO    tatl.training.engine: [stage 2 (crops, unet)] epoch 1/2  union: jaccard 0.300
2026-12-06 10:10:00 INFO    tatl.pipeline.groups: stage 2 (crops, unet): done in 60 s; best union jaccard 0.300 @ epoch 1
2026-12-06 10:11:00 INFO    tatl.training.engine: [stage 3 (variant 1,2,3, unet, frozen encoder)] epoch 1/3  a: jaccard 0.100  b: jaccard 0.300
2026-12-06 10:11:30 INFO    tatl.training.engine: [stage 3 (variant 1,2,3, linknet, frozen encoder)] epoch 1/3  a: jaccard 0.900  b: jaccard 0.900
2026-12-06 10:12:00 INFO    tatl.training.engine: [stage 3 (variant 1,2,3, unet, frozen encoder)] epoch 2/3  a: jaccard 0.150  b: jaccard 0.350
2026-12-06 10:14:00 INFO    tatl.training.engine: [stage 3 (variant 1,2,3, unet, frozen encoder)] epoch 3/3  a: jaccard 0.200  b: jaccard 0.400
"""


def run_script(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/learning_curve.py", str(folder), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def curve(tmp_path: Path, *args: str) -> str:
    (tmp_path / "log.txt").write_text(LOG)
    done = run_script(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_curve_is_the_macro_of_each_stage3_epoch_against_minutes_since_the_start(tmp_path):
    out = curve(tmp_path)
    assert "Stage 3 started 10.0 minutes after the run" in out  # the line before its first epoch
    assert "| 11.0 | 1 | 0.200 |" in out and "| 12.0 | 2 | 0.250 |" in out and "| 14.0 | 3 | 0.300 |" in out
    assert "0.900" not in out  # the other shape's lines are not mixed in
    # Stage-3 minutes 1, 2, 4 against 0.20, 0.25, 0.30: +0.05 per doubling; 0.334 at 10 + 4 * 2 ** (0.034 / 0.05)
    assert "gains 0.050 macro Jaccard per doubling" in out and "after about 16 minutes" in out
    assert "extrapolation (not measured)" in out


def test_a_shape_or_variant_without_stage3_lines_is_one_line_error(tmp_path):
    (tmp_path / "log.txt").write_text(LOG)
    done = run_script(tmp_path, "--variant", "3")
    assert done.returncode == 1 and "no Stage-3 epoch of variant 3, shape unet" in done.stderr


def test_a_peer_folder_is_read_from_its_checkpoint_with_the_minutes_before_it_added(tmp_path):
    import torch

    history = [{"epoch": 1, "loss": 0.9, "tune_jaccard": 0.10, "seconds": 60.0},
               {"epoch": 2, "loss": 0.8, "tune_jaccard": 0.15, "seconds": 60.0},
               {"epoch": 3, "loss": 0.7, "tune_jaccard": 0.20, "seconds": 120.0}]
    torch.save({"epoch": 3, "history": history}, tmp_path / "peer.pt")
    done = run_script(tmp_path, "--before", "16")
    assert done.returncode == 0, done.stderr
    assert "| 17.0 | 1 | 0.100 |" in done.stdout and "| 20.0 | 3 | 0.200 |" in done.stdout
    # training minutes 1, 2, 4 against 0.10, 0.15, 0.20: +0.05 per doubling
    assert "gains 0.050 macro Jaccard per doubling" in done.stdout


def test_last_zero_fits_the_line_through_every_point(tmp_path):
    import torch

    rows = [(0.30, 60.0), (0.15, 60.0), (0.20, 120.0), (0.25, 240.0)]  # minutes 1, 2, 4, 8; the first an outlier
    history = [{"epoch": k + 1, "tune_jaccard": j, "seconds": s} for k, (j, s) in enumerate(rows)]
    torch.save({"history": history}, tmp_path / "peer.pt")
    outputs = [run_script(tmp_path, *args).stdout for args in ([], ["--last", "0"])]
    assert "through the last 3 points" in outputs[0] and "gains 0.050 macro Jaccard per doubling" in outputs[0]
    assert "the last 4 points do not rise" in outputs[1]  # the outlier flattens the line through all four
