"""Synthetic ISIC-like dermoscopy images with lesion and attribute masks, in the official ISIC 2018 layout.

Each image is skin with low-frequency colour variation, an optional dark circular dermatoscope vignette, an
irregular brown lesion (noisy radial profile, soft border) and optional dark hairs. Every present attribute is an
irregular region inside the lesion (regions may overlap) filled with its own texture, scaled to the lesion so it
survives downsampling to 64-96 px:

- pigment_network: dark reticular mesh (Voronoi edges of a jittered grid, cells 0.2 lesion radii = 10% of its diameter);
- negative_network: the inverse look, wide pale lines around darkened cells (cells 0.26 radii);
- globules: clusters of round near-black dots (spacing 0.26 radii, dot radius about 0.1 radii);
- milia_like_cyst: small bright white-yellow round spots (spacing 0.24 radii, smaller than globules);
- streaks: dark, slightly wavy radial lines in a sector of the lesion rim (the mask is that rim sector).

Rule: every attribute pixel lies inside the lesion mask (region AND lesion), and textures are drawn only inside
their mask. Presence is drawn independently per image with ATTRIBUTE_FREQUENCIES (ISIC 2018 Task 2), so about
20% of the images have no attribute. Images are `size` wide and `size * 3 // 4` high (the 4:3 ISIC aspect), or
their width is drawn from `image_size_range`. Image k uses `np.random.default_rng([seed, k])`, so it does not depend
on n, and the same arguments give the same bytes (JPEG quality 95, no timestamps). Hairs draw from their own stream
([seed, k, 1]), so `hairs=False` changes only the hair pixels.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tatl import logs
from tatl.data.isic import ATTRIBUTE_DIR, INPUT_DIR, LESION_DIR
from tatl.errors import DataError
from tatl.folders import check_output_folder

GENERATOR_VERSION = "1"  # bump whenever the bytes written for the same arguments change
ATTRIBUTE_FREQUENCIES: dict[str, float] = {  # share of ISIC 2018 Task 2 training images with a non-empty mask
    "globules": 0.232,
    "milia_like_cyst": 0.263,
    "negative_network": 0.073,
    "pigment_network": 0.587,
    "streaks": 0.039,
}
README_FIRST_LINE = "Synthetic ISIC-like dermoscopy dataset written by tatl (not real data)."
INCOMPLETE_MARKER = ".tatl-synth-incomplete"  # present while writing, so an interrupted dataset is recognised as ours
JPEG_QUALITY = 95
TAU = 2 * np.pi
STREAKS_AROUND = 48  # radial streak lines a full circle would hold: spacing 0.13 lesion radii at the rim


@dataclass
class SyntheticSample:
    image: np.ndarray  # H x W x 3 uint8
    lesion: np.ndarray  # H x W bool
    attributes: dict[str, np.ndarray]  # name -> H x W bool, all five names, empty when absent


@dataclass
class _Geometry:
    """Pixel grids and the lesion's frame: offsets from its centre and its normalised radius (< 1 inside)."""

    xs: np.ndarray
    ys: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    rho: np.ndarray
    radius: float  # mean lesion radius in pixels: every texture scale is a share of it


def image_id(index: int) -> str:
    return f"ISIC_{index:07d}"


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise (about `cells` bumps across the width), roughly in [-1, 1]."""
    coarse = rng.standard_normal((max(2, round(cells * height / width)) + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)) * 0.6


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _blend(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    image += (colour - image) * alpha[..., None]


def _blob(rng: np.random.Generator, dx: np.ndarray, dy: np.ndarray, radius: float, roughness: float) -> np.ndarray:
    """Distance to (dx, dy) = (0, 0) divided by an irregular radial profile: < 1 inside the blob."""
    harmonics = np.arange(2, 10)
    amplitudes = roughness * rng.uniform(0.2, 1.0, harmonics.size) / harmonics**1.3
    phases = rng.uniform(0, TAU, harmonics.size)
    angles = np.linspace(0, TAU, 1024, endpoint=False)  # the profile on a table of angles, then interpolated: fast
    table = 1 + (amplitudes * np.cos(np.outer(angles, harmonics) + phases)).sum(1)
    profile = np.interp(np.arctan2(dy, dx), angles, np.maximum(table, 0.4), period=TAU)
    return np.hypot(dx, dy) / (radius * profile)


def _worley(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, cell: float, jitter: float):
    """Distances to the nearest and second-nearest jittered grid point, and the nearest point's index."""
    gx, gy = xs / cell + rng.uniform(0, 1000), ys / cell + rng.uniform(0, 1000)
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    x0, y0 = ix.min() - 1, iy.min() - 1
    grid_w, grid_h = ix.max() - x0 + 2, iy.max() - y0 + 2
    points = 0.5 + jitter * (rng.random((grid_h, grid_w, 2)) - 0.5)
    nearest = np.full(xs.shape, np.inf)
    second = np.full(xs.shape, np.inf)
    nearest_id = np.zeros(xs.shape, np.int64)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            cx, cy = ix + ox - x0, iy + oy - y0
            d = np.hypot(ix + ox + points[cy, cx, 0] - gx, iy + oy + points[cy, cx, 1] - gy)
            closer = d < nearest
            second = np.where(closer, nearest, np.minimum(second, d))
            nearest_id = np.where(closer, cy * grid_w + cx, nearest_id)
            nearest = np.minimum(nearest, d)
    return nearest, second, nearest_id, grid_h * grid_w


def _mesh_lines(rng, xs, ys, cell: float, width: float) -> np.ndarray:
    """1 on the edges of an irregular honeycomb (Voronoi cells of a jittered grid), 0 inside the cells."""
    nearest, second, _, _ = _worley(rng, xs, ys, cell, jitter=0.75)
    return 1 - _smoothstep(width * 0.5, width, second - nearest)


def _dots(rng, xs, ys, spacing: float, radius: tuple[float, float], share: float) -> np.ndarray:
    """Round dots (soft edge) on a jittered grid; `share` of the grid points carry a dot, radius in cell units."""
    nearest, _, nearest_id, count = _worley(rng, xs, ys, spacing, jitter=0.6)
    radii = rng.uniform(*radius, count) * (rng.random(count) < share)
    r = radii[nearest_id]
    return _smoothstep(-0.02, 0.06, r - nearest) * (r > 0)


def _skin(rng, width: int, height: int) -> np.ndarray:
    tones = np.array([[228, 186, 172], [222, 182, 160], [205, 200, 215], [235, 200, 190]], np.float32)
    base = tones[rng.integers(len(tones))] + rng.uniform(-10, 10, 3)
    shade = 1 + 0.06 * _smooth_noise(rng, height, width, 4)
    tint = 8 * np.stack([_smooth_noise(rng, height, width, 3) for _ in range(3)], -1)
    return (base * shade[..., None] + tint).astype(np.float32)


def _lesion(rng, dx, dy, radius: float, height: int, width: int):
    """Soft alpha, normalised radius (< 1 inside) and per-pixel colour of an irregular elliptic brown lesion."""
    angle, squash = rng.uniform(0, np.pi), rng.uniform(0.72, 1.0)
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (dy * np.cos(angle) - dx * np.sin(angle)) / squash
    rho = _blob(rng, u, v, radius, roughness=0.4) * (1 + 0.06 * _smooth_noise(rng, height, width, 14))
    alpha = _smoothstep(1.04, 0.92, rho) * (0.8 + 0.2 * _smoothstep(1.0, 0.5, rho))
    brown = np.array([150, 95, 62], np.float32) * rng.uniform(0.6, 1.05) + rng.uniform(-8, 8, 3)
    blotches = 0.25 * _smooth_noise(rng, height, width, 5) + 0.06 * _smooth_noise(rng, height, width, 30)
    shade = 0.75 + 0.3 * np.clip(rho, 0, 1) + blotches
    return alpha.astype(np.float32), rho, (brown * shade[..., None]).astype(np.float32)


def _region(rng, geo: _Geometry, size_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """An irregular blob centred in the inner half of the lesion (the caller clips it to the lesion) and a fade
    that softens the texture towards the blob's border."""
    angle, reach = rng.uniform(0, TAU), geo.radius * 0.5 * np.sqrt(rng.random())
    cx, cy = reach * np.cos(angle), reach * np.sin(angle)
    blob_rho = _blob(rng, geo.dx - cx, geo.dy - cy, geo.radius * rng.uniform(*size_range), roughness=0.5)
    return blob_rho < 1, _smoothstep(1.0, 0.8, blob_rho)


def _streak_sector(rng, geo: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """A sector of the lesion rim (the mask) and the strength of radial dark lines of varying length in it."""
    theta = np.arctan2(geo.dy, geo.dx)
    start, span = rng.uniform(0, TAU), rng.uniform(0.35, 0.8) * np.pi
    region = (np.mod(theta - start, TAU) < span) & (geo.rho > 0.62)
    phase = theta * STREAKS_AROUND / TAU + 0.25 * np.sin(3 * theta + rng.uniform(0, TAU))  # slightly wavy lines
    distance_px = np.abs(phase - np.round(phase)) * TAU * np.hypot(geo.dx, geo.dy) / STREAKS_AROUND
    line_index = np.mod(np.round(phase), STREAKS_AROUND).astype(np.int64)
    lengths = rng.uniform(0.18, 0.36, STREAKS_AROUND)[line_index]
    half_width = max(0.6, 0.022 * geo.radius)
    across = _smoothstep(half_width + 0.8, half_width, distance_px)
    return region, across * _smoothstep(1 - lengths, 1.02 - lengths * 0.6, geo.rho)


def _draw_hairs(rng, image: np.ndarray, width: int, height: int) -> None:
    """Dark, slightly curved thin hairs (occlude the textures; masks are unchanged, as in real data)."""
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(1, 9))):
        start = rng.uniform(0, 1, 2) * (width, height)
        heading, bend = rng.uniform(0, TAU), rng.uniform(-1.2, 1.2)
        length = rng.uniform(0.25, 0.9) * width
        steps = np.linspace(0, 1, 24)
        headings = heading + bend * steps
        points = start + np.cumsum(np.stack([np.cos(headings), np.sin(headings)], -1) * length / 24, 0)
        draw.line([tuple(p) for p in points], fill=int(rng.integers(170, 235)), width=max(1, round(width / 320)))
    _blend(image, np.array([40, 28, 22], np.float32), np.asarray(layer, np.float32) / 255)


def _vignette(rng, image: np.ndarray, xs, ys, width: int, height: int) -> None:
    """Dark circular dermatoscope edge; a large radius leaves it outside the frame, as in many ISIC images."""
    cx, cy = width / 2 + rng.uniform(-0.03, 0.03) * width, height / 2 + rng.uniform(-0.03, 0.03) * height
    radius = rng.uniform(0.5, 0.72) * width
    darkness = _smoothstep(radius - 0.05 * width, radius + 0.02 * width, np.hypot(xs - cx, ys - cy))
    _blend(image, np.array([12, 10, 12], np.float32), darkness * 0.97)


def render_sample(
    index: int, seed: int = 0, size: int = 256, image_size_range: tuple[int, int] | None = None, hairs: bool = True
) -> SyntheticSample:
    """Image `index` of the dataset with this seed; presence is drawn first, so it does not depend on the size."""
    rng = np.random.default_rng([seed, index])
    present = {name: rng.random() < p for name, p in ATTRIBUTE_FREQUENCIES.items()}
    width = size if image_size_range is None else int(rng.integers(image_size_range[0], image_size_range[1] + 1))
    height = width * 3 // 4  # the 4:3 aspect of most ISIC images (1022 x 767)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    image = _skin(rng, width, height)
    radius = rng.uniform(0.26, 0.36) * height
    centre_x, centre_y = (width / 2, height / 2) + rng.uniform(-0.06, 0.06, 2) * (width, height * 0.6)
    dx, dy = xs - centre_x, ys - centre_y
    alpha, rho, lesion_colour = _lesion(rng, dx, dy, radius, height, width)
    _blend(image, lesion_colour, alpha)
    geo = _Geometry(xs, ys, dx, dy, rho, radius)
    masks = {name: np.zeros((height, width), bool) for name in ATTRIBUTE_FREQUENCIES}
    # Area textures first, dots over them, streaks last: later textures cover earlier ones where regions overlap.
    for name in ("pigment_network", "negative_network", "globules", "milia_like_cyst", "streaks"):
        if present[name]:
            masks[name] = _draw_attribute(rng, name, image, lesion_colour, geo)
    if rng.random() < 0.6 and hairs:  # hairs use their own stream: --no-hairs changes nothing but the hair pixels
        _draw_hairs(np.random.default_rng([seed, index, 1]), image, width, height)
    _vignette(rng, image, xs, ys, width, height)
    image += rng.normal(0, 2.5, (height, width, 1))  # sensor grain
    return SyntheticSample(np.clip(image + 0.5, 0, 255).astype(np.uint8), rho < 1, masks)


def _draw_attribute(rng, name: str, image: np.ndarray, lesion_colour: np.ndarray, geo: _Geometry) -> np.ndarray:
    """Draw one attribute's texture inside its region and return the region (inside the lesion, never empty)."""
    if name == "streaks":
        region, strength = _streak_sector(rng, geo)
        fade = np.ones_like(geo.rho)
    else:
        sizes = {"pigment_network": (0.45, 0.8), "negative_network": (0.35, 0.6)}.get(name, (0.4, 0.6))
        region, fade = _region(rng, geo, sizes)
    region &= geo.rho < 0.97  # the rule: attribute pixels lie inside the lesion (rho < 1), off its soft border
    if not region.any():  # a tiny image can miss every pixel centre: keep the presence drawn
        region[np.unravel_index(np.argmin(geo.rho), geo.rho.shape)] = True
    rows, cols = np.nonzero(region)
    box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]  # textures are computed in its bounding box
    inside = region[box] * fade[box]
    bx, by, local_image, local_colour, radius = geo.xs[box], geo.ys[box], image[box], lesion_colour[box], geo.radius
    if name == "pigment_network":
        lines = _mesh_lines(rng, bx, by, 0.2 * radius, 0.24)
        _blend(local_image, local_colour * 0.42, lines * inside * 0.9)
    elif name == "negative_network":
        lines = _mesh_lines(rng, bx, by, 0.26 * radius, 0.3)
        _blend(local_image, local_colour * 0.55, (1 - lines) * inside * 0.8)
        _blend(local_image, np.array([232, 205, 182], np.float32), lines * inside * 0.85)
    elif name == "globules":
        dots = _dots(rng, bx, by, 0.26 * radius, (0.3, 0.42), share=0.85)
        _blend(local_image, np.array([36, 20, 16], np.float32), dots * inside * 0.95)
    elif name == "milia_like_cyst":
        spots = _dots(rng, bx, by, 0.24 * radius, (0.2, 0.3), share=0.7)
        _blend(local_image, np.array([250, 244, 212], np.float32), spots * inside * 0.95)
    else:
        _blend(local_image, np.array([50, 32, 24], np.float32), strength[box] * inside * 0.95)
    image[box] = local_image
    return region


def _check_target(out: Path) -> None:
    """Refuse a file, or a non-empty folder that is neither a synthetic dataset nor an interrupted one."""
    check_output_folder(out, "synthetic dataset")
    readme = out / "README.txt"
    ours = (out / INCOMPLETE_MARKER).exists() or (
        readme.is_file() and readme.read_text(errors="replace").startswith(README_FIRST_LINE)
    )
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise DataError(
            f"{out}: folder exists, is not empty and is not a tatl synthetic dataset; choose a new or empty "
            "folder (nothing was overwritten)"
        )


def _readme(n: int, size: int, seed: int, image_size_range, hairs: bool, counts: dict[str, int]) -> str:
    from tatl import __version__

    sizes = f"{size} x {size * 3 // 4} px" if image_size_range is None else f"widths {image_size_range} px, 4:3"
    lines = [
        README_FIRST_LINE,
        "",
        f"generator version: {GENERATOR_VERSION} (tatl {__version__})",
        f"images: {n}, {sizes}, seed {seed}, hairs {'on' if hairs else 'off'}",
        "layout: official ISIC 2018 folder and file names; masks are 8-bit PNGs with values 0 and 255.",
        "images with a non-empty mask: " + ", ".join(f"{name} {count}" for name, count in counts.items()),
        "Regenerate: tatl synth OUT --n N --size SIZE --seed SEED (same arguments, same bytes).",
    ]
    return "\n".join(lines) + "\n"


def write_synthetic_dataset(
    out: Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    image_size_range: tuple[int, int] | None = None,
    hairs: bool = True,
) -> list[str]:
    """Write n images in the official ISIC 2018 layout under `out`; return the image ids."""
    out = Path(out)
    if n < 1:
        raise DataError(f"synthetic dataset {out}: n must be at least 1 (got {n})")
    if size < 32:
        raise DataError(f"synthetic dataset {out}: size must be at least 32 px (got {size})")
    if image_size_range is not None and not 32 <= image_size_range[0] <= image_size_range[1]:
        raise DataError(f"synthetic dataset {out}: image size range must be 32 <= LO <= HI (got {image_size_range})")
    _check_target(out)
    out.mkdir(parents=True, exist_ok=True)
    # The marker first, the README (the mark of a complete dataset) last: an interrupted run is neither taken for
    # complete nor refused as a foreign folder the next time.
    (out / INCOMPLETE_MARKER).touch()
    (out / "README.txt").unlink(missing_ok=True)
    for folder in (INPUT_DIR, LESION_DIR, ATTRIBUTE_DIR):  # a previous synthetic dataset: replace it entirely
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder).mkdir()
    counts = dict.fromkeys(ATTRIBUTE_FREQUENCIES, 0)
    ids = []
    for index in logs.progress(range(n), "generating synthetic images", unit="image"):
        sample = render_sample(index, seed, size, image_size_range, hairs)
        ids.append(_write_sample(out, image_id(index), sample))
        for name, mask in sample.attributes.items():
            counts[name] += bool(mask.any())
    (out / "README.txt").write_text(_readme(n, size, seed, image_size_range, hairs, counts))
    (out / INCOMPLETE_MARKER).unlink()
    return ids


def _write_sample(out: Path, name: str, sample: SyntheticSample) -> str:
    Image.fromarray(sample.image).save(out / INPUT_DIR / f"{name}.jpg", quality=JPEG_QUALITY)
    Image.fromarray(sample.lesion.astype(np.uint8) * 255).save(out / LESION_DIR / f"{name}_segmentation.png")
    for attribute, mask in sample.attributes.items():
        path = out / ATTRIBUTE_DIR / f"{name}_attribute_{attribute}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return name


ISIC2017_DIRS = tuple(f"ISIC-2017_Training_{kind}" for kind in ("Data", "Part1_GroundTruth", "Part2_GroundTruth"))
PIXELS_PER_SUPERPIXEL = 64  # ~8 x 8 px SLIC0 superpixels: fine enough for the thin streak sectors at 128-256 px


def write_synthetic_isic2017(
    out: Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    image_size_range: tuple[int, int] | None = None,
    hairs: bool = True,
) -> list[str]:
    """The same images in the ISIC 2017 Part 2 layout: JPEG and SLIC0 superpixel map (scikit-image, fixed
    parameters, deterministic) in the Data folder, lesion mask (Part 1), and per-superpixel labels of the four 2017
    features (Part 2): a superpixel is positive when more than half of its pixels are in the attribute mask.
    Globules are drawn but not labelled, as in ISIC 2017. Returns the image ids."""
    from skimage.segmentation import slic

    from tatl.constants import ATTRIBUTES_2017
    from tatl.data.isic2017 import superpixel_means, write_features_json, write_superpixels

    out = Path(out)
    if n < 1 or size < 32 or (image_size_range is not None and not 32 <= image_size_range[0] <= image_size_range[1]):
        raise DataError(
            f"synthetic dataset {out}: needs n >= 1, size >= 32 and 32 <= LO <= HI (got {n}, {size}, "
            f"{image_size_range})"
        )
    _check_target(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE_MARKER).touch()
    (out / "README.txt").unlink(missing_ok=True)
    for folder in (INPUT_DIR, LESION_DIR, ATTRIBUTE_DIR, *ISIC2017_DIRS):  # replace any previous synthetic dataset
        shutil.rmtree(out / folder, ignore_errors=True)
    images, lesions, features = (out / folder for folder in ISIC2017_DIRS)
    for folder in (images, lesions, features):
        folder.mkdir()
    ids = [image_id(index) for index in range(n)]
    for index, name in enumerate(logs.progress(ids, "generating synthetic images", unit="image")):
        sample = render_sample(index, seed, size, image_size_range, hairs)
        segments = sample.image.shape[0] * sample.image.shape[1] // PIXELS_PER_SUPERPIXEL
        superpixels = slic(sample.image, n_segments=segments, slic_zero=True, start_label=0)
        superpixels = np.unique(superpixels, return_inverse=True)[1].reshape(superpixels.shape)  # indices 0..k-1
        Image.fromarray(sample.image).save(images / f"{name}.jpg", quality=JPEG_QUALITY)
        write_superpixels(images / f"{name}_superpixels.png", superpixels)
        Image.fromarray(sample.lesion.astype(np.uint8) * 255).save(lesions / f"{name}_segmentation.png")
        labels = {a: superpixel_means(superpixels, sample.attributes[a]) > 0.5 for a in ATTRIBUTES_2017}
        write_features_json(features / f"{name}_features.json", labels)
    sizes = f"{size} x {size * 3 // 4} px" if image_size_range is None else f"widths {image_size_range} px, 4:3"
    (out / "README.txt").write_text(
        f"{README_FIRST_LINE}\n\ngenerator version: {GENERATOR_VERSION}\nimages: {n}, {sizes}, seed {seed}, hairs "
        f"{'on' if hairs else 'off'}\nlayout: official ISIC 2017 Part 2 folders; SLIC0 superpixels of about "
        f"{PIXELS_PER_SUPERPIXEL} px\nRegenerate: tatl synth OUT --format isic2017 --n N --size SIZE --seed SEED\n"
    )
    (out / INCOMPLETE_MARKER).unlink()
    return ids
