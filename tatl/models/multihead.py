"""A segmenter with one encoder and several decoders: how TATL-FE trains every attribute on one shared encoder.

Every stage's network is a MultiHeadSegmenter: Stage 1 and 2 have one head ("lesion", "union"), a frozen-encoder
Stage 3 one head per attribute, a trainable-encoder Stage 3 one network per attribute, and a joint Stage 3
(pipeline.encoder_mode joint) one head "joint" whose last convolution has one output channel per attribute. Each
head's state reads and writes in the single-network key format (encoder.*, decoder.*, segmentation_head.*) of
tatl.models.networks, and so does each channel of a joint head (its slice of the last convolution), so checkpoints
do not depend on how the heads were grouped in training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tatl.constants import JOINT
from tatl.errors import CheckpointError


class DecoderHead(nn.Module):
    """A decoder and its segmentation head: what each target owns in a multi-head segmenter."""

    def __init__(self, decoder: nn.Module, segmentation_head: nn.Module):
        super().__init__()
        self.decoder, self.segmentation_head = decoder, segmentation_head

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.decoder(features))


class MultiHeadSegmenter(nn.Module):
    """One encoder, one DecoderHead per head name. forward(x) -> {target: logits (B,1,H,W)}: one target per head,
    or, for a head with several output channels (`channels`), one per channel."""

    def __init__(self, encoder: nn.Module, heads: dict[str, DecoderHead], channels: dict[str, list[str]] | None = None):
        super().__init__()
        self.encoder, self.heads = encoder, nn.ModuleDict(heads)
        # head name -> the targets of its output channels, in order; a head not named here predicts itself
        self.channels = {name: list((channels or {}).get(name, [name])) for name in heads}

    @classmethod
    def from_model(cls, model: nn.Module, names: list[str]) -> MultiHeadSegmenter:
        """Every head starts as a copy of `model`'s decoder and head (Stage 3 starts all targets from Stage 2)."""
        heads = {n: DecoderHead(copy.deepcopy(model.decoder), copy.deepcopy(model.segmentation_head)) for n in names}
        return cls(model.encoder, heads)

    @classmethod
    def joint(cls, model: nn.Module, names: list[str]) -> MultiHeadSegmenter:
        """`model` (one output channel per name) as one head, JOINT, whose channels are `names`."""
        return cls(model.encoder, {JOINT: DecoderHead(model.decoder, model.segmentation_head)}, {JOINT: list(names)})

    @property
    def targets(self) -> list[str]:
        """What forward returns, in order: every head's channel targets."""
        return [target for name in self.heads for target in self.channels[name]]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(x)
        out = {}
        for name, head in self.heads.items():
            logits = head(features)
            out.update({target: logits[:, c : c + 1] for c, target in enumerate(self.channels[name])})
        return out

    def head_state(self, name: str) -> dict[str, torch.Tensor]:
        """The state of one head, or one channel of a joint head, as a single network (keys encoder.*, decoder.*,
        segmentation_head.*; a channel's last convolution cut to that channel: the same logits as in the head)."""
        head, channel = self._head_of(name)
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        state.update(self.heads[head].state_dict())
        if channel is not None:
            state = {k: v[channel : channel + 1] if k.startswith("segmentation_head.") else v for k, v in state.items()}
        return {k: v.detach().clone().cpu() for k, v in state.items()}

    def _head_of(self, name: str) -> tuple[str, int | None]:
        """(the head that predicts `name`, its channel there; None when the head is `name` itself)."""
        if name in self.heads:
            return name, None
        for head, targets in self.channels.items():
            if name in targets:
                return head, targets.index(name)
        raise KeyError(f"no head or channel {name!r} (heads: {', '.join(self.heads)})")

    def load_head_state(self, name: str, state: dict[str, torch.Tensor], source: Path | str = "checkpoint") -> None:
        """Load one target's single-network state; a state of another architecture is a CheckpointError."""
        from tatl.models.weights import describe_differences, state_differences

        encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        head_state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        for part, module in ((encoder_state, self.encoder), (head_state, self.heads[name])):
            differences = state_differences(part, module.state_dict())
            if any(differences.values()):
                raise CheckpointError(f"{source}: does not fit the {name!r} network: "
                                      f"{describe_differences(differences)}")
        self.encoder.load_state_dict(encoder_state, strict=True)
        self.heads[name].load_state_dict(head_state, strict=True)


def merge_identical_decoders(model: MultiHeadSegmenter,
                             new_head: Callable[[int], DecoderHead]) -> MultiHeadSegmenter:
    """`model` with the one-channel heads whose decoders are bit-identical (a joint Stage 3 saved as one network per
    attribute) as one head with a channel each, named by its targets joined with "+": the decoder runs once. Heads
    differ there only in their last convolution's one output channel. new_head(n) builds an empty head of n channels.
    Returns `model` itself when no two decoders are the same."""
    from tatl.models.weights import output_channel_keys, stack_output_channels

    bodies = {}  # one-channel head -> every tensor but those of its last convolution's one output channel
    for name, head in model.heads.items():
        if model.channels[name] == [name]:
            state = head.state_dict()
            last = set(output_channel_keys(state))
            bodies[name] = {k: v for k, v in state.items() if k not in last}
    groups: list[list[str]] = []
    for name in model.heads:
        group = next((g for g in groups if name in bodies and g[0] in bodies
                      and same_tensors(bodies[g[0]], bodies[name])), None)
        if group is None:
            groups.append([name])
        else:
            group.append(name)
    if all(len(names) == 1 for names in groups):
        return model
    heads, channels = {}, {}
    for names in groups:
        if len(names) == 1:
            heads[names[0]], channels[names[0]] = model.heads[names[0]], model.channels[names[0]]
            continue
        key, head = "+".join(names), new_head(len(names))
        head.load_state_dict(stack_output_channels([model.heads[n].state_dict() for n in names]), strict=True)
        heads[key], channels[key] = head, names
    return MultiHeadSegmenter(model.encoder, heads, channels)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


class TrainingForward(nn.Module):
    """One training step's forward as a module of its own, so DistributedDataParallel can wrap it: the encoder
    (under no_grad when frozen: no activations kept for a backward that never reaches it) and the heads still
    training. Only what is trained is registered, so DDP averages exactly the gradients that exist.

    A trainable encoder is wrapped whole (one forward, one backward). With a frozen encoder the engine runs
    `features` once and then each head's forward and backward in turn; under torchrun each of `heads` is then
    wrapped in its own DDP (tatl.training.parallel.training_forward), so each head's backward averages its own
    gradients."""

    def __init__(self, model: MultiHeadSegmenter, names: list[str], train_encoder: bool):
        super().__init__()
        self.heads = nn.ModuleDict({name: model.heads[name] for name in names})
        if train_encoder:
            self.encoder = model.encoder
        else:
            self.__dict__["frozen_encoder"] = model.encoder  # a plain attribute: not DDP's to synchronise

    @property
    def encoder_frozen(self) -> bool:
        return "encoder" not in self._modules

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.encoder_frozen:
            return self.encoder(x)
        with torch.no_grad():
            return self.frozen_encoder(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(x)
        return {name: head(features) for name, head in self.heads.items()}
