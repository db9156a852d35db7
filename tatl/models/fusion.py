"""Folding eval-mode BatchNorm into the convolution before it, for prediction.

In eval mode a BatchNorm is a fixed per-channel scale and shift, which the preceding convolution can absorb
(torch.nn.utils.fusion.fuse_conv_bn_eval: new weights and bias, the same function up to float rounding). A
prediction then skips one pass over every feature map per BatchNorm: measured 11-15% of inference time on the
paper's networks (benchmarks/RESULTS.md). Training never folds: BatchNorm's batch statistics are the point there.

Only pairs whose order is known are folded, by name: adjacent conv -> BN entries of a `Sequential` (tatl's and
smp's decoders, smp's Linknet transposed convolutions), and the named pairs of FOLDABLE_PAIRS: timm's EfficientNet
blocks and stems (tatl's faithful encoder, smp's `tu-` encoders), ResNet blocks, smp's efficientnet-b0 and the
Inception-ResNet-v2 conv units. Anything else is left as it is: correct, just not faster.
"""

from __future__ import annotations

import itertools

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Module class name -> (convolution attribute, BatchNorm attribute) pairs its forward runs back to back.
FOLDABLE_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "ConvBnAct": (("conv", "bn1"),),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "EdgeResidual": (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
    "EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "EfficientNetExpansionEncoder": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "FeatureListNet": (("conv_stem", "bn1"), ("conv1", "bn1")),  # timm features_only models (smp's tu- encoders)
    "EfficientNetFeatures": (("conv_stem", "bn1"),),
    "BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    "ResNetEncoder": (("conv1", "bn1"),),
    "MBConvBlock": (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")),
    "EfficientNetEncoder": (("_conv_stem", "_bn0"), ("_conv_head", "_bn1")),  # smp's efficientnet-b0 ...
    "BasicConv2d": (("conv", "bn"),),  # Inception-ResNet-v2
    "_DenseLayer": (("conv1", "norm2"),),  # DenseNet: its other BatchNorm comes before a convolution, not after
}


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every known conv -> BatchNorm pair of eval-mode `module` in place; return how many were folded."""
    if module.training:
        raise ValueError("fold_batchnorm needs an eval-mode module (training uses the batch statistics)")
    folded = 0
    for owner in list(module.modules()):
        for conv_name, bn_name in FOLDABLE_PAIRS.get(type(owner).__name__, ()):
            folded += _fold(owner, conv_name, bn_name)
        if isinstance(owner, nn.Sequential):
            for conv_name, bn_name in itertools.pairwise(owner._modules):
                folded += _fold(owner, conv_name, bn_name)
    return folded


def _fold(owner: nn.Module, conv_name: str, bn_name: str) -> int:
    conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
    convolutions = (nn.Conv2d, nn.ConvTranspose2d)
    if not isinstance(conv, convolutions) or not _is_plain_batchnorm(bn) or conv.out_channels != bn.num_features:
        return 0
    setattr(owner, conv_name, fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d)))
    setattr(owner, bn_name, _what_follows_the_normalisation(bn))
    return 1


def _is_plain_batchnorm(module: nn.Module | None) -> bool:
    """An eval-mode 2-d BatchNorm with running statistics (timm's BatchNormAct2d included)."""
    return (isinstance(module, nn.BatchNorm2d) and not module.training and module.track_running_stats
            and module.running_mean is not None)


def _what_follows_the_normalisation(bn: nn.BatchNorm2d) -> nn.Module:
    """timm's BatchNormAct2d also applies dropout and an activation after normalising: those stay."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    return nn.Sequential(*rest) if rest else nn.Identity()
