"""The Eq. 1-3 loss: hand-computed values, empty masks, gradients, batch averaging, float32 under autocast."""

from __future__ import annotations

import math

import pytest
import torch

from tatl.training.losses import ALPHA, TatlLoss, dice_distance, jaccard_distance


def logits_of(probs: list) -> torch.Tensor:
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def test_distances_match_hand_computation_on_2x2_masks():
    probs = torch.tensor([[[0.8, 0.2], [0.6, 0.4]], [[0.9, 0.9], [0.1, 0.1]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    # sample 0: sum y = 2, sum p = 2.0, sum y p = 0.8 + 0.6 = 1.4
    # sample 1: sum y = 1, sum p = 2.0, sum y p = 0.1
    dice = [1 - (2 * 1.4 + ALPHA) / (2 + 2.0 + ALPHA), 1 - (2 * 0.1 + ALPHA) / (1 + 2.0 + ALPHA)]
    jaccard = [(2 + 2.0 - 2 * 1.4) / (2 + 2.0 - 1.4 + ALPHA), (1 + 2.0 - 2 * 0.1) / (1 + 2.0 - 0.1 + ALPHA)]
    assert dice_distance(probs, target).tolist() == pytest.approx(dice, abs=1e-6)
    assert jaccard_distance(probs, target).tolist() == pytest.approx(jaccard, abs=1e-6)
    expected = sum(0.5 * d + 0.5 * j for d, j in zip(dice, jaccard, strict=True)) / 2
    loss = TatlLoss()(logits_of(probs.tolist()), target)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_perfect_binary_prediction_costs_zero_and_disjoint_costs_one():
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert dice_distance(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert jaccard_distance(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_distance(1 - target, target).item() == pytest.approx(1.0, abs=1e-5)
    assert jaccard_distance(1 - target, target).item() == pytest.approx(1.0, abs=1e-5)


def test_empty_truth_with_positive_prediction_costs_about_one_unlike_smp_dice():
    smp = pytest.importorskip("segmentation_models_pytorch")
    target = torch.zeros(2, 1, 2, 2)
    logits = torch.full((2, 1, 2, 2), 5.0)  # confidently positive everywhere
    probs = torch.sigmoid(logits)
    assert dice_distance(probs, target).tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    assert jaccard_distance(probs, target).tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    assert TatlLoss()(logits, target).item() == pytest.approx(1.0, abs=1e-4)
    # smp zeroes the loss of a channel with no positive pixel in the batch: painting an empty image is free there.
    for smp_loss in (smp.losses.DiceLoss, smp.losses.JaccardLoss):
        assert smp_loss(mode="binary", from_logits=True)(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_empty_truth_is_only_cheap_when_sum_of_probabilities_is_far_below_alpha():
    target = torch.zeros(1, 1, 2, 2)
    # Both empty: sigmoid(-30) ~ 1e-13 per pixel, far below alpha = 1e-5, so the loss is ~0.
    assert TatlLoss()(torch.full((1, 1, 2, 2), -30.0), target).item() == pytest.approx(0.0, abs=1e-6)
    # Per sample with alpha = 1e-5, an empty truth costs sum(p) / (sum(p) + alpha): already ~0.9 at sum(p) = 1e-4.
    probs = torch.full((1, 1, 2, 2), 2.5e-5)
    assert jaccard_distance(probs, target).item() == pytest.approx(1e-4 / (1e-4 + ALPHA), rel=1e-4)


def test_gradient_flows_to_every_logit():
    logits = torch.randn(3, 1, 4, 4, requires_grad=True)
    target = (torch.rand(3, 4, 4) > 0.5).float()  # (B, H, W) target with (B, 1, H, W) logits, as the engine passes
    TatlLoss()(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad != 0).all()


def test_batch_loss_is_the_mean_of_per_sample_losses_not_a_pooled_loss():
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 8, 8)
    target = (torch.rand(4, 1, 8, 8) > 0.7).float()
    target[1] = 0  # one empty mask: pooling over the batch would hide it
    loss_fn = TatlLoss()
    singles = [loss_fn(logits[i : i + 1], target[i : i + 1]).item() for i in range(4)]
    assert loss_fn(logits, target).item() == pytest.approx(sum(singles) / 4, abs=1e-6)
    pooled = loss_fn(logits.reshape(1, -1), target.reshape(1, -1)).item()
    assert not math.isclose(pooled, sum(singles) / 4, abs_tol=1e-3)


def test_weights_select_the_terms():
    logits, target = torch.randn(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    probs = torch.sigmoid(logits)
    dice_only = TatlLoss(dice_weight=1.0, jaccard_weight=0.0)(logits, target)
    jaccard_only = TatlLoss(dice_weight=0.0, jaccard_weight=1.0)(logits, target)
    assert dice_only.item() == pytest.approx(dice_distance(probs, target).mean().item(), abs=1e-6)
    assert jaccard_only.item() == pytest.approx(jaccard_distance(probs, target).mean().item(), abs=1e-6)


def test_computed_in_float32_under_autocast():
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = TatlLoss()(logits.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(TatlLoss()(logits.bfloat16().float(), target).item(), abs=1e-6)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="do not match"):
        TatlLoss()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
