"""check-data on real broken files: every problem is reported with its file and a reason, and exit codes say it."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from tatl.cli import main
from tatl.data.checks import check_dataset, require_valid
from tatl.data.images import read_image, read_mask, set_max_image_pixels
from tatl.errors import DataError

W, H = 48, 32
ATTRIBUTES = ("streaks",)


@pytest.fixture(autouse=True)
def restore_pixel_limit():
    """Pillow's limit is process-wide: every test leaves it as it found it."""
    previous = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = previous


def photo(width: int = W, height: int = H, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 255, size=(3, 4, 3), dtype=np.uint8))
    return coarse.resize((width, height), Image.Resampling.BICUBIC).convert(mode)


def binary_mask(size: tuple[int, int] = (W, H)) -> Image.Image:
    values = np.zeros((size[1], size[0]), dtype=np.uint8)
    values[4:20, 6:30] = 255
    return Image.fromarray(values)


def add_sample(root: Path, image_id: str, image: Image.Image | None = None, suffix: str = ".jpg") -> Path:
    """An image with a valid lesion mask and streaks mask; returns the image path."""
    path = root / f"{image_id}{suffix}"
    (image or photo()).save(path)
    binary_mask().save(root / f"{image_id}_segmentation.png")
    binary_mask().save(root / f"{image_id}_attribute_streaks.png")
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    add_sample(root, "ISIC_0000000")
    add_sample(root, "ISIC_0000001")
    return root


def problems_of(root: Path, **options) -> dict[str, list[tuple[str, str]]]:
    """file name -> [(severity, reason)]."""
    report = check_dataset(root, ATTRIBUTES, **{"need_lesion": True, **options})
    found: dict[str, list[tuple[str, str]]] = {}
    for problem in report.problems:
        found.setdefault(Path(problem.path).name, []).append((problem.severity, problem.reason))
    return found


def only_problem(root: Path, name: str, **options) -> tuple[str, str]:
    found = problems_of(root, **options)
    assert list(found) == [name], found
    (problem,) = found[name]
    return problem


def test_clean_dataset_has_no_problem(dataset):
    report = check_dataset(dataset, ATTRIBUTES, need_lesion=True)
    assert report.problems == [] and len(report.samples) == 2
    assert report.presence == {"ISIC_0000000": frozenset(ATTRIBUTES), "ISIC_0000001": frozenset(ATTRIBUTES)}
    assert report.attribute_pixel_fraction["streaks"] == pytest.approx(16 * 24 / (W * H))
    assert "| streaks | 2 | 2 | 25.00% |" in report.summary_table()


# --- unreadable images -------------------------------------------------------------------------------------------


def test_truncated_jpeg_is_caught_by_decoding(dataset):
    buffer = io.BytesIO()
    photo(640, 480).save(buffer, "JPEG", quality=90)
    add_sample(dataset, "cut")
    (dataset / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    severity, reason = only_problem(dataset, "cut.jpg")
    assert severity == "error" and "truncated" in reason
    with pytest.raises(DataError, match=r"cut\.jpg: truncated"):
        read_image(dataset / "cut.jpg", size=(32, 32))


def test_zero_byte_and_text_files_named_as_images(dataset):
    add_sample(dataset, "empty")
    (dataset / "empty.jpg").write_bytes(b"")
    add_sample(dataset, "text", suffix=".png")
    (dataset / "text.png").write_text("this is not a picture\n")
    found = problems_of(dataset)
    assert found["empty.jpg"] == [("error", "empty file (0 bytes)")]
    ((severity, reason),) = found["text.png"]
    assert severity == "error" and "not an image" in reason and ".png" in reason


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets our filter
def test_decompression_bomb_is_refused_with_the_option_to_raise_the_limit(dataset):
    add_sample(dataset, "huge", photo(100, 60))
    for name in ("huge", "ISIC_0000000", "ISIC_0000001"):  # masks the size of their images
        binary_mask((100, 60)).save(dataset / f"{name}_segmentation.png")
        binary_mask((100, 60)).save(dataset / f"{name}_attribute_streaks.png")
        photo(100, 60).save(dataset / f"{name}.jpg")
    previous = set_max_image_pixels(5000)  # 6000 pixels per image: over the limit, under Pillow's 2x error
    try:
        found = problems_of(dataset)
    finally:
        set_max_image_pixels(previous)
    ((severity, reason),) = found["huge.jpg"]
    assert severity == "error" and "decompression-bomb limit of 5000" in reason and "--max-image-pixels" in reason
    assert Image.MAX_IMAGE_PIXELS == previous
    assert main(["check-data", str(dataset), "--attributes", "streaks", "--max-image-pixels", "5000"]) == 1
    assert main(["check-data", str(dataset), "--attributes", "streaks", "--max-image-pixels", "6000"]) == 0
    set_max_image_pixels(2000)  # over twice the limit, Pillow itself raises: same kind of message
    with pytest.raises(DataError, match=r"huge\.jpg: too many pixels.*--max-image-pixels"):
        read_image(dataset / "huge.jpg")


# --- image modes -------------------------------------------------------------------------------------------------


def test_rgba_with_transparency_is_refused_and_opaque_rgba_is_noted(dataset):
    transparent = photo(mode="RGBA")
    transparent.putpixel((0, 0), (0, 0, 0, 0))
    add_sample(dataset, "holes", transparent, ".png")
    add_sample(dataset, "opaque", photo(mode="RGBA"), ".png")
    found = problems_of(dataset)
    ((severity, reason),) = found["holes.png"]
    assert severity == "error" and "1 transparent pixels" in reason
    assert found["opaque.png"] == [("note", "RGBA image, fully opaque: alpha channel dropped")]
    assert read_image(dataset / "opaque.png").shape == (H, W, 3)


@pytest.mark.parametrize(
    ("mode", "suffix", "words"),
    [("L", ".png", "greyscale"), ("P", ".png", "palette"), ("CMYK", ".jpg", "CMYK")],
)
def test_grey_palette_and_cmyk_images_become_rgb_with_a_note(dataset, mode, suffix, words):
    add_sample(dataset, "odd", photo(mode=mode), suffix)
    severity, reason = only_problem(dataset, f"odd{suffix}")
    assert severity == "note" and words in reason and "RGB" in reason
    pixels = read_image(dataset / f"odd{suffix}", size=(24, 16))
    assert pixels.shape == (16, 24, 3) and pixels.dtype == np.uint8
    if mode == "L":
        assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_16_bit_greyscale_image_is_refused(dataset):
    add_sample(dataset, "deep", Image.fromarray(np.full((H, W), 40000, dtype=np.uint16)), ".png")
    severity, reason = only_problem(dataset, "deep.png")
    assert severity == "error" and "16-bit" in reason and "I;16" in reason


def test_exif_rotation_is_noted_and_not_applied(dataset):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = add_sample(dataset, "rotated")
    photo().save(path, exif=exif.tobytes())
    severity, reason = only_problem(dataset, "rotated.jpg")
    assert severity == "note" and "EXIF orientation 6" in reason and "not applied" in reason
    assert read_image(path).shape == (H, W, 3)  # stored orientation, like its masks


# --- masks -------------------------------------------------------------------------------------------------------


def test_wrong_size_mask_names_both_sizes(dataset):
    binary_mask((W + 2, H)).save(dataset / "ISIC_0000001_segmentation.png")
    severity, reason = only_problem(dataset, "ISIC_0000001_segmentation.png")
    assert severity == "error" and "50x32" in reason and "48x32" in reason


def test_soft_mask_counts_its_pixels_and_passes_with_binarize(dataset):
    ramp = np.tile(np.arange(W, dtype=np.uint8) * 5, (H, 1))  # 0, 5, ..., 235: 47 of 48 columns neither 0 nor 255
    Image.fromarray(ramp).save(dataset / "ISIC_0000000_attribute_streaks.png")
    severity, reason = only_problem(dataset, "ISIC_0000000_attribute_streaks.png")
    assert severity == "error" and f"{47 * H} pixels" in reason and "--binarize" in reason
    assert problems_of(dataset, binarize_threshold=128) == {}
    assert read_mask(dataset / "ISIC_0000000_attribute_streaks.png", binarize_threshold=128).sum() == 22 * H  # 130..235
    assert main(["check-data", str(dataset), "--attributes", "streaks"]) == 1
    assert main(["check-data", str(dataset), "--attributes", "streaks", "--binarize", "128"]) == 0


def test_zero_one_mask_gets_a_specific_hint(dataset):
    Image.fromarray((np.asarray(binary_mask()) // 255).astype(np.uint8)).save(dataset / "ISIC_0000000_segmentation.png")
    _, reason = only_problem(dataset, "ISIC_0000000_segmentation.png")
    assert "0/1 mask" in reason and "--binarize 0" in reason


def test_truncated_mask_is_reported_and_pillow_stays_strict(dataset):
    data = (dataset / "ISIC_0000000_segmentation.png").read_bytes()
    (dataset / "ISIC_0000000_segmentation.png").write_bytes(data[: len(data) // 2])
    severity, reason = only_problem(dataset, "ISIC_0000000_segmentation.png")
    assert severity == "error" and "truncated" in reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_three_channel_mask_is_refused(dataset):
    binary_mask().convert("RGB").save(dataset / "ISIC_0000000_attribute_streaks.png")
    severity, reason = only_problem(dataset, "ISIC_0000000_attribute_streaks.png")
    assert severity == "error" and "3-channel mask" in reason


def test_missing_masks_are_errors_only_when_needed(dataset):
    (dataset / "ISIC_0000000_segmentation.png").unlink()
    (dataset / "ISIC_0000001_attribute_streaks.png").unlink()
    found = problems_of(dataset)
    assert found["ISIC_0000000.jpg"] == [("error", "no lesion mask (ISIC_0000000_segmentation.png)")]
    assert found["ISIC_0000001.jpg"] == [("error", "missing attribute masks: ISIC_0000001_attribute_streaks.png")]
    assert problems_of(dataset, need_lesion=False, need_attributes=False) == {}


def test_mask_without_image_and_duplicate_ids(dataset):
    binary_mask().save(dataset / "ISIC_0000099_segmentation.png")
    photo().save(dataset / "ISIC_0000001.png")
    found = problems_of(dataset)
    assert found["ISIC_0000099_segmentation.png"][0][0] == "error"
    assert "mask without an image" in found["ISIC_0000099_segmentation.png"][0][1]
    assert "ISIC_0000001.png" in found["ISIC_0000001.jpg"][0][1]
    assert "ISIC_0000001.jpg" in found["ISIC_0000001.png"][0][1]


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("nothing here")
    report = check_dataset(tmp_path / "empty")
    assert [(p.path, p.severity) for p in report.problems] == [(tmp_path / "empty", "error")]
    assert "no image found" in report.problems[0].reason
    with pytest.raises(DataError, match="does not exist"):
        check_dataset(tmp_path / "missing")


def test_require_valid_lists_errors_then_how_many_more(tmp_path):
    for i in range(25):
        (tmp_path / f"img{i:02d}.jpg").write_bytes(b"")
    report = check_dataset(tmp_path, ATTRIBUTES, need_attributes=False)
    with pytest.raises(DataError) as caught:
        require_valid(report)
    message = str(caught.value)
    assert "25 data errors" in message and "img00.jpg: empty file (0 bytes)" in message
    assert "img19.jpg" in message and "img20.jpg" not in message and "and 5 more" in message


# --- the command -------------------------------------------------------------------------------------------------


def test_check_data_exit_codes_and_output(dataset, tmp_path, capsys):
    assert main(["check-data", str(dataset), "--attributes", "streaks", "--need-lesion"]) == 0
    assert "| streaks | 2 | 2 | 25.00% |" in capsys.readouterr().out
    (dataset / "ISIC_0000000.jpg").write_bytes(b"")
    assert main(["check-data", str(dataset), "--attributes", "streaks"]) == 1
    assert f"{dataset / 'ISIC_0000000.jpg'}: empty file (0 bytes)" in capsys.readouterr().out
    assert main(["check-data", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["check-data", str(dataset), "--attributes", "../up"]) == 2


def test_lesion_only_needs_lesion_masks_but_no_attribute_masks(dataset, capsys):
    for path in dataset.glob("*_attribute_*"):
        path.unlink()
    assert main(["check-data", str(dataset), "--lesion-only"]) == 0
    assert main(["check-data", str(dataset)]) == 1
    assert "hint: no image has a mask for globules" in capsys.readouterr().out
    (dataset / "ISIC_0000001_segmentation.png").unlink()
    assert main(["check-data", str(dataset), "--lesion-only"]) == 1


def test_real_isic_sample_through_the_cli(isic_sample, capsys):
    # The real 6-image sample has lesion and pigment_network masks only: clean when asked for pigment_network...
    assert main(["check-data", str(isic_sample), "--attributes", "pigment_network"]) == 0
    out = capsys.readouterr().out
    assert "6 images, sizes 1022x767" in out and "0 errors" in out
    assert re.search(r"^\| pigment_network \| 6 \| 6 \| \d+\.\d\d% \|$", out, re.MULTILINE), out
    assert not any(name in out for name in ("globules", "milia_like_cyst", "negative_network", "streaks"))
    # ... and refused with the missing files named when all five attributes are expected (the default).
    assert main(["check-data", str(isic_sample)]) == 1
    out = capsys.readouterr().out
    image = isic_sample / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg"
    assert f"{image}: missing attribute masks: ISIC_0000000_attribute_globules.png" in out
    assert "ISIC_0000009_attribute_streaks.png" in out and "6 errors" in out
    assert "hint: no image has a mask for globules" in out and "pass --attributes pigment_network" in out
