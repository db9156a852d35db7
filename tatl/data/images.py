"""Read dermoscopy images and their masks, and refuse the ones that would silently train on the wrong pixels.

Images become HxWx3 uint8 RGB:
- RGB: as stored. A 16-bit-per-channel RGB PNG is read as 8-bit by Pillow (high byte), which is the full-range
  scaling; check-data notes it.
- grey (L), bilevel (1), palette (P), CMYK and YCbCr: converted to RGB (grey repeated on three channels; CMYK by
  Pillow's plain formula, without a colour profile); check-data notes the conversion.
- RGBA, LA, PA and palette images with a transparent colour: the alpha channel is dropped when every pixel is
  fully opaque (a note). An image with transparent pixels is refused: the colour under them is undefined and no
  background (black, white) is right for skin, so the user flattens it knowingly.
- 16-bit and 32-bit greyscale (I;16, I, F): refused. There is no safe 8-bit scaling (12-bit sensors store 0..4095,
  others use the full 0..65535 range), and dermoscopy is colour, so such a file is more likely a mis-filed mask.
- EXIF orientation: NOT applied. Masks refer to the stored pixels, as the official ISIC scorer reads them, so
  rotating the image would misalign every mask; check-data notes the tag.
- Unreadable, zero-byte, truncated (the data is actually decoded) or misnamed files raise `ImageFileError`, a
  `DataError` naming the file and the reason. Pillow's LOAD_TRUNCATED_IMAGES is never turned on.
- Images with more pixels than Pillow's MAX_IMAGE_PIXELS (decompression-bomb guard) are refused with the ways to
  raise the limit: `set_max_image_pixels(n)`, `check-data --max-image-pixels N`, `data.max_image_pixels`.

JPEGs read at a smaller size use Pillow's draft mode (DCT scaling by 1/2, 1/4 or 1/8 inside libjpeg), keeping at
least the requested resolution over the crop box, then a bilinear (antialiased, area-like) resize: a 6000x4000
photo read at 512 px never decodes its 24 million pixels.

Masks are single-channel 8-bit PNGs with values {0, 255} (bilevel "1" files are accepted as 0/255), as the official
scorer requires; anything else is refused unless a binarize threshold is given (then positive = value > threshold,
the scorer's rule with 128).
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tatl.errors import ConfigError, DataError

# We refuse oversized images ourselves, with a clearer message, so Pillow's warning would only repeat it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

EXIF_ORIENTATION = 0x0112
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
CONVERTED_MODES = {
    "L": "greyscale image (mode L): converted to RGB (grey repeated on three channels)",
    "1": "bilevel image (mode 1): converted to RGB",
    "P": "palette image (mode P): converted to RGB",
    "CMYK": "CMYK image: converted to RGB by Pillow's formula, without a colour profile",
    "YCbCr": "YCbCr image: converted to RGB",
}
MASK_MODES = ("L", "1")
RAISE_LIMIT_HINT = (
    "if the image is genuine, raise the limit: check-data --max-image-pixels N, data.max_image_pixels in the "
    "config, or tatl.data.images.set_max_image_pixels(N)"
)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


class ImageFileError(DataError):
    """A DataError about one file; `reason` is the message without the path (check-data prints `path: reason`)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


@dataclass
class ImageInfo:
    size: tuple[int, int]  # (width, height) of the stored pixels
    mode: str  # Pillow mode as stored
    notes: list[str] = field(default_factory=list)  # what was done to make it RGB, EXIF orientation


@contextmanager
def pixel_limit(limit: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb limit raised to `limit` pixels for the reads inside the block, and put back after
    (None: Pillow's own, unchanged). The limit is Pillow's process-wide setting: scoped like this, a run or a loaded
    model raises it for its own reads only, never for every later read of the process (e.g. in `tatl serve`)."""
    if limit is None:
        yield
        return
    previous = set_max_image_pixels(limit)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def set_max_image_pixels(limit: int | None) -> int | None:
    """Set Pillow's decompression-bomb limit (pixels per image; None: no limit). Returns the previous limit."""
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"max_image_pixels must be a positive number of pixels, not {limit!r}")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    return previous


@contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """Image.open with every decoding failure (also those raised while loading in the body) as ImageFileError."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            _refuse_bomb(path, image.size)
            yield image
    except Image.DecompressionBombError as error:
        # Pillow raises this itself above twice its limit, naming twice the limit: name the limit the user set.
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{found.group(1)} pixels" if found else "the image"
        limit = Image.MAX_IMAGE_PIXELS
        reason = f"too many pixels: {pixels} is more than twice the decompression-bomb limit of {limit}"
        raise ImageFileError(path, f"{reason}; {RAISE_LIMIT_HINT}") from error
    except _DECODE_ERRORS as error:
        raise ImageFileError(path, _unreadable_reason(path, error)) from error


def _refuse_bomb(path: Path, size: tuple[int, int]) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and size[0] * size[1] > limit:
        pixels = size[0] * size[1]
        reason = f"{size[0]}x{size[1]} = {pixels} pixels is more than the decompression-bomb limit of {limit}"
        raise ImageFileError(path, f"{reason}; {RAISE_LIMIT_HINT}")


def _unreadable_reason(path: Path, error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if path.is_file() and path.stat().st_size == 0:
        return "empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        return f"not an image Pillow can read (unknown format; is it really a {path.suffix} file?)"
    if "truncated" in str(error):
        return f"truncated image data ({error}); the file is incomplete, download or copy it again"
    return f"cannot decode the image ({type(error).__name__}: {error})"


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only; ImageFileError if the file is not a readable image."""
    with _open(path) as image:
        return image.size


def inspect_image(path: Path) -> ImageInfo:
    """Decode the whole file (a JPEG at 1/8 scale: every byte is still entropy-decoded, so truncation shows) and
    apply the mode rules; ImageFileError for a refused image."""
    with _open(path) as image:
        info = ImageInfo(image.size, image.mode)
        high_bit_rgb = _is_16_bit_rgb(image)  # only visible before loading
        if image.format == "JPEG":
            image.draft(image.mode, (1, 1))
        image.load()  # before getexif, which would load a PNG itself and hide a decoding error in _exif_orientation
        orientation = _exif_orientation(image)
        if orientation not in (None, 1):
            info.notes.append(
                f"EXIF orientation {orientation}: not applied, masks refer to the stored pixels (as the official "
                "scorer reads them)"
            )
        _, note = _to_rgb(image, path, high_bit_rgb)
        info.notes += [note] if note else []
    return info


def read_image(
    path: Path, size: tuple[int, int] | None = None, box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """HxWx3 uint8 RGB. `box` = (left, top, right, bottom) in stored pixels, cropped first; `size` = (width,
    height) to resize to (bilinear, antialiased). JPEGs are DCT-scaled while decoding when that keeps the box at
    least `size`."""
    with _open(path) as image:
        box = _checked_box(path, box, image.size)
        scale = _draft(image, size, box) if image.format == "JPEG" and size is not None else 1.0
        image.load()
        rgb, _ = _to_rgb(image, path, False)
        return _crop_and_resize(rgb, size, box, scale)


def loaded_rgb(image: Image.Image, name: str) -> Image.Image:
    """An image already in memory as RGB, by read_image's mode rules; ImageFileError names it as `name`."""
    try:
        image.load()
        rgb, _ = _to_rgb(image, Path(name), False)
    except _DECODE_ERRORS as error:  # a lazily opened, broken file
        raise ImageFileError(Path(name), f"cannot decode the image ({type(error).__name__}: {error})") from error
    return rgb


def read_loaded_rgb(
    rgb: Image.Image, name: str, size: tuple[int, int] | None = None, box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """read_image for an RGB image in memory (loaded_rgb): the same crop and resize, without JPEG draft decoding
    (the pixels are decoded already)."""
    return _crop_and_resize(rgb, size, _checked_box(Path(name), box, rgb.size), 1.0)


def _crop_and_resize(rgb: Image.Image, size: tuple[int, int] | None, box: tuple[int, ...], scale: float) -> np.ndarray:
    """`box` (stored pixels) of `rgb`, resized to `size` when given; `scale`: how much smaller than the stored
    image `rgb` was decoded (JPEG draft mode), so the box is scaled with it."""
    if size is None:
        return np.array(rgb.crop(box) if box != (0, 0, *rgb.size) else rgb)
    scaled_box = tuple(coordinate / scale for coordinate in box)
    return np.array(rgb.resize(tuple(size), Image.Resampling.BILINEAR, box=scaled_box))


def _draft(image: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int]) -> float:
    """Ask libjpeg for the smallest DCT scale at which the box still covers `size`; the scale it chose."""
    width, height = image.size
    wanted = (math.ceil(width * size[0] / (box[2] - box[0])), math.ceil(height * size[1] / (box[3] - box[1])))
    drafted = image.draft("RGB", (max(1, wanted[0]), max(1, wanted[1])))
    return width / drafted[1][2] if drafted else 1.0


def _checked_box(path: Path, box: tuple[int, int, int, int] | None, size: tuple[int, int]) -> tuple[int, ...]:
    if box is None:
        return (0, 0, *size)
    left, top, right, bottom = (int(c) for c in box)
    if not (0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]):
        raise ImageFileError(path, f"crop box {tuple(box)} is empty or outside the {size[0]}x{size[1]} image")
    return (left, top, right, bottom)


def _exif_orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block does not make the pixels unreadable; Pillow raises many kinds
        return None


def _is_16_bit_rgb(image: Image.Image) -> bool:
    """Pillow reads 48-bit RGB PNGs as 8-bit RGB; only the raw mode in the (not yet loaded) tile tells."""
    return image.mode == "RGB" and any(";16" in str(tile[3]) for tile in image.tile)


def _to_rgb(image: Image.Image, path: Path, high_bit_rgb: bool) -> tuple[Image.Image, str | None]:
    """The image as RGB and a note on what was done, or ImageFileError for a refused mode."""
    mode = image.mode
    if mode == "RGB":
        return image, "16-bit RGB image: read as 8-bit (high byte of each value)" if high_bit_rgb else None
    if mode.startswith("I") or mode == "F":
        raise ImageFileError(
            path,
            f"{'16' if mode.startswith('I;16') else '32'}-bit greyscale image (mode {mode}): tatl reads 8-bit images "
            "only and will not guess the scaling (12-bit or full range?); convert it to 8-bit RGB first",
        )
    if mode == "P" and "transparency" in image.info:
        return _drop_opaque_alpha(image, path, "palette image (transparent colour)")
    if mode in ALPHA_MODES:
        return _drop_opaque_alpha(image, path, f"{mode} image")
    if mode in CONVERTED_MODES:
        return image.convert("RGB"), CONVERTED_MODES[mode]
    raise ImageFileError(path, f"unsupported image mode {mode}; save the image as 8-bit RGB")


def _drop_opaque_alpha(image: Image.Image, path: Path, what: str) -> tuple[Image.Image, str]:
    rgba = image.convert("RGBA")
    transparent = int(np.count_nonzero(np.asarray(rgba.getchannel("A")) < 255))
    if transparent:
        raise ImageFileError(
            path,
            f"{what} with {transparent} transparent pixels (alpha < 255): the colour under them is undefined "
            "and tatl does not guess a background; flatten the image and save it as RGB",
        )
    return rgba.convert("RGB"), f"{what}, fully opaque: alpha channel dropped"


@dataclass
class MaskInfo:
    size: tuple[int, int] | None  # (width, height); None when unreadable
    positive_pixels: int
    problems: list[str]  # reasons the mask is refused; empty when valid


def inspect_mask(
    path: Path, expected_size: tuple[int, int] | None = None, binarize_threshold: int | None = None
) -> MaskInfo:
    """Every reason a mask is refused (size, channels, values), and its positive pixel count when valid."""
    values, size, problems = _mask_values(path, expected_size, binarize_threshold)
    positive = 0 if values is None or problems else int(np.count_nonzero(values > _threshold(binarize_threshold)))
    return MaskInfo(size, positive, problems)


def read_mask(
    path: Path, expected_size: tuple[int, int] | None = None, binarize_threshold: int | None = None
) -> np.ndarray:
    """HxW bool; ImageFileError naming the file and every reason it is refused."""
    values, _, problems = _mask_values(path, expected_size, binarize_threshold)
    if problems:
        raise ImageFileError(path, "; ".join(problems))
    return values > _threshold(binarize_threshold)


def _threshold(binarize_threshold: int | None) -> int:
    return 127 if binarize_threshold is None else binarize_threshold  # {0, 255} masks: 255 is positive


def _mask_values(
    path: Path, expected_size: tuple[int, int] | None, binarize_threshold: int | None
) -> tuple[np.ndarray | None, tuple[int, int] | None, list[str]]:
    try:
        with _open(path) as image:
            image.load()
            size, mode = image.size, image.mode
            problems = _size_problems(size, expected_size)
            if mode not in MASK_MODES:
                return None, size, [*problems, _mask_mode_reason(mode)]
            values = np.array(image.convert("L") if mode == "1" else image)
    except ImageFileError as error:
        return None, None, [error.reason]
    if binarize_threshold is None:
        problems += _value_problems(values)
    return values, size, problems


def _size_problems(size: tuple[int, int], expected: tuple[int, int] | None) -> list[str]:
    if expected is None or tuple(size) == tuple(expected):
        return []
    return [f"mask is {size[0]}x{size[1]} but its image is {expected[0]}x{expected[1]} (width x height)"]


def _mask_mode_reason(mode: str) -> str:
    channels = Image.getmodebands(mode) if mode in Image.MODES else None
    what = f"{channels}-channel mask" if channels and channels > 1 else f"mask in mode {mode}"
    if mode == "P":
        what = "palette mask"
    elif mode.startswith("I;16"):
        what = "16-bit mask"
    return f"{what} (mode {mode}): masks must be single-channel 8-bit greyscale PNGs with values 0 and 255"


def _value_problems(values: np.ndarray) -> list[str]:
    counts = np.bincount(values.ravel(), minlength=256)
    outside = int(values.size - counts[0] - counts[255])
    if not outside:
        return []
    seen = np.flatnonzero(counts)
    listed = ", ".join(str(v) for v in seen[:6]) + (", ..." if len(seen) > 6 else "")
    hint = (
        "it is a 0/1 mask: read it with binarize threshold 0 (check-data --binarize 0)"
        if set(seen) <= {0, 1}
        else "to read a soft mask as value > T (the official scorer uses T = 128), pass --binarize T to check-data "
        "or set data.binarize_threshold"
    )
    share = 100 * outside / values.size
    return [f"{outside} pixels ({share:.3g}%) have values other than 0 and 255 (values: {listed}); {hint}"]


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool HxW mask to (width, height). A pixel is positive when at least half of its area is covered
    (Pillow's BOX filter on 0/255, >= 128): unbiased area when shrinking, nearest neighbour when enlarging."""
    width, height = size
    if mask.shape == (height, width):
        return mask.astype(bool, copy=True)
    image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))  # 2-D uint8: mode L
    return np.asarray(image.resize((width, height), Image.Resampling.BOX)) >= 128

