"""Which torch device a command runs on: `auto` (a CUDA GPU when there is one), `cpu` or `cuda`."""

from __future__ import annotations

import torch

from tatl.errors import ConfigError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """`key`: the setting that asked for the device, named in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}=cuda but no CUDA GPU is available (use auto or cpu)")
    return torch.device(name)
