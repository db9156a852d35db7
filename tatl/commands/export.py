"""Export a trained run's inference networks to ONNX, for `tatl predict --engine onnx` or any onnxruntime program.

Writes OUT_DIR/manifest.json and one .onnx file per network group that `tatl predict` runs: stage1_<shape>.onnx
(output "lesion"), and per U/Link shape either one stage23_<shape>.onnx holding the shared frozen encoder once and
every decoder (outputs "union" and each attribute: one encoder pass per image, TATL-FE), or, when the encoders
differ (TATL-NF, variants without Stage 2), stage2_<shape>.onnx and stage3_<shape>_<attribute>.onnx. Each takes
"image", float32 (batch, 3, height, width), RGB scaled to [0, 1] then normalised with the ImageNet mean and std of
the manifest; batch, height and width are dynamic (height and width multiples of 32). Outputs are probabilities
(batch, height, width) after the sigmoid. The manifest lists the files, their outputs and input sizes, the
normalisation, threshold, crop margin, shapes and attributes: all `tatl predict` needs besides the files. Each
export is checked against PyTorch on a random image before it is kept. Needs `pip install tatl[onnx]`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
examples:
  tatl export runs/demo --onnx runs/demo-onnx
  tatl export runs/demo --onnx runs/demo-onnx-v23 --variant 2,3
  tatl predict runs/demo-onnx photos/ --out predictions/ --engine onnx
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN", type=Path, help="run folder written by `tatl run`")
    parser.add_argument("--onnx", required=True, type=Path, metavar="OUT_DIR", help="folder for the ONNX files")
    parser.add_argument("--variant", help="which trained variant: 3, 2,3, 1,3 or 1,2,3 (default 1,2,3 if trained)")


def run(args: argparse.Namespace) -> int:
    from tatl.inference.onnx_export import export_onnx

    manifest = export_onnx(args.model, args.onnx, args.variant)
    print(f"wrote {manifest}; predict with: tatl predict {args.onnx} INPUT --out OUT")
    return 0
