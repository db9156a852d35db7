"""The TATL training loss (paper Eq. 1-3): 0.5 * Dice distance + 0.5 * Jaccard distance on probabilities.

Each prediction is flattened to a vector (the paper reshapes it to 1 x m^2), both distances are computed per
sample over its pixels and the result is averaged over the batch. Unlike smp's DiceLoss / JaccardLoss, which give
zero loss to a channel with no positive pixel in the batch, an image whose mask is empty still costs ~1 when the
network predicts positives on it, and ~0 when it predicts nothing: most attribute masks are empty, and a loss
blind to them teaches the network to paint every image.

A caveat of Eq. 1 itself, kept as the paper has it: on an empty mask the loss is about 1 - alpha / P (P = the sum
of predicted probabilities), so its gradient, about alpha / P^2, is tiny unless the prediction is almost empty
already. Such images are scored, but the updates come from the images that show the attribute.

Beyond the paper (train.loss): `PooledLoss` sums the pixels of the whole batch before the same two distances, as
the official metric pools an attribute's pixels over all images, so an empty mask's false positives count against
the batch's true positives; `bce=True` adds a pixel-wise binary cross-entropy, a gradient on every pixel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ALPHA = 1e-5  # the paper's smoothing constant, "added to avoid zero division"


def _per_sample_sums(probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sum y, sum y_hat, sum y * y_hat) per sample, each of shape (B,)."""
    if probs.shape[0] != target.shape[0] or probs.numel() != target.numel():
        raise ValueError(f"prediction {tuple(probs.shape)} and target {tuple(target.shape)} do not match")
    # Flatten per sample, so (B, 1, H, W) logits pair with (B, H, W) targets as the engine passes them.
    probs = probs.reshape(probs.shape[0], -1)
    target = target.reshape(target.shape[0], -1).to(probs.dtype)
    return target.sum(dim=1), probs.sum(dim=1), (target * probs).sum(dim=1)


def dice_distance(probs: Tensor, target: Tensor, alpha: float = ALPHA) -> Tensor:
    """Soft Dice distance 1 - (2 sum(y y_hat) + alpha) / (sum y + sum y_hat + alpha), per sample: shape (B,).

    The paper's printed Eq. 2, 2 sum(y y_hat) / (3 sum y_hat (1 - y) + sum (1 - y_hat) y), is garbled: its
    denominator weights false positives three times and omits true positives, so it is not a Dice (and it divides
    by zero on a perfect prediction). We use the standard soft Dice with the paper's alpha in both places, so an
    empty truth with an empty prediction costs 0 and an empty truth with a confident positive prediction costs ~1.
    """
    truth_sum, pred_sum, intersection = _per_sample_sums(probs, target)
    return 1.0 - (2.0 * intersection + alpha) / (truth_sum + pred_sum + alpha)


def jaccard_distance(probs: Tensor, target: Tensor, alpha: float = ALPHA) -> Tensor:
    """Eq. 3 as printed: (sum y + sum y_hat - 2 sum y y_hat) / (sum y + sum y_hat - sum y y_hat + alpha), shape (B,)."""
    truth_sum, pred_sum, intersection = _per_sample_sums(probs, target)
    return (truth_sum + pred_sum - 2.0 * intersection) / (truth_sum + pred_sum - intersection + alpha)


class TatlLoss(nn.Module):
    """Eq. 1 for one attribute: dice_weight * Dice distance + jaccard_weight * Jaccard distance, batch mean.

    forward(logits, target): logits (B, 1, H, W) or (B, H, W), target the same number of pixels per sample with
    values in {0, 1}. Computed in float32 even under autocast: the sums over a whole image lose too much in half
    precision.
    """

    def __init__(self, dice_weight: float = 0.5, jaccard_weight: float = 0.5, alpha: float = ALPHA) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.jaccard_weight = jaccard_weight
        self.alpha = alpha

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            probs = torch.sigmoid(logits.float())
            target = target.float()
            per_sample = self.dice_weight * dice_distance(probs, target, self.alpha) + self.jaccard_weight * (
                jaccard_distance(probs, target, self.alpha)
            )
            return per_sample.mean()

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, jaccard_weight={self.jaccard_weight}, alpha={self.alpha}"


class PooledLoss(nn.Module):
    """Soft Dice + Jaccard distances (weights 0.5 each) over every pixel of the batch at once, plus, with `bce`,
    the mean pixel-wise binary cross-entropy. Same inputs as TatlLoss; float32 even under autocast."""

    def __init__(self, bce: bool = False, alpha: float = ALPHA) -> None:
        super().__init__()
        self.bce = bce
        self.alpha = alpha

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits, target = logits.float(), target.float()
            probs = torch.sigmoid(logits)
            pooled_probs, pooled_target = probs.reshape(1, -1), target.reshape(1, -1)  # one "sample": the batch
            loss = 0.5 * dice_distance(pooled_probs, pooled_target, self.alpha)[0] + 0.5 * (
                jaccard_distance(pooled_probs, pooled_target, self.alpha)[0]
            )
            if self.bce:
                loss = loss + nn.functional.binary_cross_entropy_with_logits(logits.reshape(target.shape), target)
            return loss

    def extra_repr(self) -> str:
        return f"bce={self.bce}, alpha={self.alpha}"


def build_loss(name: str) -> nn.Module:
    """The loss train.loss names: "paper" (Eq. 1), "pooled" or "pooled_bce"."""
    losses = {"paper": TatlLoss, "pooled": PooledLoss, "pooled_bce": lambda: PooledLoss(bce=True)}
    if name not in losses:
        raise ValueError(f"unknown loss {name!r} (one of {', '.join(losses)})")
    return losses[name]()
