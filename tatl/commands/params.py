"""Print a Table-5-style parameter count for every network shape x backbone, beside the paper's figures, and for
EfficientNet-Lite0 (the offline ImageNet start, not in the paper).

Our networks are built with one output class and no weights. "Keras-style" counts every parameter plus the
BatchNorm running mean and variance, as Keras' model.summary() does (the paper's counts are Keras'); "trainable"
counts the nn.Parameters alone. The paper's Table 5 gives whole-network figures only for its own two networks
(EfficientNet-b0 U-shape 10,115,501 and Link-shape 6,096,333, which the paper-faithful networks reproduce); its
other figures are the ImageNet classifiers with their top, shown for reference only.
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  tatl params                                   # every shape x paper backbone (builds VGG16/ResNet-152 nets: slow-ish)
  tatl params --backbones paper-efficientnet-b0,efficientnet-b0
  tatl params --backbones resnet18,tu-mobilenetv3_large_100 --shapes unet --json
"""


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbones",
        type=_comma_list,
        help="comma-separated backbone labels or encoder names (default: every paper backbone and Lite0); any smp "
        "encoder or tu-<timm name> works too",
    )
    parser.add_argument("--shapes", type=_comma_list, help="comma-separated shapes: unet,linknet (default: both)")
    parser.add_argument("--json", action="store_true", help="print rows and notes as JSON instead of Markdown")


def run(args: argparse.Namespace) -> int:
    import json

    from tatl.errors import ConfigError
    from tatl.models.networks import SHAPES
    from tatl.models.parameter_table import NOTES, count_row, format_markdown, select_backbones

    shapes = args.shapes or list(SHAPES)
    unknown = [shape for shape in shapes if shape not in SHAPES]
    if unknown:
        raise ConfigError(f"unknown shape(s) {', '.join(unknown)}; valid: {', '.join(SHAPES)}")
    backbones = select_backbones(args.backbones)
    rows = [count_row(label, name, shape) for label, name in backbones.items() for shape in shapes]
    print(json.dumps({"rows": rows, "notes": NOTES}, indent=2) if args.json else format_markdown(rows))
    return 0
