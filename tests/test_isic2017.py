"""ISIC 2017 Part 2: superpixel maps and features JSONs in, conversion to the 2018 layout, official 2017 scoring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_cli_settings
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from tatl.cli import main
from tatl.config import Config, load_config
from tatl.constants import ATTRIBUTES_2017
from tatl.data.checks import check_dataset
from tatl.data.isic import ATTRIBUTE_DIR, INPUT_DIR, find_samples
from tatl.data.isic2017 import (
    CONVERSION_STAMP,
    SUPERPIXELS_INDEX,
    check_isic2017,
    convert_to_isic2018_layout,
    is_isic2017,
    rasterize,
    read_feature_values,
    read_features,
    read_superpixels,
    superpixel_means,
    write_features_json,
    write_superpixels,
)
from tatl.data.synth import ISIC2017_DIRS, render_sample, write_synthetic_isic2017
from tatl.errors import ConfigError, DataError
from tatl.metrics.isic2017 import pooled_scores, predictions_to_features, score_isic2017
from tatl.pipeline.context import attributes_for_data
from tatl.pipeline.setup import resolve_data

IMAGES, LESIONS, FEATURES = ISIC2017_DIRS


@pytest.fixture(scope="module")
def synthetic2017(tmp_path_factory) -> Path:
    """Four synthetic images, 64 x 48 px, in the official ISIC 2017 layout (read-only: copy it to break it)."""
    root = tmp_path_factory.mktemp("isic2017") / "data"
    write_synthetic_isic2017(root, n=4, size=64, seed=1)
    return root


@pytest.fixture
def dataset(synthetic2017, tmp_path) -> Path:
    """A copy of the synthetic dataset that a test may damage."""
    return Path(shutil.copytree(synthetic2017, tmp_path / "data"))


def error_paths(report) -> list[Path]:
    return [problem.path for problem in report.errors()]


# ----------------------------------------------------------------------------------------------- file formats
def test_superpixel_index_is_red_plus_256_green_plus_65536_blue(tmp_path):
    rgb = np.array([[[0, 0, 0], [255, 0, 0]], [[4, 1, 0], [7, 17, 2]]], np.uint8)  # 0, 255, 260, 7 + 4352 + 131072
    Image.fromarray(rgb).save(tmp_path / "hand_superpixels.png")
    assert read_superpixels(tmp_path / "hand_superpixels.png").tolist() == [[0, 255], [260, 135431]]
    labels = np.array([[0, 65535], [65536, 2**24 - 1]])
    write_superpixels(tmp_path / "big_superpixels.png", labels)
    assert np.array_equal(read_superpixels(tmp_path / "big_superpixels.png"), labels)


def test_features_json_writer_and_reader(tmp_path):
    path = tmp_path / "ISIC_0000001_features.json"
    labels = {name: np.array([k % 2 == 0, True, False]) for k, name in enumerate(ATTRIBUTES_2017)}
    write_features_json(path, labels)
    assert json.loads(path.read_text())["streaks"] == [0, 1, 0]  # ints, as the official files have
    assert list(json.loads(path.read_text())) == sorted(ATTRIBUTES_2017)
    assert all(np.array_equal(read_features(path)[name], labels[name]) for name in ATTRIBUTES_2017)
    write_features_json(path, {name: [0.25, 1.0, 0.0] for name in ATTRIBUTES_2017})  # replaced atomically
    assert read_feature_values(path)["pigment_network"].tolist() == [0.25, 1.0, 0.0]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_rasterize_and_superpixel_means():
    superpixels = np.array([[0, 0, 1], [2, 2, 1]])
    assert rasterize(superpixels, [False, True, True]).tolist() == [[False, False, True], [True, True, True]]
    means = superpixel_means(superpixels, np.array([[0.2, 0.4, 1.0], [0.0, 0.5, 0.0]]))
    assert np.allclose(means, [0.3, 0.5, 0.25])
    features = predictions_to_features({"streaks": np.array([[0.2, 0.4, 1.0], [0.0, 0.5, 0.0]])}, superpixels)
    assert np.allclose(features["streaks"], [0.3, 0.5, 0.25])


def test_synthetic_labels_rasterise_back_to_the_masks_where_superpixels_are_pure(synthetic2017):
    for index in range(4):
        name = f"ISIC_{index:07d}"
        sample = render_sample(index, seed=1, size=64)
        superpixels = read_superpixels(synthetic2017 / IMAGES / f"{name}_superpixels.png")
        labels = read_features(synthetic2017 / FEATURES / f"{name}_features.json")
        assert superpixels.shape == sample.lesion.shape and len(labels["streaks"]) == superpixels.max() + 1
        for attribute in ATTRIBUTES_2017:
            mask, share = sample.attributes[attribute], superpixel_means(superpixels, sample.attributes[attribute])
            pure = np.isin(share, (0.0, 1.0))[superpixels]
            assert np.array_equal(rasterize(superpixels, labels[attribute])[pure], mask[pure])
            assert np.array_equal(labels[attribute], share > 0.5)  # positive: more than half of its pixels


def test_synthetic_2017_is_deterministic(tmp_path):
    for out in ("a", "b"):
        write_synthetic_isic2017(tmp_path / out, n=2, size=48, seed=5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


# ---------------------------------------------------------------------------------------- layout and checking
def test_layout_detection(synthetic2017, tmp_path):
    assert is_isic2017(synthetic2017)
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in synthetic2017.rglob("ISIC_0000000*"):
        shutil.copy(path, flat / path.name)
    assert is_isic2017(flat)
    assert not is_isic2017(synthetic2017 / IMAGES) and not is_isic2017(tmp_path / "missing")
    report = check_isic2017(flat)
    assert len(report.samples) == 1 and report.samples[0].lesion_mask_path is not None and not report.errors()


def test_check_reports_a_clean_dataset(synthetic2017):
    report = check_isic2017(synthetic2017)
    assert not report.problems and len(report.samples) == 4 and report.sizes["ISIC_0000000"] == (64, 48)
    assert "ISIC 2017 official folders (Training)" in report.summary_table()
    assert report.mask_stats["pigment_network"][0] == 4


def test_every_inconsistency_is_an_error_naming_its_file(dataset):
    json_of = {i: dataset / FEATURES / f"ISIC_000000{i}_features.json" for i in range(4)}
    short = json.loads(json_of[0].read_text())
    json_of[0].write_text(json.dumps({k: v[:-1] for k, v in short.items()}))  # one label fewer than superpixels
    json_of[1].write_text(json.dumps({**json.loads(json_of[1].read_text()), "globules": [0]}))
    odd = json.loads(json_of[2].read_text())
    json_of[2].write_text(json.dumps({**odd, "streaks": [0.5] * len(odd["streaks"])}))
    json_of[3].write_text("{not json")
    superpixels = dataset / IMAGES / "ISIC_0000001_superpixels.png"
    write_superpixels(superpixels, np.zeros((10, 10), np.int64))  # not the image's 64 x 48
    (dataset / IMAGES / "ISIC_0000009.jpg").write_bytes((dataset / IMAGES / "ISIC_0000000.jpg").read_bytes())
    (dataset / FEATURES / "ISIC_0000042_features.json").write_text("{}")
    report = check_isic2017(dataset)
    reasons = {str(problem) for problem in report.errors()}
    expected = {json_of[0]: "labels per feature but", json_of[1]: "unknown key(s) globules",
                json_of[2]: "values other than 0 and 1", json_of[3]: "cannot read it as JSON",
                superpixels: "superpixel map is 10x10 but its image is 64x48",
                dataset / IMAGES / "ISIC_0000009.jpg": "no superpixel map",
                dataset / FEATURES / "ISIC_0000042_features.json": "without an image"}
    for path, reason in expected.items():
        assert any(r.startswith(str(path)) and reason in r for r in reasons), (path, reason, reasons)
    with pytest.raises(DataError, match="ISIC_0000000_features.json"):
        convert_to_isic2018_layout(dataset, dataset.parent / "converted")


def test_missing_features_file_and_unreadable_superpixels(dataset):
    (dataset / FEATURES / "ISIC_0000002_features.json").unlink()
    (dataset / IMAGES / "ISIC_0000003_superpixels.png").write_bytes(b"")
    errors = [str(p) for p in check_isic2017(dataset).errors()]
    assert any("ISIC_0000002.jpg" in e and "no features file (ISIC_0000002_features.json)" in e for e in errors)
    assert any("ISIC_0000003_superpixels.png" in e and "cannot decode" in e for e in errors)


def test_check_data_command_on_2017_folders(synthetic2017, dataset, capsys):
    assert main(["check-data", str(synthetic2017)]) == 0
    assert "| streaks |" in capsys.readouterr().out
    (dataset / FEATURES / "ISIC_0000001_features.json").write_text("[]")
    assert main(["check-data", str(dataset)]) == 1
    assert "ISIC_0000001_features.json: the JSON is not an object" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- conversion
def test_conversion_feeds_the_2018_pipeline_and_is_idempotent(synthetic2017, tmp_path):
    out = convert_to_isic2018_layout(synthetic2017, tmp_path / "converted")
    samples = find_samples(out, ATTRIBUTES_2017)
    assert [s.image_id for s in samples] == [f"ISIC_{i:07d}" for i in range(4)]
    assert samples[0].image_path.is_symlink() and samples[0].image_path.resolve().parent.name == IMAGES
    assert not check_dataset(out, ATTRIBUTES_2017, need_lesion=True).errors()
    superpixels = json.loads((out / SUPERPIXELS_INDEX).read_text())
    for sample in samples:
        sp = read_superpixels(Path(superpixels[sample.image_id]))
        labels = read_features(synthetic2017 / FEATURES / f"{sample.image_id}_features.json")
        with Image.open(sample.attribute_mask_paths["streaks"]) as mask:
            assert np.array_equal(np.asarray(mask) == 255, rasterize(sp, labels["streaks"]))
    stamp = (out / CONVERSION_STAMP).stat().st_mtime_ns
    mask = out / ATTRIBUTE_DIR / "ISIC_0000000_attribute_streaks.png"
    mask.unlink()  # a skipped conversion would not notice: proves nothing is rewritten
    convert_to_isic2018_layout(synthetic2017, out)
    assert (out / CONVERSION_STAMP).stat().st_mtime_ns == stamp and not mask.exists()


def test_conversion_is_redone_when_inputs_change_and_refuses_foreign_folders(dataset, tmp_path):
    out = convert_to_isic2018_layout(dataset, tmp_path / "converted")
    shutil.rmtree(dataset / LESIONS)
    convert_to_isic2018_layout(dataset, out)
    assert not any((out / "ISIC2018_Task1_Training_GroundTruth").iterdir()) and (out / INPUT_DIR).is_dir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a tatl conversion"):
        convert_to_isic2018_layout(dataset, foreign)


def test_resolve_data_converts_and_switches_to_the_2017_features(synthetic2017, tmp_path, capsys):
    config = attributes_for_data(str(synthetic2017), Config())  # while the config is resolved, before it is saved
    assert config.data.attributes == list(ATTRIBUTES_2017) and "data.attributes set" in capsys.readouterr().err
    root = resolve_data(str(synthetic2017), tmp_path / "run", config)
    assert root == tmp_path / "run" / "isic2017-converted" and (root / CONVERSION_STAMP).exists()
    assert config.data.attributes == list(ATTRIBUTES_2017)  # resolving the data changes no config value
    config.data.attributes = ["globules", "streaks"]
    with pytest.raises(ConfigError, match="globules"):
        resolve_data(str(synthetic2017), tmp_path / "run", config)


def test_several_official_splits_are_refused(synthetic2017, tmp_path):
    root = Path(shutil.copytree(synthetic2017, tmp_path / "data"))
    (root / "ISIC-2017_Validation_Data").mkdir()
    with pytest.raises(DataError, match="several splits"):
        check_isic2017(root)


# ---------------------------------------------------------------------------------------------------- scoring
def write_predictions(folder: Path, truth_root: Path, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    folder.mkdir()
    predictions = {}
    for path in sorted((truth_root / FEATURES).glob("*_features.json")):
        labels = read_features(path)
        noisy = {n: np.clip(v * 0.6 + rng.random(v.size) * 0.5, 0, 1) for n, v in labels.items()}
        write_features_json(folder / path.name, noisy)
        predictions[path.name] = (labels, noisy)
    return predictions


def test_pooled_auc_and_ap_equal_sklearn_on_the_pooled_superpixels(synthetic2017, tmp_path):
    pairs = write_predictions(tmp_path / "pred", synthetic2017, np.random.default_rng(0))
    scores = score_isic2017(tmp_path / "pred", synthetic2017)
    for name in ("pigment_network", "milia_like_cyst"):
        truth = np.concatenate([labels[name] for labels, _ in pairs.values()])
        prediction = np.concatenate([noisy[name] for _, noisy in pairs.values()])
        row = scores["features"][name]
        assert row["roc_auc"] == pytest.approx(roc_auc_score(truth, prediction))
        assert row["average_precision"] == pytest.approx(average_precision_score(truth, prediction))
        assert row["accuracy"] == pytest.approx(np.mean(truth == (prediction > 0.5)))
        assert row["superpixels"] == truth.size and row["positive_superpixels"] == truth.sum()
    assert np.isnan(scores["features"]["streaks"]["roc_auc"])  # no streak in these four images
    assert any(note.startswith("streaks: no positive") for note in scores["notes"])
    assert scores["rasterised"]["macro_average"]["jaccard"] == pytest.approx(scores["mean"]["jaccard"])
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    for path in (synthetic2017 / FEATURES).iterdir():
        shutil.copy(path, perfect / path.name)
    best = score_isic2017(perfect, synthetic2017 / FEATURES)  # the Part 2 folder: superpixels found beside it
    assert best["features"]["pigment_network"]["roc_auc"] == 1.0 and best["rasterised"]["micro_average"]["dice"] == 1.0


def test_hand_made_pooled_scores():
    scores, notes = pooled_scores(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert scores["roc_auc"] == pytest.approx(0.75) and scores["average_precision"] == pytest.approx(5 / 6)
    assert (scores["accuracy"], scores["sensitivity"], scores["specificity"]) == (0.75, 0.5, 1.0) and not notes
    scores, notes = pooled_scores(np.array([1, 1]), np.array([0.9, 0.2]))
    assert np.isnan(scores["roc_auc"]) and np.isnan(scores["specificity"]) and "no negative" in notes[0]


def test_prediction_errors_name_the_file(synthetic2017, tmp_path):
    pred = tmp_path / "pred"
    write_predictions(pred, synthetic2017, np.random.default_rng(1))
    first = pred / "ISIC_0000000_features.json"
    values = json.loads(first.read_text())
    first.write_text(json.dumps({**values, "streaks": values["streaks"][:-1]}))
    with pytest.raises(DataError, match=r"ISIC_0000000_features.json: feature 'streaks' has \d+ values but"):
        score_isic2017(pred, synthetic2017)
    first.write_text(json.dumps({**values, "streaks": [1.5] * len(values["streaks"])}))
    with pytest.raises(DataError, match=r"ISIC_0000000_features.json: feature 'streaks' has values outside"):
        score_isic2017(pred, synthetic2017)
    shutil.copy(pred / "ISIC_0000001_features.json", pred / "ISIC_0000001.json")
    with pytest.raises(DataError, match="duplicated prediction for ISIC_0000001"):
        score_isic2017(pred, synthetic2017)
    for path in pred.glob("ISIC_0000001*"):
        path.unlink()
    with pytest.raises(DataError, match="ISIC_0000001_features.json"):
        score_isic2017(pred, synthetic2017)


def test_evaluate_command_prints_2017_scores(synthetic2017, tmp_path, capsys):
    write_predictions(tmp_path / "pred", synthetic2017, np.random.default_rng(2))
    assert main(["evaluate", "--format", "isic2017", str(tmp_path / "pred"), str(synthetic2017), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)  # strict JSON: undefined scores are null
    assert set(scores["features"]) == set(ATTRIBUTES_2017) and scores["features"]["streaks"]["roc_auc"] is None
    assert main(["evaluate", "--format", "isic2017", str(tmp_path / "pred"), str(synthetic2017)]) == 0
    table = capsys.readouterr().out
    assert "| **mean** |" in table and "ROC AUC" in table and "rasterised" in table


def test_synth_command_writes_the_2017_layout(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "d"), "--format", "isic2017", "--n", "2", "--size", "48"]) == 0
    assert "isic2017 layout" in capsys.readouterr().out and is_isic2017(tmp_path / "d")


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_run_on_2017_data_scores_the_four_features(synthetic2017, tmp_path):
    data = tmp_path / "data"
    write_synthetic_isic2017(data, n=10, size=48, seed=0)
    run = tmp_path / "run"
    # the session's tiny settings (synth.* do not apply: the data is written here), the attributes left to the data
    code = main(["run", str(data), "--out", str(run), "--config", "demo", "--variants", "1,2,3",
                 *tiny_cli_settings(drop=("data.attributes",))])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    scores = metrics["variant 1,2,3"]["unet"]
    assert set(scores) - {"micro_average", "macro_average"} == set(ATTRIBUTES_2017)
    assert load_config(run / "config.yaml").data.attributes == list(ATTRIBUTES_2017)  # saved once, resolved
    # predict writes the 2017 submission format next to the 2018 masks, and the 2017 scorer reads it
    from tatl.metrics.isic2017 import score_isic2017

    images = next(p for p in data.iterdir() if p.is_dir() and p.name.endswith("_Data"))
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(images), "--out", str(out)]) == 0
    assert len(list(out.glob("ISIC_*_features.json"))) == 10
    official = score_isic2017(out, data)
    assert set(official["features"]) == set(ATTRIBUTES_2017)
