"""Untrusted files are harmless, a run writes only inside --out, and the same config and seed give the same bytes.

Not repeated here: SIGKILL at several points then --resume (tests/test_kills.py, tests/test_distributed.py) and a
NaN loss stopping the stage with the last good checkpoint kept (tests/test_engine.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tatl.cli import main
from tatl.data.synth import write_synthetic_dataset

TINY_ONE_NETWORK = [
    "--config", "demo", "--set", "data.stage1_size=32", "--set", "data.image_size=32", "--set", "train.epochs=1",
    "--set", "model.encoder_name=tu-resnet10t", "--set", "model.shapes=[unet]",
    "--set", "data.attributes=[pigment_network]", "--variants", "3", "--device", "cpu",
]  # fmt: skip
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
    from tatl.models import build_model

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
