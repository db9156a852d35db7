"""Untrusted files are harmless, a run writes only inside --out, and the same config and seed give the same bytes.

A NaN loss through the command line: a learning rate of 1e30 makes the second step's loss NaN (tests/test_engine.py
tests the loop itself), and `--resume` with a lower rate finishes the run. One writer per run folder: a second
`tatl run` while a real first one trains is refused, and the first finishes intact.

Not repeated here: SIGKILL at several points then --resume (tests/test_kills.py, tests/test_distributed.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_cli_settings

from tatl.checkpoints import load_checkpoint
from tatl.cli import main
from tatl.data.synth import write_synthetic_dataset

# The session's tiny settings (the synth.* keys do not apply: the data is written here): one network, on the CPU.
TINY_ONE_NETWORK = ["--config", "demo", *tiny_cli_settings({"data.attributes": ["pigment_network"]}),
                    "--variants", "3", "--device", "cpu"]
NETWORK_DIR = Path("stage3-v3/unet/pigment_network")


class WritesAMarker:
    """Unpickling this runs exec(), which writes `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def malicious_checkpoint(path: Path, marker: Path) -> None:
    """A file shaped like a tatl checkpoint whose loading with a plain pickle load would run code."""
    torch.save({"model": {"encoder.weight": torch.zeros(1)}, "epoch": 0, "payload": WritesAMarker(marker)}, path)


def fingerprints(folder: Path, skip: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under folder, except under skip; folders as "dir"."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(folder))] = digest
    return found


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> dict:
    """A tiny run started from an encoder weights file, with everything outside --out fingerprinted around it."""
    base = tmp_path_factory.mktemp("faults")
    data, weights, run = base / "data", base / "weights" / "encoder.pt", base / "run"
    write_synthetic_dataset(data, n=8, size=64, seed=0)
    weights.parent.mkdir()
    from tatl.models.networks import build_model

    torch.manual_seed(0)
    torch.save(build_model("unet", "tu-resnet10t").encoder.state_dict(), weights)
    args = ["run", str(data), "--out", str(run), *TINY_ONE_NETWORK, "--set", f"model.encoder_weights={weights}"]
    before = fingerprints(base, skip=run)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)  # a relative path written by mistake would land here, and be seen
        assert main(args) == 0
    return {"base": base, "data": data, "run": run, "args": args, "before": before, "after": fingerprints(base, run)}


def test_a_run_writes_only_inside_its_output_folder(first_run):
    """The paths a config holds: the data (read), model.encoder_weights (read), the cache and the synthetic data
    (inside RUN) and --out itself. Everything else, weights file and dataset included, is byte for byte as it was."""
    assert first_run["after"] == first_run["before"]
    assert (first_run["run"] / "metrics.json").is_file() and (first_run["run"] / "cache").is_dir()


@pytest.mark.slow
def test_the_same_config_and_seed_give_bit_identical_metrics(first_run):
    """A second, separate process with the same arguments (another --out) writes the same metrics.json bytes."""
    again = first_run["base"] / "again"
    args = [*first_run["args"]]
    args[args.index("--out") + 1] = str(again)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tatl", *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (again / "metrics.json").read_bytes() == (first_run["run"] / "metrics.json").read_bytes()
    for name in ("config.yaml", "splits.json"):  # and the same resolved config and split
        assert (again / name).read_bytes() == (first_run["run"] / name).read_bytes()


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_a_malicious_checkpoint_is_refused_on_resume_and_runs_no_code(first_run, tmp_path, capsys, name):
    run, marker = tmp_path / "run", tmp_path / "pwned.txt"
    shutil.copytree(first_run["run"], run)
    if name == "last.pt":  # an interrupted network resumes from last.pt; a finished one reloads best.pt
        (run / NETWORK_DIR / "done.json").unlink()
    malicious_checkpoint(run / NETWORK_DIR / name, marker)
    assert main(["run", str(first_run["data"]), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"tatl run: error: {run / NETWORK_DIR / name}: cannot load checkpoint:"), line
    assert "would run code when loaded (refused)" in line
    assert not marker.exists()
    torch.load(run / NETWORK_DIR / name, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_malicious_checkpoint_is_refused_by_predict_and_export_which_write_nothing(first_run, tmp_path, capsys,
                                                                                     command):
    if command == "export":
        pytest.importorskip("onnxruntime")
    run, marker, out = tmp_path / "run", tmp_path / "pwned.txt", tmp_path / "out"
    shutil.copytree(first_run["run"], run, ignore=shutil.ignore_patterns(".lock"))
    malicious_checkpoint(run / NETWORK_DIR / "best.pt", marker)
    out.mkdir()  # already there, so that anything written to it would be seen
    images = first_run["data"] / "ISIC2018_Task1-2_Training_Input"
    argv = ["predict", str(run), str(images), "--out", str(out)] if command == "predict" else \
        ["export", str(run), "--onnx", str(out)]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"tatl {command}: error: {run / NETWORK_DIR / 'best.pt'}: cannot load checkpoint:"), line
    assert "would run code when loaded (refused)" in line
    assert not marker.exists() and list(out.iterdir()) == []


def test_a_malicious_weights_file_is_refused_before_anything_is_written(first_run, tmp_path, capsys):
    weights, marker, out = tmp_path / "weights.pth", tmp_path / "pwned.txt", tmp_path / "run"
    malicious_checkpoint(weights, marker)
    code = main(["run", str(first_run["data"]), "--out", str(out), *TINY_ONE_NETWORK,
                 "--set", f"model.encoder_weights={weights}"])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"tatl run: error: {weights}: weights file refused:") and "would run code" in line, line
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize(
    "override",
    ["data.attributes=[../../escaped]", "data.attributes=[/tmp/escaped]", "model.shapes=[../unet]"],
)
def test_config_values_cannot_name_paths_outside_the_run(first_run, tmp_path, capsys, override):
    """Attribute and shape names become file and folder names inside RUN: anything but a plain name is refused."""
    out = tmp_path / "nested" / "run"
    code = main(["run", str(first_run["data"]), "--out", str(out), *TINY_ONE_NETWORK, "--set", override])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tatl run: error: ") and override.split("=")[0].split(".")[1] in line, line
    assert list(tmp_path.iterdir()) == []  # neither the run folder nor anything beside it


# --- a NaN loss through the command line, then --resume with a lower rate ----------------------------------------

EXPLODING = ["--set", "train.lr=1.0e+30", "--set", "train.epochs=2", "--set", "train.batch_size=2"]
NAN_MESSAGE = re.compile(r"tatl run: error: stage 3 \(variant 3, unet, pigment_network\): loss of pigment_network is "
                         r"(nan|inf|-inf) at epoch (\d+), batch (\d+); the last good checkpoint is kept: rerun with "
                         r"--resume and a lower rate, e\.g\. --set train\.lr=\S+")
VALIDATION_NAN_MESSAGE = re.compile(
    r"tatl run: error: stage 3 \(variant 3, unet, pigment_network\): validation loss of pigment_network is "
    r"(nan|inf) after epoch 1 \(the weights diverged\); the last good checkpoint is kept: rerun with --resume and a "
    r"lower rate, e\.g\. --set train\.lr=\S+")


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_naming_stage_epoch_and_batch_and_resume_with_a_lower_rate_finishes(
        first_run, tmp_path, capsys):
    """lr 1e30 (the config accepts any finite rate; 1e6 is not enough, the loss stays bounded): the first SGD step
    makes the weights huge, the next forward overflows float32 and the loss is NaN; with 6 training images, 2 per
    batch, that is epoch 1, batch 2. Written 1.0e+30: YAML reads a bare 1e30 as a string."""
    run = tmp_path / "run"
    assert main(["run", str(first_run["data"]), "--out", str(run), *TINY_ONE_NETWORK, *EXPLODING]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    match = NAN_MESSAGE.fullmatch(err.strip().splitlines()[-1])
    assert match, err[-1000:]
    assert (int(match[2]), int(match[3])) >= (1, 2)  # the first step cannot diverge: its weights are the initial ones
    assert not (run / "metrics.json").exists()
    assert not list(run.rglob("*.pt"))  # no epoch ended: nothing of the diverged weights was kept

    assert main(["run", str(first_run["data"]), "--out", str(run), "--resume", "--set", "train.lr=0.001"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    scores = metrics["variant 3"]["unet"]["pigment_network"]
    assert 0 <= scores["jaccard"] <= 1 and 0 <= scores["dice"] <= 1
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    rows = (run / NETWORK_DIR / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(math.isfinite(float(row.split(",")[1])) for row in rows)  # both epochs, finite


@pytest.mark.slow
def test_resume_after_a_nan_at_the_start_of_an_epoch_continues_from_a_good_checkpoint(first_run, tmp_path, capsys):
    """One batch per epoch: the one step of epoch 1 poisons the weights, epoch 2's first loss is NaN."""
    run = tmp_path / "run"
    one_batch = ["--set", "train.lr=1.0e+30", "--set", "train.epochs=2", "--set", "train.batch_size=8"]
    assert main(["run", str(first_run["data"]), "--out", str(run), *TINY_ONE_NETWORK, *one_batch]) == 2
    assert VALIDATION_NAN_MESSAGE.fullmatch(capsys.readouterr().err.strip().splitlines()[-1])
    assert not list(run.rglob("*.pt"))  # the diverged epoch was not saved
    assert main(["run", str(first_run["data"]), "--out", str(run), "--resume", "--set", "train.lr=0.001"]) == 0


# --- one run, one writer -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_a_folder_being_trained_is_refused_and_the_first_finishes_intact(first_run, tmp_path, capsys):
    data, run = first_run["data"], tmp_path / "run"
    log_csv = run / NETWORK_DIR / "log.csv"
    args = ["run", str(data), "--out", str(run), *TINY_ONE_NETWORK, "--set", "train.epochs=15",
            "--set", "train.patience=15", "--set", "train.batch_size=2"]  # 15 epochs of 3 steps: seconds to go
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "tatl", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not ((run / ".lock").is_file() and log_csv.is_file()) and first.poll() is None:
            assert time.monotonic() < deadline, "the first run did not start training within 120 s"
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1][-2000:]  # training: the lock taken, one epoch logged
        config, splits = (run / "config.yaml").read_bytes(), (run / "splits.json").read_bytes()
        code = main(["run", str(data), "--out", str(run), "--resume"])
        err = capsys.readouterr().err
        assert first.poll() is None, "the first run ended before the second was refused: nothing was shown"
        assert code == 2
        (line,) = err.strip().splitlines()
        assert line.startswith(f"tatl run: error: {run}: another tatl process (pid {first.pid}) is writing"), line
        assert main(args) == 2  # the same command again, without --resume: refused too, for the full folder
        assert "use --resume" in capsys.readouterr().err
        _, first_err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, first_err[-2000:]
    assert (run / "config.yaml").read_bytes() == config and (run / "splits.json").read_bytes() == splits
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["variant 3"]["unet"]["pigment_network"]["jaccard"] <= 1
    rows = log_csv.read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(15))  # every epoch logged once, in order
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(run / NETWORK_DIR / name)["model"]
    assert (run / NETWORK_DIR / "done.json").is_file() and (run / "report.html").is_file()


def test_a_failing_report_does_not_fail_the_run(first_run, tmp_path, capsys, monkeypatch):
    """The report only views the results: after hours of training its failure is printed, the exit code is 0 and
    metrics.json and summary.md are there."""
    import tatl.reporting.report

    def broken(*args, **kwargs):
        raise ValueError("matplotlib is broken")

    monkeypatch.setattr(tatl.reporting.report, "write_report", broken)
    run = tmp_path / "run"
    assert main(["run", str(first_run["data"]), "--out", str(run), *TINY_ONE_NETWORK]) == 0
    err = capsys.readouterr().err
    assert "report not written: ValueError: matplotlib is broken (rebuild it with `tatl report" in err
    assert (run / "metrics.json").is_file() and (run / "summary.md").is_file() and not (run / "report.html").exists()
