"""The synthetic ISIC-like dataset: layout, determinism, mask rules, attribute frequencies, arguments."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tatl.commands import synth as synth_command
from tatl.data import synth as synth_module
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


def percentile_below(grey: np.ndarray, mask: np.ndarray, reference: np.ndarray, q: float, margin: float) -> bool:
    """The q-th percentile of grey over mask is below that over reference by more than margin."""
    return np.percentile(grey[mask], q) < np.percentile(grey[reference], q) - margin


TEXTURE_IMAGES = 400  # at the ISIC frequencies: ~230 pigment network, ~100 globules and cysts, ~30 and ~12 rarer


@pytest.fixture(scope="module")
def rendered_with_draws():
    """(sample, lesion depth, draws) of TEXTURE_IMAGES images at 128 px without hairs. Each draw is (attribute,
    region, grey change): the grey image right after minus right before that attribute's texture was drawn,
    recorded by a spy around synth._draw_attribute (which still draws, so the images are the real ones). Depth is
    the distance to the lesion's outside over its largest value: 0 at the rim, 1 at the lesion's deepest point."""
    draws: list[tuple[str, np.ndarray, np.ndarray]] = []
    draw = synth_module._draw_attribute

    def spy(rng, name, image, lesion_colour, geo):
        before = image.mean(axis=2)
        region = draw(rng, name, image, lesion_colour, geo)
        draws.append((name, region.copy(), image.mean(axis=2) - before))
        return region

    rendered = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synth_module, "_draw_attribute", spy)
        for index in range(TEXTURE_IMAGES):
            draws.clear()
            sample = render_sample(index, seed=0, size=128, hairs=False)
            depth = ndimage.distance_transform_edt(sample.lesion)
            rendered.append((sample, depth / depth.max(), list(draws)))
    return rendered


def test_textures_change_the_pixels_inside_their_masks(rendered_with_draws):
    # In the final images, each attribute's pixels differ from the plain lesion (no attribute) of the same image in
    # its texture's direction: a low percentile for dark marks, a high one for bright marks, as the marks cover only
    # part of the region. Streaks lie at the rim, which is lighter than the centre: compare with the plain rim.
    seen = {name: [] for name in ATTRIBUTES}
    for sample, depth, _ in rendered_with_draws:
        grey = sample.image.mean(axis=2).astype(np.float64)
        masks = sample.attributes
        plain = sample.lesion & ~np.any(list(masks.values()), axis=0)
        rim = plain & (depth < 0.4)
        if plain.sum() < 50:
            continue
        lower = partial(percentile_below, grey)
        if masks["pigment_network"].sum() > 50:  # a dark mesh over most of the region: darker on average
            seen["pigment_network"].append(grey[masks["pigment_network"]].mean() < grey[plain].mean())
        if masks["negative_network"].sum() > 50:  # pale lines (brighter top) around darkened cells (darker bottom)
            network = masks["negative_network"]
            seen["negative_network"].append(lower(plain, network, 95, 5) and lower(network, plain, 5, 5))
        if masks["globules"].sum() > 50:  # near-black dots
            seen["globules"].append(lower(masks["globules"], plain, 5, 10))
        if masks["milia_like_cyst"].sum() > 50:  # white-yellow spots
            seen["milia_like_cyst"].append(lower(plain, masks["milia_like_cyst"], 99, 20))
        if masks["streaks"].sum() > 50 and rim.sum() > 50:  # dark lines in a rim sector
            seen["streaks"].append(lower(masks["streaks"], rim, 10, 10))
    minimum = {"pigment_network": 100, "globules": 40, "milia_like_cyst": 40, "negative_network": 10, "streaks": 5}
    for name, results in seen.items():
        assert len(results) >= minimum[name] and np.mean(results) > 0.9, (name, len(results), np.mean(results))


def test_each_texture_is_drawn_only_inside_its_mask_and_changes_it_its_way(rendered_with_draws):
    # At the moment each texture is drawn (before later textures, vignette and grain): nothing outside the mask
    # changes, and inside it the pixels move in the texture's direction, with the texture's structure: meshes are
    # connected lines enclosing many cells, dots are many separate marks, streaks lie at the lesion rim.
    dark_shares, bright_shares, structure, streak_depths = ({n: [] for n in ATTRIBUTES} for _ in range(4))
    for sample, depth, draws in rendered_with_draws:
        assert sorted(name for name, _, _ in draws) == sorted(n for n, m in sample.attributes.items() if m.any())
        for name, region, change in draws:
            assert np.array_equal(region, sample.attributes[name]), name  # the region drawn is the mask written
            assert not change[~region].any(), f"image {name} texture changed pixels outside its mask"
            darkened, brightened = region & (change < -10), region & (change > 10)
            dark_shares[name].append(darkened.sum() / region.sum())
            bright_shares[name].append(brightened.sum() / region.sum())
            marks = brightened if name in ("negative_network", "milia_like_cyst") else darkened
            inner = ndimage.binary_erosion(region, iterations=2)  # cells: unmarked pieces away from the border
            structure[name].append((ndimage.label(marks)[1], ndimage.label(inner & ~marks)[1]))
            if name == "streaks":
                streak_depths[name].append((depth[region], depth[darkened]))
    dark, bright = ({n: np.array(v) for n, v in shares.items()} for shares in (dark_shares, bright_shares))
    # Darkening textures: a real share of the region darkened (not a fill: lines, dots), almost nothing brightened
    # (a globule may lighten a pigment-network line of a very dark lesion, hence not exactly zero).
    for name, (low, high) in {"pigment_network": (0.15, 0.7), "globules": (0.05, 0.7), "streaks": (0.2, 0.8)}.items():
        assert dark[name].size >= 5 and dark[name].min() > low and dark[name].max() < high, name
        assert bright[name].max() < 0.05, name
    assert bright["milia_like_cyst"].size >= 40 and 0.03 < bright["milia_like_cyst"].min()
    assert bright["milia_like_cyst"].max() < 0.5 and dark["milia_like_cyst"].max() < 0.01
    # Negative network: the light mesh and the darker cells it surrounds both take a real share.
    assert dark["negative_network"].size >= 10
    assert bright["negative_network"].min() > 0.25 and dark["negative_network"].min() > 0.1
    marks, cells = ({n: np.median([s[i] for s in v]) for n, v in structure.items()} for i in (0, 1))
    assert cells["pigment_network"] >= 8 and cells["negative_network"] >= 8  # a mesh encloses many cells
    assert marks["globules"] >= 5 and marks["milia_like_cyst"] >= 5  # dots are many separate marks
    assert cells["globules"] <= 3 and cells["milia_like_cyst"] <= 3  # ... on one connected background
    streaks = streak_depths["streaks"]
    assert len(streaks) >= 5  # the streak mask and its darkened lines hug the rim: the outer ~40% of the depth
    assert all(np.percentile(mask, 95) < 0.55 and mask.mean() < 0.3 for mask, _ in streaks)
    assert all(np.percentile(lines, 95) < 0.45 and lines.mean() < 0.25 for _, lines in streaks)


@pytest.mark.slow
def test_attribute_frequencies_match_isic_2018():
    # Presence is drawn first from the image's own stream, so it does not depend on the size (tested below) and
    # hairs use another stream: 8 px images without hairs give the same presence at ~2 ms each.
    # n = 5000 makes a 3-point tolerance both tight and safe: the standard error is sqrt(p (1 - p) / n), at most
    # 0.70 points (pigment_network, p = 0.587), so 3 points is >= 4.3 standard errors for every attribute (two-sided
    # chance below 2e-5 each for any seed), and 5.2 for the share of images with none (p = 0.208, 0.57 points).
    n, tolerance = 5000, 0.03
    samples = (render_sample(i, seed=0, size=8, hairs=False) for i in range(n))
    present = np.array([[sample.attributes[name].any() for name in ATTRIBUTES] for sample in samples])
    for column, name in enumerate(ATTRIBUTES):
        target = ATTRIBUTE_FREQUENCIES[name]
        assert 4.3 * np.sqrt(target * (1 - target) / n) < tolerance
        assert abs(present[:, column].mean() - target) < tolerance, (name, present[:, column].mean())
    none_share = 1 - present.any(axis=1).mean()
    expected_none = np.prod([1 - ATTRIBUTE_FREQUENCIES[name] for name in ATTRIBUTES])
    assert abs(expected_none - 0.2) < 0.01 and abs(none_share - expected_none) < tolerance


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
