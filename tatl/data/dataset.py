"""Stage inputs as arrays, and the torch dataset that augments them.

Every stage trains on images resized to a square side (full images, or Stage-1 lesion crops) with one mask per
target ("lesion", "union" or an attribute name). They are decoded once into uint8 arrays, cached on disk per
(dataset, size, boxes), so later epochs and stages do no JPEG decoding. Augmentation is seeded per
(seed, epoch, index): the same run gives the same batches whatever the worker count, and resumes exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import albumentations as A
import numpy as np
import torch

from tatl import constants, logs
from tatl.constants import LESION, UNION
from tatl.data.cache import cached_array, file_fingerprint
from tatl.data.crops import Box, crop_mask, whole_image_box
from tatl.data.images import read_image, read_mask, resize_mask
from tatl.data.isic import Sample

IMAGENET_MEAN = np.array(constants.IMAGENET_MEAN, dtype=np.float32)
IMAGENET_STD = np.array(constants.IMAGENET_STD, dtype=np.float32)


def load_images(
    samples: Sequence[Sample], size: int, boxes: dict[str, Box] | None, cache_dir: Path | None
) -> np.ndarray:
    """(N, size, size, 3) uint8: each image (or its box) resized to a square."""
    key = {
        "what": "images",
        "size": size,
        "files": [file_fingerprint(s.image_path) for s in samples],
        "boxes": [list(boxes[s.image_id]) if boxes else None for s in samples],
    }

    def build() -> np.ndarray:
        def one(sample: Sample) -> np.ndarray:
            box = boxes[sample.image_id] if boxes else None
            return read_image(sample.image_path, size=(size, size), box=box)

        with ThreadPoolExecutor(max_workers=4) as pool:  # Pillow releases the GIL while decoding
            decoded = pool.map(one, samples)
            return np.stack(list(logs.progress(decoded, f"decoding images ({size} px)", len(samples), "image")))

    return cached_array(cache_dir, key, build)


def load_masks(
    samples: Sequence[Sample],
    targets: Sequence[str],
    size: int,
    boxes: dict[str, Box] | None,
    sizes: dict[str, tuple[int, int]],
    cache_dir: Path | None,
    binarize_threshold: int | None = None,
) -> np.ndarray:
    """(N, len(targets), size, size) uint8 {0,1}. "union" is the pixel OR of the attributes (Eq. 4), at full size."""
    key = {
        "what": "masks",
        "size": size,
        "targets": list(targets),
        "binarize": binarize_threshold,
        "files": [_mask_fingerprints(s) for s in samples],
        "boxes": [list(boxes[s.image_id]) if boxes else None for s in samples],
    }

    def build() -> np.ndarray:
        def one(sample: Sample) -> np.ndarray:
            box = boxes[sample.image_id] if boxes else whole_image_box(sizes[sample.image_id])
            full = [full_size_target(sample, t, sizes[sample.image_id], binarize_threshold) for t in targets]
            return np.stack([resize_mask(crop_mask(m, box), (size, size)) for m in full]).astype(np.uint8)

        with ThreadPoolExecutor(max_workers=4) as pool:
            decoded = pool.map(one, samples)
            return np.stack(list(logs.progress(decoded, f"decoding masks ({size} px)", len(samples), "image")))

    return cached_array(cache_dir, key, build)


def full_size_target(
    sample: Sample, target: str, size: tuple[int, int], binarize_threshold: int | None = None
) -> np.ndarray:
    """The (H, W) bool mask of one target at the image's original size."""
    if target == LESION:
        return read_mask(sample.lesion_mask_path, size, binarize_threshold)
    if target == UNION:
        union = np.zeros((size[1], size[0]), dtype=bool)
        for path in sample.attribute_mask_paths.values():
            union |= read_mask(path, size, binarize_threshold)
        return union
    return read_mask(sample.attribute_mask_paths[target], size, binarize_threshold)


def _mask_fingerprints(sample: Sample) -> list:
    paths = [sample.lesion_mask_path, *sorted(sample.attribute_mask_paths.values())]
    return [file_fingerprint(p) for p in paths if p is not None]


def build_augmentation(strong: bool = False) -> A.Compose:
    """Flips, 90-degree rotations and mild colour jitter: dermoscopy has no canonical orientation.

    strong=True adds the paper's augmentation baseline (Section 5.5): random rotation, shift, zoom and brightness.
    """
    transforms = [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.5),
    ]
    if strong:
        transforms += [
            A.Affine(rotate=(-30, 30), translate_percent=(-0.1, 0.1), scale=(0.8, 1.2), p=0.8),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.1, p=0.5),
        ]
    return A.Compose(transforms)


class SegmentationDataset(torch.utils.data.Dataset):
    """Pre-decoded images and masks -> (normalised float image CxHxW, float masks KxHxW)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray | None, augment: bool = False, seed: int = 0,
                 copies: int = 1, strong: bool = False, targets: list[str] | None = None):
        self.images, self.masks, self.copies = images, masks, copies  # copies: an enlarged, augmented set
        self.targets = targets  # the name of each mask channel; the engine matches heads to channels by name
        self.augmentation = build_augmentation(strong) if augment or strong else None
        self.seed, self.epoch = seed, 0
        self.weights: np.ndarray | None = None  # train.sampling rare: each image's draw probability (data.sampling)

    def set_epoch(self, epoch: int) -> None:
        """Augmentations depend on (seed, epoch, index) only, so a resumed epoch sees the same ones."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images) * self.copies

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, masks = self.pixels(index)
        return normalize(image), torch.from_numpy(np.array(masks, dtype=np.float32))  # copy: cache is read-only

    def pixels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index` as training sees it this epoch, before normalisation: uint8 HxWx3 image, KxHxW masks."""
        item = index % len(self.images)
        image = np.asarray(self.images[item])
        masks = np.asarray(self.masks[item]) if self.masks is not None else np.zeros((0, *image.shape[:2]), np.uint8)
        if self.augmentation is not None:
            sample_seed = hash((self.seed, self.epoch, index)) & 0xFFFFFFFF  # ints hash deterministically
            self.augmentation.set_random_state(np.random.default_rng(sample_seed), random.Random(sample_seed))
            out = self.augmentation(image=image, masks=list(masks))
            image, masks = out["image"], np.stack(out["masks"]) if len(masks) else masks
        return image, masks


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float CxHxW with ImageNet mean/std (what the encoders expect)."""
    array = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
