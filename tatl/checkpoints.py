"""Checkpoints that survive a kill at any moment and load no code.

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target: a reader sees the old
file or the new one, never half of one. Loading uses `torch.load(weights_only=True)`, which refuses pickles that
would run code, so checkpoints shared between groups are safe to open.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from tatl.errors import CheckpointError, DataError


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call write(file_object) on a temp file next to `path`, fsync, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as error:
        Path(tmp_name).unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write ({error.strerror or error})") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # The rename itself is durable only once the folder entry is synced.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; every failure is a CheckpointError that names the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for truncated or unsafe files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it contains Python objects that would run code when loaded (refused)"
        raise CheckpointError(f"{path}: cannot load checkpoint: {reason}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a tatl checkpoint (expected a dict, got {type(state).__name__})")
    return state


def write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))
