"""Stage 3's frozen-encoder features, computed once (pipeline.feature_cache), beyond the paper's implementation.

With a frozen encoder (TATL-FE) and no augmentation, the encoder's features of an image are the same in every
epoch: `cache_features` runs the encoder once over a dataset and `FeatureDataset` hands out (features, masks) in
its place, so each epoch trains and validates the attribute decoders only (tatl.training.engine accepts a batch
whose x is a list of feature maps). The updates are the same as without the cache; only the cost differs
(benchmarks/bench_feature_cache.py). The features are kept in memory, float32, on the CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from tatl import logs


class FeatureDataset(torch.utils.data.Dataset):
    """(list of one item's feature maps, its masks), with the source dataset's `targets` and `weights`."""

    def __init__(self, features: list[torch.Tensor], masks: torch.Tensor, targets: list[str] | None,
                 weights=None) -> None:
        self.features, self.masks, self.targets, self.weights = features, masks, targets, weights

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        return [level[index] for level in self.features], self.masks[index]


@torch.no_grad()
def cache_features(encoder: nn.Module, dataset: torch.utils.data.Dataset, device: torch.device,
                   batch_size: int = 16, channels_last: bool = True) -> FeatureDataset:
    """The frozen `encoder`'s features (eval mode) of every item of an unaugmented dataset, in order."""
    if getattr(dataset, "augmentation", None) is not None or getattr(dataset, "copies", 1) != 1:
        raise ValueError("features are cached only for a dataset without augmentation")
    was_training = encoder.training
    encoder.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    levels: list[list[torch.Tensor]] = []
    masks = []
    for x, y in logs.progress(loader, "caching encoder features", unit="batch"):
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for level, feature in enumerate(encoder(x)):
            if level == len(levels):
                levels.append([])
            levels[level].append(feature.float().cpu().contiguous())  # NCHW: an item is one block of memory
        masks.append(y)
    encoder.train(was_training)
    features = [torch.cat(level) for level in levels]
    return FeatureDataset(features, torch.cat(masks), getattr(dataset, "targets", None),
                          getattr(dataset, "weights", None))
