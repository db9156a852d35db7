"""The data layer: layouts and pairing, image and mask reading, the array cache, splits, and the real data."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from tatl.data import cache as cache_module
from tatl.data.cache import cached_array, file_fingerprint
from tatl.data.checks import check_dataset
from tatl.data.images import read_image, read_mask, resize_mask
from tatl.data.isic import find_samples
from tatl.data.splits import make_splits, read_splits, stratify, write_splits
from tatl.errors import DataError

W, H = 48, 32


def smooth_image(width: int = W, height: int = H, seed: int = 0) -> Image.Image:
    coarse = np.random.default_rng(seed).integers(0, 255, size=(4, 6, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def write_mask(path: Path, positive: slice = slice(5, 20), size: tuple[int, int] = (W, H)) -> None:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[positive, positive] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def official_layout(root: Path, split: str = "Training", ids=("ISIC_0000001", "ISIC_0000000")) -> Path:
    inputs = root / f"ISIC2018_Task1-2_{split}_Input"
    inputs.mkdir(parents=True)
    (inputs / "ATTRIBUTION.txt").write_text("credits")
    for image_id in ids:
        smooth_image().save(inputs / f"{image_id}.jpg")
        write_mask(root / f"ISIC2018_Task1_{split}_GroundTruth" / f"{image_id}_segmentation.png")
        write_mask(root / f"ISIC2018_Task2_{split}_GroundTruth_v3" / f"{image_id}_attribute_streaks.png")
    return root


# --- layouts and pairing ---------------------------------------------------------------------------------------


def test_official_folders_are_paired_by_stem_and_sorted(tmp_path):
    root = official_layout(tmp_path)
    samples = find_samples(root, attributes=("streaks", "globules"))
    assert [s.image_id for s in samples] == ["ISIC_0000000", "ISIC_0000001"]
    first = samples[0]
    assert first.image_path.parent.name == "ISIC2018_Task1-2_Training_Input"
    assert first.lesion_mask_path.name == "ISIC_0000000_segmentation.png"
    assert first.attribute_mask_paths == {
        "streaks": root / "ISIC2018_Task2_Training_GroundTruth_v3" / "ISIC_0000000_attribute_streaks.png"
    }


def test_several_official_splits_in_one_folder_are_refused(tmp_path):
    official_layout(tmp_path, "Training")
    official_layout(tmp_path, "Validation", ids=("ISIC_0000100",))
    with pytest.raises(DataError, match="several splits.*Training, Validation"):
        find_samples(tmp_path)


def test_two_versions_of_the_task2_ground_truth_are_refused(tmp_path):
    official_layout(tmp_path)
    (tmp_path / "ISIC2018_Task2_Training_GroundTruth_v2").mkdir()
    with pytest.raises(DataError, match="same kind.*_v2.*_v3|same kind.*_v3.*_v2"):
        find_samples(tmp_path)


def test_flat_folder_tree_pairs_any_stem_and_skips_unrelated_files(tmp_path):
    smooth_image().save(tmp_path / "IMD002.JPG")  # upper-case extension
    (tmp_path / "sub").mkdir()
    smooth_image().save(tmp_path / "sub" / "lesion one.png")
    write_mask(tmp_path / "IMD002_segmentation.png")
    write_mask(tmp_path / "sub" / "lesion one_attribute_pigment_network.png")
    write_mask(tmp_path / "IMD002_attribute_streaks.png")  # not asked for: neither an image nor a problem
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "._IMD002.JPG").write_bytes(b"\x00resource fork")
    samples = find_samples(tmp_path, attributes=("pigment_network",))
    assert [s.image_id for s in samples] == ["IMD002", "lesion one"]
    assert samples[0].lesion_mask_path == tmp_path / "IMD002_segmentation.png"
    assert samples[0].attribute_mask_paths == {}
    assert samples[1].lesion_mask_path is None
    assert list(samples[1].attribute_mask_paths) == ["pigment_network"]


def test_longest_attribute_name_wins(tmp_path):
    smooth_image().save(tmp_path / "a.jpg")
    write_mask(tmp_path / "a_attribute_pigment_network.png")
    (sample,) = find_samples(tmp_path, attributes=("network", "pigment_network"))
    assert list(sample.attribute_mask_paths) == ["pigment_network"]


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "has space"])
def test_attribute_names_that_are_not_identifiers_are_refused(tmp_path, name):
    smooth_image().save(tmp_path / "a.jpg")
    with pytest.raises(DataError, match="not valid"):
        find_samples(tmp_path, attributes=(name,))


def test_find_samples_refuses_unusable_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_samples(tmp_path / "missing")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        find_samples(tmp_path / "file.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image found"):
        find_samples(tmp_path / "empty")
    smooth_image().save(tmp_path / "empty" / "a.jpg")
    smooth_image().save(tmp_path / "empty" / "a.png")
    with pytest.raises(DataError, match=r"'a'.*a\.jpg.*a\.png"):
        find_samples(tmp_path / "empty")


# --- images and masks ------------------------------------------------------------------------------------------


def test_draft_read_is_close_to_a_full_decode_and_really_drafts(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    smooth_image(1600, 1200).save(path, quality=92)
    scales = []
    original_draft = JpegImageFile.draft

    def spy(self, mode, size):
        result = original_draft(self, mode, size)
        scales.append(self.size)
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    drafted = read_image(path, size=(128, 96))
    assert scales == [(200, 150)]  # libjpeg decoded at 1/8 scale: still >= 128x96
    full = np.array(Image.open(path).convert("RGB").resize((128, 96), Image.Resampling.BILINEAR))
    assert drafted.shape == (96, 128, 3) and drafted.dtype == np.uint8
    assert np.abs(drafted.astype(int) - full).mean() < 2.0


def test_box_is_cropped_in_original_pixels_before_resizing(tmp_path):
    pixels = np.asarray(smooth_image(200, 100))
    Image.fromarray(pixels).save(tmp_path / "lossless.png")
    box = (30, 10, 130, 60)
    exact = read_image(tmp_path / "lossless.png", box=box)
    assert np.array_equal(exact, pixels[10:60, 30:130])
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=95)
    resized = read_image(tmp_path / "photo.jpg", size=(25, 12), box=box)
    reference = np.asarray(Image.fromarray(exact).resize((25, 12), Image.Resampling.BILINEAR))
    assert resized.shape == (12, 25, 3)
    assert np.abs(resized.astype(int) - reference).mean() < 4.0
    with pytest.raises(DataError, match="outside"):
        read_image(tmp_path / "photo.jpg", box=(0, 0, 300, 50))


def test_read_mask_returns_bool_and_checks_the_size(tmp_path):
    write_mask(tmp_path / "m.png", positive=slice(0, 4))
    mask = read_mask(tmp_path / "m.png", expected_size=(W, H))
    assert mask.dtype == bool and mask.shape == (H, W) and mask.sum() == 16
    with pytest.raises(DataError, match=r"m\.png.*48x32 but its image is 50x32"):
        read_mask(tmp_path / "m.png", expected_size=(50, 32))


def test_resize_mask_keeps_area_when_shrinking_and_is_nearest_when_enlarging():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:4, 0:4] = True  # one 2x2 output pixel fully covered, the rest empty
    mask[4:5, 4:5] = True  # a quarter of an output pixel: below half, dropped
    mask[4:6, 6:7] = True  # exactly half: kept ("at least half")
    small = resize_mask(mask, (4, 4))
    assert small.dtype == bool and small.shape == (4, 4)
    assert small[:2, :2].all() and small[2, 3] and small.sum() == 5
    large = resize_mask(small, (8, 8))
    assert np.array_equal(large, np.kron(small, np.ones((2, 2), dtype=bool)))
    cropped_box = resize_mask(mask[:6], (4, 3))  # width and height in Pillow's order
    assert cropped_box.shape == (3, 4)
    same = resize_mask(mask, (8, 8))
    assert np.array_equal(same, mask) and same is not mask


def write_grey(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint8)).save(path)  # 2-D uint8: a mode-L PNG


def union_dataset(root: Path) -> tuple[list, dict[str, np.ndarray], int]:
    """Four 16x16 images and, by hand, the union each must get at binarize threshold 128 (value > 128 positive):
    overlapping attributes, all-zero attribute masks (an ISIC image without attribute), no attribute file at all,
    and a soft mask with grey values on both sides of the threshold."""
    side, expected = 16, {}
    for image_id in ("both", "empty", "grey", "no_files"):
        smooth_image(side, side).save(root / f"{image_id}.png")
        expected[image_id] = np.zeros((side, side), dtype=bool)
    globules, streaks = np.zeros((side, side), np.uint8), np.zeros((side, side), np.uint8)
    globules[1:6, 1:9], streaks[4:12, 6:14] = 255, 255  # overlapping on rows 4-5, columns 6-8
    write_grey(root / "both_attribute_globules.png", globules)
    write_grey(root / "both_attribute_streaks.png", streaks)
    expected["both"][1:6, 1:9] = expected["both"][4:12, 6:14] = True
    for name in ("globules", "streaks"):
        write_grey(root / f"empty_attribute_{name}.png", np.zeros((side, side)))
    soft = np.zeros((side, side), np.uint8)
    soft[0:4], soft[4:8], soft[8:12], soft[12:16] = 127, 128, 129, 200  # rows of grey values around 128
    write_grey(root / "grey_attribute_streaks.png", soft)
    write_grey(root / "grey_attribute_globules.png", np.zeros((side, side)))
    expected["grey"][8:16] = True  # 129 and 200 are positive, 127 and 128 are not
    return find_samples(root, attributes=("globules", "streaks")), expected, side


def test_stage2_union_target_is_the_pixel_or_of_the_attribute_masks(tmp_path):
    # What Stage 2 trains and is validated on (load_masks(..., [UNION], ...) through groups.stage_dataset) and is scored
    # against at original size (full_size_target(sample, UNION, ...) in pipeline.scoring): Eq. 4 of the paper.
    import torch

    from tatl.constants import UNION
    from tatl.data.dataset import SegmentationDataset, full_size_target, load_masks

    (tmp_path / "data").mkdir()
    samples, expected, side = union_dataset(tmp_path / "data")
    assert [s.image_id for s in samples] == ["both", "empty", "grey", "no_files"]
    assert samples[3].attribute_mask_paths == {}
    sizes = {s.image_id: (side, side) for s in samples}
    for sample in samples:
        union = full_size_target(sample, UNION, sizes[sample.image_id], binarize_threshold=128)
        assert union.dtype == bool and np.array_equal(union, expected[sample.image_id]), sample.image_id
    masks = load_masks(samples, [UNION], side, None, sizes, tmp_path / "cache", binarize_threshold=128)
    assert masks.shape == (4, 1, side, side) and masks.dtype == np.uint8 and set(np.unique(masks)) == {0, 1}
    for index, sample in enumerate(samples):
        assert np.array_equal(masks[index, 0], expected[sample.image_id]), sample.image_id
    assert not masks[1].any() and not masks[3].any()  # no attribute: an all-zero target, still trained on
    assert masks[0].sum() == 5 * 8 + 8 * 8 - 2 * 3  # the overlap is counted once
    _, target = SegmentationDataset(np.zeros((4, side, side, 3), np.uint8), masks, targets=[UNION])[0]
    assert target.dtype == torch.float32 and np.array_equal(target[0].numpy(), expected["both"])
    # The threshold is part of the cache key: 128 itself becomes positive at 127, without a stale cached answer.
    lower = load_masks(samples, [UNION], side, None, sizes, tmp_path / "cache", binarize_threshold=127)
    assert np.array_equal(lower[2, 0], np.arange(side)[:, None].repeat(side, axis=1) >= 4)
    with pytest.raises(DataError, match=r"grey_attribute_streaks\.png.*values other than 0 and 255"):
        full_size_target(samples[2], UNION, sizes["grey"])  # a soft mask without a threshold is refused
    with pytest.raises(DataError, match=r"grey_attribute_streaks\.png"):
        load_masks(samples, [UNION], side, None, sizes, None)


# --- cache -----------------------------------------------------------------------------------------------------


def test_cache_round_trip_reuses_the_file_and_writes_atomically(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return np.arange(24, dtype=np.uint8).reshape(2, 3, 4)

    key = {"what": "images", "size": 4, "files": [file_fingerprint(Path(__file__))]}
    first = cached_array(tmp_path / "cache", key, build)
    second = cached_array(tmp_path / "cache", key, build)
    assert len(calls) == 1
    assert np.array_equal(first, build()) and np.array_equal(second, first)
    assert isinstance(second, np.memmap) and not second.flags.writeable
    files = list((tmp_path / "cache").iterdir())
    assert [f.suffix for f in files] == [".npy"] and files[0].name.startswith("images-")  # no temp file left
    cached_array(tmp_path / "cache", {**key, "size": 8}, build)  # another key: another entry
    assert len(calls) == 3 and len(list((tmp_path / "cache").iterdir())) == 2
    assert cached_array(None, key, build).flags.writeable and len(calls) == 4


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    key = {"what": "masks"}
    cached_array(tmp_path, key, lambda: np.ones(3))
    (entry,) = tmp_path.glob("*.npy")
    entry.write_bytes(b"not numpy")
    assert np.array_equal(cached_array(tmp_path, key, lambda: np.zeros(3)), np.zeros(3))


def test_full_disk_names_the_cache_folder_and_the_way_out(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.np, "save", no_space)
    with pytest.raises(DataError, match=r"cache.*disk full.*data\.cache=false") as caught:
        cached_array(tmp_path / "cache", {"what": "images"}, lambda: np.ones(10))
    assert str(tmp_path / "cache") in str(caught.value)
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary file is removed


def test_decoded_image_cache_means_no_decoding_in_later_epochs_until_an_image_changes(tmp_path, monkeypatch):
    # load_images is what every stage and epoch calls: with the same cache folder, the second call must read the
    # cached arrays (no read_image call, no JPEG decoded at all), and an edited image must be decoded again.
    from PIL import ImageFile

    from tatl.data import dataset as dataset_module
    from tatl.data.dataset import load_images

    def save_jpeg(seed: int, path: Path) -> None:  # padded to one length: an edit changes only the mtime and pixels
        encoded = io.BytesIO()
        smooth_image(96, 64, seed=seed).save(encoded, "JPEG", quality=90)
        path.write_bytes(encoded.getvalue().ljust(8192, b"\0"))  # libjpeg ignores bytes after the end marker

    (tmp_path / "data").mkdir()
    for index in range(3):
        save_jpeg(index, tmp_path / "data" / f"ISIC_000000{index}.jpg")
    samples = find_samples(tmp_path / "data", attributes=())
    reads, jpeg_decodes = [], []
    real_read_image, real_load = dataset_module.read_image, ImageFile.ImageFile.load

    def counting_read_image(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real_read_image(path, *args, **kwargs)

    def counting_load(self):
        if self.format == "JPEG" and self.tile:  # tiles left to decode: a real decode, not a repeated load()
            jpeg_decodes.append(self.filename)
        return real_load(self)

    monkeypatch.setattr(dataset_module, "read_image", counting_read_image)
    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    cache = tmp_path / "cache"
    first = np.array(load_images(samples, 32, None, cache))
    assert sorted(reads) == [f"ISIC_000000{i}.jpg" for i in range(3)] and len(jpeg_decodes) == 3
    reads.clear()
    jpeg_decodes.clear()
    second = load_images(samples, 32, None, cache)  # a later epoch or stage
    assert reads == [] and jpeg_decodes == []
    assert isinstance(second, np.memmap) and second.shape == (3, 32, 32, 3) and np.array_equal(second, first)
    assert first[0].std() > 5 and not np.array_equal(first[0], first[1])  # real, distinct pictures were cached
    edited = tmp_path / "data" / "ISIC_0000001.jpg"
    before = edited.stat()
    save_jpeg(9, edited)
    later = before.st_mtime_ns + 5_000_000_000  # a new mtime even on a file system with a coarse clock
    os.utime(edited, ns=(later, later))
    assert edited.stat().st_size == before.st_size  # same length: only the mtime tells the cache it changed
    third = load_images(samples, 32, None, cache)
    # The key covers the whole list, so every image is decoded again; the edited one gives the new pixels.
    assert sorted(reads) == [f"ISIC_000000{i}.jpg" for i in range(3)] and len(jpeg_decodes) == 3
    assert np.array_equal(third[0], first[0]) and np.array_equal(third[2], first[2])
    assert not np.array_equal(third[1], first[1])
    assert np.array_equal(third[1], real_read_image(edited, size=(32, 32)))
    reads.clear()
    assert np.array_equal(load_images(samples, 32, None, cache), third) and reads == []  # and cached again


# --- splits ----------------------------------------------------------------------------------------------------


def presence_with_rare_attribute() -> dict[str, list[str]]:
    presence = {f"img{i:03d}": ["pigment_network"] if i % 2 else [] for i in range(100)}
    for i in range(0, 100, 10):  # streaks in 10 images: rarest, at least 2 per fold possible
        presence[f"img{i:03d}"] = ["streaks", "pigment_network"]
    return presence


def test_splits_are_deterministic_disjoint_and_cover_every_id():
    presence = presence_with_rare_attribute()
    splits = make_splits(presence, val_fraction=0.2, n_folds=5, seed=3)
    assert splits == make_splits(presence, val_fraction=0.2, n_folds=5, seed=3)
    assert splits["val"] != make_splits(presence, val_fraction=0.2, n_folds=5, seed=4)["val"]
    assert not set(splits["train"]) & set(splits["val"])
    assert set(splits["train"]) | set(splits["val"]) == set(presence)
    assert len(splits["val"]) == 20
    folds = splits["folds"]
    assert sorted(i for fold in folds for i in fold) == sorted(presence)
    assert all(fold == sorted(fold) for fold in [*folds, splits["train"], splits["val"]])
    assert {len(fold) for fold in folds} == {20}


def test_rare_attribute_reaches_every_fold_and_val():
    presence = presence_with_rare_attribute()
    assert list(stratify(presence))[0] == "streaks"  # rarest stratum first
    splits = make_splits(presence, val_fraction=0.2, n_folds=5, seed=0)
    streaks = {i for i, shown in presence.items() if "streaks" in shown}
    assert all(len(streaks & set(fold)) == 2 for fold in splits["folds"])
    assert len(streaks & set(splits["val"])) == 2
    two_rare = {**{f"x{i}": [] for i in range(20)}, "r1": ["globules"], "r2": ["globules"]}
    assert len({"r1", "r2"} & set(make_splits(two_rare, 0.1, 2)["val"])) == 1  # 10% of 2 rounds to 0: still one


def test_splits_file_round_trip_and_broken_files(tmp_path):
    splits = make_splits(presence_with_rare_attribute(), seed=1)
    write_splits(tmp_path / "splits.json", splits)
    assert read_splits(tmp_path / "splits.json") == splits
    assert [p.name for p in tmp_path.iterdir()] == ["splits.json"]
    broken = {**splits, "val": splits["val"] + splits["train"][:1]}
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(DataError, match=r"bad\.json.*train and val share"):
        read_splits(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json.*not a readable JSON"):
        read_splits(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="missing keys"):
        read_splits(tmp_path / "bad.json")


# --- real data -------------------------------------------------------------------------------------------------


def test_real_isic_sample_loads_with_valid_masks(isic_sample):
    samples = find_samples(isic_sample, attributes=("pigment_network",))
    assert len(samples) == 6 and samples[0].image_id == "ISIC_0000000"
    assert all(s.lesion_mask_path and list(s.attribute_mask_paths) == ["pigment_network"] for s in samples)
    report = check_dataset(isic_sample, ("pigment_network",), need_lesion=True)
    assert report.errors() == []
    assert set(report.sizes.values()) == {(1022, 767)}
    assert 0 < report.attribute_pixel_fraction["pigment_network"] < 0.5
    mask = read_mask(samples[0].attribute_mask_paths["pigment_network"], report.sizes["ISIC_0000000"])
    image = read_image(samples[0].image_path, size=(256, 192))
    assert mask.any() and image.shape == (192, 256, 3)


def test_real_ph2_is_a_valid_lesion_only_dataset(ph2):
    report = check_dataset(ph2, need_lesion=True, need_attributes=False)
    assert report.errors() == []
    assert len(report.samples) == 150 and all(s.image_id.startswith("IMD") for s in report.samples)
    assert report.mask_stats["lesion"][0] == 150 and 0.05 < report.mask_stats["lesion"][2] < 0.8
    assert all(present == frozenset() for present in report.presence.values())
