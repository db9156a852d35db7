"""`tatl predict` and `tatl export` on one tiny trained run: official-format masks the ISIC scorer accepts, reports,
overlays, bad files, the frozen-encoder fast path, flip TTA, ONNX agreement with PyTorch, unsafe ids."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tatl import cli
from tatl.checkpoints import load_checkpoint
from tatl.commands.predict import OutputOptions, check_image_id, describe, predict_image
from tatl.config import load_config
from tatl.data.dataset import normalize
from tatl.data.images import read_image
from tatl.errors import DataError
from tatl.models import build_model
from tatl.predict import Networks, Predictor, load_predictor, settings_from_config

ATTRIBUTES = ["pigment_network", "globules"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """32-pixel networks gain nothing from a second thread, and lose 100x when the other core is busy (measured on
    the shared 2-core machine: OpenMP workers waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A TATL-FE run (variant 1,2,3, U + Link, two attributes) trained for one epoch on 16 tiny synthetic images."""
    run = tmp_path_factory.mktemp("predict") / "run"
    settings = ["synth.n=16", "synth.size=64", "train.epochs=1", "train.batch_size=16", "data.stage1_size=32",
                "data.image_size=32", "model.encoder_name=tu-resnet10t", f"data.attributes=[{','.join(ATTRIBUTES)}]"]
    args = ["run", "synthetic", "--out", str(run), "--config", "demo", "--variants", "1,2,3"]
    assert cli.main(args + [arg for setting in settings for arg in ("--set", setting)]) == 0
    return run


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    """The run loaded once for the library-level tests (loading takes seconds)."""
    return load_predictor(run_dir)


def with_tta(predictor: Predictor) -> Predictor:
    return Predictor(predictor.settings, predictor.networks, predictor.engine, predictor.source, tta=True)


def synthetic_images(run_dir: Path, folder: Path, count: int, suffix: str = ".png") -> list[Path]:
    """Copies of the run's synthetic images (PNG: lossless, so flips are exact)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((run_dir / "synthetic-data" / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))[:count]
    paths = [folder / (source.stem + suffix) for source in sources]
    for source, path in zip(sources, paths, strict=True):
        Image.open(source).save(path)
    return paths


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L", path
        return np.asarray(image)


def test_isic_sample_masks_are_scored_by_the_official_scorer(run_dir, isic_sample, tmp_path, capsys):
    task2 = pytest.importorskip("isic_challenge_scoring.task2")
    images = isic_sample / "ISIC2018_Task1-2_Training_Input"
    truth = isic_sample / "ISIC2018_Task2_Training_GroundTruth_v3"
    out = tmp_path / "out"
    code = cli.main(["predict", str(run_dir), str(images), "--out", str(out), "--truth", str(truth),
                     "--overlays", "--overlay-size", "256"])
    assert code == 0
    ids = sorted(path.stem for path in images.glob("*.jpg"))
    for image_id in ids:
        for name in [*(f"attribute_{a}" for a in ATTRIBUTES), "segmentation", "abnormal"]:
            mask = read_png(out / f"{image_id}_{name}.png")
            assert mask.shape == (767, 1022) and set(np.unique(mask)) <= {0, 255}
        with Image.open(out / "overlays" / f"{image_id}.png") as overlay:  # image, prediction, 2 truth panels
            assert overlay.mode == "RGB" and overlay.width > 4 * 200
    official = task2.score(truth, out)  # the reference scorer reads OUT as is, with its other files
    ours = json.loads((out / "scores.json").read_text())
    for key in ("pigment_network", "micro_average"):
        assert ours[key]["jaccard"] == pytest.approx(official[key]["jaccard"], abs=1e-9)
        assert ours[key]["dice"] == pytest.approx(official[key]["dice"], abs=1e-9)
    assert f"{official['pigment_network']['jaccard']:.4f}" in capsys.readouterr().out
    report = json.loads((out / "predictions.json").read_text())
    assert sorted(report["images"]) == ids and report["failed"] == {}
    assert report["settings"]["variant"] == "1,2,3" and report["settings"]["shapes"] == ["unet", "linknet"]
    for record in report["images"].values():
        assert record["area_reference"] in ("lesion", "image")
        for summary in [record["abnormal"], *record["attributes"].values()]:
            assert 0 <= summary["area_fraction"] <= 1 and 0 <= summary["max_probability"] <= 1
            assert summary["present"] == (summary["max_probability"] > 0.5)


def test_bad_files_are_named_and_skipped(run_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    good = synthetic_images(run_dir, folder, 2, ".jpg")
    (folder / "truncated.jpg").write_bytes(good[0].read_bytes()[:300])
    (folder / "notes.jpg").write_text("not an image")
    (folder / "README.txt").write_text("ignored: not an image suffix")
    shutil.copy(good[0], folder / "x\\..\\..\\evil.jpg")  # a Windows path in a Linux file name
    out = tmp_path / "nested" / "out"
    assert cli.main(["predict", str(run_dir), str(folder), "--out", str(out), "--tta", "--probabilities"]) == 1
    err = capsys.readouterr().err
    assert "truncated.jpg" in err and "notes.jpg" in err and "would write outside" in err and "README" not in err
    report = json.loads((out / "predictions.json").read_text())
    assert sorted(report["images"]) == sorted(p.stem for p in good) and report["tta"] is True
    assert sorted(Path(p).name for p in report["failed"]) == ["notes.jpg", "truncated.jpg", "x\\..\\..\\evil.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "nested"]
    probabilities = read_png(out / "probabilities" / f"{good[0].stem}_attribute_pigment_network.png")
    assert probabilities.dtype == np.uint8 and len(np.unique(probabilities)) > 2  # a map, not a mask
    assert not list(out.glob(".*.tmp")) and not (out / "truncated_attribute_globules.png").exists()


def test_no_image_is_a_clear_error(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", str(run_dir), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG broken")
    assert cli.main(["predict", str(run_dir), str(tmp_path / "bad"), "--out", str(tmp_path / "o")]) == 2
    assert "none of its 1 image file(s)" in capsys.readouterr().err
    assert cli.main(["predict", str(run_dir), str(tmp_path / "bad"), "--out", str(tmp_path / "o"),
                     "--variant", "2,3"]) == 2
    assert "trained variant(s) 1,2,3" in capsys.readouterr().err


def test_frozen_encoder_fast_path_equals_separate_networks(run_dir, predictor, tmp_path):
    image = synthetic_images(run_dir, tmp_path, 1)[0]
    shared = predictor
    separate = load_predictor(run_dir, share_encoders=False)
    for shape in ("unet", "linknet"):  # one encoder pass feeds union + every attribute: bit-identical encoders
        assert [n.names for n in shared.networks.targets[shape]] == [["union", *ATTRIBUTES]]
        assert [n.names for n in separate.networks.targets[shape]] == [["union"], *([a] for a in ATTRIBUTES)]
    fast, slow = shared.predict(image), separate.predict(image)
    assert fast.box == slow.box and fast.maps.keys() == slow.maps.keys()
    for name in fast.maps:
        np.testing.assert_allclose(fast.maps[name], slow.maps[name], atol=1e-6)
    # ...and the same as the plain single network `tatl run` saved for that attribute.
    network = build_model("unet", "tu-resnet10t").eval()
    network.load_state_dict(load_checkpoint(run_dir / "stage3-v123" / "unet" / "globules" / "best.pt")["model"])
    x = normalize(read_image(image, (32, 32), box=fast.box))[None]
    with torch.no_grad():
        expected = torch.sigmoid(network(x))[0, 0].numpy()
    np.testing.assert_allclose(shared.networks.targets["unet"][0](x)["globules"][0], expected, atol=1e-6)


def test_flip_tta_is_flip_equivariant(run_dir, predictor, tmp_path):
    image = synthetic_images(run_dir, tmp_path, 1)[0]
    flipped = tmp_path / "flipped.png"
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    plain = predictor.predict(image)
    original, mirrored = with_tta(predictor).predict(image), with_tta(predictor).predict(flipped)
    width = original.size[0]
    assert mirrored.box == (width - original.box[2], original.box[1], width - original.box[0], original.box[3])
    for name in ATTRIBUTES:
        assert not np.allclose(original.maps[name], plain.maps[name])  # TTA changes the answer...
        # ...into one that does not depend on the image's orientation (up to resampling round-off).
        np.testing.assert_allclose(mirrored.maps[name], original.maps[name][:, ::-1], atol=2e-3)


def test_onnx_export_agrees_with_torch(run_dir, predictor, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    export = tmp_path / "onnx"
    assert cli.main(["export", str(run_dir), "--onnx", str(export)]) == 0
    manifest = json.loads((export / "manifest.json").read_text())
    assert sorted(e["file"] for e in manifest["networks"]) == ["stage1_unet.onnx", "stage23_linknet.onnx",
                                                               "stage23_unet.onnx"]
    assert manifest["settings"]["attributes"] == ATTRIBUTES and manifest["input"]["size_multiple"] == 32
    images = synthetic_images(run_dir, tmp_path / "in", 2)
    torch_predictor, onnx_predictor = predictor, load_predictor(export)
    assert onnx_predictor.engine == "onnx"
    for image in images:
        expected, actual = torch_predictor.predict(image), onnx_predictor.predict(image)
        assert actual.box == expected.box
        for name in expected.maps:
            np.testing.assert_allclose(actual.maps[name], expected.maps[name], atol=1e-4)
            differing = np.count_nonzero((actual.full_size(name) > 0.5) != (expected.full_size(name) > 0.5))
            assert differing <= 5, (image.name, name, differing)
    assert cli.main(["predict", str(export), str(images[0]), "--out", str(tmp_path / "o"), "--engine", "onnx"]) == 0
    assert cli.main(["predict", str(run_dir), str(images[0]), "--out", str(tmp_path / "o"), "--engine", "onnx"]) == 2
    assert "tatl export" in capsys.readouterr().err


@pytest.mark.parametrize("image_id", ["..", ".", "", "../evil", "a/b", "a\\b", "/etc/passwd", "x\0y"])
def test_unsafe_ids_are_refused(image_id):
    with pytest.raises(DataError, match="outside the output folder"):
        check_image_id(image_id)
    assert check_image_id("ISIC_0000000") == "ISIC_0000000" and check_image_id("lesion 3 (left)")


def test_area_fraction_is_the_share_of_the_lesion():
    lesion = np.zeros((4, 4), bool)
    lesion[:2] = True  # 8 pixels
    attribute = np.zeros((4, 4), bool)
    attribute[1:] = True  # 4 pixels inside the lesion, 8 outside
    assert describe(attribute, 0.9, lesion) == {"present": True, "area_fraction": 0.5, "max_probability": 0.9}
    assert describe(attribute, 0.9, None)["area_fraction"] == 0.75  # no lesion: share of the image
    assert describe(np.zeros((4, 4), bool), 0.2, lesion)["present"] is False


def test_variant_without_stages_1_and_2_writes_attributes_only(run_dir, predictor, tmp_path):
    """The code path of variant 3 (no lesion, no abnormal region): the whole image goes to the Stage-3 networks."""
    full = predictor
    networks = Networks([], {shape: nets for shape, nets in full.networks.targets.items()})
    predictor = Predictor(replace(full.settings, variant="3"), networks, "torch", run_dir)
    image = synthetic_images(run_dir, tmp_path / "in", 1)[0]
    out = tmp_path / "out"
    record = predict_image(predictor, image, image.stem, OutputOptions(out, True, 256, False, None))
    assert record["area_reference"] == "image" and "lesion" not in record
    assert sorted(p.name for p in out.glob("*.png")) == [f"{image.stem}_attribute_{a}.png" for a in sorted(ATTRIBUTES)]
    assert (out / "overlays" / f"{image.stem}.png").is_file()


def test_tuned_thresholds_of_the_ensemble_are_used(run_dir):
    config = load_config(run_dir / "config.yaml")
    tuned = {"tuned": True, "variants": {"1,2,3": {"unet": {"globules": 0.9}, "ensemble": {"globules": 0.3}}}}
    settings = settings_from_config(config, None, tuned)
    assert settings.threshold_for("globules") == 0.3 and settings.threshold_for("union") == 0.5
    untuned = settings_from_config(config, None, {**tuned, "tuned": False})
    assert untuned.threshold_for("globules") == 0.5
