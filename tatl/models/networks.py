"""U-shape and Link-shape segmentation networks, by explicit names: `shape` and `encoder_name`.

Every model has the interface the training engine relies on for several decoders on one shared encoder:
`model.encoder(x) -> list[Tensor]`, `model.decoder(features) -> Tensor`, `model.segmentation_head(t) -> logits`
of shape (B, classes, H, W), and `model(x) == head(decoder(encoder(x)))`. H and W must be multiples of 32.
Images are normalised outside the model (ImageNet mean and std).

Encoders: the paper-faithful EfficientNets of `tatl.models.faithful` (`paper-efficientnet-b0`, the default, and
`paper-efficientnet-lite0`), any segmentation-models-pytorch encoder (`efficientnet-b0`, `vgg16`, `resnet152`, ...)
and timm models through smp as `tu-<timm name>`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tatl.errors import ConfigError
from tatl.models import weights
from tatl.models.faithful import FAITHFUL_BODIES, build_faithful, check_input_size

SHAPES = ("unet", "linknet")
DEFAULT_ENCODER = "paper-efficientnet-b0"
# Table 5 / Table 6 backbones: label -> encoder_name. "ResNet-151" in the paper is ResNet-152 (the Keras figure
# it prints is ResNet152's) and "ResNet-v2" is Inception-ResNet-v2 (likewise).
PAPER_BACKBONES: dict[str, str] = {
    "EfficientNet-b0 (paper-faithful)": "paper-efficientnet-b0",
    "EfficientNet-b0 (smp)": "efficientnet-b0",
    "VGG16": "vgg16",
    "ResNet-152": "resnet152",
    "DenseNet-169": "densenet169",
    "Inception-ResNet-v2": "inceptionresnetv2",
}

__all__ = [
    "DEFAULT_ENCODER",
    "PAPER_BACKBONES",
    "SHAPES",
    "build_model",
    "check_encoder_name",
    "check_input_size",
    "count_parameters",
]


def check_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise ConfigError(f"unknown network shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


def check_encoder_name(encoder_name: str) -> None:
    """Accept a faithful encoder, an smp encoder name or `tu-<timm model>`; otherwise ConfigError listing them."""
    import segmentation_models_pytorch as smp
    import timm

    if encoder_name in FAITHFUL_BODIES or encoder_name in smp.encoders.get_encoder_names():
        return
    if encoder_name.startswith("tu-") and timm.is_model(encoder_name[3:]):
        return
    examples = ", ".join([*FAITHFUL_BODIES, *list(PAPER_BACKBONES.values())[1:], "resnet18", "resnet34"])
    raise ConfigError(
        f"unknown encoder_name {encoder_name!r}; valid: {examples}, any smp encoder "
        "(segmentation_models_pytorch.encoders.get_encoder_names()) or 'tu-<timm model name>'"
    )


def build_model(
    shape: str,
    encoder_name: str = DEFAULT_ENCODER,
    encoder_weights: str | Path | None = None,
    classes: int = 1,
) -> nn.Module:
    """Build a U ("unet") or Link ("linknet") network; see `tatl.models.weights.WEIGHTS_HELP` for encoder_weights."""
    check_shape(shape)
    check_encoder_name(encoder_name)
    if not isinstance(classes, int) or classes < 1:
        raise ConfigError(f"classes must be a positive integer, got {classes!r}")
    source = weights.parse_encoder_weights(encoder_weights)
    if source == "lite0":
        weights.check_lite0_fits(encoder_name)
    if source == "imagenet":
        model = _build_with_hub_weights(shape, encoder_name, classes)
    else:
        model = _build(shape, encoder_name, classes, imagenet=False)
    if source == "lite0":
        weights.load_lite0_into(model.encoder)
    elif isinstance(source, Path):
        weights.load_encoder_file(model.encoder, source)
    return model


def _build(shape: str, encoder_name: str, classes: int, imagenet: bool) -> nn.Module:
    if encoder_name in FAITHFUL_BODIES:
        return build_faithful(shape, encoder_name, classes, pretrained=imagenet)
    import segmentation_models_pytorch as smp

    model_class = {"unet": smp.Unet, "linknet": smp.Linknet}[shape]
    # smp wants True (not a name) for timm encoders: the variant is part of the timm name.
    hub_weights = (True if encoder_name.startswith("tu-") else "imagenet") if imagenet else None
    return model_class(encoder_name=encoder_name, encoder_weights=hub_weights, classes=classes)


def _build_with_hub_weights(shape: str, encoder_name: str, classes: int) -> nn.Module:
    timm_name = FAITHFUL_BODIES.get(encoder_name, encoder_name.removeprefix("tu-"))
    _check_has_imagenet_weights(encoder_name, timm_name)
    weights.require_hub(encoder_name)
    with weights.hub_errors_as_user_errors(encoder_name):
        model = _build(shape, encoder_name, classes, imagenet=True)
    if encoder_name in FAITHFUL_BODIES:  # e.g. TF-trained lite0 weights expect inputs in [-1, 1]
        import timm

        config = timm.models.get_pretrained_cfg(timm_name)
        weights.fold_input_normalisation(model.encoder, config.mean, config.std)
    return model


def _check_has_imagenet_weights(encoder_name: str, timm_name: str) -> None:
    import segmentation_models_pytorch as smp
    import timm

    smp_encoders = smp.encoders.encoders
    if encoder_name in smp_encoders:
        available = "imagenet" in smp_encoders[encoder_name]["pretrained_settings"]
    else:
        available = timm.models.is_model_pretrained(timm_name)
    if not available:
        raise ConfigError(f"encoder {encoder_name!r} has no 'imagenet' weights; {weights.WEIGHTS_HELP}")


def count_parameters(model: nn.Module, keras_style: bool = True) -> int:
    """Number of parameters; keras_style adds BatchNorm running mean and variance, as Keras' summary counts them.

    `num_batches_tracked` is a PyTorch counter, not a Keras weight, and is never counted. Without keras_style the
    count is every nn.Parameter (all trainable in a freshly built model, i.e. Keras' "Trainable params").
    """
    total = sum(parameter.numel() for parameter in model.parameters())
    if keras_style:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                total += module.running_mean.numel() + module.running_var.numel()
    return total
