"""Does a trained image-level "present" head pay on a finished run? Issue 22's optional lever, measured.

    python benchmarks/present_head.py RUN [--data DATA] [--variant 1,2,3]

The 2018 fifth place gated each attribute's mask with an image-level classifier trained for it, so that an image
without the attribute gets an empty mask (the official Jaccard pools every image's pixels: false positives on the
many images without a rare attribute weigh on it). This script trains such a head on what the run already has, and
does not train the segmenter again: per attribute, a logistic regression on the run's own encoder features of the
crop (the deepest feature map of the network that predicts the attributes, average- and max-pooled), fitted on the
run's training split (is the attribute anywhere in the mask?), its L2 weight chosen on the tuning split. Its
probability gates the masks as benchmarks/gate_probe.py gates them with a map's peak: the pair (threshold, gate)
chosen on the tuning split, reported on the validation split beside the threshold alone chosen the same way, with
each head's ranking quality (ROC AUC on the validation split) beside the peak probability's, and the head's AUC on
the images it was fitted on (near 1 where the network's features of its own training images do not carry over).
Nothing is chosen on the images reported, and the head is not fitted on the tuning images its gate is chosen on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from gate_probe import GRID, best_pair, jaccard, per_image_counts  # benchmarks/ is sys.path[0] when run as a script

import tatl
from tatl.data.dataset import full_size_target
from tatl.data.images import image_size
from tatl.data.isic import find_samples
from tatl.data.splits import training_ids

GATES = (0.0, *np.round(np.arange(0.1, 0.96, 0.05), 2))  # 0.0: no gate; the head's probabilities are balanced
WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)  # L2 of the logistic regression on standardised features


class EncoderFeatures:
    """Records the pooled deepest encoder feature map of the network predicting `attributes` at each prediction."""

    def __init__(self, predictor, attributes: list[str]):
        networks = [n for shape in predictor.networks.targets.values() for n in shape if set(attributes) & set(n.names)]
        if not networks or not hasattr(networks[0], "module"):
            raise SystemExit("present_head.py needs a run folder (torch engine) with attribute networks")
        self.latest: np.ndarray | None = None
        networks[0].module.model.encoder.register_forward_hook(self._record)

    def _record(self, module, inputs, features) -> None:
        deepest = features[-1].float()
        self.latest = torch.cat([deepest.mean((2, 3)), deepest.amax((2, 3))], 1)[0].cpu().numpy()


def predict_split(model, features: EncoderFeatures, samples: list) -> tuple[list, np.ndarray]:
    """The samples' predictions and their pooled encoder features (N, 2C)."""
    predictions, rows = [], []
    for sample in samples:
        predictions.append(model.predictor.predict(sample.image_path))
        rows.append(features.latest)
    return predictions, np.stack(rows)


def presence(samples: list, attributes: list[str]) -> dict[str, np.ndarray]:
    """{attribute: (N,) 1.0 where the sample's mask shows the attribute anywhere}."""
    sizes = [image_size(s.image_path) for s in samples]
    return {a: np.array([float(full_size_target(s, a, size).any()) for s, size in zip(samples, sizes, strict=True)])
            for a in attributes}


def fit_logistic(x: np.ndarray, y: np.ndarray, weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-regularised logistic regression, positives weighted to balance the classes."""
    x_t, y_t = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    pos_weight = torch.tensor((len(y) - y.sum()) / max(y.sum(), 1.0), dtype=torch.float64)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x_t @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_t, pos_weight=pos_weight)
        loss = loss + weight_decay * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def head_probabilities(head: tuple[torch.Tensor, torch.Tensor], x: np.ndarray) -> np.ndarray:
    weight, bias = head
    return torch.sigmoid(torch.as_tensor(x, dtype=torch.float64) @ weight + bias).numpy()


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney ROC AUC (ties count half); NaN without both classes."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None]).mean()
    return float(greater + 0.5 * (positives[:, None] == negatives[None]).mean())


def train_head(train_x: np.ndarray, train_y: np.ndarray, tune_x: np.ndarray, tune_y: np.ndarray) -> tuple:
    """The head with the weight decay of the best tuning-split AUC (the first on ties: the weakest decay)."""
    heads = [fit_logistic(train_x, train_y, decay) for decay in WEIGHT_DECAYS]
    aucs = [roc_auc(head_probabilities(head, tune_x), tune_y) for head in heads]
    return heads[int(np.nanargmax(aucs))] if not np.all(np.isnan(aucs)) else heads[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, help="the run's data folder (default: the one RUN/data.json names)")
    parser.add_argument("--variant", help="default: the run's last variant")
    args = parser.parse_args(argv)
    data = args.data or Path(json.loads((args.run / "data.json").read_text())["folder"])
    splits = json.loads((args.run / "splits.json").read_text())
    if not splits.get("tune"):
        parser.error(f"{args.run}: no tuning split (data.tune_fraction 0): nothing to choose the gate on")
    model = tatl.load(args.run, variant=args.variant)
    attributes = list(model.predictor.settings.attributes)
    features = EncoderFeatures(model.predictor, attributes)
    samples = {s.image_id: s for s in find_samples(data, tuple(attributes))}
    ids = {"train": training_ids(splits, splits["train"]), "tune": splits["tune"], "val": splits["val"]}
    parts = {split: [samples[i] for i in part] for split, part in ids.items()}
    predicted = {split: predict_split(model, features, part) for split, part in parts.items()}
    mean, std = predicted["train"][1].mean(0), predicted["train"][1].std(0) + 1e-6
    x = {split: (rows - mean) / std for split, (_, rows) in predicted.items()}
    y = {split: presence(part, attributes) for split, part in parts.items()}
    counts = {split: per_image_counts(predicted[split][0], parts[split], attributes) for split in ("tune", "val")}
    print(f"{args.run}, variant {model.predictor.settings.variant}: heads fitted on {len(parts['train'])} training "
          f"images, chosen on {len(parts['tune'])} tuning images, reported on {len(parts['val'])} validation images")
    print("| attribute | shown in (train/val) | AUC: peak / head (head on train) | threshold alone | validation "
          "| threshold, gate | validation |\n|---|---|---:|---:|---:|---:|---:|")
    plain, gated = [], []
    for a in attributes:
        head = train_head(x["train"], y["train"][a], x["tune"], y["tune"][a])
        gate_of = {split: head_probabilities(head, x[split]) for split in ("tune", "val")}
        k0, _ = best_pair(counts["tune"][a][0], gate_of["tune"], (0.0,))
        k1, gate = best_pair(counts["tune"][a][0], gate_of["tune"], GATES)
        plain.append(jaccard(counts["val"][a][0], gate_of["val"], k0, 0.0))
        gated.append(jaccard(counts["val"][a][0], gate_of["val"], k1, gate))
        aucs = (roc_auc(counts["val"][a][1], y["val"][a]), roc_auc(gate_of["val"], y["val"][a]),
                roc_auc(head_probabilities(head, x["train"]), y["train"][a]))
        print(f"| {a} | {int(y['train'][a].sum())}/{int(y['val'][a].sum())} | {aucs[0]:.3f} / {aucs[1]:.3f} "
              f"({aucs[2]:.3f}) | "
              f"{GRID[k0]:.2f} | {plain[-1]:.3f} | {GRID[k1]:.2f}, {gate:.2f} | {gated[-1]:.3f} |")
    print(f"| macro | | | | {np.mean(plain):.3f} | | {np.mean(gated):.3f} |")


if __name__ == "__main__":
    main()
