"""Stage-3 initialisation strategies (Tables 6-7): each builds and trains; bad combinations fail early."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_cli_settings

from tatl.checkpoints import load_checkpoint
from tatl.cli import main
from tatl.data.dataset import SegmentationDataset, build_augmentation
from tatl.data.synth import write_synthetic_dataset
from tatl.models.networks import build_model
from tatl.training.pretext import RestorationDataset, swap_patches

ATTRIBUTES = ["globules", "pigment_network"]
# The session's tiny settings (the synth.* keys do not apply: the data is written here), batches of 4.
TINY = ["--config", "demo", *tiny_cli_settings({"train.batch_size": 4})]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synth"
    write_synthetic_dataset(root, n=12, size=64, seed=2)
    return root


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    """A local encoder weights file standing in for ImageNet weights (offline); every float tensor is perturbed, so
    no tensor of it equals what a freshly built network holds (BatchNorm's ones and zeros included)."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        state = build_model("unet", "tu-resnet10t").encoder.state_dict()
    generator = torch.Generator().manual_seed(1234)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in state.items()}
    path = tmp_path_factory.mktemp("weights") / "encoder.pt"
    torch.save(state, path)
    return path


@pytest.fixture
def fits(monkeypatch) -> list[dict]:
    """Every network the pipeline trains, as it enters training: label, heads, encoder state, datasets, mode."""
    import tatl.pipeline.groups

    calls: list[dict] = []
    real_fit = tatl.pipeline.groups.fit

    def spy(model, train_set, val_set, cfg, head_dirs, train_encoder, label, *args, **kwargs):
        calls.append({"label": label, "heads": sorted(model.heads), "train_set": train_set, "val_set": val_set,
                      "train_encoder": train_encoder,
                      "start": {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}})
        return real_fit(model, train_set, val_set, cfg, head_dirs, train_encoder, label, *args, **kwargs)

    monkeypatch.setattr(tatl.pipeline.groups, "fit", spy)
    return calls


def stage3_calls(fits: list[dict]) -> list[dict]:
    calls = [call for call in fits if call["label"].startswith("stage 3")]
    assert sorted(call["heads"] for call in calls) == [[a] for a in ATTRIBUTES]  # one network per attribute
    return calls


def encoder_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {k.removeprefix("encoder."): v for k, v in load_checkpoint(checkpoint)["model"].items()
            if k.startswith("encoder.")}


def changed_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Share of the weight tensors of a (BatchNorm running statistics left out) that differ in b."""
    assert a.keys() == b.keys()
    keys = [k for k in a if a[k].is_floating_point() and not k.endswith(("running_mean", "running_var"))]
    return sum(not torch.equal(a[k], b[k]) for k in keys) / len(keys)


def squared_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Summed squared difference of the convolution kernels of two encoder states."""
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a if a[k].ndim == 4)


@pytest.mark.parametrize("init", ["random", "augmentation", "context-restoration"])
@pytest.mark.slow
def test_each_strategy_trains(init: str, data: Path, tmp_path: Path, encoder_file: Path):
    run = tmp_path / "run"
    # An ImageNet start needs weights: a local file stands in for them here.
    extra = ["--set", f"model.encoder_weights={encoder_file}"] if init == "augmentation" else []
    assert main(["run", str(data), "--out", str(run), *TINY, *extra, "--set", f"pipeline.init={init}",
                 "--variants", "1,3"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["variant 1,3"]["unet"]) == {"pigment_network", "globules", "micro_average", "macro_average"}
    if init == "context-restoration":  # trained by engine.fit: its files are a stage's
        for name in ("best.pt", "last.pt", "log.csv", "done.json"):
            assert (run / "pretext-crops" / "unet" / name).is_file(), name
    log = (run / "stage3-v13" / "unet" / "globules" / "log.csv").read_text().splitlines()
    assert len(log) == 2


@pytest.mark.slow
def test_imagenet_init_starts_every_target_from_the_weights_file(data: Path, tmp_path: Path, encoder_file: Path,
                                                                  fits: list[dict], capsys):
    run = tmp_path / "run"
    assert main(["run", str(data), "--out", str(run), *TINY, "--set", f"model.encoder_weights={encoder_file}",
                 "--set", "pipeline.init=imagenet", "--variants", "1,3"]) == 0
    saved = torch.load(encoder_file, weights_only=True)
    torch.manual_seed(0)  # what the pipeline's network would hold had it ignored the file
    fresh = build_model("unet", "tu-resnet10t").encoder.state_dict()
    assert not any(torch.equal(saved[k], fresh[k]) for k in saved if saved[k].is_floating_point())
    err = capsys.readouterr().err
    for call in stage3_calls(fits):
        attribute = call["heads"][0]
        assert call["train_encoder"]  # no Stage 2: the whole network trains
        assert call["start"].keys() == saved.keys()
        assert all(torch.equal(call["start"][k], saved[k]) for k in saved), attribute
        folder = run / "stage3-v13" / "unet" / attribute
        with open(folder / "log.csv", newline="") as handle:
            assert [row["epoch"] for row in csv.DictReader(handle)] == ["0"]
        assert f"[stage 3 (variant 1,3, unet, {attribute})] epoch 1/1" in err
        # The checkpoint itself says so: one epoch moves the kernels a little from the file's, far from a fresh start.
        trained = encoder_of(folder / "best.pt")
        assert squared_distance(trained, saved) < 1e-3 * squared_distance(trained, fresh), attribute


@pytest.mark.slow
def test_trainable_encoder_trains_one_network_per_attribute_from_stage2(data: Path, tmp_path: Path,
                                                                        fits: list[dict]):
    """TATL-NF; the frozen side (every target keeps Stage 2's encoder) is tests/test_pipeline.py's."""
    run = tmp_path / "run"
    assert main(["run", str(data), "--out", str(run), *TINY, "--set", "pipeline.encoder_mode=trainable",
                 "--variants", "1,2,3"]) == 0
    stage2 = encoder_of(run / "stage2-crops" / "unet" / "best.pt")
    shape_dir = run / "stage3-v123" / "unet"
    assert not (shape_dir / "done.json").exists()  # no shared multi-head group, as the frozen mode writes
    encoders = {}
    for call in stage3_calls(fits):
        attribute = call["heads"][0]
        assert call["train_encoder"]
        assert all(torch.equal(call["start"][k], stage2[k]) for k in stage2), attribute  # started from Stage 2
        for name in ("best.pt", "last.pt", "log.csv", "done.json"):
            assert (shape_dir / attribute / name).is_file(), f"{attribute}/{name}"
        encoders[attribute] = encoder_of(shape_dir / attribute / "best.pt")
        assert changed_weights(encoders[attribute], stage2) > 0, attribute  # its encoder trained (frozen: 0)
    assert changed_weights(encoders["globules"], encoders["pigment_network"]) > 0  # each trained its own


def test_strong_augmentation_has_rotation_shift_zoom_brightness_and_flips():
    import albumentations as A

    strong = {type(t): t for t in build_augmentation(strong=True).transforms}
    assert {A.HorizontalFlip, A.VerticalFlip} <= strong.keys()
    assert strong[A.HorizontalFlip].p > 0 and strong[A.VerticalFlip].p > 0
    affine = strong[A.Affine]
    assert affine.p > 0
    assert affine.rotate[0] < 0 < affine.rotate[1]  # any angle in a range, not only the 90-degree turns
    assert all(low < 0 < high for low, high in affine.translate_percent.values())  # shift
    assert all(low < 1 < high for low, high in affine.scale.values())  # zoom in and out
    brightness = strong[A.RandomBrightnessContrast]
    assert brightness.p > 0 and brightness.brightness_limit[0] < 0 < brightness.brightness_limit[1]
    weak = {type(t) for t in build_augmentation().transforms}
    assert A.Affine not in weak and A.RandomBrightnessContrast not in weak  # strong=True is what adds them


def test_strong_copies_enlarge_the_set_with_distinct_augmented_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    masks = (images[:, None, :, :, 0] > 127).astype(np.uint8)
    dataset = SegmentationDataset(images, masks, augment=True, copies=4, strong=True)
    assert len(dataset) == 12
    for item in range(3):
        copies = [dataset[item + 3 * copy] for copy in range(4)]
        for i in range(4):
            for j in range(i + 1, 4):
                assert not torch.equal(copies[i][0], copies[j][0]), (item, i, j)
                assert not torch.equal(copies[i][1], copies[j][1]), (item, i, j)  # masks move with the image
    assert torch.equal(dataset[5][0], dataset[5][0])  # seeded per (seed, epoch, index)
    plain = SegmentationDataset(images, masks, copies=4)  # no augmentation: every copy is the image itself
    assert len(plain) == 12 and torch.equal(plain[1][0], plain[1 + 3][0])
    # A copy comes out unchanged only when no transform fires (p ~ 1%): rarely, not never.
    many = SegmentationDataset(images, masks, augment=True, copies=100, strong=True)
    unchanged = sum(torch.equal(many[index][0], plain[index % 3][0]) for index in range(len(many)))
    assert unchanged < 0.05 * len(many)


@pytest.mark.slow
def test_augmentation_init_trains_on_copies_of_every_training_image(data: Path, tmp_path: Path, encoder_file: Path,
                                                                   fits: list[dict], monkeypatch):
    import albumentations as A

    import tatl.training.engine

    iterated: list[tuple[object, list[int]]] = []  # (dataset, the indices one training epoch went through)
    real_loader = tatl.training.engine._loader

    def loader(dataset, cfg, epoch, device):
        out = real_loader(dataset, cfg, epoch, device)
        if epoch is not None:
            iterated.append((dataset, [index for batch in out.batch_sampler for index in batch]))
        return out

    monkeypatch.setattr(tatl.training.engine, "_loader", loader)
    run = tmp_path / "run"
    assert main(["run", str(data), "--out", str(run), *TINY, "--set", f"model.encoder_weights={encoder_file}",
                 "--set", "pipeline.init=augmentation", "--set", "pipeline.augmentation_copies=3",
                 "--variants", "1,3"]) == 0
    splits = json.loads((run / "splits.json").read_text())
    n_train, n_val = len(splits["train"]), len(splits["val"])
    assert n_train >= 4
    for call in stage3_calls(fits):
        train_set, val_set = call["train_set"], call["val_set"]
        assert len(train_set.images) == n_train and len(train_set) == 3 * n_train
        assert len(val_set) == n_val  # validation is not enlarged
        assert A.Affine in {type(t) for t in train_set.augmentation.transforms} and val_set.augmentation is None
        epochs = [indices for dataset, indices in iterated if dataset is train_set]
        assert len(epochs) == 2  # one epoch for each attribute's network
        assert all(sorted(indices) == list(range(3 * n_train)) for indices in epochs)
    stage1 = next(call for call in fits if call["label"] == "stage 1")
    assert len(stage1["train_set"]) == n_train  # only Stage 3's training set is enlarged


def test_an_init_that_replaces_stage2_refuses_variants_with_stage2(data: Path, tmp_path: Path, capsys):
    code = main(["run", str(data), "--out", str(tmp_path / "r"), *TINY, "--set", "pipeline.init=random",
                 "--variants", "1,2,3"])
    assert code == 2
    assert "pipeline.init=random replaces Stage 2" in capsys.readouterr().err


def test_imagenet_offline_fails_fast_with_a_clear_message(data: Path, tmp_path: Path, capsys, monkeypatch,
                                                          fits: list[dict], network_attempts: list):
    from tatl.models import networks

    hub_builds = []
    real_build = networks._build_with_hub_weights
    monkeypatch.setattr(networks, "_build_with_hub_weights",
                        lambda *args: hub_builds.append(args) or real_build(*args))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["run", str(data), "--out", str(tmp_path / "r"), *TINY, "--set", "pipeline.init=imagenet",
                 "--variants", "1,3", "--stages", "1,2,3"])
    assert code == 2
    assert "imagenet" in capsys.readouterr().err.lower()
    # Fast means: the run stops at the first Stage-3 network, after one look in the local cache: no second
    # attribute's network, no retry, no connection; Stage 1 was the only network trained.
    assert len(hub_builds) == 1 and network_attempts == []
    assert [call["label"] for call in fits] == ["stage 1"]


def test_swapped_patches_keep_the_colour_histogram_and_change_the_context():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    disturbed = swap_patches(image, np.random.default_rng(1), swaps=5)
    assert not np.array_equal(image, disturbed)
    assert np.array_equal(np.sort(image.reshape(-1, 3), axis=0), np.sort(disturbed.reshape(-1, 3), axis=0))
    x, y = RestorationDataset(image[None], seed=0)[0]
    assert x.shape == y.shape == (3, 32, 32)


# ------------------------------------------------------------------------------- the context-restoration pretext
def pretext_images(n: int = 12, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def train_pretext(out: Path, **changes) -> dict[str, torch.Tensor]:
    from tatl.config import TrainConfig
    from tatl.training.pretext import train_context_restoration

    values = dict(epochs=3, patience=5, batch_size=4, lr=0.01, device="cpu", seed=3)
    images = pretext_images()
    return train_context_restoration("unet", "tu-resnet10t", None, images[:8], images[8:],
                                     TrainConfig(**{**values, **changes}), out)


@pytest.mark.slow
def test_the_pretext_resumes_from_last_pt_after_an_interruption(tmp_path: Path, monkeypatch):
    """Killed in its second epoch, the pretext continues from last.pt at that epoch (not from the start) and ends
    where an uninterrupted run ends; its best.pt is the network Stage 3 loads (keys of the 3-channel network)."""
    from tatl.training import engine

    straight = train_pretext(tmp_path / "straight")
    trained: list[int] = []
    real_train_one_epoch = engine.train_one_epoch

    def killed_in_epoch_2_once(setup, active, dataset, epoch, step_model=None):
        trained.append(epoch)
        if trained == [0, 1]:
            raise KeyboardInterrupt("killed")
        return real_train_one_epoch(setup, active, dataset, epoch, step_model)

    monkeypatch.setattr(engine, "train_one_epoch", killed_in_epoch_2_once)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_pretext(out)
    assert load_checkpoint(out / "last.pt")["epoch"] == 0 and not (out / "done.json").exists()
    resumed = train_pretext(out)
    assert trained == [0, 1, 1, 2]  # the second call went on with epoch 2 and 3
    with open(out / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]  # one row per epoch, none repeated
    assert resumed.keys() == straight.keys() == build_model("unet", "tu-resnet10t", None, classes=3).state_dict().keys()
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
    best = load_checkpoint(out / "best.pt")
    assert all(torch.equal(best["model"][key], value) for key, value in resumed.items())
    best_mse = json.loads((out / "done.json").read_text())["best_val_mse"]
    assert best_mse == min(float(row["loss"]) for row in rows) == float(rows[best["epoch"]]["loss"])


def test_a_nan_pretext_loss_stops_it_naming_the_stage_epoch_and_batch(tmp_path: Path):
    from tatl.training.engine import TrainingDiverged

    # A NaN rate: the first step poisons the weights, so the second batch's loss is NaN.
    with pytest.raises(TrainingDiverged, match=r"context restoration \(unet\): loss of restoration is nan at epoch 1, "
                                               r"batch 2; the last good checkpoint is kept"):
        train_pretext(tmp_path / "pretext", lr=float("nan"))
    assert not list((tmp_path / "pretext").glob("*.pt")) and not (tmp_path / "pretext" / "done.json").exists()


def test_a_finished_pretext_folder_from_before_is_reused_as_it_is(tmp_path: Path, monkeypatch):
    """A pretext folder written before the pretext trained with engine.fit: best.pt ({"model", "epoch",
    "best_score"}) and done.json, no last.pt or log.csv."""
    from tatl.training import pretext

    out = tmp_path / "pretext-full" / "unet"
    out.mkdir(parents=True)
    state = build_model("unet", "tu-resnet10t", None, classes=3).state_dict()
    torch.save({"model": state, "epoch": 4, "best_score": -0.5}, out / "best.pt")
    (out / "done.json").write_text(json.dumps({"best_val_mse": 0.5}))
    monkeypatch.setattr(pretext, "fit", lambda *args, **kwargs: pytest.fail("trained again"))
    reused = train_pretext(out)
    assert reused.keys() == state.keys() and all(torch.equal(reused[k], v) for k, v in state.items())
