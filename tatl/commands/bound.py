"""Estimate the generalisation bound of Proposition 1 (paper Eq. 6-8, Figure 4) at each Stage-3 initialisation.

For every attribute and every initialisation the run offers (tatl: the Stage-2 agnostic segmenter; random or the
configured encoder weights: the fresh network Stage 3 starts from without Stage 2), on the attribute's training
samples at the initial weights: the empirical risk R_S (Eq. 1 loss), the mean spectral norm of the per-sample loss
Hessians (power iteration on Hessian-vector products, BatchNorm in eval mode), gamma and the bound. Writes
RUN/bound/bound.json, bound.md (the table) and bound.png (Figure 4: bound x100 per attribute and initialisation).
m counts the training images where the attribute is present (--samples all: every training image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
examples:
  tatl bound runs/demo                                  # variant 1,2,3, the run's first shape, c 0.01, K 4
  tatl bound runs/demo --max-samples 20 --iterations 10 # faster: the means on 20 samples per attribute
  tatl bound runs/pn --variant 2,3 --shape linknet       # the data folder the run recorded (RUN/data.json)
  tatl bound runs/pn --data /new/place/isic2018-sample  # that data has moved since `tatl run`
  tatl bound runs/demo --samples all --wrt decoder      # every training image; only what TATL-FE trains
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", type=Path, help="a finished `tatl run` folder")
    parser.add_argument("--data", help="the run's DATA, where it is now (default: the folder `tatl run` recorded "
                        "in RUN/data.json; for older runs, the synthetic or converted ISIC 2017 data kept in RUN)")
    parser.add_argument("--variant", help="whose inputs and Stage 2: with stage 1, Stage-1 crops and stage2-crops, "
                        "else full images and stage2-full (default: 1,2,3 if trained, else the last variant trained)")
    parser.add_argument("--shape", help="unet or linknet (default: the run's first shape)")
    parser.add_argument("--c", type=float, default=0.01, help="step-size constant c of Proposition 1 (0.01)")
    parser.add_argument("--K", dest="k", type=int, default=4, help="number of source hypotheses |K| (4)")
    parser.add_argument("--iterations", type=int, default=20, help="power iterations per sample (20)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="stop a power iteration when the estimate changes by less than this share (1e-3)")
    parser.add_argument("--max-samples", type=int, metavar="M",
                        help="estimate the means on at most M random samples per attribute (the bound keeps m)")
    parser.add_argument("--samples", choices=["present", "all"], default="present",
                        help="present: training images showing the attribute (default); all: every training image")
    parser.add_argument("--wrt", choices=["all", "decoder"], default="all",
                        help="Hessian w.r.t. every weight (default) or the decoder and head only")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available (double backward is slow on a CPU)")


def run(args: argparse.Namespace) -> int:
    from tatl.evaluation.bound import BoundSettings, estimate_bounds
    from tatl.evaluation.bound_report import bound_markdown, write_bound

    settings = BoundSettings(args.variant, args.shape, args.c, args.k, args.iterations, args.tolerance,
                             args.max_samples, args.samples, args.wrt, args.device)
    from tatl.pipeline.context import RunContext

    result = estimate_bounds(RunContext.open(args.run_dir, args.data), settings)
    folder = write_bound(args.run_dir, result)
    print(bound_markdown(result))
    print(f"wrote {folder / 'bound.json'}, bound.md and bound.png")
    return 0


# ----------------------------------------------------------------------------- the outputs: table, chart, files


