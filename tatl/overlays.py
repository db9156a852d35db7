"""Pictures of a prediction for people: the image beside the same image annotated, with a legend.

The annotated panel shows the Stage-1 lesion as a solid white outline, the Stage-2 abnormal (attribute-agnostic)
region as a dotted white outline, and each attribute as a translucent fill with a solid outline in its own colour
(Okabe-Ito colour-blind-safe palette, chosen to stand out on brown skin). The legend says, per attribute, whether it
is present, its area as a share of the lesion and its maximum probability. With ground truth, one more panel per
attribute shows truth in green and prediction in red (overlap yellow), as in the paper's Figure 5, titled with that
image's Jaccard. Everything is drawn with Pillow at a display size (masks are shrunk with `resize_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tatl.data.images import resize_mask

Colour = tuple[int, int, int]
ATTRIBUTE_COLOURS: dict[str, Colour] = {
    "pigment_network": (86, 180, 233),  # sky blue
    "globules": (240, 228, 66),  # yellow
    "milia_like_cyst": (204, 121, 167),  # reddish purple
    "negative_network": (0, 158, 115),  # bluish green
    "streaks": (213, 94, 0),  # vermillion
}
SPARE_COLOURS: list[Colour] = [(0, 114, 178), (230, 159, 0), (255, 255, 255), (0, 0, 0)]
TRUTH, PREDICTED, BOTH = (40, 200, 60), (230, 40, 40), (250, 220, 40)
WHITE, INK, GREY, PAPER = (255, 255, 255), (20, 20, 20), (120, 120, 120), (250, 250, 250)
FILL_ALPHA = 0.45
PADDING = 12


@dataclass
class Layer:
    """One attribute to draw: its mask at display size and the numbers the legend prints."""

    mask: np.ndarray
    present: bool
    area_fraction: float
    max_probability: float
    truth: np.ndarray | None = None  # ground truth at display size, when known


def attribute_colour(name: str, index: int) -> Colour:
    return ATTRIBUTE_COLOURS.get(name, SPARE_COLOURS[index % len(SPARE_COLOURS)])


def display_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most max_side (never enlarged)."""
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def shrink(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize_mask(mask, size)


@cache
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of `mask` within `width` pixels of its border (or of the picture's edge)."""
    return mask & ~_erode(mask, width)


def _erode(mask: np.ndarray, width: int) -> np.ndarray:
    """Erosion by a (2 width + 1)^2 square, separably along rows then columns: O(pixels x width)."""
    for axis in (0, 1):
        padded = np.pad(mask, [(width, width) if a == axis else (0, 0) for a in (0, 1)], constant_values=False)
        length = mask.shape[axis]
        eroded = np.ones_like(mask)
        for offset in range(2 * width + 1):
            eroded &= padded[offset:offset + length] if axis == 0 else padded[:, offset:offset + length]
        mask = eroded
    return mask


def _paint(canvas: np.ndarray, mask: np.ndarray, colour: Colour, alpha: float) -> None:
    canvas[mask] = (canvas[mask] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)


def annotate(image: np.ndarray, lesion: np.ndarray | None, abnormal: np.ndarray | None,
             layers: dict[str, Layer]) -> np.ndarray:
    """The image with attribute fills and outlines, the abnormal region dotted and the lesion outlined."""
    canvas = image.copy()
    width = max(1, round(max(image.shape[:2]) / 320))
    for index, (name, layer) in enumerate(layers.items()):
        _paint(canvas, layer.mask, attribute_colour(name, index), FILL_ALPHA)
    for index, (name, layer) in enumerate(layers.items()):
        _paint(canvas, _outline(layer.mask, width), attribute_colour(name, index), 1.0)
    if abnormal is not None:
        rows, cols = np.indices(abnormal.shape)
        dots = (rows + cols) // (3 * width) % 2 == 0  # dotted: every other run of 3 line widths along diagonals
        _paint(canvas, _outline(abnormal, width) & dots, WHITE, 1.0)
    if lesion is not None:
        # A white line between two dark rims stays visible on pale skin and on dark lesions alike.
        _paint(canvas, _outline(lesion, 3 * width), INK, 1.0)
        _paint(canvas, _outline(lesion, 2 * width) & ~_outline(lesion, width), WHITE, 1.0)
    return canvas


def truth_panel(image: np.ndarray, layer: Layer) -> np.ndarray:
    """Figure-5 style: truth green, prediction red, both yellow, on a dimmed image."""
    canvas = (image * 0.75).astype(np.uint8)
    truth = layer.truth if layer.truth is not None else np.zeros_like(layer.mask)
    _paint(canvas, truth & ~layer.mask, TRUTH, 0.6)
    _paint(canvas, layer.mask & ~truth, PREDICTED, 0.6)
    _paint(canvas, layer.mask & truth, BOTH, 0.6)
    return canvas


def jaccard(truth: np.ndarray, prediction: np.ndarray) -> float:
    union = np.count_nonzero(truth | prediction)
    return 1.0 if union == 0 else np.count_nonzero(truth & prediction) / union


def render(image: np.ndarray, title: str, lesion: np.ndarray | None, abnormal: np.ndarray | None,
           layers: dict[str, Layer], with_truth: bool = False, columns: int = 4) -> Image.Image:
    """The overlay picture: image | annotated (| one truth-vs-prediction panel per attribute), legend below."""
    panels = [("image", image), ("prediction", annotate(image, lesion, abnormal, layers))]
    if with_truth:
        for name, layer in layers.items():
            score = "no ground truth" if layer.truth is None else f"Jaccard {jaccard(layer.truth, layer.mask):.2f}"
            panels.append((f"{name}: {score}", truth_panel(image, layer)))
    height, width = image.shape[:2]
    font_size = max(12, round(max(width, height) / 40))
    caption = font_size + PADDING
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    legend = _legend_lines(lesion is not None, abnormal is not None, layers, with_truth)
    legend_height = PADDING + len(legend) * (font_size + 6)
    sheet = Image.new("RGB", (columns * (width + PADDING) + PADDING,
                              caption + PADDING + rows * (height + caption) + legend_height), PAPER)
    draw = ImageDraw.Draw(sheet)
    draw.text((PADDING, PADDING // 2), title, fill=INK, font=_font(font_size))
    top = caption + PADDING
    for index, (label, pixels) in enumerate(panels):
        x = PADDING + (index % columns) * (width + PADDING)
        y = top + (index // columns) * (height + caption)
        draw.text((x, y), label, fill=INK, font=_font(round(font_size * 0.85)))
        sheet.paste(Image.fromarray(pixels), (x, y + caption - 4))
    _draw_legend(draw, legend, PADDING, top + rows * (height + caption), font_size)
    return sheet


def _legend_lines(has_lesion: bool, has_abnormal: bool, layers: dict[str, Layer],
                  with_truth: bool) -> list[tuple[Colour | str, str, Colour]]:
    """(swatch colour or "outline"/"dotted", text, text colour) per legend line."""
    lines: list[tuple[Colour | str, str, Colour]] = []
    if has_lesion:
        lines.append(("outline", "lesion (Stage 1)", INK))
    if has_abnormal:
        lines.append(("dotted", "abnormal region, any attribute (Stage 2)", INK))
    for index, (name, layer) in enumerate(layers.items()):
        if layer.present:
            text = f"{name}: present, {100 * layer.area_fraction:.1f}% of the lesion, max p {layer.max_probability:.2f}"
        else:
            text = f"{name}: absent (max p {layer.max_probability:.2f})"
        lines.append((attribute_colour(name, index), text, INK if layer.present else GREY))
    if with_truth:
        lines.append((TRUTH, "ground truth only", INK))
        lines.append((PREDICTED, "prediction only", INK))
        lines.append((BOTH, "both (correct)", INK))
    return lines


def _draw_legend(draw: ImageDraw.ImageDraw, lines: list, left: int, top: int, font_size: int) -> None:
    side = font_size
    for index, (swatch, text, colour) in enumerate(lines):
        y = top + index * (font_size + 6)
        box = (left, y, left + side, y + side)
        if swatch == "outline":
            draw.rectangle(box, fill=(150, 110, 80), outline=INK, width=3)
            draw.rectangle((box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1), outline=WHITE, width=1)
        elif swatch == "dotted":
            draw.rectangle(box, fill=(150, 110, 80))
            for x in range(box[0], box[2], 4):
                draw.rectangle((x, y, x + 1, y + 1), fill=WHITE)
                draw.rectangle((x, box[3] - 1, x + 1, box[3]), fill=WHITE)
        else:
            draw.rectangle(box, fill=swatch, outline=INK)
        draw.text((left + side + 8, y), text, fill=colour, font=_font(font_size))
