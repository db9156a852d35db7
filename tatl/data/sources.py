"""Where an image to predict comes from: a file, or memory (a PIL image or an RGB uint8 array).

Prediction reads one image twice, at two sizes: whole for Stage 1, then its lesion box for the later stages. An
`ImageSource` gives its size and `read(size, box)`, with tatl.data.images' rules in both cases:

- `FileImage`: read_image on the path each time: the header gives the size, and a JPEG is DCT-scaled while it is
  decoded (draft mode), so a 6000x4000 photo never decodes its 24 million pixels.
- `MemoryImage`: the pixels are decoded already, so there is no draft decoding: a JPEG decoded in full by the
  caller and then resized differs from the draft-decoded file by the JPEG scaling (a few grey levels at edges).
  For PNG and other lossless files, a path, the PIL image and its array give the same pixels at every size.

`image_source(image)` takes a path (str or Path), a PIL image or an array and refuses anything else, or an array
of another dtype or shape, with a DataError naming the input and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from tatl.data.images import image_size, loaded_rgb, read_image, read_loaded_rgb
from tatl.errors import DataError

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in stored pixels
ARRAY = "image array"  # how errors name an array input


class ImageSource(Protocol):
    name: str  # the path, or what the in-memory image is, as errors name it
    path: Path | None  # the file, when there is one

    @property
    def size(self) -> tuple[int, int]: ...  # (width, height) of the stored pixels

    def read(self, size: tuple[int, int] | None = None, box: Box | None = None) -> np.ndarray: ...


class FileImage:
    """An image file, read from disk at each size asked for (draft-mode JPEG decoding)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = str(self.path)
        self._size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            self._size = image_size(self.path)  # the header only
        return self._size

    def read(self, size: tuple[int, int] | None = None, box: Box | None = None) -> np.ndarray:
        return read_image(self.path, size, box=box)


class MemoryImage:
    """A decoded image, converted to RGB once (read_image's mode rules), then cropped and resized as a file is."""

    path = None

    def __init__(self, image: Image.Image, name: str):
        self.name = name
        self.rgb = loaded_rgb(image, name)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size

    def read(self, size: tuple[int, int] | None = None, box: Box | None = None) -> np.ndarray:
        return read_loaded_rgb(self.rgb, self.name, size, box)


def image_source(image: Any) -> ImageSource:
    """The source of a path (str or Path), a PIL image, an RGB uint8 array (H, W, 3), or a source itself."""
    if isinstance(image, (str, Path)):
        return FileImage(Path(image))
    if isinstance(image, Image.Image):
        filename = getattr(image, "filename", "")  # set when the caller opened a file
        return MemoryImage(image, f"PIL image {filename}" if filename else "PIL image")
    if isinstance(image, np.ndarray):
        return MemoryImage(Image.fromarray(_checked_array(image)), ARRAY)
    if isinstance(image, (FileImage, MemoryImage)):
        return image
    raise DataError(f"image of type {type(image).__name__}: expected a path (str or Path), a PIL image or an RGB "
                    "uint8 numpy array of shape (height, width, 3)")


def _checked_array(array: np.ndarray) -> np.ndarray:
    """The array, C-contiguous, when it is RGB uint8 (H, W, 3) with at least one pixel; else DataError."""
    if array.dtype != np.uint8:
        hint = " (scale 0..1 floats by 255 and round first)" if array.dtype.kind == "f" else ""
        raise DataError(f"{ARRAY} of dtype {array.dtype}: expected uint8 RGB values 0..255{hint}")
    if array.ndim != 3 or array.shape[2] != 3:
        hint = ""
        if array.ndim == 2:
            hint = " (greyscale: repeat it on three channels)"
        elif array.ndim == 3 and array.shape[2] == 4:
            hint = " (RGBA: drop the alpha channel, e.g. array[..., :3], if it is opaque)"
        raise DataError(f"{ARRAY} of shape {array.shape}: expected (height, width, 3), RGB{hint}")
    if not array.shape[0] or not array.shape[1]:
        raise DataError(f"{ARRAY} of shape {array.shape}: the image has no pixels")
    return np.ascontiguousarray(array)
