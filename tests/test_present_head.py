"""benchmarks/present_head.py: a logistic "present" head on a run's encoder features, gating its masks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from present_head import fit_logistic, head_probabilities, main, roc_auc, train_head  # noqa: E402


def test_roc_auc_counts_pairs_ranked_right_and_ties_as_half():
    labels = np.array([1, 1, 0, 0])
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), labels) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), labels) == 0.0
    assert roc_auc(np.array([0.9, 0.5, 0.5, 0.1]), labels) == pytest.approx((2 + 1 + 0.5) / 4)
    assert np.isnan(roc_auc(np.array([0.3, 0.4]), np.array([0, 0])))  # one class only: undefined, not 0 or 1


def test_the_head_learns_a_rare_class_from_features_and_ranks_unseen_images():
    # 5% positives, told apart by two of 20 features: balanced weights keep the rare class from being ignored
    rng = np.random.default_rng(0)
    labels = (rng.random(3000) < 0.05).astype(float)
    features = rng.normal(size=(3000, 20))
    features[:, :2] += 2.5 * labels[:, None]
    head = train_head(features[:1500], labels[:1500], features[1500:2000], labels[1500:2000])
    held_out, truth = head_probabilities(head, features[2000:]), labels[2000:]
    assert roc_auc(held_out, truth) > 0.95
    assert held_out[truth == 1].mean() > 0.5 > held_out[truth == 0].mean()  # balanced: not ~0.05 for every image


def test_a_stronger_weight_decay_shrinks_the_weights():
    rng = np.random.default_rng(1)
    features, labels = rng.normal(size=(200, 5)), (rng.random(200) < 0.5).astype(float)
    features[:, 0] += labels
    weak, strong = fit_logistic(features, labels, 1e-4)[0], fit_logistic(features, labels, 1.0)[0]
    assert float(strong.norm()) < 0.5 * float(weak.norm())


@pytest.mark.slow
def test_the_script_prints_a_row_per_attribute_on_a_finished_run_with_a_tuning_split(tiny_run_factory, capsys):
    run = tiny_run_factory(overrides={"synth.n": 24, "data.tune_fraction": 0.2})
    main([str(run)])
    out = capsys.readouterr().out
    splits = json.loads((run / "splits.json").read_text())
    fitted_on = len(splits["train"]) - len(splits["tune"])  # the tuning images choose the gate: not fitted on
    assert f"heads fitted on {fitted_on} training images, chosen on {len(splits['tune'])} tuning images" in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    # the header, then the run's attributes in its order (data.attributes), then the macro average
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| pigment_network", "| globules", "| macro"]
    macro = rows[-1].split("|")
    assert 0.0 <= float(macro[-4]) <= 1.0 and 0.0 <= float(macro[-2]) <= 1.0  # threshold alone; with the gate
