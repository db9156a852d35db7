"""`tatl predict` and `tatl export` on one tiny trained run: official-format masks the ISIC scorer accepts, reports,
overlays (their pixels, on networks whose answer is known), bad files, the frozen-encoder fast path, flip TTA, ONNX
agreement with PyTorch (also at image and input sizes other than the training size), unsafe ids, and streaming: a
folder is predicted one image at a time, each image's arrays released before the next is read."""

from __future__ import annotations

import gc
import json
import re
import shutil
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN_SETTINGS, tiny_cli_settings
from PIL import Image, ImageDraw

from tatl import cli
from tatl.checkpoints import load_checkpoint
from tatl.config import load_config
from tatl.data.dataset import normalize
from tatl.data.images import read_image
from tatl.errors import DataError
from tatl.inference import overlays
from tatl.inference.outputs import OutputOptions, check_image_id, describe, predict_image
from tatl.inference.prediction_settings import PredictionSettings, settings_from_config
from tatl.inference.predictor import ImagePrediction, Networks, Predictor, load_predictor
from tatl.models.networks import build_model

ATTRIBUTES = TINY_RUN_SETTINGS["data.attributes"]  # pigment_network, globules
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A TATL-FE run (variant 1,2,3, U + Link, two attributes) trained for one epoch on 16 tiny synthetic images."""
    run = tmp_path_factory.mktemp("predict") / "run"
    settings = tiny_cli_settings({"synth.n": 16, "train.batch_size": 16}, drop=("model.shapes",))  # demo's U + Link
    assert cli.main(["run", "synthetic", "--out", str(run), "--config", "demo", "--variants", "1,2,3", *settings]) == 0
    return run


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    """The run loaded once for the library-level tests (loading takes seconds)."""
    return load_predictor(run_dir)


@pytest.fixture(scope="module")
def onnx_export(run_dir, tmp_path_factory) -> Path:
    """The run exported once with `tatl export` (each network is checked against PyTorch as it is written)."""
    pytest.importorskip("onnxruntime")
    export = tmp_path_factory.mktemp("export") / "onnx"
    assert cli.main(["export", str(run_dir), "--onnx", str(export)]) == 0
    return export


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_onnx_export_agrees_with_torch(run_dir, predictor, onnx_export, tmp_path, capsys):
    export = onnx_export
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


def assert_engines_agree(torch_predictor: Predictor, onnx_predictor: Predictor, image: Path) -> None:
    """Same box; every map within 1e-4 at the image's own size; masks equal except where PyTorch's probability is
    within 1e-4 of the threshold (where float round-off may tip a pixel either way)."""
    expected, actual = torch_predictor.predict(image), onnx_predictor.predict(image)
    with Image.open(image) as picture:
        size = picture.size
    assert actual.size == expected.size == size and actual.box == expected.box
    assert sorted(actual.maps) == sorted(expected.maps) == sorted(["lesion", "union", *ATTRIBUTES])
    for name in expected.maps:
        ours, theirs = expected.full_size(name), actual.full_size(name)
        assert ours.shape == theirs.shape == (size[1], size[0])
        np.testing.assert_allclose(theirs, ours, atol=1e-4, err_msg=f"{image.name} {name}")
        threshold = torch_predictor.settings.threshold_for(name)
        differing = (ours > threshold) != (theirs > threshold)
        assert np.all(np.abs(ours[differing] - threshold) <= 1e-4), (image.name, name, np.count_nonzero(differing))
        assert (ours > threshold).any() or name != "lesion"  # a real comparison: Stage 1 finds a lesion


@pytest.mark.slow
def test_onnx_networks_take_an_input_size_other_than_the_training_size(predictor, onnx_export):
    """Dynamic axes: a batch of 3 at 64x96 (trained at 32x32) gives the PyTorch probabilities within 1e-4."""
    onnx_predictor = load_predictor(onnx_export)
    pairs = list(zip(predictor.networks.stage1, onnx_predictor.networks.stage1, strict=True))
    for shape, networks in predictor.networks.targets.items():
        pairs += list(zip(networks, onnx_predictor.networks.targets[shape], strict=True))
    assert len(pairs) == 3  # stage 1, and the frozen encoder + 3 heads once per shape
    x = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    for ours, theirs in pairs:
        assert (ours.shape, ours.names) == (theirs.shape, theirs.names)
        expected, actual = ours(x), theirs(x)
        for name in ours.names:
            assert actual[name].shape == expected[name].shape == (3, 64, 96)
            np.testing.assert_allclose(actual[name], expected[name], atol=1e-4, err_msg=f"{ours.shape} {name}")


@pytest.mark.slow
def test_onnx_predicts_an_odd_sized_image_as_torch_does(run_dir, predictor, onnx_export, tmp_path):
    image = tmp_path / "odd.png"  # 333x251: neither the 64x48 training images nor a multiple of 32
    source = synthetic_images(run_dir, tmp_path / "in", 1)[0]
    Image.open(source).resize((333, 251), Image.Resampling.BICUBIC).save(image)
    assert_engines_agree(predictor, load_predictor(onnx_export), image)


@pytest.mark.slow
def test_onnx_on_real_1022x767_images_writes_the_masks_torch_writes(run_dir, predictor, onnx_export, isic_sample,
                                                                    tmp_path):
    images = sorted((isic_sample / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))[:2]
    onnx_predictor = load_predictor(onnx_export)
    for image in images:
        assert_engines_agree(predictor, onnx_predictor, image)
    folder = tmp_path / "in"
    folder.mkdir()
    for image in images:
        (folder / image.name).symlink_to(image)
    for model, out in ((run_dir, "torch"), (onnx_export, "onnx")):
        assert cli.main(["predict", str(model), str(folder), "--out", str(tmp_path / out), "--probabilities"]) == 0
    for image in images:
        for name in [*(f"attribute_{a}" for a in ATTRIBUTES), "segmentation", "abnormal"]:
            ours, theirs = read_png(tmp_path / "torch" / f"{image.stem}_{name}.png"), \
                read_png(tmp_path / "onnx" / f"{image.stem}_{name}.png")
            assert ours.shape == theirs.shape == (767, 1022)
            assert np.count_nonzero(ours != theirs) <= 5, (image.name, name)  # the written files, not just arrays
    report = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    assert report["engine"] == "onnx" and sorted(report["images"]) == [image.stem for image in images]


class KnownMaps:
    """A stand-in network whose probabilities are fixed (S, S) maps per head, whatever the image: overlays of a
    prediction known pixel for pixel."""

    shape = "unet"

    def __init__(self, maps: dict[str, np.ndarray]):
        self.maps, self.names = maps, list(maps)

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        return {name: np.repeat(m[None], len(x), axis=0) for name, m in self.maps.items()}


def test_overlay_pixels_show_truth_green_prediction_red_and_every_attribute_in_the_legend(tmp_path, monkeypatch):
    """The real `tatl predict --overlays --truth` path on a uniform grey 128x96 image, with networks whose answer is
    known: pigment_network predicted in the left half of a band, true in its middle half; globules predicted
    nowhere, true in a square. Overlay panel size 128: shown at 1:1."""
    grey, (width, height) = 128, (128, 96)
    image = tmp_path / "in" / "lesion 7.png"  # an id that is not ISIC_nnnnnnn keeps its stem
    image.parent.mkdir()
    Image.new("RGB", (width, height), (grey,) * 3).save(image)
    band = np.full((32, 32), 0.1, np.float32)
    band[8:24, :16] = 0.9  # full size: rows 24-71, columns 0-63
    known = KnownMaps({"pigment_network": band, "globules": np.full((32, 32), 0.2, np.float32)})
    settings = PredictionSettings("3", ATTRIBUTES, ["unet"], "unet", 32, 32, 0.5, 0, 0.005, "frozen", "tu-resnet10t")
    monkeypatch.setattr("tatl.inference.predictor.load_predictor", lambda *args, **kwargs: Predictor(
        settings, Networks([], {"unet": [known]}), "torch", tmp_path / "known"))
    truth = tmp_path / "truth"
    truth.mkdir()
    pigment, globules = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
    pigment[24:72, 32:96] = 255  # overlaps the prediction in columns 32-63
    globules[30:60, 100:124] = 255
    Image.fromarray(pigment).save(truth / "lesion 7_attribute_pigment_network.png")
    Image.fromarray(globules).save(truth / "lesion 7_attribute_globules.png")
    texts: list[str] = []
    draw_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **k: (
        texts.append(text), draw_text(self, xy, text, *a, **k))[1])
    out = tmp_path / "out"
    assert cli.main(["predict", str(tmp_path / "known"), str(image), "--out", str(out), "--overlays",
                     "--overlay-size", "128", "--truth", str(truth)]) == 0
    assert set(np.unique(read_png(out / "lesion 7_attribute_pigment_network.png")[24:72, 0:60])) == {255}
    with Image.open(out / "overlays" / "lesion 7.png") as picture:
        assert picture.mode == "RGB"
        sheet = np.asarray(picture).astype(int)

    # The layout of tatl.inference.overlays.render: title, then 4 panels in a row (image, prediction, one truth
    # panel per attribute) under their captions, then the legend.
    font_size = max(13, round(max(width, height) / 32))
    caption = font_size + overlays.PADDING
    top = caption + overlays.PADDING + caption - 4

    def panel(index: int) -> np.ndarray:
        left = overlays.PADDING + index * (width + overlays.PADDING)
        return sheet[top:top + height, left:left + width]

    assert np.all(panel(0) == grey)  # the image as it is: the geometry above is right
    assert np.all(sheet[top:top + height, overlays.PADDING - 1] == overlays.PAPER)
    assert sheet.shape[1] == 4 * (width + overlays.PADDING) + overlays.PADDING

    def tinted(base: float, colour) -> np.ndarray:
        return base * (1 - overlays.FILL_ALPHA) + np.array(colour) * overlays.FILL_ALPHA

    sky_blue = overlays.ATTRIBUTE_COLOURS["pigment_network"]
    np.testing.assert_allclose(panel(1)[48, 16], tinted(grey, sky_blue), atol=1)  # predicted: filled in its colour
    assert np.all(panel(1)[48, 100:] == grey) and np.all(panel(1)[:20] == grey)  # elsewhere untouched
    dimmed = int(grey * 0.8)  # truth panels dim the image
    pigment_panel, globules_panel = panel(2), panel(3)
    for (row, column), colour in [((48, 16), overlays.PREDICTED), ((48, 48), overlays.BOTH),
                                  ((48, 80), overlays.TRUTH)]:
        np.testing.assert_allclose(pigment_panel[row, column], tinted(dimmed, colour), atol=1, err_msg=str(colour))
    assert pigment_panel[48, 16].argmax() == 0 and pigment_panel[48, 80].argmax() == 1  # red, green
    assert np.all(pigment_panel[48, 100:] == dimmed) and np.all(pigment_panel[:20] == dimmed)
    np.testing.assert_allclose(globules_panel[45, 112], tinted(dimmed, overlays.TRUTH), atol=1)  # missed: green
    assert np.all(globules_panel[:25] == dimmed) and np.all(globules_panel[:, :95] == dimmed)  # no red anywhere

    legend = sheet[top + height:]  # below the panels: every attribute's swatch, and the three truth colours
    rows_of = {}
    for name, colour in [*((a, overlays.ATTRIBUTE_COLOURS[a]) for a in ATTRIBUTES), ("truth", overlays.TRUTH),
                         ("prediction", overlays.PREDICTED), ("both", overlays.BOTH)]:
        solid = np.all(legend == colour, axis=2)
        assert np.count_nonzero(solid) >= (font_size - 2) ** 2, name  # a filled square swatch
        rows_of[name] = np.nonzero(solid.any(axis=1))[0].mean()
    assert list(rows_of) == sorted(rows_of, key=rows_of.get)  # one line each, top to bottom in this order
    legend_texts = [t for t in texts if re.match(r"(pigment_network|globules): (present|absent)", t)]
    assert legend_texts[0].startswith("pigment_network: present, ") and "% of the image" in legend_texts[0]
    assert legend_texts[1] == "globules: absent (max p 0.20)" and len(legend_texts) == 2
    assert {"ground truth only", "prediction only", "both (correct)"} <= set(texts)
    (pigment_title,) = [t for t in texts if t.startswith("pigment_network: Jaccard ")]
    assert float(pigment_title.split()[-1]) == pytest.approx(1 / 3, abs=0.02)  # 32 of 96 columns shared
    assert "globules: Jaccard 0.00" in texts and any(t.startswith("lesion 7: whole image") for t in texts)


@pytest.mark.slow
def test_a_folder_is_streamed_one_image_at_a_time(run_dir, tmp_path, monkeypatch):
    """No image's prediction or full-size map outlives it: when image k is read, every array of image k-1 is freed
    (garbage collected) and its masks are already written. What bounds memory on a folder of thousands of large
    images, asserted without timing or measuring memory."""
    import tatl.io

    images = synthetic_images(run_dir, tmp_path / "in", 3)
    made: list[tuple[str, weakref.ref]] = []  # (image, weak reference) of every prediction and full-size map
    written: list[str] = []
    at_each_read: list[tuple[str, list[str], list[str]]] = []  # (image, still alive, written so far)
    predict, full_size, atomic_write = Predictor.predict, ImagePrediction.full_size, tatl.io.atomic_write

    def watched_predict(self, path):
        gc.collect()
        at_each_read.append((Path(path).stem, [stem for stem, ref in made if ref() is not None], list(written)))
        prediction = predict(self, path)
        made.append((Path(path).stem, weakref.ref(prediction)))
        made.extend((Path(path).stem, weakref.ref(m)) for m in prediction.maps.values())
        return prediction

    def watched_full_size(self, name):
        array = full_size(self, name)
        made.append((self.path.stem, weakref.ref(array)))
        return array

    monkeypatch.setattr(Predictor, "predict", watched_predict)
    monkeypatch.setattr(ImagePrediction, "full_size", watched_full_size)
    monkeypatch.setattr(tatl.io, "atomic_write", lambda path, write, *args, **kwargs: (
        written.append(Path(path).name), atomic_write(path, write, *args, **kwargs))[1])
    out = tmp_path / "out"
    assert cli.main(["predict", str(run_dir), str(tmp_path / "in"), "--out", str(out), "--probabilities",
                     "--overlays", "--overlay-size", "128"]) == 0
    stems = [image.stem for image in images]
    assert [stem for stem, _, _ in at_each_read] == stems  # each image read once, in order
    per_image = len(made) // len(stems)
    assert per_image >= 1 + 4 + 4  # the prediction, its lesion/union/attribute maps, as many full-size maps
    for index, (stem, alive, written_before) in enumerate(at_each_read):
        assert alive == [], f"{stem} read while arrays of {sorted(set(alive))} were alive"
        for earlier in stems[:index]:  # every file of the images before it already written
            assert {f"{earlier}_attribute_{a}.png" for a in ATTRIBUTES} | {f"{earlier}.png"} <= set(written_before)
        assert not any(name.startswith(stem) for name in written_before)
    gc.collect()
    assert [stem for stem, ref in made if ref() is not None] == []


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_tuned_thresholds_of_the_ensemble_are_used(run_dir):
    config = load_config(run_dir / "config.yaml")
    tuned = {"tuned": True, "variants": {"1,2,3": {"unet": {"globules": 0.9}, "ensemble": {"globules": 0.3}}}}
    settings = settings_from_config(config, None, tuned)
    assert settings.threshold_for("globules") == 0.3 and settings.threshold_for("union") == 0.5
    untuned = settings_from_config(config, None, {**tuned, "tuned": False})
    assert untuned.threshold_for("globules") == 0.5
