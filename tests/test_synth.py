"""The synthetic ISIC-like dataset: layout, determinism, mask rules, attribute frequencies, arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tatl.commands import synth as synth_command
from tatl.data.synth import (
    ATTRIBUTE_DIR,
    ATTRIBUTE_FREQUENCIES,
    INPUT_DIR,
    LESION_DIR,
    render_sample,
    write_synthetic_dataset,
)
from tatl.errors import DataError

ATTRIBUTES = ["globules", "milia_like_cyst", "negative_network", "pigment_network", "streaks"]


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L", path
        return np.asarray(image)


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_names_and_mask_format(tmp_path):
    ids = write_synthetic_dataset(tmp_path / "d", n=4, size=48, seed=3)
    root = tmp_path / "d"
    assert ids == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]
    assert sorted(p.name for p in root.iterdir()) == sorted([INPUT_DIR, LESION_DIR, ATTRIBUTE_DIR, "README.txt"])
    assert INPUT_DIR == "ISIC2018_Task1-2_Training_Input" and ATTRIBUTE_DIR == "ISIC2018_Task2_Training_GroundTruth_v3"
    assert len(list((root / ATTRIBUTE_DIR).iterdir())) == 4 * 5
    readme = (root / "README.txt").read_text()
    assert "synthetic" in readme.lower() and "seed 3" in readme and "generator version" in readme
    for image_id in ids:
        with Image.open(root / INPUT_DIR / f"{image_id}.jpg") as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (48, 36)
        masks = [root / LESION_DIR / f"{image_id}_segmentation.png"]
        masks += [root / ATTRIBUTE_DIR / f"{image_id}_attribute_{name}.png" for name in ATTRIBUTES]
        for path in masks:
            mask = read_mask(path)
            assert mask.shape == (36, 48) and set(np.unique(mask)) <= {0, 255}, path
        assert read_mask(masks[0]).any(), "every image has a lesion"
        sample = render_sample(int(image_id[5:]), seed=3, size=48)  # the files hold exactly the rendered masks
        assert np.array_equal(read_mask(masks[0]) > 0, sample.lesion)
        assert all(
            np.array_equal(read_mask(path) > 0, sample.attributes[name])
            for path, name in zip(masks[1:], ATTRIBUTES, strict=True)
        )


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    write_synthetic_dataset(tmp_path / "a", n=3, size=40, seed=7)
    write_synthetic_dataset(tmp_path / "b", n=3, size=40, seed=7)
    write_synthetic_dataset(tmp_path / "c", n=3, size=40, seed=8)
    first = all_bytes(tmp_path / "a")
    assert first == all_bytes(tmp_path / "b")
    other = all_bytes(tmp_path / "c")
    assert first.keys() == other.keys()
    jpgs = [name for name in first if name.endswith(".jpg")]
    assert all(first[name] != other[name] for name in jpgs)


def test_image_k_does_not_depend_on_n(tmp_path):
    write_synthetic_dataset(tmp_path / "few", n=2, size=40, seed=1)
    write_synthetic_dataset(tmp_path / "more", n=5, size=40, seed=1)
    few, more = all_bytes(tmp_path / "few"), all_bytes(tmp_path / "more")
    assert all(more[name] == data for name, data in few.items() if name != "README.txt")


def test_attributes_lie_inside_the_lesion_and_present_masks_are_not_empty():
    # The rule implemented: an attribute mask is its region AND the lesion mask, so no pixel lies outside.
    seen = set()
    for index in range(60):
        sample = render_sample(index, seed=0, size=64)
        assert sample.image.shape == (*sample.lesion.shape, 3) and sample.image.dtype == np.uint8
        for name, mask in sample.attributes.items():
            assert not (mask & ~sample.lesion).any(), (index, name)
            if mask.any():
                seen.add(name)
    assert {"pigment_network", "globules", "milia_like_cyst"} <= seen


def test_textures_change_the_pixels_inside_their_masks():
    # Pigment network darkens its region, milia-like cysts add bright spots: compare to the rest of the lesion.
    darker, brighter = [], []
    for index in range(80):
        sample = render_sample(index, seed=0, size=128, hairs=False)
        grey = sample.image.mean(axis=2)
        network = sample.attributes["pigment_network"]
        plain = sample.lesion & ~np.any(list(sample.attributes.values()), axis=0)
        if network.sum() > 50 and plain.sum() > 50:
            darker.append(grey[network].mean() < grey[plain].mean())
        cysts = sample.attributes["milia_like_cyst"]
        if cysts.sum() > 50 and plain.sum() > 50:
            brighter.append(np.percentile(grey[cysts], 99) > np.percentile(grey[plain], 99) + 20)
    assert len(darker) >= 10 and np.mean(darker) > 0.8
    assert len(brighter) >= 5 and np.mean(brighter) > 0.8


def test_attribute_frequencies_match_isic_2018():
    n = 400
    present = np.array(
        [[render_sample(i, seed=0, size=32).attributes[name].any() for name in ATTRIBUTES] for i in range(n)]
    )
    for column, name in enumerate(ATTRIBUTES):
        target = ATTRIBUTE_FREQUENCIES[name]
        tolerance = 3 * np.sqrt(target * (1 - target) / n)  # three standard errors: 2.4 to 7.4 points
        assert abs(present[:, column].mean() - target) < tolerance, name
    none_share = 1 - present.any(axis=1).mean()
    expected_none = np.prod([1 - ATTRIBUTE_FREQUENCIES[name] for name in ATTRIBUTES])
    assert abs(expected_none - 0.2) < 0.01 and abs(none_share - expected_none) < 0.06


def test_image_size_range_gives_varied_sizes_with_matching_masks(tmp_path):
    ids = write_synthetic_dataset(tmp_path / "d", n=6, seed=2, image_size_range=(40, 90))
    sizes = set()
    for image_id in ids:
        with Image.open(tmp_path / "d" / INPUT_DIR / f"{image_id}.jpg") as image:
            width, height = image.size
        assert 40 <= width <= 90 and height == width * 3 // 4
        sizes.add(width)
        mask = read_mask(tmp_path / "d" / ATTRIBUTE_DIR / f"{image_id}_attribute_streaks.png")
        assert mask.shape == (height, width)
        assert read_mask(tmp_path / "d" / LESION_DIR / f"{image_id}_segmentation.png").shape == (height, width)
    assert len(sizes) >= 3


def test_presence_does_not_depend_on_the_size():
    for index in range(10):
        small, large = render_sample(index, size=32), render_sample(index, size=96)
        assert {k: m.any() for k, m in small.attributes.items()} == {k: m.any() for k, m in large.attributes.items()}


def test_no_hairs_changes_only_the_hair_pixels():
    changed = []
    for index in range(8):
        with_hairs, without = render_sample(index, size=96), render_sample(index, size=96, hairs=False)
        assert all(np.array_equal(with_hairs.attributes[k], without.attributes[k]) for k in ATTRIBUTES)
        differs = (with_hairs.image != without.image).any(axis=2)
        changed.append(differs.mean())
        if differs.any():  # hairs are dark: where they differ, the image with hairs is darker
            assert with_hairs.image[differs].mean() < without.image[differs].mean()
    assert max(changed) > 0.002 and max(changed) < 0.15


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n": 0}, "n must be"), ({"size": 31}, "size must be"), ({"image_size_range": (90, 40)}, "range")],
)
def test_bad_arguments_are_data_errors(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        write_synthetic_dataset(tmp_path / "d", **{"n": 2, **kwargs})
    assert not (tmp_path / "d").exists()


def test_refuses_foreign_folders_and_files_but_replaces_a_previous_synthetic_dataset(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a tatl synthetic dataset"):
        write_synthetic_dataset(foreign, n=1, size=32)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_synthetic_dataset(a_file, n=1, size=32)
    (tmp_path / "empty").mkdir()
    assert write_synthetic_dataset(tmp_path / "empty", n=1, size=32) == ["ISIC_0000000"]
    write_synthetic_dataset(tmp_path / "again", n=3, size=32)
    write_synthetic_dataset(tmp_path / "again", n=2, size=32)  # fewer images: no stale files of the first run
    assert len(list((tmp_path / "again" / INPUT_DIR).iterdir())) == 2
    assert len(list((tmp_path / "again" / ATTRIBUTE_DIR).iterdir())) == 2 * 5


def test_command_writes_the_dataset_and_prints_counts(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth_command.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "d"), "--n", "5", "--size", "32", "--seed", "4", "--no-hairs"])
    assert (args.n, args.size, args.seed, args.no_hairs, args.image_size_range) == (5, 32, 4, True, None)
    assert synth_command.run(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 5 synthetic images" in printed and all(name in printed for name in ATTRIBUTES)
    assert len(list((tmp_path / "d" / INPUT_DIR).iterdir())) == 5
    assert synth_command.__doc__ and "examples" in synth_command.EXAMPLES
    ranged = parser.parse_args([str(tmp_path / "e"), "--image-size-range", "40", "60"])
    assert ranged.image_size_range == [40, 60] and ranged.n == 300
