"""`tatl select` and tatl.inference.selection/ranking: the formulas on known arrays (entropy, variance, lesion
region, rare-attribute weights, seeded random), and on one tiny trained run: the selected images are exactly the K
highest of scores computed independently for every pool image (not a shuffle of them), the CSV, bad inputs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_cli_settings
from PIL import Image

from tatl import cli
from tatl.errors import ConfigError, DataError
from tatl.experiments.ranking import attribute_weights, rank_pool, score_prediction
from tatl.inference.predictor import Predictor, load_predictor
from tatl.inference.selection import (
    ImageScore,
    binary_entropy,
    equal_weights,
    lesion_on_grid,
    prevalence_weights,
    random_scores,
    score_image,
    top_k,
)

ATTRIBUTES = ["pigment_network", "streaks"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def constant(value: float, size: int = 4) -> np.ndarray:
    return np.full((size, size), value, np.float32)


# ------------------------------------------------------------------------------------------ pure formulas
def test_binary_entropy_in_bits_on_known_values():
    h = binary_entropy(np.array([0.5, 0.0, 1.0, 0.25]))
    assert h[0] == pytest.approx(1.0) and h[1] == 0.0 and h[2] == 0.0
    assert h[3] == pytest.approx(-(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75)))
    members = {"unet": {"pigment_network": constant(0.5)}, "linknet": {"pigment_network": constant(0.5)}}
    assert score_image(members, None, {"pigment_network": 1}, "uncertainty").score == pytest.approx(1.0)
    certain = {"unet": {"pigment_network": constant(1.0)}, "linknet": {"pigment_network": constant(0.0)}}
    # the ensemble mean of certain but opposite members is 0.5: uncertain; the members disagree the most possible
    assert score_image(certain, None, {"pigment_network": 1}, "uncertainty").score == pytest.approx(1.0)
    assert score_image(certain, None, {"pigment_network": 1}, "disagreement").score == pytest.approx(0.25)
    sure = {"unet": {"pigment_network": constant(1.0)}}
    assert score_image(sure, None, {"pigment_network": 1}, "uncertainty").score == 0.0


def test_disagreement_is_zero_when_u_equals_link_and_the_variance_otherwise():
    same = np.random.default_rng(0).random((6, 6)).astype(np.float32)
    members = {"unet": {"streaks": same}, "linknet": {"streaks": same.copy()}}
    assert score_image(members, None, {"streaks": 1}, "disagreement").score == 0.0
    apart = {"unet": {"streaks": constant(0.2)}, "linknet": {"streaks": constant(0.6)}}
    result = score_image(apart, None, {"streaks": 1}, "disagreement")
    assert result.score == pytest.approx(0.04) and result.per_attribute == {"streaks": pytest.approx(0.04)}


def test_only_the_lesion_counts_and_an_empty_lesion_means_the_whole_grid():
    p = constant(0.0)
    p[:2] = 0.5  # uncertain in the top half only
    members = {"unet": {"globules": p}}
    top, bottom = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    top[:2], bottom[2:] = True, True
    weights = {"globules": 1}
    assert score_image(members, top, weights, "uncertainty").score == pytest.approx(1.0)
    assert score_image(members, bottom, weights, "uncertainty").score == 0.0
    assert score_image(members, np.zeros((4, 4), bool), weights, "uncertainty").score == pytest.approx(0.5)
    assert score_image(members, None, weights, "uncertainty").score == pytest.approx(0.5)


def test_lesion_on_grid_samples_the_whole_image_mask_inside_the_box():
    lesion = np.zeros((4, 4), bool)
    lesion[:, :2] = True  # the left half of a 100 x 40 image
    whole = lesion_on_grid(lesion, (100, 40), (0, 0, 100, 40), (8, 8))
    assert whole[:, :4].all() and not whole[:, 4:].any()
    assert lesion_on_grid(lesion, (100, 40), (0, 0, 50, 40), (3, 5)).all()  # a box inside the lesion
    assert not lesion_on_grid(lesion, (100, 40), (50, 10, 100, 40), (3, 5)).any()  # a box beside it


def test_rare_attribute_weighting_changes_the_ranking():
    """Image a: pigment network uncertain, streaks sure; image b: pigment network sure, streaks fairly uncertain.
    With equal weights a comes first; weighted by ISIC-like prevalence (pigment network in 60 of 100 training
    images, streaks in 4), b does: its streaks are what the model most needs labels for."""
    a = {"unet": {"pigment_network": constant(0.5), "streaks": constant(0.0)}}
    b = {"unet": {"pigment_network": constant(1.0), "streaks": constant(0.2)}}
    equal = equal_weights(ATTRIBUTES)
    rare = prevalence_weights({"pigment_network": 60, "streaks": 4}, 100)
    assert rare["streaks"] == pytest.approx((102 / 5) / (102 / 61 + 102 / 5))  # (n + 2) / (n_a + 1), normalised
    assert sum(rare.values()) == pytest.approx(1.0)

    def ranking(weights):
        scores = [ImageScore(score_image(m, None, weights, "uncertainty").score, image_id=i) for i, m in
                  (("a", a), ("b", b))]
        return [s.image_id for s in top_k(scores, None)]

    assert ranking(equal) == ["a", "b"]
    assert ranking(rare) == ["b", "a"]
    assert prevalence_weights({"streaks": 0, "globules": 0}, 10) == {"streaks": 0.5, "globules": 0.5}  # finite


def test_top_k_is_the_k_highest_with_ties_broken_by_id():
    scores = [ImageScore(s, image_id=i) for i, s in [("d", 0.3), ("a", 0.9), ("c", 0.5), ("b", 0.5), ("e", 0.1)]]
    assert [s.image_id for s in top_k(scores, 3)] == ["a", "b", "c"]
    assert [s.image_id for s in top_k(scores, 50)] == ["a", "b", "c", "d", "e"]
    assert [s.image_id for s in top_k(list(reversed(scores)), 2)] == ["a", "b"]


def test_random_scores_are_seeded():
    ids = [f"img{i}" for i in range(20)]
    assert random_scores(ids, 1) == random_scores(list(reversed(ids)), 1)
    assert random_scores(ids, 1) != random_scores(ids, 2)
    assert all(0 <= s.score < 1 for s in random_scores(ids, 3).values())


# ----------------------------------------------------------------------------------- one tiny trained run
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Variant 1,3 (Stage 1 crops the lesion), U + Link, two attributes, one epoch on 12 tiny synthetic images."""
    run = tmp_path_factory.mktemp("select") / "run"
    # the session's tiny settings on 48 px images in one batch, with these two attributes and demo's U + Link
    settings = tiny_cli_settings({"synth.size": 48, "train.batch_size": 12, "data.attributes": ATTRIBUTES},
                                 drop=("model.shapes",))
    assert cli.main(["run", "synthetic", "--out", str(run), "--config", "demo", "--variants", "1,3", *settings]) == 0
    return run


@pytest.fixture(scope="module")
def pool(run_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pool")
    for image in sorted((run_dir / "synthetic-data" / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))[:8]:
        shutil.copy(image, folder / image.name)
    return folder


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return load_predictor(run_dir)


@pytest.mark.slow
def test_members_average_to_the_prediction_and_predict_is_unchanged(predictor, pool):
    image = sorted(pool.glob("*.jpg"))[0]
    plain = predictor.predict(image)
    kept = predictor.predict(image, keep_members=True)
    assert plain.members == {} and set(kept.members) == {"unet", "linknet"}
    for name in plain.maps:
        np.testing.assert_array_equal(plain.maps[name], kept.maps[name])
    for attribute in ATTRIBUTES:
        mean = (kept.members["unet"][attribute] + kept.members["linknet"][attribute]) / 2
        np.testing.assert_allclose(mean, plain.maps[attribute], atol=1e-7)
    flips = Predictor(predictor.settings, predictor.networks, "torch", predictor.source, tta=True)
    assert len(flips.predict(image, keep_members=True).members) == 8  # 2 shapes x 4 flips


@pytest.mark.slow
def test_the_selected_images_are_exactly_the_k_highest_scoring(predictor, pool, run_dir):
    weights = attribute_weights(predictor)
    assert set(weights) == set(ATTRIBUTES) and sum(weights.values()) == pytest.approx(1.0)
    flipped = Predictor(predictor.settings, predictor.networks, "torch", predictor.source, tta=True)
    for strategy in ("uncertainty", "disagreement"):
        independent = {path.stem: score_prediction(predictor, path, weights, strategy).score
                       for path in sorted(pool.glob("*.jpg"))}
        assert len(set(independent.values())) == len(independent)  # distinct: the order is not an accident of ids
        expected = sorted(independent, key=lambda i: (-independent[i], i))
        ranked = rank_pool(predictor, pool, strategy, n=3, weights=weights)
        assert [s.image_id for s in ranked] == expected[:3]
        assert [s.score for s in ranked] == pytest.approx([independent[i] for i in expected[:3]])
        assert [s.image_id for s in rank_pool(predictor, pool, strategy, n=100, weights=weights)] == expected
    # disagreement always adds the flips: the same scores from a predictor loaded with TTA
    path = sorted(pool.glob("*.jpg"))[0]
    assert score_prediction(flipped, path, weights, "disagreement") == score_prediction(
        predictor, path, weights, "disagreement") != score_prediction(predictor, path, weights, "uncertainty")


@pytest.mark.slow
def test_uncertainty_is_the_entropy_of_the_ensemble_map_inside_the_lesion(predictor, pool):
    """From the ensemble maps `predict` gives (no members), the lesion sampled on the crop's grid."""
    weights = {"pigment_network": 0.25, "streaks": 0.75}
    for path in sorted(pool.glob("*.jpg"))[:3]:
        prediction = predictor.predict(path)
        lesion = lesion_on_grid(prediction.maps["lesion"] > predictor.settings.threshold, prediction.size,
                                prediction.box, (32, 32))
        lesion = lesion if lesion.any() and not prediction.lesion_fallback else np.ones((32, 32), bool)
        direct = sum(weights[a] * binary_entropy(prediction.maps[a])[lesion].mean() for a in ATTRIBUTES)
        assert score_prediction(predictor, path, weights, "uncertainty").score == pytest.approx(direct, rel=1e-5)


@pytest.mark.slow
def test_training_prevalence_weights_and_the_equal_fallback(run_dir, tmp_path, caplog):
    train = json.loads((run_dir / "splits.json").read_text())["train"]
    masks = run_dir / "synthetic-data" / "ISIC2018_Task2_Training_GroundTruth_v3"
    counts = {a: sum(bool(np.asarray(Image.open(masks / f"{i}_attribute_{a}.png")).any()) for i in train)
              for a in ATTRIBUTES}
    assert attribute_weights(run_dir) == pytest.approx(prevalence_weights(counts, len(train)))
    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("synthetic-data", "cache"))
    assert attribute_weights(moved) == equal_weights(ATTRIBUTES)
    assert "equal attribute weights" in caplog.text


@pytest.mark.slow
def test_cli_writes_the_k_best_as_csv(run_dir, pool, tmp_path, capsys):
    out = tmp_path / "ranked.csv"
    assert cli.main(["select", str(run_dir), str(pool), "--n", "3", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    columns = ["rank", "image_id", "path", "score"] + [f"{a}_{kind}" for a in ATTRIBUTES for kind in
                                                        ("entropy", "weight")]
    assert list(rows[0]) == columns and [r["rank"] for r in rows] == ["1", "2", "3"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    for row in rows:  # the score is the weighted mean of the values written beside it
        assert float(row["score"]) == pytest.approx(
            sum(float(row[f"{a}_entropy"]) * float(row[f"{a}_weight"]) for a in ATTRIBUTES), rel=1e-4)
        assert Path(row["path"]).parent == pool
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in printed[1:]] == [r["image_id"] for r in rows]


@pytest.mark.slow
def test_cli_random_is_reproducible_and_seeded(run_dir, pool, tmp_path):
    def ranking(seed: int, name: str) -> list[str]:
        out = tmp_path / name
        assert cli.main(["select", str(run_dir), str(pool), "--n", "20", "--strategy", "random", "--seed",
                         str(seed), "--out", str(out)]) == 0
        rows = list(csv.DictReader(out.read_text().splitlines()))
        assert list(rows[0]) == ["rank", "image_id", "path", "score"]
        return [r["image_id"] for r in rows]

    first = ranking(4, "a.csv")
    assert len(first) == 8 and first == ranking(4, "b.csv") and first != ranking(5, "c.csv")


def one_line_error(capsys, argv: list, *needles: str) -> None:
    assert cli.main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tatl select: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors_before_any_scoring(run_dir, pool, tmp_path, capsys):
    out = tmp_path / "ranked.csv"
    one_line_error(capsys, ["select", run_dir, tmp_path / "nowhere", "--n", 2, "--out", out], "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, ["select", run_dir, empty, "--n", 2, "--out", out], "no images")
    broken = tmp_path / "broken"
    shutil.copytree(pool, broken)
    (broken / "zz_cut.jpg").write_bytes((pool / sorted(p.name for p in pool.glob("*.jpg"))[0]).read_bytes()[:300])
    one_line_error(capsys, ["select", run_dir, broken, "--n", 2, "--out", out], "zz_cut.jpg")
    one_line_error(capsys, ["select", run_dir, pool, "--n", 0, "--out", out], "--n 0")
    one_line_error(capsys, ["select", run_dir, pool, "--n", 2, "--out", tmp_path], "is a folder")
    one_line_error(capsys, ["select", tmp_path / "norun", pool, "--n", 2, "--out", out], "norun")
    assert not out.exists()
    with pytest.raises(ConfigError, match="weights"):
        rank_pool(run_dir, pool, "uncertainty", 2, weights={"globules": 1.0})
    with pytest.raises(DataError, match="same image id"):
        rank_pool(run_dir, [pool / "a.jpg", tmp_path / "a.png"], "random", 2)
