"""What each head of a network learns from a batch's masks and how its validation scores are read: one mask per
head, or, for a joint head (pipeline.encoder_mode joint), one mask per output channel, each channel's loss and
scores computed as if it were a head of its own and averaged."""

from __future__ import annotations

import torch
from torch import nn

from tatl.models.multihead import MultiHeadSegmenter


def mask_channels(dataset, names: list[str]) -> dict[str, int]:
    """Which mask channel each head learns: by name when the dataset names its channels, else by head order."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return {name: index for index, name in enumerate(names)}
    missing = [name for name in names if name not in targets]
    if missing:
        raise ValueError(f"the dataset has no mask for {', '.join(missing)} (it has {', '.join(targets)})")
    return {name: targets.index(name) for name in names}


def target_parts(dataset, model: MultiHeadSegmenter, segmentation: bool = True) -> dict[str, int | list[int] | slice]:
    """Which part of a batch's y each head learns: its own mask channel, the mask channels of its output channels
    (a joint head), or all of y when it restores an image."""
    names = list(model.heads)
    if not segmentation:
        return dict.fromkeys(names, slice(None))
    index = mask_channels(dataset, [t for n in names for t in model.channels[n]])
    return {n: index[n] if model.channels[n] == [n] else [index[t] for t in model.channels[n]] for n in names}


def head_loss(loss_fn: nn.Module, logits: torch.Tensor, target: torch.Tensor,
              part: int | list[int] | slice) -> torch.Tensor:
    """A head's loss on its `part` of y (target_parts): `loss_fn` of its mask or of the image it restores, or, for a
    joint head (a list of mask channels), the mean of each output channel's loss, as if each were a head of its own."""
    if isinstance(part, list):
        return torch.stack([loss_fn(logits[:, c : c + 1], target[:, c]) for c in range(len(part))]).mean()
    return loss_fn(logits, target)


def head_scores(totals: dict[str, dict], targets: list[str]) -> dict[str, float]:
    """A head's Jaccard and Dice: its one target's; of a joint head, the mean over its channels (the macro average,
    as the challenge ranks), with each channel's Jaccard as `jaccard_<target>`."""
    if not totals:
        return {}
    if len(targets) == 1:
        return dict(totals[targets[0]])
    scores = {key: sum(totals[t][key] for t in targets) / len(targets) for key in ("jaccard", "dice")}
    return {**scores, **{f"jaccard_{t}": totals[t]["jaccard"] for t in targets}}
