"""Rank unlabelled images for labelling: the K that would teach the run most, best first, in a CSV.

RUN (a run folder, or an ONNX export) predicts every image of POOL (a folder of .jpg .jpeg .png .bmp images, not
recursive; every image is decoded first, and one that cannot be is an error naming it, before any scoring). Per
attribute, over the pixels of the predicted lesion (the whole image without Stage 1):
  uncertainty   mean binary entropy (bits) of the U+Link ensemble's probability: 1 at p = 0.5, 0 at p = 0 or 1
  disagreement  mean variance over the ensemble members: each shape on each of 4 flips (8 for U + Link)
  random        a uniform score from a generator seeded with --seed (the baseline to beat)
An image's score is the weighted mean over the attributes, rarer attributes weighing more: w proportional to
(n + 2) / (n_a + 1), where n_a of RUN's n training images show attribute a (read from the data folder RUN
recorded; equal weights, with a warning, when it cannot be read, or with --equal-weights).

Writes --out (CSV, written atomically): rank, image_id, path, score, then per attribute <name>_entropy or
<name>_variance (the value behind the score) and <name>_weight. It keeps exactly the K highest scores (ties:
image id order); all images when K is larger than the pool. The selected ids are printed, best first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tatl.errors import DataError  # light: tatl.errors imports nothing

EXAMPLES = """\
examples:
  tatl select runs/pn pool/ --n 50 --out ranked.csv                       # uncertainty (default)
  tatl select runs/pn pool/ --n 50 --strategy disagreement --out ranked.csv
  tatl select runs/pn pool/ --n 50 --strategy random --seed 3 --out ranked.csv
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN", type=Path, help="run folder of `tatl run`, or an ONNX export folder")
    parser.add_argument("pool", metavar="POOL", type=Path, help="folder of unlabelled images")
    parser.add_argument("--n", type=int, required=True, metavar="K", help="how many images to select")
    parser.add_argument("--strategy", choices=["uncertainty", "disagreement", "random"], default="uncertainty",
                        help="how images are scored (default uncertainty)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --strategy random (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="the CSV to write (replaced if it exists)")
    parser.add_argument("--equal-weights", action="store_true",
                        help="weigh every attribute the same instead of rarer ones more")
    parser.add_argument("--tta", action="store_true",
                        help="uncertainty of the ensemble averaged over flips too (disagreement always uses them)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else CPU")


def run(args: argparse.Namespace) -> int:
    from tatl.experiments.ranking import rank_pool, write_ranked_csv
    from tatl.inference.predictor import load_predictor
    from tatl.inference.selection import RANDOM, equal_weights

    if args.out.is_dir():
        raise DataError(f"--out {args.out}: is a folder; name the CSV file to write")
    if not args.model.is_dir():  # random reads no network, but a mistyped RUN is still a mistake
        raise DataError(f"{args.model}: no such run folder")
    model, weights = args.model, None
    if args.strategy != RANDOM:
        model = load_predictor(args.model, device=args.device, tta=args.tta)
        weights = equal_weights(model.settings.attributes) if args.equal_weights else None
    ranked = rank_pool(model, args.pool, args.strategy, args.n, args.seed, weights=weights)
    write_ranked_csv(args.out, ranked, args.strategy)
    print(f"{args.out}: {len(ranked)} image(s), best first ({args.strategy})")
    for item in ranked:
        print(f"{item.image_id}\t{item.score:.6g}")
    return 0
