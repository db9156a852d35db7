"""SIGKILL `tatl run` mid-epoch, in the middle of a checkpoint write and between stages; after every kill each
checkpoint on disk loads, and `--resume` ends with the metrics of an uninterrupted run of the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_cli_settings

from tatl.checkpoints import load_checkpoint
from tatl.cli import main

# The session's tiny settings on 16 images in batches of 4, with 3 epochs to be killed in and all five attributes.
ARGS = ["run", "synthetic", "--config", "demo", "--variants", "1,2,3",
        *tiny_cli_settings({"synth.n": 16, "train.epochs": 3, "train.batch_size": 4}, drop=("data.attributes",))]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

# Runs `tatl` in a process that kills itself (SIGKILL) inside its Nth checkpoint write: after the temporary file is
# written, before it is renamed over the checkpoint. The moment a real kill during a write would leave behind.
DIE_IN_WRITE = """
import os, signal, sys
real_replace, count = os.replace, [0]
def replace(src, dst):
    if str(dst).endswith(".pt"):
        count[0] += 1
        if count[0] == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace  # what tatl.io.atomic_write renames with
from tatl.cli import main
sys.exit(main(sys.argv[2:]))
"""


def kill_after_line(command: list[str], marker: str) -> int:
    """Start `command`, SIGKILL it as soon as a stderr line contains `marker`; its exit code (-9 if it was alive)."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    for line in process.stderr:
        if marker in line or time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    process.stderr.close()
    return process.returncode


def assert_every_checkpoint_loads(run: Path) -> int:
    checkpoints = sorted(run.rglob("*.pt"))
    for path in checkpoints:
        load_checkpoint(path)  # a half-written file would raise CheckpointError
    return len(checkpoints)


@pytest.mark.slow
def test_sigkill_mid_epoch_mid_write_and_between_stages_then_resume_gives_the_same_metrics(tmp_path: Path):
    straight = tmp_path / "straight"
    assert main([*ARGS[:2], "--out", str(straight), *ARGS[2:]]) == 0
    run = tmp_path / "killed"
    tatl = [sys.executable, "-m", "tatl", *ARGS[:2], "--out", str(run), *ARGS[2:]]
    resume = [sys.executable, "-m", "tatl", *ARGS[:2], "--out", str(run), "--resume"]  # the saved config

    # 1. mid-epoch: stage 1 has just finished and saved epoch 1 and is training epoch 2
    assert kill_after_line(tatl, "[stage 1] epoch 1/3") == -signal.SIGKILL
    assert assert_every_checkpoint_loads(run) >= 2  # best.pt and last.pt of epoch 1
    # 2. between stages: stage 1 is done (done.json written), stage 2 has not saved anything yet
    assert kill_after_line(resume, "stage 1: done") == -signal.SIGKILL
    assert (run / "stage1" / "unet" / "done.json").is_file()
    # 3. inside a checkpoint write, in stage 2 (the 2nd .pt replaced by this process: best.pt or last.pt)
    dying = subprocess.run([sys.executable, "-c", DIE_IN_WRITE, "2", *resume[3:]], env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert dying.returncode == -signal.SIGKILL, dying.stderr[-2000:]
    assert list(run.rglob(".*.pt.*.tmp")), "the kill should have left a temporary file behind"
    assert assert_every_checkpoint_loads(run) == 3  # stage 1's best and last, stage 2's best: its last.pt died
    assert not (run / "stage2-crops" / "unet" / "last.pt").exists()
    # 4. mid-epoch in Stage 3 (frozen encoder, five heads)
    assert kill_after_line(resume, "epoch 1/3  globules") == -signal.SIGKILL
    assert_every_checkpoint_loads(run)

    assert main([*ARGS[:2], "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "metrics.json").read_text()) == json.loads((straight / "metrics.json").read_text())
    for log in straight.rglob("log.csv"):  # every network trained its epochs once, none repeated or lost
        epochs = [row.split(",")[0] for row in (run / log.relative_to(straight)).read_text().splitlines()[1:]]
        assert epochs == [row.split(",")[0] for row in log.read_text().splitlines()[1:]]
