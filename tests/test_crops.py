"""Stage-1 box arithmetic and paste-back."""

import numpy as np
import torch

from tatl.data.crops import crop_mask, lesion_box, paste_back


def test_box_scales_from_mask_to_original_and_adds_margin():
    mask = np.zeros((10, 20), dtype=bool)  # a 20x10 prediction of a 200x100 image: 10 px per mask pixel
    mask[2:5, 4:8] = True
    box, fell_back = lesion_box(mask, (200, 100), margin=5)
    assert not fell_back
    assert box == (40 - 5, 20 - 5, 80 + 5, 50 + 5)


def test_box_is_clipped_at_the_borders():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:2, 6:8] = True
    box, _ = lesion_box(mask, (80, 80), margin=40)
    assert box == (20, 0, 80, 60)


def test_empty_or_tiny_prediction_falls_back_to_whole_image():
    empty = np.zeros((16, 16), dtype=bool)
    assert lesion_box(empty, (300, 200), margin=40) == ((0, 0, 300, 200), True)
    tiny = empty.copy()
    tiny[3, 3] = True  # 1/256 of the image
    assert lesion_box(tiny, (300, 200), margin=40, min_fraction=0.01)[1] is True
    assert lesion_box(tiny, (300, 200), margin=40, min_fraction=0.001)[1] is False


def test_paste_back_puts_a_crop_exactly_where_it_came_from():
    rng = np.random.default_rng(0)
    full = rng.random((60, 90)) > 0.5
    box = (10, 5, 42, 37)  # 32x32, the crop size: resizing is the identity
    crop = crop_mask(full, box)
    pasted = paste_back(torch.from_numpy(crop.astype(np.float32)), box, (90, 60)).numpy()
    assert pasted.shape == (60, 90)
    assert np.array_equal(pasted[5:37, 10:42] > 0.5, crop)
    outside = np.ones_like(full)
    outside[5:37, 10:42] = False
    assert pasted[outside].max() == 0


def test_paste_back_resizes_to_the_box():
    probabilities = torch.ones(2, 16, 16)  # two maps at stage resolution
    pasted = paste_back(probabilities, (3, 4, 53, 29), (64, 48))
    assert pasted.shape == (2, 48, 64)
    assert pasted.sum().item() == 2 * 50 * 25
