"""Masks between the server and the page: PNGs sent at the display size, and edits made on the display copy
brought back to the original size without losing the detail the person did not touch.

The page shows and edits every mask at the display size (longest side 2048 at most), downscaled by nearest
neighbour (`shown`). With each edited mask it sends where the person's tools went (`touched`: every pixel a brush,
eraser or polygon covered; every pixel after "Absent"). At the original size a pixel takes the edited value when
the display pixel it falls in was touched, and keeps the mask the edit started from (the saved correction, else
the active model's prediction) otherwise: so an eraser stroke on a 6000x4000 photo clears every full-size pixel
under it, specks too small for the display copy included, "Absent" clears the whole mask, and the rest keeps its
full resolution. Without `touched` (a REST client), a pixel takes the edited value where its display pixel
changed, and an empty mask is an empty mask at the original size.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from fastapi.responses import FileResponse, Response
from PIL import Image

from tatl.data.images import read_mask
from tatl.errors import DataError
from tatl.inference.outputs import as_grey

Size = tuple[int, int]  # (width, height)


def read_stored(path: Path) -> np.ndarray:
    """A mask PNG the server keeps (a correction or a prediction, 0/255) as (H, W) bool: value > 127."""
    return read_mask(path, binarize_threshold=127)  # a threshold: any 8-bit values read, as the page shows them


def shown(mask: np.ndarray, size: Size) -> np.ndarray:
    """A (H, W) bool mask at `size` as the page sees it (nearest neighbour)."""
    image = Image.fromarray(as_grey(mask))
    return np.asarray(image.resize(size, Image.Resampling.NEAREST) if image.size != size else image) > 127


def png_response(path: Path, size: Size | None) -> Response:
    """A mask PNG as stored, or at `size` as the page sees it."""
    if size is None:
        return FileResponse(str(path), media_type="image/png")
    buffer = io.BytesIO()
    Image.fromarray(as_grey(shown(read_stored(path), size))).save(buffer, format="PNG", compress_level=1)
    return Response(buffer.getvalue(), media_type="image/png")


def decode_mask(data: str, size: Size, display: Size, attribute: str) -> np.ndarray:
    """A PNG (base64 or a data URL) at the original or the display size -> (H, W) bool at the size it came."""
    try:
        raw = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            grey = image.convert("L")
    except (ValueError, OSError) as error:
        raise DataError(f"mask of {attribute}: not a PNG ({error})") from error
    if grey.size not in (size, display):
        raise DataError(f"mask of {attribute}: {grey.size[0]}x{grey.size[1]}, not the image's {size[0]}x{size[1]} "
                        f"nor its display size {display[0]}x{display[1]}")
    return np.asarray(grey) > 127


def at_original_size(edited: np.ndarray, before: np.ndarray, touched: np.ndarray | None = None) -> np.ndarray:
    """`edited` (display size, or already the original size) at the original size of `before`, the mask the edit
    started from: the edited value where the person's tools went (`touched`, at `edited`'s size), `before`
    elsewhere. Without `touched`: where the display pixel changed, and nothing at all when `edited` is empty."""
    if touched is not None and touched.shape != edited.shape:
        raise DataError(f"touched pixels {touched.shape[1]}x{touched.shape[0]}, the mask {edited.shape[1]}x"
                        f"{edited.shape[0]}: send both at one size")
    if touched is None and not edited.any():
        return np.zeros_like(before)
    if edited.shape == before.shape:
        return edited if touched is None else np.where(touched, edited, before)
    size = (before.shape[1], before.shape[0])
    display = (edited.shape[1], edited.shape[0])
    if touched is None:
        touched = edited != shown(before, display)
    return np.where(shown(touched, size), shown(edited, size), before)
