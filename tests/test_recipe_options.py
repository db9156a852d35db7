"""The options beyond the paper (issue 22): train.loss, train.sampling, train.schedule and the tuning split of
data.tune_fraction, on hand-made tensors and tiny data; and the one-line errors of wrong values."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from tatl.config import Config, TrainConfig, load_config
from tatl.data.sampling import rare_weights
from tatl.data.splits import make_splits, read_splits, training_ids, write_splits
from tatl.errors import ConfigError, DataError
from tatl.pipeline.context import split_ids, tune_ids
from tatl.pipeline.scoring import THRESHOLD_GRID
from tatl.training.losses import ALPHA, PooledLoss, TatlLoss, build_loss
from tatl.training.schedule import epoch_order, learning_rate


def logits_of(probs: torch.Tensor) -> torch.Tensor:
    p = probs.double()
    return torch.log(p / (1 - p)).float()


PROBS = torch.tensor([[[0.8, 0.2], [0.6, 0.4]], [[0.9, 0.9], [0.1, 0.1]]])
TARGET = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # image 1 shows nothing


def test_pooled_loss_sums_the_pixels_of_the_whole_batch():
    # batch: sum y = 2, sum p = 2.0 + 2.0 = 4.0, sum y p = 0.8 + 0.6 = 1.4
    dice = 1 - (2 * 1.4 + ALPHA) / (2 + 4.0 + ALPHA)
    jaccard = (2 + 4.0 - 2 * 1.4) / (2 + 4.0 - 1.4 + ALPHA)
    assert PooledLoss()(logits_of(PROBS), TARGET).item() == pytest.approx(0.5 * dice + 0.5 * jaccard, abs=1e-6)
    # Eq. 1 averages per image: the empty image's false positives cost it ~1 on their own, not against the batch.
    assert TatlLoss()(logits_of(PROBS), TARGET).item() != pytest.approx(PooledLoss()(logits_of(PROBS), TARGET).item())


def test_pooled_bce_adds_the_mean_binary_cross_entropy():
    logits = logits_of(PROBS)[:, None]  # (B, 1, H, W) logits with (B, H, W) targets, as the engine passes them
    bce = -(TARGET * PROBS.log() + (1 - TARGET) * (1 - PROBS).log()).mean().item()
    expected = PooledLoss()(logits, TARGET).item() + bce
    assert PooledLoss(bce=True)(logits, TARGET).item() == pytest.approx(expected, abs=1e-5)


def test_pooled_loss_gives_an_all_empty_batch_a_gradient_with_bce():
    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    PooledLoss(bce=True)(logits, torch.zeros(2, 4, 4)).backward()
    assert (logits.grad > 0).all()  # every pixel pushed towards "absent"


def test_build_loss_names_the_three_losses():
    assert isinstance(build_loss("paper"), TatlLoss)
    assert not build_loss("pooled").bce and build_loss("pooled_bce").bce
    with pytest.raises(ValueError, match="unknown loss 'dice'"):
        build_loss("dice")


def test_rare_weights_give_each_stratum_a_share_growing_as_the_square_root_of_its_size():
    presence = {f"pn{i}": ["pigment_network"] for i in range(16)}
    presence |= {f"st{i}": ["pigment_network", "streaks"] for i in range(4)}  # rarest: streaks
    presence |= {"none0": []}
    ids = sorted(presence)
    weights = dict(zip(ids, rare_weights(ids, presence), strict=True))
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["st0"] / weights["pn0"] == pytest.approx(math.sqrt(16 / 4))  # 1/sqrt(4) against 1/sqrt(16)
    assert weights["none0"] / weights["pn0"] == pytest.approx(4.0)
    shares = {s: sum(w for i, w in weights.items() if i.startswith(s)) for s in ("pn", "st", "none")}
    assert shares["pn"] / shares["st"] == pytest.approx(math.sqrt(16) / math.sqrt(4))


class _Weighted(torch.utils.data.Dataset):
    def __init__(self, weights: np.ndarray | None, copies: int = 1):
        self.weights, self.copies = weights, copies

    def __len__(self) -> int:
        return 4 * self.copies


def test_rare_sampling_draws_with_replacement_by_weight_and_the_same_order_per_epoch():
    cfg = TrainConfig(sampling="rare", seed=3)
    dataset = _Weighted(np.array([0.97, 0.01, 0.01, 0.01]), copies=50)  # 200 items, 4 images x 50 copies
    order = epoch_order(dataset, cfg, epoch=2)
    assert len(order) == 200 and order == epoch_order(dataset, cfg, epoch=2)
    assert order != epoch_order(dataset, cfg, epoch=3)
    counts = Counter(index % 4 for index in order)
    assert counts[0] > 150  # image 0 dominates
    assert sorted(epoch_order(_Weighted(None), cfg, 0)) == [0, 1, 2, 3]  # no weights: a permutation
    uniform = TrainConfig(sampling="uniform", seed=3)
    assert sorted(epoch_order(dataset, uniform, 0)) == list(range(200))


def test_cosine_schedule_anneals_from_lr_to_zero_and_constant_keeps_it():
    cosine = TrainConfig(lr=0.1, epochs=4, schedule="cosine")
    assert learning_rate(cosine, 0, 0, 10) == pytest.approx(0.1)
    assert learning_rate(cosine, 2, 0, 10) == pytest.approx(0.05)
    assert learning_rate(cosine, 3, 9, 10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3.9 / 4)))
    assert learning_rate(TrainConfig(lr=0.1, epochs=4), 3, 9, 10) == 0.1


def test_onecycle_schedule_follows_torch_onecyclelr_step_by_step():
    # torch's scheduler is the reference: the same rise and fall, within 2% of the peak (it counts phase ends at the
    # step before, so single steps differ slightly), from lr / 25 at the start to ~0 at the end.
    cfg, steps = TrainConfig(lr=0.1, epochs=4, schedule="onecycle"), 50
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps, anneal_strategy="cos", cycle_momentum=False
    )
    for epoch in range(cfg.epochs):
        for step in range(steps):
            assert learning_rate(cfg, epoch, step, steps) == pytest.approx(optimizer.param_groups[0]["lr"], abs=0.002)
            optimizer.step()
            reference.step()
    assert learning_rate(cfg, 0, 0, steps) == pytest.approx(0.1 / 25)
    assert learning_rate(cfg, 1, 10, steps) == pytest.approx(0.1)  # the peak at 30% of the steps
    assert learning_rate(cfg, 3, 49, steps) < 0.1 / 1000


def test_train_optimizer_builds_sgd_with_momentum_or_adam_at_the_configured_rate():
    from tatl.training.engine import make_optimizer

    weights = [torch.nn.Parameter(torch.ones(3))]
    sgd = make_optimizer(weights, TrainConfig(lr=0.02, momentum=0.8))
    adam = make_optimizer(weights, TrainConfig(lr=0.001, optimizer="adam", weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    assert isinstance(adam, torch.optim.Adam)
    assert (adam.param_groups[0]["lr"], adam.param_groups[0]["weight_decay"]) == (0.001, 1e-4)
    weights[0].grad = torch.full((3,), 1e-6)  # a tiny gradient: Adam still steps by about lr, SGD by lr * grad
    adam.step()
    assert torch.allclose(weights[0].detach(), torch.full((3,), 1 - 0.001), atol=1e-5)


def _presence(n: int = 200) -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    names = ["pigment_network", "globules", "streaks"]
    return {f"ISIC_{i:04d}": [a for a, p in zip(names, (0.6, 0.25, 0.05), strict=True) if rng.random() < p]
            for i in range(n)}


def test_tuning_split_is_disjoint_from_validation_and_left_out_of_training(tmp_path):
    presence = _presence()
    splits = make_splits(presence, val_fraction=0.2, n_folds=5, seed=0, tune_fraction=0.1)
    tune, val = set(splits["tune"]), set(splits["val"])
    assert not tune & val and tune <= set(splits["train"])
    assert abs(len(tune) - 20) <= 3
    assert {"streaks"} & {a for i in tune for a in presence[i]}  # stratified: the rare attribute is in it
    config = Config()
    config.data.tune_fraction = 0.1
    train, val_ids = split_ids(splits, config)
    assert not set(train) & tune and set(train) | tune | set(val_ids) == set(presence)
    assert set(tune_ids(splits, config)) == tune
    assert training_ids(splits, splits["train"]) == train
    write_splits(tmp_path / "splits.json", splits)
    assert read_splits(tmp_path / "splits.json") == splits
    # the same train/val/folds as a split without a tuning split: only training gives images up
    plain = make_splits(presence, val_fraction=0.2, n_folds=5, seed=0)
    assert (plain["train"], plain["val"], plain["folds"]) == (splits["train"], splits["val"], splits["folds"])
    assert "tune" not in plain and tune_ids(plain, config) == []


def test_a_tuning_split_outside_train_is_a_broken_splits_file(tmp_path):
    splits = make_splits(_presence(40), tune_fraction=0.1)
    splits["tune"] = [splits["val"][0]]
    write_splits(tmp_path / "splits.json", splits)
    with pytest.raises(DataError, match="tune is not a list of ids of train"):
        read_splits(tmp_path / "splits.json")


def test_the_threshold_grid_reaches_095():
    assert THRESHOLD_GRID[0] == 0.05 and THRESHOLD_GRID[-1] == 0.95 and 0.5 in THRESHOLD_GRID


def test_paper_preset_keeps_the_papers_method():
    config = load_config("paper")
    assert (config.train.loss, config.train.sampling, config.train.schedule) == ("paper", "uniform", "constant")
    assert config.train.optimizer == "sgd" and config.data.tune_fraction == 0.0


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.loss=dice", "train.loss: 'dice' (one of paper, pooled, pooled_bce)"),
        ("train.sampling=balanced", "train.sampling: 'balanced' (one of uniform, rare)"),
        ("train.schedule=step", "train.schedule: 'step' (one of constant, cosine, onecycle)"),
        ("train.optimizer=adamw", "train.optimizer: 'adamw' (one of sgd, adam)"),
        ("data.tune_fraction=0.8", "data.tune_fraction must be in [0, 1 - data.val_fraction)"),
        ("data.tune_fraction=-0.1", "data.tune_fraction must be in"),
    ],
)
def test_wrong_option_values_are_one_line_config_errors(override: str, needle: str):
    with pytest.raises(ConfigError, match=None) as error:
        load_config(None, [override])
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_a_tuning_split_with_a_parent_run_is_refused():
    with pytest.raises(ConfigError, match="pipeline.init_from keeps the parent run's split"):
        load_config(None, ["pipeline.init_from=runs/parent", "data.tune_fraction=0.1"])


def test_a_tiny_run_with_every_option_tunes_thresholds_on_the_tuning_split(tmp_path, one_torch_thread):
    import json

    import tatl
    from tests.conftest import TINY_RUN_SETTINGS

    options = {"train.loss": "pooled_bce", "train.sampling": "rare", "train.schedule": "cosine",
               "train.optimizer": "adam", "data.tune_fraction": 0.25, "pipeline.tune_thresholds": True}
    run = tatl.train("synthetic", tmp_path / "run", config="demo", variants=["1,2,3"],
                     overrides={**TINY_RUN_SETTINGS, **options}).run_dir
    splits = json.loads((run / "splits.json").read_text())
    assert splits["tune"] and not set(splits["tune"]) & set(splits["val"])
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert thresholds["tuned_on"] == "tuning split"
    assert set(thresholds["variants"]["1,2,3"]["unet"].values()) <= set(THRESHOLD_GRID)
    assert "optimistic" not in (run / "summary.md").read_text()


def test_cached_features_give_the_same_decoders_as_the_frozen_encoder_pass(tmp_path, one_torch_thread):
    from tatl.data.dataset import SegmentationDataset
    from tatl.models.multihead import MultiHeadSegmenter
    from tatl.models.networks import build_model
    from tatl.training.engine import fit
    from tatl.training.feature_cache import FeatureDataset, cache_features

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    masks = (rng.random((6, 2, 32, 32)) > 0.8).astype(np.uint8)
    names = ["pigment_network", "globules"]
    torch.manual_seed(0)
    base = build_model("unet", "tu-resnet10t")
    trained = {}
    for cached in (False, True):
        group = MultiHeadSegmenter.from_model(build_model("unet", "tu-resnet10t"), names)
        group.load_state_dict(MultiHeadSegmenter.from_model(base, names).state_dict())
        train_set, val_set = (SegmentationDataset(images[i], masks[i], targets=names) for i in (slice(4), slice(4, 6)))
        if cached:
            train_set, val_set = (cache_features(group.encoder, d, torch.device("cpu")) for d in (train_set, val_set))
            assert isinstance(train_set, FeatureDataset) and len(train_set) == 4
        cfg = TrainConfig(epochs=2, batch_size=2, device="cpu", augment=False)
        fit(group, train_set, val_set, cfg, {n: tmp_path / str(cached) / n for n in names}, False, "t")
        trained[cached] = group.state_dict()
    for key, value in trained[False].items():
        assert torch.allclose(value.float(), trained[True][key].float(), atol=1e-5), key


def test_features_of_augmented_images_are_not_cached():
    from tatl.data.dataset import SegmentationDataset
    from tatl.training.feature_cache import cache_features

    augmented = SegmentationDataset(np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, 1, 32, 32), np.uint8), True)
    with pytest.raises(ValueError, match="without augmentation"):
        cache_features(torch.nn.Identity(), augmented, torch.device("cpu"))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["pipeline.feature_cache=true", "train.augment=true"], "set train.augment=false"),
        (["pipeline.feature_cache=true", "train.augment=false", "pipeline.encoder_mode=trainable"],
         "pipeline.encoder_mode=trainable changes them every step"),
        (["pipeline.feature_cache=true", "train.augment=false", "pipeline.variants=[3]"], "use 2,3 or 1,2,3"),
    ],
)
def test_a_feature_cache_with_augmentation_or_a_trainable_encoder_is_refused(overrides, needle):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert needle in str(error.value) and "\n" not in str(error.value)
