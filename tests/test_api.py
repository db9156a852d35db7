"""The Python API: the example of docs/python-api.md runs as written; `tatl.train` is what `tatl run` calls; a
prediction is the same from a path, a PIL image and an array, and is what `tatl predict` writes; bad input is a
one-line DataError; `import tatl` imports no torch; every run keeps RUN/log.txt."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tatl
import tatl.api
from tatl import cli
from tatl.data.isic import INPUT_DIR
from tatl.data.sources import FileImage, MemoryImage, image_source
from tatl.errors import ConfigError, DataError
from tatl.layout import RunLayout

README = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"  # the docs' Python API page (was README's)
RUN = Path("runs/api-demo")  # where README's example writes, relative to the folder it runs in


def readme_example() -> str:
    """The first Python code block of the docs' "Python API" page (docs/python-api.md)."""
    return re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> dict:
    """README's example, run once as written in a fresh folder: what it printed and its run folder."""
    folder, printed = tmp_path_factory.mktemp("readme"), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(folder)
        exec(compile(readme_example(), str(README), "exec"), {"__name__": "__main__"})  # noqa: S102 - README's code
    return {"printed": printed.getvalue(), "run": folder / RUN}


@pytest.fixture(scope="module")
def model(example) -> tatl.api.Model:
    return tatl.load(example["run"])


@pytest.fixture(scope="module")
def png(example, tmp_path_factory) -> Path:
    """A synthetic image of the run saved losslessly: path, PIL and array input hold the very same pixels."""
    path = tmp_path_factory.mktemp("png") / "photo.png"
    jpeg = sorted((example["run"] / "synthetic-data" / INPUT_DIR).glob("*.jpg"))[3]
    Image.open(jpeg).convert("RGB").save(path)
    return path


def test_readme_example_trains_loads_and_predicts(example):
    run = example["run"]
    for name in ("config.yaml", "metrics.json", "summary.md", "report.html", "log.txt", "stage3-v123/unet/globules"):
        assert (run / name).exists(), name
    lines = example["printed"].splitlines()
    assert json.loads((run / "metrics.json").read_text())["variant 1,2,3"]["unet"]["macro_average"]["jaccard"] \
        == pytest.approx(ast.literal_eval(lines[0])["jaccard"])  # the dict the example printed
    found = [line for line in lines if line.startswith("lesion box")]
    assert len(found) == 2 and found[0] == found[1]  # the path and the array agree on the box and attributes found


def test_the_run_log_holds_what_the_run_said(example):
    log = (example["run"] / "log.txt").read_text()
    assert f"wrote {RUN / 'metrics.json'} and {RUN / 'summary.md'}" in log
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO +tatl\.api: wrote .*report\.html", log, re.MULTILINE)


def test_a_png_gives_the_same_prediction_from_its_path_a_pil_image_and_an_array(model, png):
    """JPEG differs (README): a path is draft-decoded at a reduced scale, an image in memory is decoded in full."""
    from_path = model.predict(png)
    with Image.open(png) as opened:
        from_pil = model.predict(opened)
    from_array = model.predict(np.asarray(Image.open(png)))
    assert from_path.lesion is not None and from_path.abnormal is not None
    assert from_path.lesion.shape == (48, 64) and from_path.lesion.dtype == np.float32
    for other in (from_pil, from_array):
        assert other.box == from_path.box and other.size == from_path.size == (64, 48)
        for name in ("lesion", "abnormal"):
            np.testing.assert_array_equal(getattr(other, name), getattr(from_path, name))
        assert other.attributes.keys() == from_path.attributes.keys() == {"pigment_network", "globules"}
        for name, probabilities in from_path.attributes.items():
            np.testing.assert_array_equal(other.attributes[name], probabilities)
        assert other.masks.keys() == from_path.masks.keys() == {"lesion", "abnormal", "pigment_network", "globules"}
        for name, mask in from_path.masks.items():
            np.testing.assert_array_equal(other.masks[name], mask)


def test_a_jpeg_in_memory_is_the_same_from_pil_and_from_its_array(model, example):
    jpeg = sorted((example["run"] / "synthetic-data" / INPUT_DIR).glob("*.jpg"))[0]
    with Image.open(jpeg) as opened:
        from_pil = model.predict(opened)
    from_array = model.predict(np.asarray(Image.open(jpeg)))
    for name, probabilities in from_pil.attributes.items():
        np.testing.assert_array_equal(from_array.attributes[name], probabilities)


def test_the_masks_are_those_tatl_predict_writes(model, png, tmp_path, capsys):
    out = tmp_path / "predicted"
    assert cli.main(["predict", str(model.predictor.source), str(png), "--out", str(out)]) == 0
    result = model.predict(png)
    files = {"lesion": "photo_segmentation.png", "abnormal": "photo_abnormal.png",
             **{name: f"photo_attribute_{name}.png" for name in result.attributes}}
    for name, file in files.items():
        np.testing.assert_array_equal(np.asarray(Image.open(out / file)) == 255, result.masks[name], err_msg=name)
    record = json.loads((out / "predictions.json").read_text())["images"]["photo"]
    assert record["lesion"]["box"] == list(result.box)
    assert [name for name, found in record["attributes"].items() if found["present"]] == result.present


@pytest.mark.parametrize(("image", "reason"), [
    (np.zeros((8, 8, 3), np.float32), "image array of dtype float32: expected uint8"),
    (np.zeros((8, 8), np.uint8), "image array of shape (8, 8): expected (height, width, 3), RGB (greyscale"),
    (np.zeros((8, 8, 4), np.uint8), "image array of shape (8, 8, 4): expected (height, width, 3), RGB (RGBA"),
    (np.zeros((0, 8, 3), np.uint8), "image array of shape (0, 8, 3): the image has no pixels"),
    ([[0, 0, 0]], "image of type list: expected a path"),
])
def test_a_bad_array_or_object_is_a_one_line_data_error(model, image, reason):
    with pytest.raises(DataError) as raised:
        model.predict(image)
    assert str(raised.value).startswith(reason) and "\n" not in str(raised.value)


def test_a_missing_or_corrupt_file_is_a_data_error_naming_it(model, tmp_path):
    missing, corrupt = tmp_path / "missing.png", tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg at all")
    for path, reason in ((missing, "file not found"), (corrupt, "not an image Pillow can read")):
        with pytest.raises(DataError, match=re.escape(f"{path}: {reason}")):
            model.predict(str(path))


def test_in_memory_images_follow_the_file_rules(tmp_path):
    """Modes are converted or refused as for files; sources of a PNG file and its pixels read the same crops."""
    transparent = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    with pytest.raises(DataError, match="PIL image: RGBA image with 64 transparent pixels"):
        image_source(transparent)
    grey = Image.new("L", (8, 6), 77)
    assert image_source(grey).read().shape == (6, 8, 3)
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    file, memory = image_source(path), image_source(np.asarray(Image.open(path)))
    assert isinstance(file, FileImage) and isinstance(memory, MemoryImage) and file.size == memory.size == (40, 30)
    np.testing.assert_array_equal(file.read((16, 16), box=(3, 4, 33, 25)), memory.read((16, 16), box=(3, 4, 33, 25)))
    with pytest.raises(DataError, match=r"image array: crop box \(0, 0, 50, 10\) is empty or outside"):
        memory.read((8, 8), box=(0, 0, 50, 10))


def test_the_cli_runs_tatl_train(monkeypatch, tmp_path, capsys):
    """`tatl run` parses its arguments and calls tatl.train (the same function: hence the same run), then prints
    the summary it returns."""
    assert tatl.train is tatl.api.train
    calls = []

    def recorded(*args, **kwargs):
        calls.append((args, kwargs))
        return tatl.api.TrainedRun(tmp_path, {}, "# the summary")

    monkeypatch.setattr(tatl.api, "train", recorded)
    argv = ["run", "synthetic", "--out", str(tmp_path), "--config", "demo", "--set", "train.epochs=2",
            "--set", "synth.n=12", "--variants", "3", "1,3", "--stages", "1,2,3", "--device", "cpu", "--compile"]
    assert cli.main(argv) == 0
    assert calls == [(("synthetic", tmp_path, "demo"), {
        "overrides": ["train.epochs=2", "synth.n=12"], "resume": False, "stages": "1,2,3", "variants": ["3", "1,3"],
        "device": "cpu", "compile": True, "segment_net": None})]
    assert capsys.readouterr().out == "# the summary\n"


def test_overrides_as_a_mapping_read_back_exactly():
    from tatl.config import load_config
    from tatl.pipeline.train import override_list

    overrides = override_list({"train.lr": 1e-5, "train.epochs": 3, "model.shapes": ["unet"], "data.fold": None,
                               "train.augment": False, "model.encoder_name": "tu-resnet10t"}, ["3"], "cpu", False)
    config = load_config("demo", overrides)
    assert (config.train.lr, config.train.epochs, config.model.shapes, config.data.fold, config.train.augment) == (
        1e-5, 3, ["unet"], None, False)
    assert (config.model.encoder_name, config.pipeline.variants, config.train.device) == ("tu-resnet10t", ["3"], "cpu")
    with pytest.raises(ConfigError, match="give a list of strings or a mapping"):
        override_list("train.epochs=3", None, None, False)


def test_a_run_stopped_by_its_checks_logs_why_and_the_next_attempt_appends(tmp_path):
    from tatl.data.synth import write_synthetic_dataset

    data, run = tmp_path / "data", tmp_path / "run"
    write_synthetic_dataset(data, n=8, size=64, seed=0)
    for attempt in (1, 2):
        with pytest.raises(ConfigError, match="data.attributes: no image"):
            tatl.train(data, run, config="demo", overrides={"data.attributes": ["globulez"]})
        lines = RunLayout(run).log.read_text().splitlines()
        assert sum("run stopped: ConfigError: data.attributes: no image" in line for line in lines) == attempt
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml", "log.txt"]


def test_import_tatl_imports_no_torch():
    heavy = ("torch", "numpy", "PIL", "tatl.pipeline", "tatl.inference")
    script = ("import sys, tatl; assert callable(tatl.train) and callable(tatl.load) and tatl.__version__; "
              f"print(sorted(m for m in {heavy} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert "train" in dir(tatl) and "PredictedImage" in tatl.__all__
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        tatl.nothing  # noqa: B018


@pytest.mark.slow
def test_tatl_run_with_the_readme_settings_gives_the_readme_metrics(example, tmp_path, capsys):
    """The whole way round: the CLI on README's settings writes the metrics the API run wrote, bit for bit."""
    code = readme_example()
    settings = re.search(r"overrides=\{(.*?)\}\)", code, re.DOTALL).group(1)
    overrides = ast.literal_eval("{" + settings + "}")
    args = ["run", "synthetic", "--out", str(tmp_path / "cli"), "--config", "demo", "--variants", "1,2,3"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    assert cli.main(args) == 0
    assert (tmp_path / "cli" / "metrics.json").read_bytes() == (example["run"] / "metrics.json").read_bytes()
    assert capsys.readouterr().out.startswith(f"# TATL run {tmp_path / 'cli'}")
