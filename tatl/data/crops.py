"""Stage-1 lesion boxes, crops and paste-back (paper Section 5.2).

The Segment-Net's mask gives a bounding box; it is widened by `margin` pixels of the ORIGINAL image on every side
(the paper's 40 px offset "to mitigate the segmentation errors"), clipped at the borders, cropped from the original
image and resized to the stage input size. Predictions on a crop are resized back to the box and pasted into an
all-zero canvas of the original size, so every score is computed at each image's original resolution.

Boxes are (left, top, right, bottom) in original pixels, right/bottom exclusive, like Pillow's crop boxes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]


def whole_image_box(original_size: tuple[int, int]) -> Box:
    width, height = original_size
    return (0, 0, width, height)


def lesion_box(
    lesion_mask: np.ndarray, original_size: tuple[int, int], margin: int, min_fraction: float = 0.0
) -> tuple[Box, bool]:
    """Box around the positive pixels of `lesion_mask` (any resolution), in original pixels, widened by `margin`.

    Returns (box, fell_back): an empty mask, or one covering less than `min_fraction` of the image, gives the whole
    image and fell_back=True (the caller logs it), because a crop around a few stray pixels would lose the lesion.
    """
    width, height = original_size
    mask_height, mask_width = lesion_mask.shape
    if lesion_mask.sum() == 0 or lesion_mask.mean() < min_fraction:
        return whole_image_box(original_size), True
    rows = np.flatnonzero(lesion_mask.any(axis=1))
    cols = np.flatnonzero(lesion_mask.any(axis=0))
    # Mask pixel i covers original pixels [i * scale, (i + 1) * scale): take the outer edges of the extreme pixels.
    scale_x, scale_y = width / mask_width, height / mask_height
    left = int(np.floor(cols[0] * scale_x)) - margin
    right = int(np.ceil((cols[-1] + 1) * scale_x)) + margin
    top = int(np.floor(rows[0] * scale_y)) - margin
    bottom = int(np.ceil((rows[-1] + 1) * scale_y)) + margin
    return (max(0, left), max(0, top), min(width, right), min(height, bottom)), False


def crop_mask(mask: np.ndarray, box: Box) -> np.ndarray:
    """Crop a full-size (H, W) mask to `box`."""
    left, top, right, bottom = box
    return mask[top:bottom, left:right]


def resize_probabilities(probabilities: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (..., h, w) probabilities to size=(width, height)."""
    width, height = size
    leading = probabilities.shape[:-2]
    flat = probabilities.reshape(-1, 1, *probabilities.shape[-2:]).float()
    resized = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    return resized.reshape(*leading, height, width)


def paste_back(probabilities: torch.Tensor, box: Box, original_size: tuple[int, int]) -> torch.Tensor:
    """Resize (..., s, s) crop probabilities to the box and place them in a zero canvas of the original size."""
    left, top, right, bottom = box
    width, height = original_size
    resized = resize_probabilities(probabilities, (right - left, bottom - top))
    canvas = torch.zeros(*probabilities.shape[:-2], height, width, dtype=resized.dtype, device=resized.device)
    canvas[..., top:bottom, left:right] = resized
    return canvas


def full_size_probabilities(probabilities: np.ndarray, box: Box, original_size: tuple[int, int]) -> np.ndarray:
    """Paste one (S, S) probability map back into an all-zero (H, W) map at its box."""
    return paste_back(torch.from_numpy(np.asarray(probabilities, dtype=np.float32)), box, original_size).numpy()
