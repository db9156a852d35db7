"""Measure active learning on a labelled dataset: a simulated annotator labels, from DATA's own masks, the images
each strategy selects, round after round, and a learning curve per strategy shows what the labels bought.

DATA is split once into a fixed validation split (stratified, data.val_fraction, never selected) and a pool. Per
seed, N0 images of the pool are labelled first (the same for every strategy) and a model is trained on them
(`tatl run` with --config/--set). Each round then selects B more images from the rest of the pool by each
strategy (random, or uncertainty / disagreement of the previous round's model: `tatl select`), fine-tunes the
previous round's model on every label so far (`tatl finetune --with-original`) and scores it on the validation
split. Writes DIR/curves.csv (strategy, seed, round, labels, per-attribute and macro Jaccard and Dice),
DIR/summary.json (the area under each curve, the labels each strategy needs to reach 95% of the random strategy's
final score), DIR/report.html and report.md (+ report/learning-curve.png: mean ± std over seeds). Running the same
command again continues: finished rounds are kept, an interrupted round restarts from the images it had selected;
--rounds, --strategies and --seeds may grow. --workers N runs N strategy x seed chains at once (--ray: Ray tasks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  tatl active-learning data/synth --out al/demo --initial 20 --per-round 10 --rounds 3 --seeds 0 1 2 \\
      --config demo --set model.shapes=[unet] --set 'pipeline.variants=["3"]'
  tatl active-learning data/synth --out al/demo --initial 20 --per-round 10 --rounds 5 --seeds 0 1 2 \\
      --config demo --set model.shapes=[unet] --set 'pipeline.variants=["3"]'      # two more rounds, same DIR
  tatl active-learning ../shared/data/isic2018-task2-256 --out al/isic --initial 40 --per-round 20 --rounds 4 \\
      --strategies random uncertainty --seeds 0 1 2 --config isic-cpu --workers 2
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA", help="dataset folder in the ISIC 2018 layout, with attribute masks")
    parser.add_argument("--out", required=True, type=Path, help="experiment folder (reused to continue)")
    parser.add_argument("--initial", required=True, type=int, metavar="N0", help="images labelled before round 1")
    parser.add_argument("--per-round", required=True, type=int, metavar="B", help="images labelled in each round")
    parser.add_argument("--rounds", required=True, type=int, metavar="R", help="rounds of selection and fine-tuning")
    parser.add_argument("--strategies", nargs="+", default=["random", "uncertainty", "disagreement"],
                        metavar="STRATEGY", help="random, uncertainty, disagreement (default: all three)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one chain per strategy and seed (default 0)")
    parser.add_argument("--config", help="YAML config file or preset name of every run (demo, paper, isic-cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config value of every run, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--workers", type=int, default=1, help="strategy x seed chains run at once (default 1)")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run each chain as a Ray task: a cluster address, 'auto', or 'local'")
    parser.add_argument("--gpus-per-job", type=float, default=0, help="with --ray: GPUs each chain reserves")
    parser.add_argument("--cpus-per-job", type=int, default=1, help="with --ray: CPUs (torch threads) per chain")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # one job alone: what --workers starts in each process


def run(args: argparse.Namespace) -> int:
    from tatl.api import active_learning
    from tatl.distributed import launched_by_torchrun
    from tatl.errors import ConfigError
    from tatl.reporting.active_learning_report import summary_markdown

    if launched_by_torchrun():
        raise ConfigError("tatl active-learning runs its jobs itself: start it without torchrun (--workers N, or "
                          "--ray ADDRESS --gpus-per-job 1)")
    result = active_learning(args.data, args.out, initial=args.initial, per_round=args.per_round,
                             rounds=args.rounds, strategies=args.strategies, seeds=args.seeds, config=args.config,
                             overrides=args.overrides, workers=args.workers, ray=args.ray,
                             gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job, job=args.job)
    if args.job is None:
        print(summary_markdown(result.summary))
    return 1 if result.failed else 0
