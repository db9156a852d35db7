"""Config: YAML + --set overrides, unknown keys and wrong types are errors naming the key."""

from pathlib import Path

import pytest
import yaml

from tatl.config import PRESETS_DIR, Config, apply_override, from_dict, load_config, save_config, to_dict, validate
from tatl.errors import ConfigError


def test_defaults_follow_the_paper():
    config = Config()
    assert (config.train.lr, config.train.momentum, config.train.epochs, config.train.patience) == (0.01, 0.9, 40, 10)
    assert config.pipeline.crop_margin == 40
    assert config.model.shapes == ["unet", "linknet"]
    assert config.model.encoder_name == "paper-efficientnet-b0"


def test_yaml_then_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  shapes: [unet]\n")
    config = load_config(path, ["train.lr=0.1", "pipeline.variants=[3, '1,2,3']", "data.attributes=globules,streaks"])
    assert config.train.epochs == 3 and config.train.lr == 0.1
    assert config.model.shapes == ["unet"]
    assert config.pipeline.variants == ["3", "1,2,3"]
    assert config.data.attributes == ["globules", "streaks"]


def test_round_trip(tmp_path: Path):
    config = load_config("demo", ["train.seed=7"])
    save_config(config, tmp_path / "config.yaml")
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(config)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
        ({"trian": {}}, "unknown key 'trian'"),
        ({"train": {"epochs": "many"}}, "train.epochs must be int"),
        ({"train": {"epochs": -1}}, "train.epochs must be >= 1"),
        ({"train": {"lr": True}}, "train.lr must be float"),
        ({"model": {"shapes": ["unet", "fpn"]}}, "unknown shape 'fpn'"),
        ({"pipeline": {"variants": ["2"]}}, "unknown variant '2'"),
        ({"data": {"image_size": 100}}, "data.image_size must be a positive multiple of 32"),
        ({"data": {"attributes": ["../x"]}}, "not a valid attribute name"),
        ({"pipeline": {"encoder_mode": "half"}}, "pipeline.encoder_mode"),
    ],
)
def test_bad_values_name_the_key(values, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        from_dict(values)


def test_override_syntax_errors():
    config = Config()
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_override(config, "train.epochs")
    with pytest.raises(ConfigError, match="key must be section.key"):
        apply_override(config, "epochs=3")


def test_unknown_preset_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not a config file or a preset"):
        load_config("nonexistent-preset")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2")
    with pytest.raises(ConfigError, match="cannot read YAML"):
        load_config(bad)


def test_paper_preset_has_the_papers_settings():
    config = load_config("paper")
    t, p, m = config.train, config.pipeline, config.model
    assert (t.lr, t.momentum, t.weight_decay) == (0.01, 0.9, 0.0)  # SGD: the only optimizer tatl trains with
    assert (t.epochs, t.patience) == (40, 10)
    assert p.crop_margin == 40 and p.crop_source == "predicted"
    assert m.shapes == ["unet", "linknet"] and m.stage1_shape == "unet"
    assert m.encoder_name == "paper-efficientnet-b0" and m.encoder_weights == "imagenet"
    assert p.encoder_mode == "frozen" and p.init == "tatl" and p.variants == ["1,2,3"]
    assert (p.threshold, p.tune_thresholds) == (0.5, False)
    assert t.monitor == "jaccard"  # best model on validation Jaccard
    assert t.augment is False  # the paper's TATL trains without augmentation (its Section 5.5 baseline)


@pytest.mark.parametrize("preset", sorted(path.stem for path in PRESETS_DIR.glob("*.yaml")))
def test_every_preset_loads_validates_and_round_trips(preset: str, tmp_path: Path):
    config = load_config(preset)
    validate(config)
    save_config(config, tmp_path / "config.yaml")
    assert to_dict(load_config(tmp_path / "config.yaml")) == to_dict(config)


def test_the_paper_preset_trains_without_augmentation_and_the_others_with_it():
    assert {name: load_config(name).train.augment for name in ("paper", "isic-cpu", "demo")} == {
        "paper": False, "isic-cpu": True, "demo": True}  # isic-cpu and the demo were measured with it


def test_the_isic_cpu_preset_starts_from_lite0_runs_full_tatl_and_names_what_it_adds_beyond_the_paper():
    from tatl.models.weights import LITE0_ENCODER, check_lite0_fits

    config = load_config("isic-cpu")
    m, p, t = config.model, config.pipeline, config.train
    assert (m.encoder_name, m.encoder_weights) == (LITE0_ENCODER, "lite0")
    check_lite0_fits(m.encoder_name)
    assert "unet" in m.shapes and "1,2,3" in p.variants
    assert p.init == "tatl" and p.encoder_mode == "joint" and t.stage2_epochs < t.epochs
    assert config.data.tune_fraction > 0 and p.tune_thresholds  # thresholds never tuned on the reported split
    text = (PRESETS_DIR / "isic-cpu.yaml").read_text()
    for key in ("pipeline.encoder_mode", "train.stage2_epochs", "train.augment", "train.optimizer", "train.loss",
                "train.sampling", "train.schedule", "data.tune_fraction"):
        assert key in text, key  # the comment names each addition
    assert (t.optimizer, t.loss, t.sampling, t.schedule) == ("adam", "pooled_bce", "rare", "cosine")  # measured best
    values = yaml.safe_load((PRESETS_DIR / "isic-cpu.yaml").read_text())
    assert "segment_net" not in values["pipeline"]  # the run names its Segment-Net: --segment-net


def test_the_optimizer_is_sgd_with_the_configured_rate_and_momentum():
    """The paper's SGD: the engine builds torch.optim.SGD from train.lr and train.momentum."""
    import segmentation_models_pytorch as smp
    import torch

    from tatl.models.multihead import MultiHeadSegmenter
    from tatl.training.engine import _optimizer

    config = load_config("paper")
    network = smp.Unet("tu-resnet10t", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4))
    group = MultiHeadSegmenter.from_model(network, ["a"])
    optimizer = _optimizer(group, "a", True, config.train)
    assert type(optimizer) is torch.optim.SGD
    (param_group,) = optimizer.param_groups
    assert (param_group["lr"], param_group["momentum"], param_group["weight_decay"]) == (0.01, 0.9, 0.0)
    assert len(param_group["params"]) == len(list(group.parameters()))


def test_floats_in_exponent_notation_without_a_dot_are_numbers():
    """YAML 1.1 reads 1e-05 as a string; a learning rate written the way Python prints it must still be a number."""
    config = load_config(None, ["train.lr=1e-05", "pipeline.threshold=5E-1"])
    assert config.train.lr == 1e-05 and config.pipeline.threshold == 0.5
    for bad in ("train.lr=fast", "train.lr=nan"):
        with pytest.raises(ConfigError, match="train.lr must be"):
            load_config(None, [bad])
