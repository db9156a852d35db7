"""A run's learning curve read from its RUN/log.txt: macro Jaccard of Stage 3 against minutes since the run started.

    python benchmarks/learning_curve.py RUN [--variant 1,2,3] [--shape unet] [--target 0.334]
    python benchmarks/learning_curve.py PEER_OUT [--before MINUTES]     # a benchmarks/peer_unet.py folder (peer.pt)

Every epoch of every network logs, with a time stamp, the official-semantics Jaccard of each attribute on the split
that picks best epochs (the tuning split when data.tune_fraction > 0, else validation), at the stage input size and
threshold 0.5 (tatl.training.engine.evaluate_heads). This script takes, for one variant and shape, the mean over the
attributes at the end of each Stage-3 epoch (macro), and the minutes from the run's first log line (Stage-1 boxes and
Stage 2 included). These are measured points of one run on the selection split, not validation scores at original
size: the run's metrics.json has those. A straight line through the last points in log(minutes) (the usual shape
of such curves) is extended to --target, and printed as an extrapolation, never as a measurement. With a cosine
schedule the rate reaches 0 at the last epoch, so the late points flatten: the line is then a lower bound of the
slope a longer schedule would have, and the minutes it predicts an upper bound.

A folder of benchmarks/peer_unet.py has no log.txt: its peer.pt keeps each epoch's macro Jaccard on the tuning split
(same threshold and size) and seconds, so the same table is read from there; --before adds the minutes spent before
the peer started (a Stage 2 it was started from with --init-from), so curves compare at equal minutes in all.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from datetime import datetime
from pathlib import Path

EPOCH_LINE = re.compile(r"^(?P<time>\S+ \S+) INFO\s+\S+ \[stage 3 \(variant (?P<variant>[\d,]+), (?P<shape>\w+), "
                        r"[^)]*\)\] epoch (?P<epoch>\d+)/\d+\s+(?P<scores>.*)$")
SCORE = re.compile(r"(\w+): jaccard (-?[\d.]+)")


def stage3_points(log_text: str, variant: str, shape: str) -> tuple[list[tuple[float, int, float]], list[str], float]:
    """[(minutes since the first line, epoch, macro Jaccard)] of every Stage-3 epoch of `variant` and `shape` that
    every attribute has reached, the attributes, and the minute Stage 3 of them started (the line before their first
    epoch). A resumed run's lines count from the very first line."""
    lines = log_text.splitlines()
    if not lines:
        raise SystemExit("log.txt is empty")
    start = datetime.fromisoformat(lines[0][:19])
    scores: dict[int, dict[str, tuple[float, float]]] = {}  # epoch -> attribute -> (minutes, jaccard)
    stage3_start = None
    for i, line in enumerate(lines):
        match = EPOCH_LINE.match(line)
        if not match or match["variant"] != variant or match["shape"] != shape:
            continue
        minutes = (datetime.fromisoformat(match["time"]) - start).total_seconds() / 60
        if stage3_start is None:
            stage3_start = (datetime.fromisoformat(lines[max(i - 1, 0)][:19]) - start).total_seconds() / 60
        for attribute, jaccard in SCORE.findall(match["scores"]):
            scores.setdefault(int(match["epoch"]), {})[attribute] = (minutes, float(jaccard))
    attributes = sorted({a for by_attribute in scores.values() for a in by_attribute})
    points = [(max(m for m, _ in s.values()), epoch, sum(j for _, j in s.values()) / len(s))
              for epoch, s in sorted(scores.items()) if len(s) == len(attributes)]
    return points, attributes, stage3_start or 0.0


def peer_points(folder: Path, before: float) -> list[tuple[float, int, float]]:
    """[(minutes, epoch, macro Jaccard)] of a peer_unet.py run, from its peer.pt: minutes of training summed, plus
    `before`."""
    import torch

    history = torch.load(folder / "peer.pt", map_location="cpu", weights_only=True)["history"]
    minutes, points = before, []
    for row in history:
        minutes += row["seconds"] / 60
        points.append((minutes, int(row["epoch"]), float(row["tune_jaccard"])))
    return points


def extrapolate(points: list[tuple[float, int, float]], training_start: float, target: float, last: int = 3) -> str:
    """Where a line through the last `last` points in (log minutes since `training_start`, macro) reaches `target`, in
    words: that training (Stage 3, or the peer) is what more epochs would lengthen; the minutes before it are a fixed
    cost added back."""
    tail = points[-last:]
    if len(tail) < 2:
        return "too few points to extrapolate"
    xs, ys = [math.log(m - training_start) for m, _, _ in tail], [j for _, _, j in tail]
    slope, intercept = statistics.linear_regression(xs, ys)
    if slope <= 0:
        return f"the last {len(tail)} points do not rise: no extrapolation to {target}"
    minutes = training_start + math.exp((target - intercept) / slope)
    return (f"extrapolation (not measured): a line through the last {len(tail)} points in log(minutes of training: "
            f"Stage 3 of a run) gains {slope * math.log(2):.3f} macro Jaccard per doubling of those minutes and "
            f"reaches {target} after "
            f"about {minutes:,.0f} minutes ({minutes / 60:,.1f} hours) of this machine in all, the "
            f"{training_start:.0f} minutes before that training included")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder of `tatl run` (its log.txt)")
    parser.add_argument("--variant", default="1,2,3")
    parser.add_argument("--shape", default="unet")
    parser.add_argument("--target", type=float, default=0.334, help="macro Jaccard to extrapolate to (paper: 0.334)")
    parser.add_argument("--last", type=int, default=3, help="points the line goes through (0: all; a noisy curve "
                        "such as the peer's wants all)")
    parser.add_argument("--before", type=float, default=0.0, help="peer folder: minutes spent before it started")
    args = parser.parse_args()
    if (args.run / "peer.pt").is_file() and not (args.run / "log.txt").is_file():
        points, start = peer_points(args.run, args.before), args.before
        print(f"{args.run}: peer U-Net, macro Jaccard on the tuning split, input size, threshold 0.5; "
              f"{args.before:g} minutes before it\n")
        header = "| minutes | epoch | macro Jaccard |"
    else:
        points, attributes, start = stage3_points((args.run / "log.txt").read_text(), args.variant, args.shape)
        if not points:
            raise SystemExit(f"{args.run / 'log.txt'}: no Stage-3 epoch of variant {args.variant}, shape {args.shape}")
        print(f"{args.run}: variant {args.variant}, {args.shape}; macro Jaccard over {', '.join(attributes)} on the "
              "selection split, stage input size, threshold 0.5\n")
        print(f"Stage 3 started {start:.1f} minutes after the run.\n")
        header = "| minutes since start | Stage-3 epoch | macro Jaccard |"
    print(header + "\n|---|---|---|")
    for minutes, epoch, macro in points:
        print(f"| {minutes:.1f} | {epoch} | {macro:.3f} |")
    print("\n" + extrapolate(points, start, args.target, args.last or len(points)))

if __name__ == "__main__":
    main()
