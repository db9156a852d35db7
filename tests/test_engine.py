"""The training loop: shared frozen encoder == one-at-a-time training, frozen stays frozen, resume, faults."""

import copy
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from tatl.checkpoints import load_checkpoint
from tatl.config import TrainConfig
from tatl.data.dataset import SegmentationDataset
from tatl.models.multihead import MultiHeadSegmenter
from tatl.training.engine import TrainingDiverged, fit

NAMES = ["a", "b", "c"]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return smp.Unet("tu-resnet10t", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4))


def tiny_data(n: int = 10, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, len(NAMES), size, size), dtype=np.uint8)
    for i in range(n):
        for k in range(len(NAMES)):
            if rng.random() < 0.7:
                y, x = rng.integers(0, size - 8, 2)
                masks[i, k, y : y + 8, x : x + 8] = 1
                images[i, y : y + 8, x : x + 8, k] = 255  # learnable: each target brightens one channel
    return images, masks


def config(**changes) -> TrainConfig:
    values = dict(epochs=2, patience=5, batch_size=4, lr=0.05, device="cpu", seed=3, augment=True)
    values.update(changes)
    return TrainConfig(**values)


def datasets(images, masks, cfg):
    return (SegmentationDataset(images, masks, augment=cfg.augment, seed=cfg.seed),
            SegmentationDataset(images, masks, augment=False))


@pytest.mark.slow
def test_shared_frozen_encoder_equals_one_at_a_time(tmp_path: Path):
    images, masks = tiny_data()
    cfg = config()
    base = tiny_model()
    multi = MultiHeadSegmenter.from_model(copy.deepcopy(base), NAMES)
    fit(multi, *datasets(images, masks, cfg), cfg, {n: tmp_path / "multi" / n for n in NAMES},
        train_encoder=False, label="multi")
    for k, name in enumerate(NAMES):
        single = MultiHeadSegmenter.from_model(copy.deepcopy(base), [name])
        fit(single, *datasets(images, masks[:, k : k + 1], cfg), cfg, {name: tmp_path / name},
            train_encoder=False, label=name)
        for attr in ("best.pt", "last.pt"):
            together = load_checkpoint(tmp_path / "multi" / name / attr)["model"]
            alone = load_checkpoint(tmp_path / name / attr)["model"]
            assert together.keys() == alone.keys()
            for key in together:
                torch.testing.assert_close(together[key], alone[key], rtol=1e-5, atol=1e-6, msg=key)


def test_frozen_encoder_heads_train_one_after_another_with_one_graph_alive(tmp_path: Path):
    """The memory claim of head-by-head training: when a head's forward starts, no earlier head's autograd graph (the
    tensors it saved for backward) is alive any more. A backward of the summed losses would keep all of them."""
    import weakref

    class Saved:  # what autograd keeps for the backward, wrapped so we can see when it is freed
        def __init__(self, tensor):
            self.tensor = tensor

    alive: weakref.WeakSet = weakref.WeakSet()

    def pack(tensor):
        holder = Saved(tensor)
        alive.add(holder)
        return holder

    images, masks = tiny_data(n=8)
    cfg = config(epochs=1, augment=False)
    multi = MultiHeadSegmenter.from_model(tiny_model(), NAMES)
    alive_at_start: dict[str, list[int]] = {n: [] for n in NAMES}
    for name in NAMES:
        multi.heads[name].register_forward_pre_hook(lambda _m, _x, name=name: alive_at_start[name].append(len(alive)))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor):
        fit(multi, *datasets(images, masks, cfg), cfg, {n: tmp_path / n for n in NAMES}, train_encoder=False,
            label="multi")
    trained = [counts[:2] for counts in alive_at_start.values()]  # 2 training batches of 4; validation follows
    assert all(len(counts) == 2 for counts in trained)
    assert all(count == 0 for counts in trained for count in counts), alive_at_start
    assert len(alive) == 0


def test_frozen_encoder_weights_and_batchnorm_stats_stay_bit_identical(tmp_path: Path):
    images, masks = tiny_data()
    cfg = config(epochs=1)
    model = MultiHeadSegmenter.from_model(tiny_model(), NAMES)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.heads["a"].state_dict().items()}
    fit(model, *datasets(images, masks, cfg), cfg, {n: tmp_path / n for n in NAMES},
        train_encoder=False, label="t")
    after = model.encoder.state_dict()
    assert any("running_mean" in k for k in before)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert any(not torch.equal(v, model.heads["a"].state_dict()[k]) for k, v in head_before.items())


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path):
    images, masks = tiny_data()
    straight = MultiHeadSegmenter.from_model(tiny_model(), ["a"])
    cfg = config(epochs=3)
    fit(straight, *datasets(images, masks[:, :1], cfg), cfg, {"a": tmp_path / "s"},
        train_encoder=True, label="s")
    for epochs in (1, 3):  # stop after epoch 1 (as if killed), then a new process continues to epoch 3
        resumed = MultiHeadSegmenter.from_model(tiny_model(), ["a"])
        cfg_part = config(epochs=epochs)
        fit(resumed, *datasets(images, masks[:, :1], cfg_part), cfg_part, {"a": tmp_path / "r"},
            train_encoder=True, label="r")
    final_straight = load_checkpoint(tmp_path / "s" / "last.pt")
    final_resumed = load_checkpoint(tmp_path / "r" / "last.pt")
    assert final_straight["epoch"] == final_resumed["epoch"] == 2
    for key, value in final_straight["model"].items():
        assert torch.equal(value, final_resumed["model"][key]), key
    log = (tmp_path / "r" / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 3  # header + one row per epoch, no duplicates after the resume


def test_early_stopping_stops_a_head_without_improvement(tmp_path: Path):
    images, masks = tiny_data()
    cfg = config(epochs=30, patience=2, lr=1e-9, augment=False)  # next to nothing moves, so it soon stops improving
    model = MultiHeadSegmenter.from_model(tiny_model(), ["a"])
    progress = fit(model, *datasets(images, masks[:, :1], cfg), cfg, {"a": tmp_path},
                   train_encoder=True, label="t")
    assert progress["a"].stopped
    best_epoch = progress["a"].best_epoch
    assert len(progress["a"].history) == best_epoch + 1 + 2  # the best epoch, then `patience` epochs without gain
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == best_epoch


def test_nan_loss_stops_with_stage_epoch_and_batch_and_keeps_last_good_checkpoint(tmp_path: Path):
    images, masks = tiny_data()
    cfg = config(epochs=2, augment=False)
    model = MultiHeadSegmenter.from_model(tiny_model(), ["a"])
    fit(model, *datasets(images, masks[:, :1], cfg), cfg, {"a": tmp_path}, train_encoder=True, label="ok")
    good = load_checkpoint(tmp_path / "last.pt")
    # Resume for a third epoch with a NaN learning rate (resuming applies the configured rate): the first
    # step poisons the weights, so the second batch's loss is NaN.
    cfg3 = config(epochs=3, augment=False, lr=float("nan"))
    with pytest.raises(TrainingDiverged, match=r"stage X: loss of a is nan at epoch 3, batch 2"):
        fit(MultiHeadSegmenter.from_model(tiny_model(), ["a"]), *datasets(images, masks[:, :1], cfg3), cfg3,
            {"a": tmp_path}, train_encoder=True, label="stage X")
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == good["epoch"]


@pytest.mark.slow
def test_heads_left_at_different_epochs_by_a_kill_resume_to_the_same_result(tmp_path: Path):
    """A kill between two heads' last.pt writes leaves one head an epoch behind; it catches up alone."""
    import shutil

    images, masks = tiny_data()
    cfg1, cfg2 = config(epochs=1), config(epochs=2)
    base = tiny_model()
    dirs = {n: tmp_path / "r" / n for n in NAMES}
    straight_dirs = {n: tmp_path / "s" / n for n in NAMES}
    fit(MultiHeadSegmenter.from_model(copy.deepcopy(base), NAMES), *datasets(images, masks, cfg2), cfg2,
        straight_dirs, train_encoder=False, label="s")
    fit(MultiHeadSegmenter.from_model(copy.deepcopy(base), NAMES), *datasets(images, masks, cfg1), cfg1, dirs,
        train_encoder=False, label="r")
    shutil.copy(dirs["b"] / "last.pt", tmp_path / "b-epoch0.pt")
    fit(MultiHeadSegmenter.from_model(copy.deepcopy(base), NAMES), *datasets(images, masks, cfg2), cfg2, dirs,
        train_encoder=False, label="r")
    shutil.copy(tmp_path / "b-epoch0.pt", dirs["b"] / "last.pt")  # as if killed before b's epoch-2 write
    fit(MultiHeadSegmenter.from_model(copy.deepcopy(base), NAMES), *datasets(images, masks, cfg2), cfg2, dirs,
        train_encoder=False, label="r")
    for name in NAMES:
        resumed, straight = load_checkpoint(dirs[name] / "last.pt"), load_checkpoint(straight_dirs[name] / "last.pt")
        assert resumed["epoch"] == straight["epoch"] == 1
        for key, value in straight["model"].items():
            torch.testing.assert_close(resumed["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_a_single_head_learns_its_own_channel_of_a_named_multi_channel_dataset(tmp_path: Path):
    """TATL-NF trains one network per attribute on the shared dataset: each must read its own mask channel."""
    images, masks = tiny_data()
    cfg = config(epochs=1)
    base = tiny_model()
    named = SegmentationDataset(images, masks, augment=True, seed=cfg.seed, targets=NAMES)
    named_val = SegmentationDataset(images, masks, targets=NAMES)
    for k, name in enumerate(NAMES[1:], start=1):
        from_named = MultiHeadSegmenter.from_model(copy.deepcopy(base), [name])
        fit(from_named, named, named_val, cfg, {name: tmp_path / "named" / name}, train_encoder=True, label=name)
        sliced = MultiHeadSegmenter.from_model(copy.deepcopy(base), [name])
        fit(sliced, *datasets(images, masks[:, k : k + 1], cfg), cfg, {name: tmp_path / "sliced" / name},
            train_encoder=True, label=name)
        a = load_checkpoint(tmp_path / "named" / name / "last.pt")["model"]
        b = load_checkpoint(tmp_path / "sliced" / name / "last.pt")["model"]
        for key in a:
            assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match="no mask for d"):
        fit(MultiHeadSegmenter.from_model(copy.deepcopy(base), ["d"]), named, named_val, cfg, {"d": tmp_path / "d"},
            train_encoder=True, label="d")


@pytest.mark.slow
def test_a_frozen_encoder_head_that_cannot_improve_stops_alone_while_the_others_train_on(tmp_path: Path):
    """Head "c" has an all-zero target and a head biased to predict nothing: its validation loss is exactly 0 from
    the first epoch on (empty truth, empty prediction) and its gradient is exactly 0, so it can never improve and
    stops after `patience` epochs; "a" and "b" learn and train every epoch."""
    images, masks = tiny_data()
    masks[:, 2] = 0
    cfg = config(epochs=4, patience=2, monitor="loss", augment=False)
    model = MultiHeadSegmenter.from_model(tiny_model(), NAMES)
    with torch.no_grad():
        model.heads["c"].segmentation_head[0].bias.fill_(-1e4)  # sigmoid is exactly 0 everywhere
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    dirs = {n: tmp_path / n for n in NAMES}
    progress = fit(model, *datasets(images, masks, cfg), cfg, dirs, train_encoder=False, label="t")

    assert progress["c"].stopped and progress["c"].best_epoch == 0
    assert [row["loss"] for row in progress["c"].history] == [0.0] * (1 + cfg.patience)
    rows = {n: (dirs[n] / "log.csv").read_text().splitlines()[1:] for n in NAMES}
    assert len(rows["c"]) == 1 + cfg.patience < cfg.epochs  # the best epoch, then `patience` without gain
    for name in ("a", "b"):
        assert not progress[name].stopped
        assert len(rows[name]) == len(progress[name].history) == cfg.epochs
        assert load_checkpoint(dirs[name] / "last.pt")["epoch"] == cfg.epochs - 1
        assert load_checkpoint(dirs[name] / "best.pt")["epoch"] == progress[name].best_epoch
    best_c, last_c = load_checkpoint(dirs["c"] / "best.pt"), load_checkpoint(dirs["c"] / "last.pt")
    assert best_c["epoch"] == 0 and last_c["epoch"] == cfg.patience  # c's files stop with it
    # its decoder's BatchNorm statistics moved in the epochs after the best one: best.pt was not rewritten then
    assert any(not torch.equal(value, last_c["model"][key]) for key, value in best_c["model"].items()
               if "running_mean" in key)
    # fit leaves each head's best weights loaded: c's are those of its best.pt (epoch 0)
    for key, value in model.head_state("c").items():
        assert torch.equal(value, best_c["model"][key]), key
    after = model.encoder.state_dict()
    for key, value in encoder_before.items():
        assert torch.equal(value, after[key]), key
        for name in NAMES:  # every head's checkpoint holds the same, untouched encoder
            assert torch.equal(value, load_checkpoint(dirs[name] / "best.pt")["model"][f"encoder.{key}"]), key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.slow
def test_the_mixed_precision_path_trains_in_low_precision_and_keeps_fp32_weights(tmp_path: Path, monkeypatch, dtype):
    """The CUDA path (autocast; fp16 with a gradient scaler) run on the CPU, where tatl itself stays fp32: the
    forward is in `dtype`, fp16 steps go through an enabled scaler, losses stay finite, weights move and are saved
    in fp32."""
    from tatl.training import engine

    monkeypatch.setattr(engine, "autocast_dtype", lambda device, cfg: dtype)
    scalers = []

    class RecordingScaler(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaled = 0
            scalers.append(self)

        def scale(self, outputs):
            self.scaled += self.is_enabled()
            return super().scale(outputs)

    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    images, masks = tiny_data()
    cfg = config(epochs=2)
    model = MultiHeadSegmenter.from_model(tiny_model(), NAMES[:1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward_dtypes = set()
    model.heads["a"].segmentation_head.register_forward_hook(lambda m, i, out: forward_dtypes.add(out.dtype))
    progress = fit(model, *datasets(images, masks[:, :1], cfg), cfg, {"a": tmp_path / "a"}, train_encoder=True,
                   label="amp")
    assert forward_dtypes == {dtype}  # training and validation forwards ran under autocast
    assert [s.is_enabled() for s in scalers] == [dtype == torch.float16]
    steps = 2 * -(-len(images) // cfg.batch_size)  # 2 epochs of 10 images in batches of 4 (4, 4, 2)
    assert scalers[0].scaled == (steps if dtype == torch.float16 else 0)  # every fp16 loss was scaled
    history = progress["a"].history
    assert len(history) == 2 and all(np.isfinite([row["train_loss"], row["loss"]]).all() for row in history)
    saved = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    assert all(v.dtype == torch.float32 for k, v in saved.items() if v.is_floating_point())
    moved = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in moved) and any(k.startswith("heads.a.") for k in moved)


@pytest.mark.slow
def test_dataloader_workers_give_the_same_training_as_the_main_process(tmp_path: Path):
    """train.num_workers > 0 (worth it on a GPU, where augmenting in the main process can starve it): augmentation
    depends on (seed, epoch, index) only, so worker processes produce the very batches the main process would."""
    images, masks = tiny_data()
    states = []
    for workers in (0, 2):
        cfg = config(epochs=2, num_workers=workers)
        model = MultiHeadSegmenter.from_model(tiny_model(), NAMES[:1])
        fit(model, *datasets(images, masks[:, :1], cfg), cfg, {"a": tmp_path / f"w{workers}"}, train_encoder=True,
            label=f"{workers} workers")
        states.append(model.state_dict())
    for key, value in states[0].items():
        assert torch.equal(states[1][key], value), key


class RedChannel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 100 * x[:, :1]  # normalised red 255 > 0 > normalised red 0


class ReadsItsPrediction(torch.nn.Module):
    """A 'network' whose lesion logits are the input's red channel: bright (255) pixels are predicted positive."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Identity()
        self.heads = torch.nn.ModuleDict({"lesion": RedChannel()})
        self.channels = {"lesion": ["lesion"]}  # as MultiHeadSegmenter: one target, the head itself


def predicted_as(truth_rows: list[int], predicted_rows: list[list[int]]) -> SegmentationDataset:
    """Images of 10x32 px (stored 32x32): a lesion of `truth_rows[i]` rows in image i, predicted as the rows listed
    in predicted_rows[i]: per-image Jaccard = overlap / union of the row sets."""
    images = np.zeros((len(truth_rows), 32, 32, 3), np.uint8)
    masks = np.zeros((len(truth_rows), 1, 32, 32), np.uint8)
    for i, (lesion, predicted) in enumerate(zip(truth_rows, predicted_rows, strict=True)):
        masks[i, 0, :lesion] = 1
        images[i, predicted, :, 0] = 255
    return SegmentationDataset(images, masks, targets=["lesion"])


def test_stage1_monitor_is_the_thresholded_jaccard_and_picks_another_epoch_than_the_jaccard():
    """Epoch 0 gets image 0 right enough (Jaccard 0.7 >= 0.65) and image 1 wrong (0); epoch 1 gets both to 0.6. The
    pooled Jaccard prefers epoch 1, ISIC Task 1's thresholded Jaccard (below 0.65 counts 0) epoch 0."""
    from tatl.training.engine import TrainingSetup, evaluate_heads
    from tatl.training.head_progress import HeadProgress, update_progress

    cfg = config(monitor="threshold_jaccard")
    setup = TrainingSetup(ReadsItsPrediction(), {}, cfg, train_encoder=True, label="stage 1")
    epochs = [predicted_as([10, 10], [list(range(7)), list(range(10, 20))]),  # Jaccard 0.7 and 0
              predicted_as([10, 10], [list(range(6)), list(range(6))])]  # Jaccard 0.6 and 0.6
    rows = [{"epoch": e, **evaluate_heads(setup, ["lesion"], val)["lesion"]} for e, val in enumerate(epochs)]
    assert rows[0]["threshold_jaccard"] == pytest.approx(0.35) and rows[1]["threshold_jaccard"] == 0.0
    assert rows[1]["jaccard"] > rows[0]["jaccard"]  # 12/20 pooled vs 7/23
    best = {}
    for monitor in ("threshold_jaccard", "jaccard"):
        progress = HeadProgress()
        for row in rows:
            update_progress(progress, dict(row), config(monitor=monitor))
        best[monitor] = progress.best_epoch
    assert best == {"threshold_jaccard": 0, "jaccard": 1}
    assert "threshold_jaccard" not in evaluate_heads(TrainingSetup(ReadsItsPrediction(), {}, config(), True, "s2"),
                                                     ["lesion"], epochs[0])["lesion"]  # only for Stage 1


def test_a_thresholded_jaccard_of_zero_everywhere_is_ranked_by_the_jaccard():
    """Early in training no image reaches 0.65: every epoch scores 0, and the one closest to it is kept as best."""
    from tatl.training.head_progress import HeadProgress, update_progress

    progress = HeadProgress()
    for epoch, jaccard in enumerate([0.2, 0.5, 0.4]):
        update_progress(progress, {"epoch": epoch, "loss": 1.0, "jaccard": jaccard, "threshold_jaccard": 0.0},
                        config(monitor="threshold_jaccard", patience=2))
    assert (progress.best_epoch, progress.best_score, progress.bad_epochs) == (1, 0.0, 1)
    assert [row["improved"] for row in progress.history] == [True, True, False]

