"""Write one report of a run or grid folder: DIR/report.html (self-contained, images embedded) and DIR/report.md.

The report holds the resolved configuration, the data (split sizes, images showing each attribute), training
curves of every network (training and validation loss, validation Jaccard per epoch), the Table-2/3-style scores of
each variant for each shape and the U+Link ensemble, the generalisation bound if `tatl bound` was run, Figure-5-style
overlays of a few validation images (truth green, prediction red) and the parameter counts of the networks.
For a `tatl experiment` grid folder: the grid, each job's status, Tables 6-7 and a chart of macro Dice per setting.
For a `tatl active-learning` folder: curves.csv, summary.json and its page (learning curves, area, labels to 95%).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
examples:
  tatl report runs/demo                                  # writes runs/demo/report.html, report.md and report/*.png
  tatl report runs/pn --overlays 6                       # on the data folder recorded in RUN/data.json
  tatl report runs/pn --data /new/place/isic2018-sample  # that data has moved since `tatl run`
  tatl report grids/example                              # an experiment grid folder (tatl experiment ... --out DIR)
  tatl report al/demo                                    # a `tatl active-learning ... --out DIR` folder
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", type=Path, help="a finished `tatl run` folder, a `tatl "
                        "experiment` grid folder or a `tatl active-learning` folder (for these two, --data and "
                        "--overlays do nothing)")
    parser.add_argument("--data", help="the run's DATA, where it is now (default: the folder `tatl run` recorded "
                        "in RUN/data.json; for older runs, the synthetic or converted ISIC 2017 data kept in the run); "
                        "a run whose data is not found gets no per-attribute counts and no overlays")
    parser.add_argument("--overlays", type=int, default=3, metavar="N",
                        help="overlays of the N validation images showing the most attributes (default 3; 0: none)")


def run(args: argparse.Namespace) -> int:
    from tatl.reporting.report import write_report

    path = write_report(args.folder, args.data, args.overlays)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0
