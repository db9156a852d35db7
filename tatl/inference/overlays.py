"""Pictures of a prediction for people: the image beside the same image annotated, with a legend.

They show the Stage-1 lesion box (zoomed in, as a dermatologist looks at a lesion), or the whole image for variants
without Stage 1 or when Stage 1 found no lesion.

The annotated panel shows the Stage-1 lesion as a solid white outline, the Stage-2 abnormal (attribute-agnostic)
region as a dashed white outline, and each attribute as a translucent fill with a solid outline in its own colour
(Okabe-Ito colour-blind-safe palette, chosen to stand out on brown skin). The legend says, per attribute, whether it
is present, its area as a share of the lesion and its maximum probability. With ground truth, one more panel per
attribute shows truth in green and prediction in red (overlap yellow), as in the paper's Figure 5, titled with that
image's Jaccard. Everything is drawn with Pillow at a display size (masks shrunk by the rule of `resize_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tatl.data.crops import crop_mask, whole_image_box

Colour = tuple[int, int, int]
ATTRIBUTE_COLOURS: dict[str, Colour] = {
    "pigment_network": (86, 180, 233),  # sky blue
    "globules": (230, 159, 0),  # orange (not yellow: that is "truth and prediction agree" in the truth panels)
    "milia_like_cyst": (204, 121, 167),  # reddish purple
    "negative_network": (0, 158, 115),  # bluish green
    "streaks": (213, 94, 0),  # vermillion
}
SPARE_COLOURS: list[Colour] = [(0, 114, 178), (240, 228, 66), (255, 255, 255), (0, 0, 0)]
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
    area_of: str = "lesion"  # what area_fraction is a share of: "lesion" or "image"


def attribute_colour(name: str, index: int) -> Colour:
    return ATTRIBUTE_COLOURS.get(name, SPARE_COLOURS[index % len(SPARE_COLOURS)])


def display_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is `side`: a small lesion crop is enlarged, so its outlines and
    text stay readable (masks then show their real pixels as blocks)."""
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


@cache
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of `mask` within `width` pixels of its border; the picture's edge is no border (no frame)."""
    return mask & ~_erode(mask, width)


def _erode(mask: np.ndarray, width: int) -> np.ndarray:
    """Erosion by a (2 width + 1)^2 square, separably along rows then columns: O(pixels x width)."""
    for axis in (0, 1):
        padded = np.pad(mask, [(width, width) if a == axis else (0, 0) for a in (0, 1)], constant_values=True)
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
    """The image with attribute fills and outlines, the abnormal region dashed and the lesion outlined."""
    canvas = image.copy()
    width = max(1, round(max(image.shape[:2]) / 320))
    for index, (name, layer) in enumerate(layers.items()):
        _paint(canvas, layer.mask, attribute_colour(name, index), FILL_ALPHA)
    for index, (name, layer) in enumerate(layers.items()):
        _paint(canvas, _outline(layer.mask, width), attribute_colour(name, index), 1.0)
    if abnormal is not None:
        rows, cols = np.indices(abnormal.shape)
        dots = (rows + cols) // (4 * width + 2) % 2 == 0  # dashed: every other run along the diagonals
        _paint(canvas, _outline(abnormal, width) & dots, WHITE, 1.0)
    if lesion is not None:
        # A white line between two thin dark rims stays visible on pale skin and on dark lesions alike.
        _paint(canvas, _outline(lesion, width + 2), INK, 1.0)
        _paint(canvas, _outline(lesion, width + 1) & ~_outline(lesion, 1), WHITE, 1.0)
    return canvas


def truth_panel(image: np.ndarray, layer: Layer) -> np.ndarray:
    """Figure-5 style: truth green, prediction red, both yellow (translucent, outlined), on a dimmed image."""
    canvas = (image * 0.8).astype(np.uint8)
    truth = layer.truth if layer.truth is not None else np.zeros_like(layer.mask)
    _paint(canvas, truth & ~layer.mask, TRUTH, FILL_ALPHA)
    _paint(canvas, layer.mask & ~truth, PREDICTED, FILL_ALPHA)
    _paint(canvas, layer.mask & truth, BOTH, FILL_ALPHA)
    width = max(1, round(max(image.shape[:2]) / 320))
    _paint(canvas, _outline(truth, width), TRUTH, 1.0)
    _paint(canvas, _outline(layer.mask, width), PREDICTED, 1.0)
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
    font_size = max(13, round(max(width, height) / 32))
    caption = font_size + PADDING
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    legend = _legend_lines(lesion is not None, abnormal is not None, layers, with_truth)
    sheet_width = columns * (width + PADDING) + PADDING
    widest = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=_font(font_size))
                 for _, text, _ in legend) + 2 * font_size
    legend_columns = 2 if len(legend) > 4 and 2 * widest < sheet_width else 1
    legend_rows = -(-len(legend) // legend_columns)
    legend_height = PADDING + legend_rows * (font_size + 6)
    sheet = Image.new("RGB", (sheet_width, caption + PADDING + rows * (height + caption) + legend_height), PAPER)
    draw = ImageDraw.Draw(sheet)
    draw.text((PADDING, PADDING // 2), title, fill=INK, font=_font(font_size))
    top = caption + PADDING
    for index, (label, pixels) in enumerate(panels):
        x = PADDING + (index % columns) * (width + PADDING)
        y = top + (index // columns) * (height + caption)
        draw.text((x, y), label, fill=INK, font=_fitting_font(draw, label, round(font_size * 0.85), width))
        sheet.paste(Image.fromarray(pixels), (x, y + caption - 4))
    legend_top = top + rows * (height + caption)
    for column in range(legend_columns):
        lines = legend[column * legend_rows:(column + 1) * legend_rows]
        _draw_legend(draw, lines, PADDING + column * sheet_width // 2, legend_top, font_size)
    return sheet


def _fitting_font(draw: ImageDraw.ImageDraw, text: str, size: int, width: int) -> ImageFont.ImageFont:
    """The font of `size`, smaller if needed (down to 8 px) for `text` to fit in `width` pixels."""
    while size > 8 and draw.textlength(text, font=_font(size)) > width:
        size -= 1
    return _font(size)


def _legend_lines(has_lesion: bool, has_abnormal: bool, layers: dict[str, Layer],
                  with_truth: bool) -> list[tuple[Colour | str, str, Colour]]:
    """(swatch colour or "outline"/"dashed", text, text colour) per legend line."""
    lines: list[tuple[Colour | str, str, Colour]] = []
    if has_lesion:
        lines.append(("outline", "lesion (Stage 1)", INK))
    if has_abnormal:
        lines.append(("dashed", "abnormal region: any attribute (Stage 2)", INK))
    for index, (name, layer) in enumerate(layers.items()):
        if layer.present:
            share = f"{100 * layer.area_fraction:.1f}% of the {layer.area_of}"
            text = f"{name}: present, {share}, max p {layer.max_probability:.2f}"
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
        elif swatch == "dashed":
            draw.rectangle(box, fill=(150, 110, 80))
            for x in range(box[0], box[2], 6):
                draw.rectangle((x, y, x + 2, y + 1), fill=WHITE)
                draw.rectangle((x, box[3] - 1, x + 2, box[3]), fill=WHITE)
        else:
            draw.rectangle(box, fill=swatch, outline=INK)
        draw.text((left + side + 8, y), text, fill=colour, font=_font(font_size))


class OverlayView:
    """What an overlay of one prediction (a tatl.inference.predictor.ImagePrediction) shows: the Stage-1 lesion
    box, zoomed in as a dermatologist looks, else the whole image; at most max_side pixels on its longer side.
    Full-size masks are cropped to it and shrunk (a pixel is set when at least half of its area is)."""

    def __init__(self, prediction, max_side: int, zoom: bool = True):
        """zoom=False: the whole image, whatever Stage 1 found (a Segment-Net alone: its outline is the result)."""
        whole = whole_image_box(prediction.size)
        zoom = zoom and "lesion" in prediction.maps and not prediction.lesion_fallback and prediction.box != whole
        self.box = prediction.box if zoom else whole
        self.what = "Stage-1 lesion crop" if zoom else "whole image"
        self.source = prediction.source
        self.size = display_size((self.box[2] - self.box[0], self.box[3] - self.box[1]), max_side)

    def shrink(self, mask: np.ndarray) -> np.ndarray:
        """resize_mask's rule (BOX filter, >= half covered) without its int64 temporary of the full-size mask."""
        crop = np.ascontiguousarray(crop_mask(mask, self.box)).view(np.uint8) * np.uint8(255)
        return np.asarray(Image.fromarray(crop).resize(self.size, Image.Resampling.BOX)) >= 128

    def layer(self, mask: np.ndarray, summary: dict, truth: np.ndarray | None, area_of: str) -> Layer:
        return Layer(self.shrink(mask), summary["present"], summary["area_fraction"], summary["max_probability"],
                     truth=None if truth is None else self.shrink(truth), area_of=area_of)

    def render(self, title: str, lesion: np.ndarray | None, abnormal: np.ndarray | None, layers: dict[str, Layer],
               with_truth: bool) -> Image.Image:
        image = self.source.read(self.size, self.box)
        return render(image, title, lesion, abnormal, layers, with_truth=with_truth)
