"""The outputs of `tatl bound`: the Table of Eq. 6-8 terms, the Figure-4 chart, RUN/bound/ files."""

from __future__ import annotations

from pathlib import Path

from tatl.io import write_json, write_text
from tatl.layout import RunLayout

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
    layout = RunLayout(run_dir)
    layout.bound.mkdir(exist_ok=True)
    write_json(layout.bound_json, result)
    write_text(layout.bound_markdown, bound_markdown(result))
    bound_chart(result, layout.bound_chart)
    return layout.bound
