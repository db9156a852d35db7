"""The paper's own networks: qubvel's Keras `segmentation_models` U-Net and Linknet on EfficientNet, in PyTorch.

Table 5 of the paper counts 10,115,501 parameters for the U-shape and 6,096,333 for the Link-shape network: those
are the Keras `segmentation_models` (qubvel) `Unet` / `Linknet` with backbone `efficientnetb0`, one class, and
BatchNorm moving mean and variance counted as parameters (Keras reports them as non-trainable parameters). This
module rebuilds that topology on timm's EfficientNet body:

- bottleneck: the 1280-channel output of the head conv + BN + swish (stride 32);
- skips: the expansion activations (expand conv + BN + swish) of Keras blocks 2a, 3a, 4a and 6a, i.e. the first
  block of timm stages 1, 2, 3 and 5 (96, 144, 240, 672 channels at strides 2, 4, 8, 16);
- U decoder: per block nearest x2 upsampling, concatenation with the skip, two [3x3 conv, BN, ReLU];
- Link decoder: per block 1x1 conv to in/4, nearest x2, 3x3 conv, 1x1 conv to the skip's channels, then add the skip;
- head: a 3x3 conv with bias.

The encoder keeps timm's module names, so a timm `efficientnet_b0` state dict (less its classifier) loads as is.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.models._efficientnet_blocks import InvertedResidual
from torch import nn

from tatl.errors import ConfigError

# encoder_name -> timm model whose body the faithful networks use. Lite0 has the same stages and channels as b0
# (no squeeze-excite, ReLU6) and has ImageNet weights that install offline (see tatl.models.weights); tf_ = TF padding
# and BN epsilon, which is how those weights were trained.
FAITHFUL_BODIES: dict[str, str] = {
    "paper-efficientnet-b0": "efficientnet_b0",
    "paper-efficientnet-lite0": "tf_efficientnet_lite0",
}
# (stage, block) in timm's `blocks` whose expansion activation is a skip: Keras blocks 2a, 3a, 4a, 6a.
SKIP_BLOCKS: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (3, 0), (5, 0))
UNET_FILTERS = (256, 128, 64, 32, 16)
LINKNET_LAST_FILTERS = 16
OUTPUT_STRIDE = 32
# Keras BatchNormalization's default epsilon. Momentum stays PyTorch's 0.1: Keras' 0.99 (= 0.01 here) lets the
# running statistics lag far behind on the short runs of small attribute datasets.
KERAS_BN_EPS = 1e-3


def check_input_size(height: int, width: int) -> None:
    """Refuse an input size the five x2 down- and upsamplings cannot restore exactly."""
    if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
        raise ConfigError(
            f"input size {height}x{width} is not a multiple of {OUTPUT_STRIDE} in both height and width; "
            f"resize or pad images to e.g. {-(-height // OUTPUT_STRIDE) * OUTPUT_STRIDE}x"
            f"{-(-width // OUTPUT_STRIDE) * OUTPUT_STRIDE}"
        )


def forward_keeping_expansion(block: InvertedResidual, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a strided timm InvertedResidual and also return its expansion activation (Keras' `expand_activation`).

    Same sub-module order as `InvertedResidual.forward`; strided blocks have no residual and no space-to-depth,
    which `EfficientNetExpansionEncoder` checks when it is built.
    """
    expansion = block.bn1(block.conv_pw(x))
    x = block.bn2(block.conv_dw(expansion))
    x = block.se(block.aa(x))
    x = block.bn3(block.conv_pwl(x))
    return expansion, x


class EfficientNetExpansionEncoder(nn.Module):
    """timm EfficientNet body returning [skip 2a, 3a, 4a, 6a expansions, head activation] (strides 2 to 32)."""

    def __init__(self, timm_name: str = "efficientnet_b0", pretrained: bool = False) -> None:
        super().__init__()
        body = timm.create_model(timm_name, pretrained=pretrained, num_classes=0)
        # Same attribute names as timm's model, so its state dict keys (less `classifier.`) match ours.
        self.conv_stem, self.bn1, self.blocks = body.conv_stem, body.bn1, body.blocks
        self.conv_head, self.bn2 = body.conv_head, body.bn2
        for stage, index in SKIP_BLOCKS:
            block = self.blocks[stage][index]
            if not isinstance(block, InvertedResidual) or block.has_skip or block.conv_s2d is not None:
                raise ValueError(f"{timm_name}: blocks.{stage}.{index} is not a strided InvertedResidual")
        self.skip_positions = frozenset(SKIP_BLOCKS)
        skip_channels = [self.blocks[s][i].conv_pw.out_channels for s, i in SKIP_BLOCKS]
        self.out_channels: list[int] = [*skip_channels, self.conv_head.out_channels]
        self.output_stride = OUTPUT_STRIDE

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input_size(*x.shape[-2:])
        features = []
        x = self.bn1(self.conv_stem(x))
        for stage_index, stage in enumerate(self.blocks):
            for block_index, block in enumerate(stage):
                if (stage_index, block_index) in self.skip_positions:
                    expansion, x = forward_keeping_expansion(block, x)
                    features.append(expansion)
                else:
                    x = block(x)
        features.append(self.bn2(self.conv_head(x)))
        return features


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Keras segmentation_models' Conv2dBn + ReLU: conv without bias (BN has one), BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels, eps=KERAS_BN_EPS),
        nn.ReLU(inplace=True),
    )


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class UnetBlock(nn.Module):
    """Keras `DecoderUpsamplingX2Block`: upsample, concatenate the skip (if any), two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels, 3)
        self.conv2 = conv_bn_relu(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = upsample(x)
        if skip is None:
            return self.conv2(self.conv1(x))
        if torch.is_grad_enabled() and x.requires_grad and not skip.requires_grad:
            conv, bn, relu = self.conv1
            return self.conv2(relu(bn(concatenated_conv(conv, x, skip))))
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


def concatenated_conv(conv: nn.Conv2d, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """conv(cat([x, skip])) as the sum of two convolutions over the two input-channel slices of its weight.

    Used when training a decoder on a frozen encoder (TATL-FE Stage 3): the skip needs no gradient, and this way the
    backward never computes one, which the convolution of the concatenation does for all its input channels
    (16-30% of those convolutions' time on a CPU: benchmarks/RESULTS.md; tests/test_models.py checks both give the
    same gradients).
    """
    split = x.shape[1]
    out = F.conv2d(x, conv.weight[:, :split], conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out + F.conv2d(skip, conv.weight[:, split:], None, conv.stride, conv.padding, conv.dilation, conv.groups)


class LinknetBlock(nn.Module):
    """Keras Linknet `DecoderUpsamplingX2Block`: 1x1 to in/4, upsample, 3x3, 1x1 to out, add the skip (if any)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(in_channels, in_channels // 4, 1)
        self.conv = conv_bn_relu(in_channels // 4, in_channels // 4, 3)
        self.expand = conv_bn_relu(in_channels // 4, out_channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.expand(self.conv(upsample(self.reduce(x))))
        return x if skip is None else x + skip


class SkipDecoder(nn.Module):
    """Runs blocks from the bottleneck (last feature) up, feeding the skips from deep to shallow."""

    def __init__(self, blocks: list[nn.Module], out_channels: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = out_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x, skips = features[-1], features[-2::-1]
        for index, block in enumerate(self.blocks):
            x = block(x, skips[index] if index < len(skips) else None)
        return x


def unet_decoder(encoder_channels: list[int], filters: tuple[int, ...] = UNET_FILTERS) -> SkipDecoder:
    skip_channels = [*encoder_channels[-2::-1], 0, 0, 0, 0, 0][: len(filters)]
    in_channels = [encoder_channels[-1], *filters[:-1]]
    blocks = [UnetBlock(i, s, o) for i, s, o in zip(in_channels, skip_channels, filters, strict=True)]
    return SkipDecoder(blocks, filters[-1])


def linknet_decoder(encoder_channels: list[int], last_filters: int = LINKNET_LAST_FILTERS) -> SkipDecoder:
    # Each block outputs its skip's channel count so the sum works; the last block has no skip.
    out_channels = [*encoder_channels[-2::-1], last_filters]
    in_channels = [encoder_channels[-1], *out_channels[:-1]]
    return SkipDecoder([LinknetBlock(i, o) for i, o in zip(in_channels, out_channels, strict=True)], last_filters)


class FaithfulSegmentationModel(nn.Module):
    """encoder -> decoder -> 3x3 conv head; same interface as smp models (encoder/decoder/segmentation_head)."""

    def __init__(self, encoder: EfficientNetExpansionEncoder, decoder: SkipDecoder, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.segmentation_head = nn.Conv2d(decoder.out_channels, classes, kernel_size=3, padding=1)
        init_like_keras(self.decoder)
        init_like_keras(self.segmentation_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))


def init_like_keras(module: nn.Module) -> None:
    """Keras defaults: Glorot-uniform kernels, zero biases, BN gamma 1 and beta 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def build_faithful(shape: str, encoder_name: str, classes: int = 1, pretrained: bool = False) -> nn.Module:
    """The paper's U ("unet") or Link ("linknet") network on a FAITHFUL_BODIES encoder."""
    encoder = EfficientNetExpansionEncoder(FAITHFUL_BODIES[encoder_name], pretrained=pretrained)
    decoders = {"unet": unet_decoder, "linknet": linknet_decoder}
    return FaithfulSegmentationModel(encoder, decoders[shape](encoder.out_channels), classes)
