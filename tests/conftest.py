"""Test set-up: offline, deterministic, small. Real data in ../shared/data is used when present."""

from __future__ import annotations

import os
from pathlib import Path

# Nothing may download weights or data at run time in tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
# One thread per process: on a busy 2-core machine two OpenMP threads are many times slower than one, and the same
# thread count in this process and in the subprocesses it starts keeps results bit-comparable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data_path(name: str) -> Path:
    """Path of a folder in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is not present on this machine")
    return path


@pytest.fixture
def isic_sample() -> Path:
    """6 real ISIC 2018 images (1022x767) with lesion and pigment_network masks."""
    return shared_data_path("isic2018-sample")


@pytest.fixture
def ph2() -> Path:
    """150 PH2 images with expert lesion masks, in the ISIC Task 1 layout."""
    return shared_data_path("ph2")


@pytest.fixture
def network_attempts(monkeypatch) -> list[tuple]:
    """Every attempt to open a network connection during the test, each refused at once: a test asserts this list
    is empty to show that a code path never waits on the network (instead of timing it)."""
    import socket

    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network use in a test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture(autouse=True)
def cli_logging():
    """Console logging as `tatl` sets it up (info lines on stderr), so a test that calls a library function directly
    reads on stderr what the command line would show, whatever the tests before it configured."""
    from tatl import logs

    logs.configure(logs.NORMAL)


TINY_RUN_SETTINGS = {  # a run of seconds: 64 px synthetic images, 32 px stage inputs, one epoch, U-Net only
    "synth.n": 12, "synth.size": 64, "data.stage1_size": 32, "data.image_size": 32, "train.epochs": 1,
    "model.encoder_name": "tu-resnet10t", "model.shapes": ["unet"], "data.attributes": ["pigment_network", "globules"],
}


def tiny_settings(overrides: dict | None = None, drop: tuple[str, ...] = ()) -> list[str]:
    """`TINY_RUN_SETTINGS` changed by `overrides`, less the keys in `drop`, as the `section.key=value` strings that
    `--set`, a grid's `set` and `overrides=` take (written by tatl's own override_strings, as `tatl.train` writes a
    mapping): a test that starts a run its own way (command line, subprocess, grid) spells out only how its run
    differs from the session's tiny one."""
    from tatl.pipeline.train import override_strings

    unknown = set(drop) - set(TINY_RUN_SETTINGS)
    assert not unknown, f"not in TINY_RUN_SETTINGS: {sorted(unknown)}"
    settings = {key: value for key, value in {**TINY_RUN_SETTINGS, **(overrides or {})}.items() if key not in drop}
    return override_strings(settings)


def tiny_cli_settings(overrides: dict | None = None, drop: tuple[str, ...] = ()) -> list[str]:
    """`tiny_settings(overrides, drop)` as command-line arguments: `--set key=value` for each."""
    return [arg for setting in tiny_settings(overrides, drop) for arg in ("--set", setting)]


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): 32-pixel
    networks gain nothing from a second thread, and lose 100x when the other core is busy (measured on the shared
    2-core machine: OpenMP workers waiting for each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run_factory(tmp_path_factory):
    """Finished runs on tiny synthetic data, each trained once per session: `tiny_run_factory(variants, overrides)`
    trains `TINY_RUN_SETTINGS` changed by `overrides` (the demo preset below them) and returns its run folder; every
    module asking for the same variants and settings gets the same folder. Read-only: a test that changes a run
    copies it first."""
    import json

    import tatl

    runs: dict[str, Path] = {}

    def make(variants: tuple[str, ...] | list[str] = ("1,2,3",), overrides: dict | None = None) -> Path:
        settings = {**TINY_RUN_SETTINGS, **(overrides or {})}
        key = json.dumps([list(variants), settings], sort_keys=True)
        if key not in runs:
            out = tmp_path_factory.mktemp("tiny") / "run"
            runs[key] = tatl.train("synthetic", out, config="demo", variants=list(variants), overrides=settings).run_dir
        return runs[key]

    return make


@pytest.fixture(scope="session")
def tiny_run(tiny_run_factory) -> Path:
    """A finished run of the whole pipeline (variant 1,2,3) on tiny synthetic data (`TINY_RUN_SETTINGS`), trained once
    per session."""
    return tiny_run_factory()
