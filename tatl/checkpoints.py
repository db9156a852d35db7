"""Checkpoints that survive a kill at any moment and load no code.

Writes go through `tatl.io.atomic_write` (durable: fsynced, then renamed over the target): a reader sees the old
file or the new one, never half of one; under torchrun rank 0 alone writes.
Loading uses `torch.load(weights_only=True)`, which refuses pickles that would run code, so checkpoints shared
between groups are safe to open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tatl.errors import CheckpointError
from tatl.io import atomic_write


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle), durable=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; every failure is a CheckpointError that names the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for truncated or unsafe files
        raise CheckpointError(f"{path}: cannot load checkpoint: {_load_failure(path, error)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a tatl checkpoint (expected a dict, got {type(state).__name__})")
    model = state.get("model")
    if not isinstance(model, dict) or not all(isinstance(value, torch.Tensor) for value in model.values()):
        raise CheckpointError(f"{path}: not a tatl checkpoint (no 'model' state of tensors)")
    return state


def unsafe_pickle_reason(error: Exception) -> str | None:
    """torch.load(weights_only=True) refused a pickle that would build other objects than tensors (and run code):
    the reason in one line, naming the refused global; None for any other failure."""
    text = str(error)
    if "weights_only" not in text and "Unsupported global" not in text:
        return None
    refused = next((line.strip() for line in text.splitlines() if "GLOBAL" in line.upper()), "")
    detail = f" ({refused.rstrip('.')})" if refused else ""
    return f"it contains Python objects that would run code when loaded (refused){detail}"


def _load_failure(path: Path, error: Exception) -> str:
    """The reason torch.load failed, in one line."""
    text = str(error).strip()
    unsafe = unsafe_pickle_reason(error)
    if unsafe:
        return unsafe
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    if isinstance(error, (EOFError, OSError)) or "zip archive" in text:  # torch's zip reader: a cut file
        first = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
        return f"the file is truncated or damaged ({first}); was it copied or written completely?"
    return text.splitlines()[0] if text else type(error).__name__

