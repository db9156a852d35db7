"""Configuration: plain dataclasses with a comment per field, read from YAML, overridden with `--set key=value`.

A run is fully described by one `Config`; `tatl run` writes it, resolved, to `RUN/config.yaml`. Unknown keys and
values of the wrong type are errors that name the key, so a typo never silently falls back to a default.
Presets (`demo`, `paper`, `isic-cpu`) are YAML files in `tatl/presets/`, selected with `--config demo`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tatl.constants import ATTRIBUTES_2018
from tatl.errors import ConfigError
from tatl.io import write_text
from tatl.layout import DEFAULT_VARIANT, STAGES, VARIANTS, variant_stages

PRESETS_DIR = Path(__file__).parent / "presets"
MAX_INT = 2**63 - 1  # an int setting must fit a C long (torch, range sizes)
INITS = ("tatl", "imagenet", "random", "augmentation", "context-restoration")  # Stage-3 starts (Tables 6-7)
LOSSES = ("paper", "pooled", "pooled_bce")  # train.loss
SAMPLINGS = ("uniform", "rare")  # train.sampling
SCHEDULES = ("constant", "cosine", "onecycle")  # train.schedule
OPTIMIZERS = ("sgd", "adam")  # train.optimizer
ENCODER_MODES = ("frozen", "trainable", "joint")  # pipeline.encoder_mode


@dataclass
class DataConfig:
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES_2018))  # attribute masks to learn
    stage1_size: int = 256  # Segment-Net input side in pixels (square, multiple of 32)
    image_size: int = 256  # Stage 2/3 input side: lesion crops or full images are resized to this
    val_fraction: float = 0.2  # share of images in the validation split (when fold is null)
    # Beyond the paper: share of all images held out of training as a tuning split (stratified like validation,
    # splits.json "tune"): it picks each network's best epoch and the tuned thresholds, so no reported validation
    # score is tuned on the images it is measured on. 0: no tuning split (the paper: best epoch on validation).
    tune_fraction: float = 0.0
    n_folds: int = 5  # k of the k-fold split written to splits.json
    fold: int | None = None  # validate on fold k (0-based) of the k folds instead of the train/val split
    binarize_threshold: int | None = None  # read soft masks as value > threshold (official scorer: 128); null: refuse
    cache: bool = True  # cache decoded, resized images on disk in RUN/cache (no JPEG decoding after epoch 0)
    max_image_pixels: int | None = None  # raise Pillow's decompression-bomb limit for huge images


@dataclass
class ModelConfig:
    shapes: list[str] = field(default_factory=lambda: ["unet", "linknet"])  # U and/or Link; both are ensembled
    encoder_name: str = "paper-efficientnet-b0"  # any smp encoder; default: the paper's Keras topology
    encoder_weights: str | None = None  # null (random), "imagenet" (needs internet), "lite0", or a weights file
    stage1_shape: str = "unet"  # the Segment-Net's shape (the paper uses U-shape)


@dataclass
class TrainConfig:
    epochs: int = 40  # maximum epochs per network (paper: 40)
    # Beyond the paper: Stage 2's own maximum (the union network), e.g. a short Stage 2 before a long joint Stage 3
    # at a fixed CPU budget; null: train.epochs, as the paper trains every stage alike.
    stage2_epochs: int | None = None
    patience: int = 10  # stop a network after this many epochs without validation improvement (paper: 10)
    batch_size: int = 8  # images per optimisation step
    lr: float = 0.01  # learning rate (paper: SGD 0.01; Adam's usual rate is 0.001)
    momentum: float = 0.9  # SGD momentum (paper: 0.9); Adam ignores it (its betas are PyTorch's defaults)
    weight_decay: float = 0.0  # weight decay (the paper uses none)
    # Beyond the paper: "sgd" (the paper: momentum SGD) or "adam", which scales each weight's step by its own gradient
    # history, so a rare attribute's head, whose gradients are small, still moves.
    optimizer: str = "sgd"
    monitor: str = "jaccard"  # Stage 2-3 validation score that picks the best model: "jaccard", "dice" or "loss";
    #                          Stage 1 picks on ISIC Task 1's thresholded Jaccard (the score it reports)
    augment: bool = True  # random flips, 90-degree rotations and colour jitter (albumentations); the paper trains
    #                       without (presets paper, isic-cpu); the default keeps it for small data such as the demo
    seed: int = 0  # seeds data order, augmentation and initialisation: same seed on CPU, same result
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    num_workers: int = 0  # DataLoader workers; images are pre-decoded, so 0 is fastest on CPU; try 4 on a GPU
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPU and on GPU tensor cores
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler); CPU stays fp32
    compile: bool = False  # torch.compile every network (opt-in: minutes of compiling; does not pay on AVX2 CPUs)
    sync_batchnorm: bool = True  # torchrun on CUDA: BatchNorm statistics of the global batch, as one GPU would see
    # Beyond the paper (tatl.training.losses): "paper" is Eq. 1 per image, batch mean; "pooled" the same soft Dice +
    # Jaccard over the pixels of the whole batch, as the official metric pools an attribute's pixels over images;
    # "pooled_bce" adds a pixel-wise binary cross-entropy, which gives empty masks a gradient.
    loss: str = "paper"
    # Beyond the paper (tatl.data.sampling): "uniform" shows each training image once per epoch (the paper); "rare"
    # draws as many with replacement, weighted to oversample images showing a rare attribute (Stage 2 and 3).
    sampling: str = "uniform"
    # Learning rate (tatl.training.schedule): "constant" (the paper), "cosine" (annealed from train.lr to 0 over
    # train.epochs) or "onecycle" (up from train.lr / 25 to train.lr in the first 30% of the steps, then down to ~0).
    schedule: str = "constant"


@dataclass
class PipelineConfig:
    stages: str = "1,2,3"  # "1": train the Segment-Net alone (lesion data; it predicts lesions); "1,2,3": the variants
    variants: list[str] = field(default_factory=lambda: [DEFAULT_VARIANT])  # ablations to run: tatl.layout.VARIANTS
    # Stage 3 encoder: "frozen" (TATL-FE: one shared encoder, a decoder per attribute) or "trainable" (TATL-NF: a
    # whole network per attribute). Beyond the paper, "joint": one network, encoder trainable, one decoder with an
    # output channel per attribute (every weight from Stage 2, its channel repeated; each channel's loss as its own
    # network's), saved as one network per attribute (its channel of the last convolution), which inference reads
    # as TATL-NF's: the trainable encoder at about a fifth of TATL-NF's cost.
    encoder_mode: str = "frozen"
    init: str = "tatl"  # Stage 3 start without Stage 2: tatl (configured weights), imagenet, random, augmentation,
    #                     context-restoration (the baselines of Table 7); variants with Stage 2 always start from it
    augmentation_copies: int = 4  # init=augmentation: each attribute's training set enlarged to this many copies
    # Beyond the paper's implementation, same updates: Stage 3 on a frozen encoder computes the encoder's features
    # of every crop once and trains the decoders on them (tatl.training.feature_cache; memory: all features, fp32).
    # Needs pipeline.encoder_mode frozen, train.augment false and a variant with Stage 2.
    feature_cache: bool = False
    crop_margin: int = 40  # pixels added around the predicted lesion box, in original-image pixels (paper: 40)
    crop_source: str = "predicted"  # training crops from Stage-1 "predicted" masks (paper) or "truth" lesion masks
    min_lesion_fraction: float = 0.005  # a predicted lesion smaller than this share of the image -> whole image
    threshold: float = 0.5  # probability above which a pixel is positive
    # Pick each attribute's threshold (0.05..0.95) on the tuning split (data.tune_fraction), else on validation
    # (optimistic, labelled so); stored in RUN/thresholds.json.
    tune_thresholds: bool = False
    # Run folders whose finished Stage-1/2 networks this run copies instead of training when they were trained with
    # the same settings and split on the same data folder (tatl.pipeline.reuse); `tatl experiment` fills it in with the
    # grid's matching jobs.
    reuse_stages_from: list[str] = field(default_factory=list)
    # A finished run whose Stage-1 Segment-Net crops this run's images (tatl.pipeline.segment_net): copied into this
    # run instead of trained, for data without lesion masks (ISIC 2018 Task 2). null: train Stage 1 here.
    segment_net: str | None = None
    # A finished run this run fine-tunes (`tatl finetune`, tatl.pipeline.parent): every network starts from that
    # run's best.pt of the same network (strict: same shapes), DATA is new training data, and validation is on that
    # run's validation split (its images join DATA's) when its images are reachable. null: no parent run.
    init_from: str | None = None
    init_with_original: bool = False  # init_from: the parent's training images train this run too (--with-original)
    # init_from: networks copied unchanged from the parent instead of fine-tuned: "stage2" and/or attribute names
    # (their Stage-3 networks); `tatl finetune` lists the attributes DATA has no masks for.
    init_copied: list[str] = field(default_factory=list)


@dataclass
class SynthConfig:
    n: int = 300  # images generated when DATA is "synthetic"
    size: int = 256  # their width (height is 3/4 of it, the ISIC aspect)
    seed: int = 0  # generator seed


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts; unknown sections or keys and wrong types raise ConfigError."""
    config = Config()
    _update(config, values, source, prefix="")
    validate(config)
    return config


def load_config(path_or_preset: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then a YAML file or preset name, then `key=value` overrides (YAML-typed values)."""
    values: dict[str, Any] = {}
    source = "defaults"
    if path_or_preset is not None:
        path = _resolve_config_path(path_or_preset)
        source = str(path)
        values = _read_yaml(path)
    config = Config()
    _update(config, values, source, prefix="")
    for override in overrides or []:
        apply_override(config, override)
    validate(config)
    return config


def save_config(config: Config, path: Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False), durable=True)


def apply_override(config: Config, override: str) -> None:
    """Apply one `section.key=value` override, e.g. `train.epochs=5` or `model.shapes=[unet]`."""
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected section.key=value, e.g. train.epochs=5")
    dotted, raw_value = override.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2:
        raise ConfigError(f"--set {override!r}: key must be section.key (sections: {', '.join(_section_names())})")
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {override!r}: value is not valid YAML ({str(error).splitlines()[0]})") from None
    _update(config, {parts[0]: {parts[1]: value}}, "--set", prefix="")


def _resolve_config_path(path_or_preset: str | Path) -> Path:
    path = Path(path_or_preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a YAML config file")
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    preset = PRESETS_DIR / f"{path_or_preset}.yaml"
    if not preset.is_file():
        names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"{path_or_preset}: not a config file or a preset (presets: {', '.join(names)})")
    return preset


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(values).__name__}")
    return values


def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _update(target: Any, values: dict[str, Any], source: str, prefix: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{source}: unknown key {name!r} (known: {', '.join(known)})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            _update(current, value, source, prefix=f"{name}.")
        else:
            setattr(target, key, _check_type(value, hints[key], name, source))


def _check_type(value: Any, hint: Any, name: str, source: str) -> Any:
    """Return value if it fits the type hint (ints accepted for floats), else raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, name, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: {name} must be {_type_name(hint)}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
    elif origin is list:
        (item_hint,) = typing.get_args(hint)
        if isinstance(value, str) and item_hint is str:
            value = [part.strip() for part in value.split(",") if part.strip()]  # "a,b" -> ["a", "b"]
        if isinstance(value, list):
            return [_check_type(item, item_hint, f"{name}[]", source) for item in value]
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint is float and isinstance(value, str) and _is_finite_number(value):
        return float(value)  # YAML 1.1 reads 1e-05 (no dot) as a string; Python and users write it so
    elif hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. a variant written as 3 in YAML
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) <= MAX_INT:
            return value
        raise ConfigError(f"{source}: {name} is too large ({value}; at most {MAX_INT})")
    elif isinstance(value, hint) and hint is not int:  # bools are ints to Python, not to a config
        return value
    raise ConfigError(f"{source}: {name} must be {_type_name(hint)}, got {value!r}")


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def validate(config: Config) -> None:
    """Check values, not just types: every message names the key."""
    d, m, t, p = config.data, config.model, config.train, config.pipeline
    _require(len(d.attributes) > 0, "data.attributes must name at least one attribute")
    for attribute in d.attributes:
        _require(attribute.isidentifier(), f"data.attributes: {attribute!r} is not a valid attribute name")
    _require(len(set(d.attributes)) == len(d.attributes), "data.attributes has duplicates")
    for key in ("stage1_size", "image_size"):
        size = getattr(d, key)
        _require(size >= 32 and size % 32 == 0, f"data.{key} must be a positive multiple of 32, got {size}")
    _require(0.0 < d.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    _require(0.0 <= d.tune_fraction < 1.0 - d.val_fraction, f"data.tune_fraction must be in [0, 1 - "
             f"data.val_fraction), got {d.tune_fraction}")
    _require(d.n_folds >= 2, f"data.n_folds must be >= 2, got {d.n_folds}")
    _require(d.fold is None or 0 <= d.fold < d.n_folds, f"data.fold must be in [0, {d.n_folds}), got {d.fold}")
    _require(d.binarize_threshold is None or 0 <= d.binarize_threshold < 255, "data.binarize_threshold: 0..254")
    _require(d.max_image_pixels is None or d.max_image_pixels > 0,
             f"data.max_image_pixels must be a number of pixels > 0 (null: Pillow's), got {d.max_image_pixels}")
    _require(len(m.shapes) > 0, "model.shapes must name unet and/or linknet")
    for shape in [*m.shapes, m.stage1_shape]:
        _require(shape in ("unet", "linknet"), f"model.shapes: unknown shape {shape!r} (unet, linknet)")
    _require(t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}")
    _require(t.stage2_epochs is None or t.stage2_epochs >= 1, f"train.stage2_epochs must be >= 1 or null, got "
             f"{t.stage2_epochs}")
    _require(t.patience >= 1, f"train.patience must be >= 1, got {t.patience}")
    _require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _require(math.isfinite(t.lr) and t.lr > 0, f"train.lr must be a finite number > 0, got {t.lr}")
    _require(0 <= t.momentum < 1, f"train.momentum must be in [0, 1), got {t.momentum}")
    _require(math.isfinite(t.weight_decay) and t.weight_decay >= 0,
             f"train.weight_decay must be a finite number >= 0, got {t.weight_decay}")
    _require(t.monitor in ("jaccard", "dice", "loss"), f"train.monitor: {t.monitor!r} (jaccard, dice, loss)")
    _require(t.device in ("auto", "cpu", "cuda"), f"train.device: {t.device!r} (auto, cpu, cuda)")
    for key, choices in (("loss", LOSSES), ("sampling", SAMPLINGS), ("schedule", SCHEDULES), ("optimizer", OPTIMIZERS)):
        _require(getattr(t, key) in choices, f"train.{key}: {getattr(t, key)!r} (one of {', '.join(choices)})")
    _require(t.num_workers >= 0, "train.num_workers must be >= 0")
    _require(p.stages in STAGES, f"pipeline.stages: {p.stages!r} (one of {', '.join(STAGES)})")
    _require(p.stages != "1" or not p.segment_net, "pipeline.segment_net: a Stage-1-only run (pipeline.stages=1) "
             "trains its own Segment-Net; drop --segment-net")
    for variant in p.variants:
        _require(variant in VARIANTS, f"pipeline.variants: unknown variant {variant!r} (one of {' '.join(VARIANTS)})")
    _require(p.encoder_mode in ENCODER_MODES, f"pipeline.encoder_mode: {p.encoder_mode!r} (one of "
             f"{', '.join(ENCODER_MODES)})")
    _require(p.encoder_mode != "joint" or p.init_from is None, "pipeline.encoder_mode joint: a fine-tuned run "
             "(pipeline.init_from) trains each attribute's network alone: set pipeline.encoder_mode=trainable")
    _require(p.init in INITS, f"pipeline.init: {p.init!r} (one of {', '.join(INITS)})")
    with_stage2 = [v for v in p.variants if 2 in variant_stages(v)]
    _require(p.init == "tatl" or not with_stage2, f"pipeline.init={p.init} replaces Stage 2, but variants "
             f"{' '.join(with_stage2)} use it: run variants 3 and/or 1,3 with this init")
    _require(p.augmentation_copies >= 1, "pipeline.augmentation_copies must be >= 1")
    _validate_feature_cache(config)
    _require(p.crop_margin >= 0, f"pipeline.crop_margin must be >= 0, got {p.crop_margin}")
    _require(p.crop_source in ("predicted", "truth"), f"pipeline.crop_source: {p.crop_source!r}")
    _require(0 <= p.min_lesion_fraction < 1, "pipeline.min_lesion_fraction must be in [0, 1)")
    _require(0 < p.threshold < 1, f"pipeline.threshold must be in (0, 1), got {p.threshold}")
    _validate_init_from(config)
    _require(config.synth.n >= 1, f"synth.n must be >= 1, got {config.synth.n}")
    _require(config.synth.size >= 32, f"synth.size must be >= 32, got {config.synth.size}")


def _validate_feature_cache(config: Config) -> None:
    p = config.pipeline
    if not p.feature_cache:
        return
    _require(p.encoder_mode == "frozen", "pipeline.feature_cache: features are computed once only for a frozen "
             "encoder; pipeline.encoder_mode=trainable changes them every step")
    _require(not config.train.augment, "pipeline.feature_cache: augmentation changes every epoch's images, so their "
             "features too: set train.augment=false")
    _require(any(2 in variant_stages(v) for v in p.variants), "pipeline.feature_cache: only Stage 3 after Stage 2 "
             f"has a frozen encoder; variants {' '.join(p.variants)} have none (use 2,3 or 1,2,3)")


def _validate_init_from(config: Config) -> None:
    p, attributes = config.pipeline, config.data.attributes
    _require(p.init_from is not None or not (p.init_copied or p.init_with_original),
             "pipeline.init_copied and pipeline.init_with_original need pipeline.init_from (the parent run)")
    unknown = [name for name in p.init_copied if name != "stage2" and name not in attributes]
    _require(not unknown, f"pipeline.init_copied: {', '.join(map(repr, unknown))} is neither stage2 nor one of "
             f"data.attributes ({', '.join(attributes)})")
    frozen_on_stage2 = p.encoder_mode == "frozen" and any(2 in variant_stages(v) for v in p.variants)
    copies_attribute = any(name in attributes for name in p.init_copied)
    _require(not (frozen_on_stage2 and copies_attribute) or "stage2" in p.init_copied,
             "pipeline.init_copied: copied attribute heads share the frozen encoder of the parent's Stage 2: list "
             "stage2 too")
    _require(p.init_from is None or config.data.fold is None, "pipeline.init_from validates on the parent run's "
             f"validation split: set data.fold=null (not {config.data.fold})")
    _require(p.init_from is None or config.data.tune_fraction == 0, "pipeline.init_from keeps the parent run's "
             f"split: set data.tune_fraction=0 (not {config.data.tune_fraction})")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
