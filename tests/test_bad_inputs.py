"""Every bad input is a clear error: one line naming the file or key and the reason, exit code 2, no traceback.

Each case writes a real broken file (cut bytes, zero bytes, text named .png, a 16-bit PNG ...) into a small valid
synthetic dataset, or passes a broken setting, and drives the command line entry point `tatl.cli.main`; a few run
as `python -m tatl` subprocesses to show that no traceback reaches the terminal (and that `--debug` shows one).
Data problems: `check-data` lists every one of them (exit 1, the file named) and `tatl run` on the same data stops
before training (exit 2, the file named, no stage folder). Unit tests of the same checks live in test_check_data.py,
test_config.py and test_models.py; these go through the command line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_cli_settings
from PIL import Image

from tatl.cli import main
from tatl.data.isic import ATTRIBUTE_DIR, INPUT_DIR, LESION_DIR
from tatl.data.synth import write_synthetic_dataset
from tatl.errors import ConfigError

# The session's tiny settings (the synth.* keys do not apply: the data is written here) with the demo preset's shapes
# and attributes, so that every mask is read (a missing streaks mask, say); ONE_NETWORK: U-Net, one attribute.
TINY = ["--config", "demo", *tiny_cli_settings(drop=("model.shapes", "data.attributes"))]
ONE_NETWORK = ["--config", "demo", *tiny_cli_settings({"data.attributes": ["pigment_network"]}), "--variants", "3"]
ID = "ISIC_0000000"
NETWORK_DIR = Path("stage3-v3/unet/pigment_network")  # the one network of a ONE_NETWORK run


@pytest.fixture(autouse=True)
def restore_pixel_limit():
    """Pillow's decompression-bomb limit is process-wide and `data.max_image_pixels` sets it."""
    previous = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = previous


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """8 valid 64x48 images with lesion and five attribute masks, in the official ISIC 2018 folders."""
    root = tmp_path / "data"
    write_synthetic_dataset(root, n=8, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run folder) of a finished one-network run: the checkpoints the resume cases break."""
    base = tmp_path_factory.mktemp("finished")
    data = base / "data"
    write_synthetic_dataset(data, n=8, size=64, seed=0)
    assert main(["run", str(data), "--out", str(base / "run"), *ONE_NETWORK]) == 0
    return data, base / "run"


def cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str, command: str, *needles: str) -> str:
    """stderr is exactly one line, `tatl COMMAND: error: ...`, holding every needle."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tatl {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def last_error_line(err: str, command: str, *needles: str) -> str:
    """For errors after progress output: no traceback, and the last line is the one error line."""
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"tatl {command}: error: ") and err.count(f"tatl {command}: error: ") == 1, err
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def nothing_trained(run: Path) -> bool:
    return not (run / "splits.json").exists() and not list(run.glob("stage*")) and not (run / "cache").exists()


# --- broken data files -------------------------------------------------------------------------------------------


def image(root: Path, image_id: str = ID) -> Path:
    return root / INPUT_DIR / f"{image_id}.jpg"


def attribute_mask(root: Path, name: str = "pigment_network", image_id: str = ID) -> Path:
    return root / ATTRIBUTE_DIR / f"{image_id}_attribute_{name}.png"


def lesion_mask(root: Path, image_id: str = ID) -> Path:
    return root / LESION_DIR / f"{image_id}_segmentation.png"


def as_png(root: Path, picture: Image.Image, **options) -> Path:
    """Replace the JPEG of ID by a PNG of the same id."""
    image(root).unlink()
    path = image(root).with_suffix(".png")
    picture.save(path, **options)
    return path


def photo(root: Path) -> Image.Image:
    with Image.open(image(root)) as picture:
        return picture.convert("RGB")


def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def zero_bytes(root: Path) -> Path:
    image(root).write_bytes(b"")
    return image(root)


def text_named_png(root: Path) -> Path:
    image(root).unlink()
    path = image(root).with_suffix(".png")
    path.write_text("lesion notes, not a picture\n")
    return path


def rgba_with_transparency(root: Path) -> Path:
    picture = photo(root).convert("RGBA")
    picture.putpixel((0, 0), (0, 0, 0, 0))
    return as_png(root, picture)


def palette_with_transparency(root: Path) -> Path:
    picture = photo(root).convert("P")
    return as_png(root, picture, transparency=picture.getpixel((0, 0)))


def grey_16_bit(root: Path) -> Path:
    return as_png(root, Image.fromarray(np.full((48, 64), 40000, dtype=np.uint16)))


def mask_of_the_wrong_size(root: Path) -> Path:
    Image.new("L", (32, 24)).save(attribute_mask(root))
    return attribute_mask(root)


def mask_with_other_values(root: Path) -> Path:
    values = np.zeros((48, 64), dtype=np.uint8)
    values[10:20, 10:30] = 128
    Image.fromarray(values).save(attribute_mask(root))
    return attribute_mask(root)


def mask_with_3_channels(root: Path) -> Path:
    with Image.open(attribute_mask(root)) as mask:
        mask.convert("RGB").save(attribute_mask(root))
    return attribute_mask(root)


def missing_mask(root: Path) -> Path:
    attribute_mask(root, "streaks").unlink()
    return image(root)


def image_without_masks(root: Path) -> Path:
    for path in [lesion_mask(root), *(root / ATTRIBUTE_DIR).glob(f"{ID}_attribute_*")]:
        path.unlink()
    return image(root)


def mask_without_image(root: Path) -> Path:
    image(root).unlink()
    return lesion_mask(root)


def duplicate_id(root: Path) -> Path:
    path = image(root).with_suffix(".png")
    photo(root).save(path)
    return path


def empty_folder(root: Path) -> Path:
    shutil.rmtree(root)
    root.mkdir()
    return root


DATA_ERRORS: list[tuple[str, Callable[[Path], Path], str]] = [
    ("truncated JPEG", lambda root: cut_in_half(image(root)), "truncated image data"),
    ("zero-byte image", zero_bytes, "empty file (0 bytes)"),
    ("text file named .png", text_named_png, "not an image Pillow can read"),
    ("RGBA with transparent pixels", rgba_with_transparency, "1 transparent pixels"),
    ("palette with a transparent colour", palette_with_transparency, "transparent pixels"),
    ("16-bit greyscale image", grey_16_bit, "16-bit greyscale image (mode I;16)"),
    ("mask of the wrong size", mask_of_the_wrong_size, "mask is 32x24 but its image is 64x48"),
    ("mask with values outside 0 and 255", mask_with_other_values, "values other than 0 and 255"),
    ("mask with 3 channels", mask_with_3_channels, "3-channel mask"),
    ("truncated mask", lambda root: cut_in_half(lesion_mask(root)), "truncated"),
    ("missing mask", missing_mask, f"missing attribute masks: {ID}_attribute_streaks.png"),
    ("image without masks", image_without_masks, f"no lesion mask ({ID}_segmentation.png)"),
    ("mask without image", mask_without_image, "mask without an image"),
    ("duplicate id", duplicate_id, f"id '{ID}' is also claimed by {ID}.jpg"),
    ("empty folder", empty_folder, "no image found"),
]


@pytest.mark.parametrize(("mutate", "reason"), [case[1:] for case in DATA_ERRORS], ids=[c[0] for c in DATA_ERRORS])
def test_data_error_is_listed_by_check_data_and_stops_run_before_training(data, tmp_path, capsys, mutate, reason):
    named = mutate(data)
    code, out, err = cli(capsys, "check-data", data, "--need-lesion")  # the checks `tatl run` makes
    assert code == 1 and err == ""
    assert any(line.startswith(f"{named}: ") and reason in line for line in out.splitlines()), out
    errors = int(re.search(r"(\d+) errors, \d+ notes", out).group(1))

    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", data, "--out", run, *TINY)
    assert code == 2 and "Traceback" not in err
    if errors == 1:  # one problem, one line
        one_line_error(err, "run", str(named), reason)
    else:  # several: the count on the first line, then one line per file
        assert err.startswith(f"tatl run: error: {data}: {errors} data errors"), err
        assert any(line.startswith(f"  {named}: ") and reason in line for line in err.splitlines()), err
    assert nothing_trained(run)


def rgb_16_bit_png(root: Path) -> Path:
    """A 48-bit RGB PNG, written by hand: Pillow cannot write one."""
    row = b"\x00" + np.full((64, 3), 40000, dtype=">u2").tobytes()  # filter byte 0, then big-endian samples

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 64, 48, 16, 2, 0, 0, 0)  # 16 bits per sample, colour type 2 (RGB)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * 48)) + chunk(b"IEND", b"")
    image(root).unlink()
    image(root).with_suffix(".png").write_bytes(png)
    return image(root).with_suffix(".png")


def exif_rotated(root: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    photo(root).save(image(root), exif=exif.tobytes())
    return image(root)


def saved_as(mode: str, suffix: str = ".png") -> Callable[[Path], Path]:
    def mutate(root: Path) -> Path:
        picture = photo(root).convert(mode)
        if suffix == ".jpg":
            picture.save(image(root))
            return image(root)
        return as_png(root, picture)

    return mutate


# Unusual but usable images: converted to RGB (or read as stored) with a note saying how, exit code 0.
DATA_NOTES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("grey", saved_as("L", ".jpg"), "greyscale image (mode L): converted to RGB"),
    ("CMYK", saved_as("CMYK", ".jpg"), "CMYK image: converted to RGB"),
    ("palette", saved_as("P"), "palette image (mode P): converted to RGB"),
    ("bilevel", saved_as("1"), "bilevel image (mode 1): converted to RGB"),
    ("opaque RGBA", saved_as("RGBA"), "RGBA image, fully opaque: alpha channel dropped"),
    ("16-bit RGB", rgb_16_bit_png, "16-bit RGB image: read as 8-bit (high byte"),
    ("EXIF-rotated", exif_rotated, "EXIF orientation 6: not applied, masks refer to the stored pixels"),
]


@pytest.mark.parametrize(("mutate", "note"), [case[1:] for case in DATA_NOTES], ids=[c[0] for c in DATA_NOTES])
def test_unusual_images_are_used_with_a_note(data, capsys, mutate, note):
    named = mutate(data)
    code, out, _ = cli(capsys, "check-data", data, "--need-lesion")
    assert code == 0 and f"{named}: note: {note}" in out, out
    assert "0 errors, 1 notes" in out


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets tatl's filter
def test_decompression_bomb_limit_set_for_a_run_names_the_image_and_how_to_raise_it(data, tmp_path, capsys):
    big = photo(data).resize((128, 96))
    big.save(image(data))
    for mask in [lesion_mask(data), *(data / ATTRIBUTE_DIR).glob(f"{ID}_attribute_*")]:
        with Image.open(mask) as small:
            small.resize((128, 96), Image.Resampling.NEAREST).save(mask)
    assert cli(capsys, "check-data", data, "--need-lesion")[0] == 0  # valid under Pillow's default limit
    # 128x96 = 12288 pixels: over 10000 (our check) and over twice 5000 (Pillow's own error): both say the same.
    default = Image.MAX_IMAGE_PIXELS
    for limit in (10000, 5000):
        run = tmp_path / f"run-{limit}"
        code, _, err = cli(capsys, "run", data, "--out", run, *TINY, "--set", f"data.max_image_pixels={limit}")
        assert code == 2 and "Traceback" not in err and nothing_trained(run)
        assert err.startswith(f"tatl run: error: {data}: 7 data errors"), err  # the image and its 6 masks
        line = next(line for line in err.splitlines() if line.strip().startswith(str(image(data))))
        assert f"decompression-bomb limit of {limit}" in line and "data.max_image_pixels" in line, line
        assert "12288 pixels" in line and "--max-image-pixels" in line
        assert Image.MAX_IMAGE_PIXELS == default, "a run's limit is its own: Pillow's is put back after it"


def test_unknown_attribute_is_named_before_training_and_the_folder_can_be_reused(data, tmp_path, capsys):
    run = tmp_path / "run"
    for attempt in range(2):  # the same command again: the folder holds only the config of a run that never started
        code, _, err = cli(capsys, "run", data, "--out", run, *TINY, "--set", "data.attributes=[globulez]")
        assert code == 2
        lines = err.strip().splitlines()
        if attempt:
            assert lines.pop(0).startswith(f"warning: {run} holds only the config.yaml of a run that stopped before")
        one_line_error("\n".join(lines), "run", "data.attributes: no image", "globulez", f"{ID}_attribute_globulez.png",
                       "has masks for globules, milia_like_cyst, negative_network, pigment_network, streaks")
        assert nothing_trained(run)


def test_missing_dataset_folder_or_a_file_instead_of_one(data, tmp_path, capsys):
    for path, reason in ((tmp_path / "nowhere", "dataset folder does not exist"), (image(data), "is a file")):
        code, _, err = cli(capsys, "check-data", path)
        assert code == 2
        one_line_error(err, "check-data", str(path), reason)
        code, _, err = cli(capsys, "run", path, "--out", tmp_path / "run", *TINY)
        assert code == 2
        one_line_error(err, "run", str(path), reason)
        assert not (tmp_path / "run").exists()


def test_full_disk_while_caching_names_the_cache_folder_and_the_way_out(data, tmp_path, capsys, monkeypatch):
    import tatl.data.cache

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tatl.data.cache.np, "save", no_space)  # the first decoded images written to RUN/cache
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", data, "--out", run, *ONE_NETWORK)
    assert code == 2
    last_error_line(err, "run", str(run / "cache"), "disk full", "data.cache=false")
    assert list((run / "cache").iterdir()) == [] and not list(run.rglob("*.pt"))  # no partial entry, no training


# --- settings ----------------------------------------------------------------------------------------------------

CONFIG_ERRORS: list[tuple[str, list[str], list[str]]] = [
    ("unknown key", ["--set", "train.epochz=3"], ["--set: unknown key 'train.epochz'", "known: epochs"]),
    ("unknown section", ["--set", "training.epochs=3"], ["unknown key 'training'", "known: data, model"]),
    ("wrong type", ["--set", "train.epochs=many"], ["train.epochs must be int, got 'many'"]),
    ("wrong type in a list", ["--set", "model.shapes=5"], ["model.shapes must be list[str], got 5"]),
    ("negative epochs", ["--set", "train.epochs=-1"], ["train.epochs must be >= 1, got -1"]),
    ("infinite learning rate", ["--set", "train.lr=.inf"], ["train.lr must be a finite number > 0, got inf"]),
    ("negative weight decay", ["--set", "train.weight_decay=-0.1"], ["train.weight_decay must be a finite number"]),
    ("integer too large", ["--set", f"train.batch_size={10**30}"], ["train.batch_size is too large"]),
    ("zero pixel limit", ["--set", "data.max_image_pixels=0"], ["data.max_image_pixels must be a number of pixels"]),
    ("attribute name with a slash", ["--set", "data.attributes=[a/b]"], ["data.attributes: 'a/b' is not a valid"]),
    ("unknown variant", ["--variants", "2"], ["pipeline.variants: unknown variant '2'"]),
    ("--set without =", ["--set", "train.epochs"], ["--set 'train.epochs': expected section.key=value"]),
    ("--set without a section", ["--set", "epochs=3"], ["--set 'epochs=3': key must be section.key"]),
    ("--set value that is not YAML", ["--set", "train.epochs=[1"], ["'train.epochs=[1': value is not valid YAML"]),
    ("unknown preset", ["--config", "fast"], ["fast: not a config file or a preset (presets: demo, isic-cpu, paper)"]),
    ("missing config file", ["--config", "{tmp}/missing.yaml"], ["missing.yaml: config file not found"]),
    ("config file that is a folder", ["--config", "{tmp}"], ["is a folder, not a YAML config file"]),
    ("YAML syntax error", ["--config", "{tmp}/syntax.yaml"], ["syntax.yaml: cannot read YAML"]),
    ("config that is a list", ["--config", "{tmp}/list.yaml"], ["list.yaml: expected a mapping of sections"]),
    ("section that is not a mapping", ["--config", "{tmp}/section.yaml"], ["section.yaml: train must be a mapping"]),
    ("config key of the wrong type", ["--config", "{tmp}/type.yaml"], ["type.yaml: train.lr must be float"]),
    ("unknown encoder name", ["--set", "model.encoder_name=resnet9000"], ["unknown encoder_name 'resnet9000'"]),
    ("unknown encoder weights", ["--set", "model.encoder_weights=imagenet22k"], ["encoder_weights 'imagenet22k'"]),
    ("missing weights file", ["--set", "model.encoder_weights={tmp}/w.pt"], ["w.pt: encoder weights file not found"]),
    ("lite0 weights on another encoder", ["--set", "model.encoder_weights=lite0"], ["fit encoder_name"]),
]
CONFIG_FILES = {
    "syntax.yaml": "train:\n  epochs: [1, 2\n",
    "list.yaml": "- train\n- model\n",
    "section.yaml": "train: 5\n",
    "type.yaml": "train:\n  lr: fast\n",
}


@pytest.mark.parametrize(("args", "needles"), [case[1:] for case in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_bad_setting_is_one_line_naming_the_key_and_creates_no_run_folder(data, tmp_path, capsys, args, needles):
    for name, text in CONFIG_FILES.items():
        (tmp_path / name).write_text(text)
    run = tmp_path / "run"
    code, _, err = cli(capsys, "run", data, "--out", run, *TINY, *(a.format(tmp=tmp_path) for a in args))
    assert code == 2
    one_line_error(err, "run", *(needle.format(tmp=tmp_path) for needle in needles))
    assert not run.exists()  # checked before the run folder is made, let alone the data read


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_asked_for_without_a_gpu(data, tmp_path, capsys):
    code, _, err = cli(capsys, "run", data, "--out", tmp_path / "run", *TINY, "--device", "cuda")
    assert code == 2
    one_line_error(err, "run", "train.device=cuda", "no CUDA GPU")
    assert not (tmp_path / "run").exists()


# --- run folders and checkpoints ---------------------------------------------------------------------------------


def test_output_path_that_is_a_file_or_below_one(data, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("not a folder")
    for out, reason in ((target, "output path exists and is a file"), (target / "run", "cannot create the run folder")):
        code, _, err = cli(capsys, "run", data, "--out", out, *TINY)
        assert code == 2
        one_line_error(err, "run", str(out), reason)
    code, _, err = cli(capsys, "run", data, "--out", target, "--resume")
    assert code == 2
    one_line_error(err, "run", str(target), "output path exists and is a file, not a folder")
    assert target.read_text() == "not a folder"


@pytest.mark.slow
def test_resume_starts_a_new_run_and_takes_only_its_own_config(finished_run, tmp_path, capsys):
    """One command line starts a long run and continues it after a stop (nnU-Net's --c): --resume on a folder
    that does not exist yet starts the run; --config then must say what the run was started with."""
    data, run = finished_run
    new = tmp_path / "new"
    assert cli(capsys, "run", data, "--out", new, "--resume", *ONE_NETWORK)[0] == 0
    assert (new / "metrics.json").is_file()
    scores = json.loads((new / "metrics.json").read_text())
    assert scores == json.loads((run / "metrics.json").read_text())  # the same run as without --resume
    assert cli(capsys, "run", data, "--out", new, "--resume", *ONE_NETWORK)[0] == 0  # the same command continues it
    assert json.loads((new / "metrics.json").read_text()) == scores
    code, _, err = cli(capsys, "run", data, "--out", run, "--resume", "--config", "demo")
    assert code == 2
    one_line_error(err, "run", str(run / "config.yaml"), "as --config says", "drop --config")


@pytest.mark.parametrize(
    "args",
    [
        [],  # an existing run folder without --resume
        ["--resume", "--set", "model.encoder_name=resnet18"],  # another architecture for the run's checkpoints
        ["--resume", "--set", "model.encoder_name=tu-resnet14t"],  # same family, other shapes
        ["--resume", "--set", "data.image_size=64"],
        ["--resume", "--set", "pipeline.encoder_mode=trainable"],
        ["--resume", "--set", "data.val_fraction=0.5"],
    ],
    ids=["no --resume", "resnet18", "tu-resnet14t", "image_size", "encoder_mode", "val_fraction"],
)
def test_a_finished_run_is_neither_overwritten_nor_resumed_with_other_networks(finished_run, capsys, args):
    data, run = finished_run
    before = snapshot(run)
    code, _, err = cli(capsys, "run", data, "--out", run, *(args or TINY))
    assert code == 2
    if not args:
        one_line_error(err, "run", str(run), "use --resume", "nothing was overwritten")
    else:
        key, value = args[-1].split("=")
        one_line_error(err, "run", f"--resume: {key} is", str(run / "config.yaml"), value, "start a new run")
    assert snapshot(run) == before


def tensor_state_only(path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)  # a plain state dict, not a tatl checkpoint


@pytest.mark.parametrize(
    ("name", "corrupt", "reason"),
    [
        ("last.pt", cut_in_half, "cannot load checkpoint: the file is truncated or damaged"),
        ("best.pt", cut_in_half, "cannot load checkpoint: the file is truncated or damaged"),
        ("last.pt", lambda path: path.write_bytes(b""), "cannot load checkpoint: empty file (0 bytes)"),
        ("last.pt", tensor_state_only, "not a tatl checkpoint (no 'model' state of tensors)"),
    ],
    ids=["truncated last.pt", "truncated best.pt", "empty last.pt", "foreign last.pt"],
)
def test_damaged_checkpoint_on_resume_is_named(finished_run, tmp_path, capsys, name, corrupt, reason):
    data, finished = finished_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    if name == "last.pt":  # an interrupted network resumes from last.pt; a finished one reloads best.pt
        (run / NETWORK_DIR / "done.json").unlink()
    corrupt(run / NETWORK_DIR / name)
    code, _, err = cli(capsys, "run", data, "--out", run, "--resume")
    assert code == 2
    last_error_line(err, "run", str(run / NETWORK_DIR / name), reason)


def test_weights_of_another_architecture_are_refused_before_the_data_is_read(finished_run, tmp_path, capsys):
    data, run = finished_run
    best = run / NETWORK_DIR / "best.pt"  # a tu-resnet10t network
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", data, "--out", out, *ONE_NETWORK, "--set", "model.encoder_name=resnet18",
                       "--set", f"model.encoder_weights={best}")
    assert code == 2
    one_line_error(err, "run", str(best), "weights do not fit the encoder", "missing: conv1.weight")
    assert not out.exists()


# --- export and predict of a broken run -------------------------------------------------------------------------


def another_architecture(path: Path) -> None:
    """A tatl-shaped checkpoint of a Link network where the run's U network belongs."""
    from tatl.models.networks import build_model

    torch.save({"model": build_model("linknet", "tu-resnet10t").state_dict(), "epoch": 0}, path)


BROKEN_RUNS: list[tuple[str, Callable[[Path], object], str]] = [
    ("truncated best.pt", cut_in_half, "cannot load checkpoint: the file is truncated or damaged"),
    ("empty best.pt", lambda path: path.write_bytes(b""), "cannot load checkpoint: empty file (0 bytes)"),
    ("best.pt of another architecture", another_architecture, "does not fit the 'pigment_network' network"),
    ("best.pt missing", lambda path: path.unlink(), "checkpoint not found"),
]


@pytest.mark.parametrize(("corrupt", "reason"), [c[1:] for c in BROKEN_RUNS], ids=[c[0] for c in BROKEN_RUNS])
def test_export_and_predict_name_the_broken_checkpoint_and_write_nothing(finished_run, tmp_path, capsys, corrupt,
                                                                         reason):
    data, finished = finished_run
    run = tmp_path / "run"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns(".lock"))
    best = run / NETWORK_DIR / "best.pt"
    corrupt(best)
    out = tmp_path / "predictions"
    out.mkdir()  # an existing output folder, so "nothing written" is visible
    code, _, err = cli(capsys, "predict", run, data / INPUT_DIR, "--out", out, "--overlays")
    assert code == 2
    one_line_error(err, "predict", str(best), reason)
    assert list(out.iterdir()) == []
    pytest.importorskip("onnxruntime")
    onnx_dir = tmp_path / "onnx"
    code, _, err = cli(capsys, "export", run, "--onnx", onnx_dir)
    assert code == 2
    one_line_error(err, "export", str(best), reason)
    assert not onnx_dir.exists()  # not even an empty folder


def test_export_refuses_a_folder_that_is_not_a_run(data, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    for model, reason in ((data, "neither a run folder (config.yaml) nor an ONNX export"),
                          (tmp_path / "nowhere", "does not exist: expected a run folder"),
                          (image(data), "is a file, not a run folder")):
        code, _, err = cli(capsys, "export", model, "--onnx", tmp_path / "onnx")
        assert code == 2
        one_line_error(err, "export", str(model), reason)
    assert not (tmp_path / "onnx").exists()


def test_export_to_a_file_or_below_one_is_refused_before_loading(finished_run, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    import tatl.inference.predictor

    def not_loaded(*args, **kwargs):
        raise AssertionError("the run was loaded before its output path was checked")

    monkeypatch.setattr(tatl.inference.predictor, "load_predictor", not_loaded)
    _, run = finished_run
    target = tmp_path / "file.onnx"
    target.write_text("not a folder")
    for out, reason in ((target, "output path exists and is a file, not a folder"),
                        (target / "sub" / "onnx", f"cannot create the output folder ({target} is a file)")):
        code, _, err = cli(capsys, "export", run, "--onnx", out)
        assert code == 2
        one_line_error(err, "export", str(out), reason)
    assert target.read_text() == "not a folder"


# --- evaluate, synth, params -------------------------------------------------------------------------------------

PREDICTION = f"{ID}_attribute_streaks.png"
EVALUATE_ERRORS: list[tuple[str, Callable[[Path], object], str]] = [
    ("missing prediction", lambda p: (p / PREDICTION).unlink(), f"have no prediction in {{p}}: {PREDICTION}"),
    ("size mismatch", lambda p: Image.new("L", (32, 24)).save(p / PREDICTION), f"{{p}}/{PREDICTION} is 32x24"),
    ("RGB prediction", lambda p: Image.new("RGB", (64, 48)).save(p / PREDICTION), f"{{p}}/{PREDICTION} is not single"),
    ("16-bit prediction", lambda p: Image.fromarray(np.zeros((48, 64), np.uint16)).save(p / PREDICTION), "'I;16'"),
    ("truncated prediction", lambda p: cut_in_half(p / PREDICTION), f"{{p}}/{PREDICTION} cannot be decoded"),
    ("empty prediction folder", lambda p: [f.unlink() for f in p.iterdir()], "{p} holds no <image>_attribute_"),
    ("missing prediction folder", lambda p: shutil.rmtree(p), "{p} does not exist"),
]


@pytest.mark.parametrize(("mutate", "reason"), [c[1:] for c in EVALUATE_ERRORS], ids=[c[0] for c in EVALUATE_ERRORS])
def test_evaluate_names_the_prediction_and_the_reason(data, tmp_path, capsys, mutate, reason):
    truth, predictions = data / ATTRIBUTE_DIR, tmp_path / "predictions"
    shutil.copytree(truth, predictions)
    assert cli(capsys, "evaluate", predictions, truth)[0] == 0  # the truth scores itself
    mutate(predictions)
    code, out, err = cli(capsys, "evaluate", predictions, truth)
    assert code == 2 and out == ""
    one_line_error(err, "evaluate", str(predictions), reason.format(p=predictions))


def test_evaluate_unknown_attribute(data, capsys):
    truth = data / ATTRIBUTE_DIR
    code, _, err = cli(capsys, "evaluate", truth, truth, "--attributes", "globulez")
    assert code == 2
    one_line_error(err, "evaluate", "['globulez'] have no mask in truth folder", str(truth))


def test_synth_and_params_refuse_bad_arguments(data, tmp_path, capsys):
    code, _, err = cli(capsys, "synth", image(data), "--n", "2", "--size", "64")
    assert code == 2
    one_line_error(err, "synth", str(image(data)), "is a file")
    code, _, err = cli(capsys, "synth", data / INPUT_DIR, "--n", "2", "--size", "64")
    assert code == 2
    one_line_error(err, "synth", "not a tatl synthetic dataset", "nothing was overwritten")
    code, _, err = cli(capsys, "params", "--backbones", "resnet9000")
    assert code == 2
    one_line_error(err, "params", "unknown encoder_name 'resnet9000'")


# --- the terminal: no traceback unless --debug -------------------------------------------------------------------


def test_debug_shows_the_traceback(data, tmp_path):
    argv = ["run", str(data), "--out", str(tmp_path / "run"), "--set", "train.epochz=3"]
    for debug in (["--debug", *argv], [argv[0], "--debug", *argv[1:]]):  # before or after the command
        with pytest.raises(ConfigError, match="unknown key 'train.epochz'"):
            main(debug)


@pytest.mark.slow  # four interpreters started at once: seconds of start-up, nothing trained
def test_no_traceback_reaches_the_terminal(data, tmp_path):
    """Real processes, as a user runs them; started together to share the interpreter start-up time."""
    truth, predictions = data / ATTRIBUTE_DIR, tmp_path / "predictions"
    shutil.copytree(truth, predictions)
    Image.new("L", (32, 24)).save(predictions / f"{ID}_attribute_streaks.png")
    cases = {
        "run": ["run", str(data), "--out", str(tmp_path / "run"), "--set", "train.epochz=3"],
        "check-data": ["check-data", str(tmp_path / "nowhere")],
        "evaluate": ["evaluate", str(predictions), str(truth)],
        "debug": ["--debug", "run", str(data), "--out", str(tmp_path / "run"), "--set", "train.epochz=3"],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    processes = {name: subprocess.Popen([sys.executable, "-m", "tatl", *argv], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env) for name, argv in cases.items()}
    results = {name: (process.wait(timeout=120), *process.communicate()) for name, process in processes.items()}
    for name in ("run", "check-data", "evaluate"):
        code, out, err = results[name]
        assert code == 2 and out == "", (name, out, err)
        one_line_error(err, name)
    code, _, err = results["debug"]
    assert code == 1 and "Traceback (most recent call last)" in err and "ConfigError: --set: unknown key" in err
    assert not (tmp_path / "run").exists()
