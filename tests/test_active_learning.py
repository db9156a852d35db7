"""`tatl active-learning`: the rounds, resuming, the curves and their summary, bad inputs.

Most tests replace the training, the fine-tuning and the selection by stand-ins that write what the real ones
write (a run folder's config, split and metrics), so the experiment's own logic (split, initial draws, rounds,
resume, curves) is tested in seconds; test_real_rounds_continue_after_a_stop runs the real ones on tiny images.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest
from conftest import tiny_settings

import tatl
from tatl.cli import main
from tatl.data.isic import find_samples
from tatl.data.splits import read_splits, write_splits
from tatl.experiments import active_learning_rounds as rounds
from tatl.experiments.active_learning import ExperimentDir, initial_ids, read_state
from tatl.experiments.active_learning_curves import labels_to_reach, mean_curve, normalised_area, read_curves, summarise
from tatl.io import write_json
from tatl.layout import RunLayout

ATTRIBUTE = "pigment_network"
# The session's tiny settings (the synth.* keys do not apply: the data is written here), one attribute, variant 3.
SETTINGS = tiny_settings({"data.attributes": [ATTRIBUTE], "pipeline.variants": ["3"], "train.batch_size": 4,
                          "data.val_fraction": 0.25})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from tatl.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("al") / "data"
    write_synthetic_dataset(root, n=24, size=32, seed=3)
    return root


# ------------------------------------------------------------------------------------------------- stand-ins
def _metrics(labels: int) -> dict:
    """Scores that grow with the labels, as a run's metrics.json holds them (variant 3, one shape)."""
    score = {"jaccard": labels / 100, "dice": labels / 50}
    return {"variant 3": {"unet": {ATTRIBUTE: score, "macro_average": score, "micro_average": score}}}


class StandIns:
    """Training, fine-tuning and selection that write what the real ones write, and count their calls."""

    def __init__(self, monkeypatch, fail_at_round: int | None = None):
        self.selections: list[tuple[str, int]] = []
        self.fine_tunes: list[Path] = []
        self.fail_at_round = fail_at_round
        monkeypatch.setattr("tatl.pipeline.train.train", self.train)
        monkeypatch.setattr(rounds, "fine_tune", self.fine_tune)
        monkeypatch.setattr(rounds, "select_images", self.select)

    def train(self, data, out, config=None, *, resume=False, overrides=None, **_):
        layout = RunLayout(out)
        assert resume and layout.config.is_file()  # the experiment wrote the run's config and split first
        write_json(layout.metrics, _metrics(len(read_splits(layout.splits)["train"])))

    def fine_tune(self, previous_run, new_data, out, overrides):
        if self.fail_at_round is not None and out.parent.name == f"round-{self.fail_at_round}":
            out.mkdir(parents=True)
            (out / "log.txt").write_text("killed before its config was written")
            raise KeyboardInterrupt
        self.fine_tunes.append(out)
        before, after = RunLayout(previous_run), RunLayout(out)
        splits = read_splits(before.splits)
        train = sorted([*splits["train"], *(s.image_id for s in find_samples(new_data, [ATTRIBUTE]))])
        after.root.mkdir(parents=True, exist_ok=True)
        shutil.copy(before.config, after.config)
        write_splits(after.splits, {**splits, "train": train, "folds": [sorted(train + splits["val"])]})
        write_json(after.metrics, _metrics(len(train)))

    def select(self, run_dir, pool, strategy, n, seed):
        self.selections.append((strategy, seed))
        ids = [s.image_id for s in pool]
        return random.Random(seed).sample(ids, n) if strategy == "random" else sorted(ids)[:n]


def _run(dataset: Path, out: Path, rounds_: int, strategies=("random", "uncertainty"), seeds=(0, 1)) -> dict:
    return tatl.active_learning(dataset, out, initial=4, per_round=3, rounds=rounds_, strategies=strategies,
                                seeds=seeds, overrides=SETTINGS).summary


def _digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


# ------------------------------------------------------------------------------------------------- rounds
def test_each_round_adds_b_new_labels_never_a_validation_image(dataset, tmp_path, monkeypatch):
    StandIns(monkeypatch)
    _run(dataset, tmp_path / "al", 3)
    folder = ExperimentDir(tmp_path / "al")
    val = set(json.loads(folder.split.read_text())["val"])
    assert val and not val & set(json.loads(folder.split.read_text())["pool"])
    for strategy in ("random", "uncertainty"):
        for seed in (0, 1):
            states = [read_state(folder, strategy, seed, r) for r in range(4)]
            assert [s.labels for s in states] == [4, 7, 10, 13]
            for before, after in zip(states, states[1:], strict=False):
                added = set(after.labelled) - set(before.labelled)
                assert added == set(after.selected) and len(added) == 3
                assert set(before.labelled) < set(after.labelled)
            assert not set(states[-1].labelled) & val
            run_split = read_splits(RunLayout(folder.run(strategy, seed, 3)).splits)
            assert set(run_split["val"]) == val and run_split["train"] == states[-1].labelled


def test_the_initial_labels_are_the_same_for_every_strategy_of_a_seed(dataset, tmp_path, monkeypatch):
    stand_ins = StandIns(monkeypatch)
    _run(dataset, tmp_path / "al", 1)
    folder = ExperimentDir(tmp_path / "al")
    for seed in (0, 1):
        first = {s: read_state(folder, s, seed, 0) for s in ("random", "uncertainty")}
        assert first["random"].labelled == first["uncertainty"].labelled
        assert first["random"].scores == first["uncertainty"].scores  # one initial model, one starting point
    assert read_state(folder, "random", 0, 0).labelled != read_state(folder, "random", 1, 0).labelled
    assert initial_ids([f"x{i}" for i in range(50)], 5, 0) == initial_ids([f"x{i}" for i in range(50)][::-1], 5, 0)
    assert len(stand_ins.selections) == 4  # 2 strategies x 2 seeds x 1 round


def test_curves_csv_has_one_row_per_strategy_seed_and_round(dataset, tmp_path, monkeypatch):
    StandIns(monkeypatch)
    summary = _run(dataset, tmp_path / "al", 2)
    folder = ExperimentDir(tmp_path / "al")
    rows = read_curves(folder.curves.read_text())
    keys = [(r["strategy"], r["seed"], r["round"]) for r in rows]
    assert sorted(keys) == sorted((s, seed, r) for s in ("random", "uncertainty") for seed in (0, 1) for r in range(3))
    assert {f"{ATTRIBUTE} jaccard", f"{ATTRIBUTE} dice", "macro jaccard", "macro dice"} <= set(rows[0])
    assert [r["labels"] for r in rows if r["strategy"] == "random" and r["seed"] == 0] == [4, 7, 10]
    assert json.loads(folder.summary.read_text()) == summary
    assert folder.report_html.is_file() and (folder.report_pictures / "learning-curve.png").stat().st_size > 1000
    assert "learning-curve.png" in folder.report_markdown.read_text()


def test_a_stopped_experiment_continues_without_repeating_or_losing_a_round(dataset, tmp_path, monkeypatch):
    out = tmp_path / "al"
    StandIns(monkeypatch)
    _run(dataset, out, 1)
    folder = ExperimentDir(out)
    round1 = {(s, seed): _digest(folder.round(s, seed, 1)) for s in ("random", "uncertainty") for seed in (0, 1)}
    initial = _digest(folder.root / "initial")

    stand_ins = StandIns(monkeypatch, fail_at_round=2)  # killed while fine-tuning round 2 of the first chain
    with pytest.raises(KeyboardInterrupt):
        _run(dataset, out, 2)
    selected = json.loads(folder.selected("random", 0, 2).read_text())["selected"]
    assert read_state(folder, "random", 0, 2) is None and len(stand_ins.selections) == 1

    stand_ins = StandIns(monkeypatch)
    _run(dataset, out, 2)
    assert stand_ins.selections == [("random", 1002), ("uncertainty", 2), ("uncertainty", 1002)]  # not random 0
    assert read_state(folder, "random", 0, 2).selected == selected  # the interrupted round's own selection
    assert len(stand_ins.fine_tunes) == 4  # round 2 of each chain, once; round 1 never again
    for key, digest in round1.items():
        assert _digest(folder.round(*key, 1)) == digest
    assert _digest(folder.root / "initial") == initial
    rows = read_curves(folder.curves.read_text())
    assert sorted(r["round"] for r in rows if r["strategy"] == "random" and r["seed"] == 0) == [0, 1, 2]


def test_a_dir_holding_another_experiment_is_refused(dataset, tmp_path, monkeypatch, capsys):
    StandIns(monkeypatch)
    _run(dataset, tmp_path / "al", 1)
    capsys.readouterr()
    code = main(["active-learning", str(dataset), "--out", str(tmp_path / "al"), "--initial", "5", "--per-round", "3",
                 "--rounds", "1", *[arg for s in SETTINGS for arg in ("--set", s)]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "initial is 4 there, not 5" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(("options", "message"), [
    (["--initial", "10", "--per-round", "4", "--rounds", "3"], "= 22 labels, but DATA has"),
    (["--initial", "4", "--per-round", "2", "--rounds", "1", "--strategies", "random", "greedy"],
     "unknown strategy 'greedy'"),
    (["--initial", "0", "--per-round", "2", "--rounds", "1"], "--initial 0: use 1 or more"),
])
def test_bad_inputs_are_one_line_errors_before_training(dataset, tmp_path, monkeypatch, capsys, options, message):
    stand_ins = StandIns(monkeypatch)
    code = main(["active-learning", str(dataset), "--out", str(tmp_path / "al"), *options,
                 *[arg for s in SETTINGS for arg in ("--set", s)]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err, err
    assert not stand_ins.selections and not any((tmp_path / "al").glob("*"))  # nothing written


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    code = main(["active-learning", str(tmp_path / "nowhere"), "--out", str(tmp_path / "al"), "--initial", "2",
                 "--per-round", "1", "--rounds", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "dataset folder does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "al").exists()


# ------------------------------------------------------------------------------------------------- the curves
def _rows(curves: dict[str, dict[int, list[float]]], labels=(10, 20, 40)) -> list[dict]:
    return [{"strategy": strategy, "seed": seed, "round": r, "labels": labels[r], "macro jaccard": score}
            for strategy, seeds in curves.items() for seed, scores in seeds.items() for r, score in enumerate(scores)]


def test_area_under_the_curve_is_the_trapezoid_over_labels_normalised():
    assert normalised_area([10, 20, 40], [0.2, 0.4, 0.4]) == pytest.approx((10 * 0.3 + 20 * 0.4) / 30)
    assert normalised_area([40, 10, 20], [0.4, 0.2, 0.4]) == pytest.approx((10 * 0.3 + 20 * 0.4) / 30)
    assert normalised_area([10], [0.5]) == 0.5
    rows = _rows({"random": {0: [0.2, 0.4, 0.4], 1: [0.2, 0.2, 0.6]}, "uncertainty": {0: [0.2, 0.5, 0.6],
                                                                                      1: [0.2, 0.5, 0.6]}})
    summary = summarise(rows)
    random_areas = [(10 * 0.3 + 20 * 0.4) / 30, (10 * 0.2 + 20 * 0.4) / 30]
    assert summary["strategies"]["random"]["area"] == pytest.approx(sum(random_areas) / 2)
    assert summary["strategies"]["random"]["area_std"] == pytest.approx(abs(random_areas[0] - random_areas[1]) / 2**0.5)
    assert summary["strategies"]["uncertainty"]["area"] == pytest.approx((10 * 0.35 + 20 * 0.55) / 30)
    assert summary["strategies"]["uncertainty"]["area_std"] == pytest.approx(0.0)


def test_labels_to_reach_95_percent_of_the_final_random_score():
    rows = _rows({"random": {0: [0.2, 0.4, 0.4], 1: [0.2, 0.2, 0.6]}, "uncertainty": {0: [0.2, 0.5, 0.6]},
                  "disagreement": {0: [0.1, 0.2, 0.3]}})
    summary = summarise(rows)
    assert summary["target"] == pytest.approx(0.95 * 0.5)  # random's final mean: (0.4 + 0.6) / 2
    assert summary["strategies"]["uncertainty"]["labels_to_reach"] == 20  # 0.5 >= 0.475 at 20 labels
    assert summary["strategies"]["random"]["labels_to_reach"] == 40
    assert summary["strategies"]["disagreement"]["labels_to_reach"] is None
    assert labels_to_reach(mean_curve(rows, "random"), 0.3) == 20
    assert list(summary["strategies"]) == ["random", "uncertainty", "disagreement"]
    no_random = summarise(_rows({"uncertainty": {0: [0.2, 0.5, 0.6]}}))
    assert no_random["target"] is None and no_random["strategies"]["uncertainty"]["labels_to_reach"] is None


def test_a_seed_that_has_not_finished_every_round_has_no_area():
    rows = _rows({"random": {0: [0.2, 0.4, 0.4], 1: [0.2, 0.3]}})
    summary = summarise(rows)
    assert summary["strategies"]["random"]["seeds"] == 1
    assert summary["strategies"]["random"]["area"] == pytest.approx((10 * 0.3 + 20 * 0.4) / 30)
    assert [p["n"] for p in mean_curve(rows, "random")] == [2, 2, 1]


def test_a_job_process_is_given_the_experiment_settings(tmp_path):
    from tatl.cli import build_parser
    from tatl.experiments.active_learning import Settings
    from tatl.experiments.active_learning_jobs import job_arguments, job_named, plan_jobs

    settings = Settings("/data", 4, 3, 2, ("random", "uncertainty"), (0, 5), "demo", tuple(SETTINGS))
    initial, chains = plan_jobs(settings)
    assert [j.name for j in initial] == ["initial__seed0", "initial__seed5"]
    assert [j.name for j in chains] == ["random__seed0", "random__seed5", "uncertainty__seed0", "uncertainty__seed5"]
    arguments = job_arguments(settings, tmp_path, chains[3])
    assert arguments[:3] == ["-m", "tatl", "active-learning"]
    args = build_parser("active-learning").parse_args(arguments[2:])
    assert (args.data, args.initial, args.per_round, args.rounds, args.config) == ("/data", 4, 3, 2, "demo")
    assert (args.strategies, args.seeds, args.overrides, args.job) == (["random", "uncertainty"], [0, 5], SETTINGS,
                                                                      "uncertainty__seed5")
    assert job_named(settings, args.job) == chains[3]


# ------------------------------------------------------------------------------------------------- real networks
@pytest.mark.slow  # ~30 s: 2 strategies x 2 rounds of real networks, 32 px
def test_real_rounds_continue_after_a_stop(dataset, tmp_path):
    """The real training, selection and fine-tuning: --rounds 1, then --rounds 2 on the same DIR."""
    out = tmp_path / "al"
    _run(dataset, out, 1, seeds=(0,))
    folder = ExperimentDir(out)
    round1 = {s: _digest(folder.round(s, 0, 1)) for s in ("random", "uncertainty")}
    initial = _digest(folder.root / "initial")
    _run(dataset, out, 2, seeds=(0,))
    for strategy in ("random", "uncertainty"):
        assert _digest(folder.round(strategy, 0, 1)) == round1[strategy]  # neither repeated nor touched
        states = [read_state(folder, strategy, 0, r) for r in range(3)]
        assert [s.labels for s in states] == [4, 7, 10]
        record = json.loads(RunLayout(folder.run(strategy, 0, 2)).finetune_record.read_text())
        assert record["parent"] == str(folder.run(strategy, 0, 1).resolve()) and record["validation"] == "parent"
        after = record["after"]["macro_average"]["jaccard"]
        assert after == pytest.approx(states[2].scores["macro_average"]["jaccard"])
    assert _digest(folder.root / "initial") == initial
    rows = read_curves(folder.curves.read_text())
    assert len(rows) == 6 and {r["labels"] for r in rows} == {4, 7, 10}


def test_tatl_report_rewrites_the_results_of_an_experiment(dataset, tmp_path, monkeypatch, capsys):
    StandIns(monkeypatch)
    _run(dataset, tmp_path / "al", 1, strategies=("random",), seeds=(0,))
    folder = ExperimentDir(tmp_path / "al")
    for path in (folder.curves, folder.summary, folder.report_html):
        path.unlink()
    assert main(["report", str(folder.root)]) == 0
    assert len(read_curves(folder.curves.read_text())) == 2 and folder.report_html.is_file()
    assert json.loads(folder.summary.read_text())["strategies"]["random"]["final_labels"] == 7
