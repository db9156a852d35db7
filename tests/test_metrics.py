"""Official ISIC 2018 scoring: equality with `isic-challenge-scoring` 5.6.0, Task 1 by hand, input errors, CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tatl.commands import evaluate
from tatl.errors import DataError
from tatl.metrics.isic2018 import Task1Scorer, Task2Scorer, format_scores, score_task2_folders

task2 = pytest.importorskip("isic_challenge_scoring.task2")
segmentation = pytest.importorskip("isic_challenge_scoring.segmentation")

ATTRIBUTES = ["globules", "milia_like_cyst", "negative_network", "streaks"]
SIZES = [(13, 17), (24, 24), (40, 31)]  # (H, W)


def random_grey_mask(rng: np.random.Generator, shape: tuple[int, int], kind: str) -> np.ndarray:
    """uint8 grey levels around the 128 cut (128 is negative, 129 positive) or an empty mask."""
    if kind == "empty":
        return np.zeros(shape, np.uint8)
    mask = rng.choice(np.array([0, 100, 128, 129, 200, 255], np.uint8), size=shape)
    return mask * (rng.random(shape) < rng.uniform(0.05, 0.6)).astype(np.uint8)


def write_png(path: Path, mask: np.ndarray, one_bit: bool = False) -> None:
    image = Image.fromarray(mask)
    (image.point(lambda v: 255 if v > 128 else 0).convert("1") if one_bit else image).save(path)


@pytest.fixture(scope="module")
def task2_folders(tmp_path_factory) -> tuple[Path, Path, list]:
    """Truth and prediction folders of random masks; `streaks` empty everywhere in both, `negative_network` truth
    empty everywhere but predicted somewhere. Returns (truth dir, prediction dir, [(attribute, truth, pred)])."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("task2")
    truth_dir, pred_dir = root / "truth", root / "pred"
    truth_dir.mkdir(), pred_dir.mkdir()
    (truth_dir / "LICENSE.txt").write_text("ignored by both scorers")
    pairs = []
    for index in range(9):
        shape = SIZES[index % len(SIZES)]
        for attribute in ATTRIBUTES:
            truth_kind = "empty" if attribute in ("streaks", "negative_network") or index % 4 == 0 else "random"
            pred_kind = "empty" if attribute == "streaks" or index % 5 == 0 else "random"
            truth, pred = random_grey_mask(rng, shape, truth_kind), random_grey_mask(rng, shape, pred_kind)
            name = f"ISIC_{index:07d}_attribute_{attribute}.png"
            write_png(truth_dir / name, truth)
            write_png(pred_dir / name, pred, one_bit=index == 1)  # the scorer reads 1-bit PNGs as 0/255
            pairs.append((attribute, truth, pred))
    return truth_dir, pred_dir, pairs


def assert_scores_equal(ours: dict, reference: dict) -> None:
    for name in [*ATTRIBUTES, "micro_average"]:
        for key in ("jaccard", "dice"):
            assert ours[name][key] == pytest.approx(reference[name][key], abs=1e-9), (name, key)
    assert ours["micro_average"]["jaccard"] == pytest.approx(reference["overall"], abs=1e-9)
    for key in ("jaccard", "dice"):
        macro = np.mean([reference[name][key] for name in ATTRIBUTES])
        assert ours["macro_average"][key] == pytest.approx(macro, abs=1e-9)


def test_folder_scores_equal_the_official_scorer(task2_folders):
    truth_dir, pred_dir, _ = task2_folders
    reference = task2.score(truth_dir, pred_dir)
    ours = score_task2_folders(pred_dir, truth_dir)
    assert_scores_equal(ours, reference)
    assert ours["streaks"] == {"jaccard": 1.0, "dice": 1.0}  # TP + FP + FN = 0 scores 1.0, as the scorer does
    assert ours["negative_network"] == {"jaccard": 0.0, "dice": 0.0}
    assert 0 < ours["globules"]["jaccard"] < 1


def test_streaming_scorer_equals_the_official_scorer_for_numpy_and_tensor_batches(task2_folders):
    truth_dir, pred_dir, pairs = task2_folders
    reference = task2.score(truth_dir, pred_dir)
    per_image = Task2Scorer(ATTRIBUTES)
    for attribute, truth, pred in pairs:  # uint8 grey levels, binarised > 128 like the PNGs
        per_image.update(attribute, truth, pred)
    assert_scores_equal(per_image.result(), reference)
    batched = Task2Scorer(ATTRIBUTES, threshold=128.5 / 255)  # grey level 128 -> negative, 129 -> positive
    for attribute in ATTRIBUTES:
        for shape in SIZES:  # one (B, H, W) bool batch per size
            same = [(t, p) for a, t, p in pairs if a == attribute and t.shape == shape]
            truth = torch.from_numpy(np.stack([t for t, _ in same]) > 128)
            probabilities = torch.from_numpy(np.stack([p for _, p in same]) / 255.0)
            batched.update(attribute, truth, probabilities)  # float predictions: > threshold
    assert batched.image_counts == per_image.image_counts
    assert_scores_equal(batched.result(), reference)


def test_real_isic_masks_score_like_the_official_scorer(isic_sample, tmp_path):
    truth_dir = isic_sample / "ISIC2018_Task2_Training_GroundTruth_v3"
    for path in truth_dir.glob("*.png"):  # a shifted truth: a realistic, imperfect 1022x767 prediction
        write_png(tmp_path / path.name, np.roll(np.asarray(Image.open(path)), 40, axis=1))
    reference = task2.score(truth_dir, tmp_path)
    ours = score_task2_folders(tmp_path, truth_dir)
    for name in ("pigment_network", "micro_average"):
        assert ours[name] == pytest.approx(reference[name], abs=1e-9)
    assert 0.1 < ours["pigment_network"]["jaccard"] < 0.9


def test_streaming_scorer_rejects_ambiguous_input():
    scorer = Task2Scorer(["globules"])
    with pytest.raises(ValueError, match="unknown attribute"):
        scorer.update("streaks", np.zeros((2, 2), bool), np.zeros((2, 2), bool))
    with pytest.raises(TypeError, match="ambiguous"):
        scorer.update("globules", np.zeros((2, 2), np.int64), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="differ in shape"):
        scorer.update("globules", np.zeros((2, 2), bool), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="no image was scored"):
        scorer.result()


def test_task1_scorer_on_a_hand_case():
    truth = np.zeros((4, 4, 5), bool)
    pred = np.zeros((4, 4, 5), bool)
    truth[0, :2, :2] = True  # 4 truth pixels, 2 predicted: J = 2/4 -> thresholded 0, D = 4/6
    pred[0, :1, :2] = True
    truth[1] = True  # 20 truth pixels, 13 predicted: J = 0.65 exactly, kept by the >= 0.65 rule, D = 26/33
    pred[1].flat[:13] = True
    # image 2: truth and prediction empty -> 1, 1, 1 (the scorer's rule); image 3: empty truth, one FP -> 0, 0, 0
    pred[3, 0, 0] = True
    scorer = Task1Scorer()
    scorer.update(truth[0], pred[0])
    scorer.update(torch.from_numpy(truth[1:]), torch.from_numpy(pred[1:]))
    result = scorer.result()
    assert result["jaccard"] == pytest.approx((0.5 + 0.65 + 1 + 0) / 4, abs=1e-12)
    assert result["threshold_jaccard"] == pytest.approx((0 + 0.65 + 1 + 0) / 4, abs=1e-12)
    assert result["dice"] == pytest.approx((4 / 6 + 26 / 33 + 1 + 0) / 4, abs=1e-12)


@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")  # inside the reference scorer
def test_task1_scorer_equals_the_official_segmentation_scorer(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "truth").mkdir(), (tmp_path / "pred").mkdir()
    scorer = Task1Scorer()
    for index in range(8):
        shape = SIZES[index % len(SIZES)]
        truth = random_grey_mask(rng, shape, "empty" if index == 3 else "random")
        pred = truth.copy() if index == 2 else random_grey_mask(rng, shape, "empty" if index in (3, 5) else "random")
        write_png(tmp_path / "truth" / f"ISIC_{index:07d}_segmentation.png", truth)
        write_png(tmp_path / "pred" / f"ISIC_{index:07d}_segmentation.png", pred)
        scorer.update(truth, pred)
    reference = segmentation.SegmentationScore.from_dir(tmp_path / "truth", tmp_path / "pred").macro_average
    for key, value in scorer.result().items():
        assert value == pytest.approx(reference[key], abs=1e-9), key


def make_folders(tmp_path: Path, size: tuple[int, int] = (8, 8)) -> tuple[Path, Path]:
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir(), pred_dir.mkdir()
    for index in range(2):
        for attribute in ("globules", "streaks"):
            name = f"ISIC_{index:07d}_attribute_{attribute}.png"
            write_png(truth_dir / name, np.full(size, 255, np.uint8))
            write_png(pred_dir / name, np.full(size, 255, np.uint8))
    return truth_dir, pred_dir


def test_missing_prediction_names_the_truth_file(tmp_path):
    truth_dir, pred_dir = make_folders(tmp_path)
    (pred_dir / "ISIC_0000001_attribute_streaks.png").unlink()
    with pytest.raises(DataError, match="ISIC_0000001_attribute_streaks.png"):
        score_task2_folders(pred_dir, truth_dir)
    assert score_task2_folders(pred_dir, truth_dir, ["globules"])["globules"]["jaccard"] == 1.0


def test_duplicated_prediction_names_both_files(tmp_path):
    truth_dir, pred_dir = make_folders(tmp_path)
    write_png(pred_dir / "ISIC_0000001_v2_attribute_streaks.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="ISIC_0000001_attribute_streaks.png and ISIC_0000001_v2_attribute_streaks"):
        score_task2_folders(pred_dir, truth_dir)


def test_size_mismatch_names_the_file_and_both_sizes(tmp_path):
    truth_dir, pred_dir = make_folders(tmp_path)
    write_png(pred_dir / "ISIC_0000000_attribute_streaks.png", np.zeros((8, 6), np.uint8))
    with pytest.raises(DataError, match=r"ISIC_0000000_attribute_streaks.png is 6x8 \(WxH\) but truth .* is 8x8"):
        score_task2_folders(pred_dir, truth_dir)


@pytest.mark.parametrize("mode", ["RGB", "LA", "P", "I;16"])
def test_non_greyscale_png_names_the_file_and_mode(tmp_path, mode):
    truth_dir, pred_dir = make_folders(tmp_path)
    Image.new(mode, (8, 8)).save(pred_dir / "ISIC_0000001_attribute_globules.png")
    with pytest.raises(DataError, match=rf"ISIC_0000001_attribute_globules.png is not single-channel.*'{mode}'"):
        score_task2_folders(pred_dir, truth_dir)


def test_undecodable_png_names_the_file(tmp_path):
    truth_dir, pred_dir = make_folders(tmp_path)
    (pred_dir / "ISIC_0000001_attribute_globules.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="ISIC_0000001_attribute_globules.png cannot be decoded"):
        score_task2_folders(pred_dir, truth_dir)


@pytest.mark.parametrize("emptied", ["truth", "pred"])
def test_empty_folder_is_named(tmp_path, emptied):
    truth_dir, pred_dir = make_folders(tmp_path)
    for path in (tmp_path / emptied).iterdir():
        path.unlink()
    with pytest.raises(DataError, match=rf"{emptied}.* holds no <image>_attribute_<name>.png"):
        score_task2_folders(pred_dir, truth_dir)


def test_unknown_attribute_is_named(tmp_path):
    truth_dir, pred_dir = make_folders(tmp_path)
    with pytest.raises(DataError, match="pigment_network"):
        score_task2_folders(pred_dir, truth_dir, ["pigment_network"])


def run_evaluate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return evaluate.run(parser.parse_args(argv))


def test_evaluate_json_matches_the_official_scorer(task2_folders, capsys):
    truth_dir, pred_dir, _ = task2_folders
    assert run_evaluate([str(pred_dir), str(truth_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {*ATTRIBUTES, "micro_average", "macro_average"}
    assert_scores_equal(printed, task2.score(truth_dir, pred_dir))


def test_evaluate_table_labels_micro_and_macro(task2_folders, capsys):
    truth_dir, pred_dir, _ = task2_folders
    assert run_evaluate([str(pred_dir), str(truth_dir), "--attributes", "globules,streaks"]) == 0
    table = capsys.readouterr().out
    assert table.strip() == format_scores(score_task2_folders(pred_dir, truth_dir, ["globules", "streaks"]))
    assert "| streaks | 1.0000 | 1.0000 |" in table and "milia_like_cyst" not in table
    assert 'micro average** (leaderboard "overall")' in table and "macro average** (mean of attributes" in table
