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
  tatl bound runs/pn --data ../shared/data/isic2018-sample --variant 2,3 --shape linknet
  tatl bound runs/demo --samples all --wrt decoder      # every training image; only what TATL-FE trains
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", type=Path, help="a finished `tatl run` folder")
    parser.add_argument("--data", help="the DATA given to `tatl run` (default: the synthetic or converted ISIC 2017 "
                        "data kept in RUN)")
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
    from tatl.bound import BoundSettings, estimate_bounds, open_run

    settings = BoundSettings(args.variant, args.shape, args.c, args.k, args.iterations, args.tolerance,
                             args.max_samples, args.samples, args.wrt, args.device)
    result = estimate_bounds(open_run(args.run_dir, args.data), settings)
    folder = write_bound(args.run_dir, result)
    print(bound_markdown(result))
    print(f"wrote {folder / 'bound.json'}, bound.md and bound.png")
    return 0


# ----------------------------------------------------------------------------- the outputs: table, chart, files
BOUND_HEADER = ["attribute", "initialisation", "m", "R_S", "mean Hessian norm", "gamma", "bound x100"]


def bound_caption(result: dict) -> str:
    s = result["settings"]
    which = "showing the attribute" if s["samples"] == "present" else "of any kind"
    return (f"Generalisation bound (Eq. 6) at the Stage-3 initial weights: variant {s['variant']}, {s['shape']}, "
            f"c = {s['c']}, K = {s['k']}; m = training images {which}; Hessian w.r.t. {s['wrt']} weights, at most "
            f"{s['iterations']} power iterations.")


def bound_rows(result: dict) -> list[list[str]]:
    """One row per attribute and initialisation, cells as BOUND_HEADER names them."""
    rows = []
    for attribute, per_init in result["attributes"].items():
        for name, t in per_init.items():
            if "skipped" in t:
                rows.append([attribute, name, str(t["m"]), "", "", "", t["skipped"]])
                continue
            bound = "undefined (gamma- <= 0)" if t["bound"] is None else f"{100 * t['bound']:.2f}"
            rows.append([attribute, name, str(t["m"]), f"{t['risk']:.4f}", f"{t['hessian_norm']:.4g}",
                         f"{t['gamma']:.4f}", bound])
    return rows


def bound_markdown(result: dict) -> str:
    lines = [bound_caption(result), "", "| " + " | ".join(BOUND_HEADER) + " |", "|---|---|" + "---:|" * 5]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in bound_rows(result)]) + "\n"


def bound_chart(result: dict, path: Path) -> None:
    """Figure 4: bound x100, one group per attribute, one bar per initialisation."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attributes, inits = list(result["attributes"]), result["initialisations"]
    width = 0.8 / max(1, len(inits))
    figure, axes = plt.subplots(figsize=(1.6 + 1.4 * len(attributes), 3.6), dpi=110)
    for index, name in enumerate(inits):
        terms = [result["attributes"][a].get(name, {}) for a in attributes]
        xs = np.arange(len(attributes)) + (index - (len(inits) - 1) / 2) * width
        bars = axes.bar(xs, [100 * (t.get("bound") or 0.0) for t in terms], width, label=name)
        labels = [f"{100 * t['bound']:.1f}" if t.get("bound") else "" if t.get("m") == 0 else "undefined"
                  for t in terms]
        axes.bar_label(bars, labels=labels, fontsize=7)
    ticks = [f"{a.replace('_', ' ')}\nm = {next(iter(result['attributes'][a].values()), {}).get('m', 0)}"
             for a in attributes]
    axes.set_xticks(np.arange(len(attributes)), ticks, fontsize=8)
    shown = [100 * t["bound"] for per_init in result["attributes"].values() for t in per_init.values()
             if t.get("bound")]
    if shown and max(shown) > 20 * min(shown):  # e.g. m = 1 next to m = 100: a linear axis hides the small ones
        axes.set_yscale("log")
    axes.set_ylabel("bound x100" + (" (log scale)" if axes.get_yscale() == "log" else ""))
    axes.set_title(f"Eq. 6 bound at the initial weights (variant {result['settings']['variant']}, "
                   f"{result['settings']['shape']})", fontsize=9)
    axes.legend(title="initialisation", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_bound(run_dir: Path, result: dict) -> Path:
    """RUN/bound/bound.json, bound.md and bound.png; returns the folder."""
    from tatl.checkpoints import write_json

    folder = Path(run_dir) / "bound"
    folder.mkdir(exist_ok=True)
    write_json(folder / "bound.json", result)
    (folder / "bound.md").write_text(bound_markdown(result))
    bound_chart(result, folder / "bound.png")
    return folder
