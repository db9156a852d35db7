"""Train and evaluate the TATL pipeline on an ISIC-layout dataset (or synthetic data) in one run folder.

Stage 1 (Segment-Net, lesion crops), Stage 2 (Attribute-Agnostic Segmenter on union masks), Stage 3 (one
Target-Segmenter per attribute, initialised from Stage 2), for U- and Link-shape networks, their ensemble and the
ablation variants of the paper's Tables 2-3. Writes RUN/config.yaml, splits.json, one folder per stage with
best.pt/last.pt/log.csv, metrics.json, summary.md, the report and log.txt (every message of the
run, appended to on --resume). DATA "synthetic" generates the embedded default dataset. --stages 1 trains the
Segment-Net alone, on one or several lesion datasets; --segment-net RUN1 crops with the Segment-Net of the finished
run RUN1 instead of training one (data without lesion masks, such as ISIC 2018 Task 2), copied into the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  tatl run synthetic --out runs/demo --config demo          # the README's demo: synthetic data, all variants
  tatl run ISIC2018/ --out runs/paper --config paper        # the paper's settings on the real ISIC 2018 data
  tatl run ../shared/data/isic2018-sample --out runs/pn --set data.attributes=[pigment_network] --set train.epochs=5
  tatl run ../shared/data/ph2 --out runs/ph2 --stages 1     # Segment-Net alone on a lesion-only dataset
  tatl run ../shared/data/ph2 ../shared/data/isic2018-sample ../shared/data/isic2018-task1-extra \
      --out runs/segnet --stages 1                          # one Segment-Net on several lesion datasets
  tatl run ../shared/data/isic2018-task2-256 --out runs/t2 --segment-net runs/segnet   # data without lesion masks
  tatl run synthetic --out runs/demo --variants 3 2,3 1,3 1,2,3
  tatl run synthetic --out runs/demo --resume               # continue an interrupted run
  torchrun --standalone --nproc_per_node=4 -m tatl run ISIC2018/ --out runs/paper --config paper   # 4 GPUs (DDP)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", metavar="DATA",
                        help='dataset folder in the ISIC 2018 layout, or "synthetic"; with --stages 1, one or more '
                             "lesion dataset folders (image ids must differ across them)")
    parser.add_argument("--out", required=True, type=Path, help="run folder (must be new unless --resume)")
    parser.add_argument("--config", help="YAML config file or preset name (demo, paper, isic-cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--variants", nargs="+", metavar="STAGES",
                        help="ablation variants to run: 3 2,3 1,3 1,2,3 (default from config: 1,2,3)")
    parser.add_argument("--stages", choices=["1", "1,2,3"],
                        help="1: train the Segment-Net alone (lesion-only data, ISIC Task 1 scores); default 1,2,3 "
                             "(pipeline.stages); --resume keeps the run's")
    parser.add_argument("--segment-net", metavar="RUN1", type=Path,
                        help="crop with the finished Segment-Net of the run RUN1 instead of training Stage 1 (for "
                             "data without lesion masks); copied into --out (pipeline.segment_net)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (train.compile=true)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")


def run(args: argparse.Namespace) -> int:
    from tatl.api import train

    data = args.data[0] if len(args.data) == 1 else args.data
    trained = train(data, args.out, args.config, overrides=args.overrides, resume=args.resume, stages=args.stages,
                    variants=args.variants, device=args.device, compile=args.compile, segment_net=args.segment_net)
    if trained.summary is not None:  # rank 0 under torchrun
        print(trained.summary)
    return 0
