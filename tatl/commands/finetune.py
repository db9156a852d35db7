"""Fine-tune a finished run on new labels, into a new run folder (RUN is only read).

Every network of RUN (Segment-Net, Attribute-Agnostic and Target Segmenters, each variant and shape) starts from
RUN's best weights and trains on NEW_DATA (plus RUN's own training images with --with-original). Only what NEW_DATA
has masks for is trained: the heads of the attributes with masks (every image needs one), the Segment-Net when every
image has a lesion mask, Stage 2 when every attribute has masks; the rest is copied from RUN. Validation is on RUN's
validation split when RUN's images are found (so the scores compare), else on a split of NEW_DATA. RUN2 is a normal
run folder (tatl predict, tatl report) with RUN2/finetune.json: the parent, the data fingerprints and the scores
before and after. NEW_DATA: the ISIC 2018 layout or any folder tree with its file names, e.g. images in a folder
and their masks in FOLDER/corrections/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  tatl finetune runs/demo corrections/ --out runs/demo-ft                 # masks of some attributes only: those heads
  tatl finetune runs/demo new-labels/ --out runs/demo-ft --with-original --set train.epochs=5 --set train.lr=0.001
  tatl finetune runs/demo new-labels/ --out runs/demo-ft --resume          # continue an interrupted fine-tuning
  tatl predict runs/demo-ft photo.jpg --out predicted/                     # RUN2 is a run like any other
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", type=Path, help="a finished run folder of `tatl run` (never changed)")
    parser.add_argument("new_data", metavar="NEW_DATA", type=Path,
                        help="images with masks of some or all of RUN's attributes (and lesion masks, optional)")
    parser.add_argument("--out", required=True, type=Path, help="the new run folder RUN2 (must be new unless --resume)")
    parser.add_argument("--with-original", action="store_true", help="train on RUN's own training images too")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set train.epochs=5 (repeatable; not the networks')")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    parser.add_argument("--resume", action="store_true", help="continue the fine-tuning in --out from its last epoch")


def run(args: argparse.Namespace) -> int:
    from tatl.api import finetune

    trained = finetune(args.run, args.new_data, args.out, with_original=args.with_original,
                       overrides=args.overrides, resume=args.resume, device=args.device)
    if trained.summary is not None:  # rank 0 under torchrun
        print(trained.summary)
    return 0
