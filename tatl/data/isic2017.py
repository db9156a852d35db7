"""ISIC 2017 Part 2 (dermoscopic features on superpixels): read, validate, and convert to the ISIC 2018 layout.

ISIC 2017 ships no attribute masks. Each image `<id>.jpg` comes with
- `<id>_superpixels.png`: its SLIC0 superpixel map, an 8-bit RGB PNG at the image's size whose pixels hold the
  superpixel index R + 256 G + 65536 B (the challenge's `decodeSuperpixelIndex`);
- `<id>_features.json`: an object with exactly the keys of ATTRIBUTES_2017 (the official scorer's names), each a
  list of one 0/1 label per superpixel, in index order, so its length is the number of superpixels (max index + 1).
Lesion masks `<id>_segmentation.png` (Part 1) are optional. Two layouts: the official folders of one split in
DATA (`ISIC-2017_<split>_Data` with images and superpixel maps, `ISIC-2017_<split>_Part1_GroundTruth`,
`ISIC-2017_<split>_Part2_GroundTruth`; several splits are refused, as for ISIC 2018), or every file under DATA.

`convert_to_isic2018_layout` rasterises the labels into `<id>_attribute_<name>.png` masks next to links to the
images, so the ISIC 2018 pipeline (find_samples, check_dataset, `tatl run`) reads 2017 data unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from tatl import logs

# The per-sample bookkeeping of check-data, reused so both layouts report and summarise alike.
from tatl.constants import ATTRIBUTES_2017, LESION
from tatl.data.checks import (
    ERROR,
    NOTE,
    DataReport,
    Problem,
    _add_fractions,
    _add_result,
    _check_mask,
    _SampleResult,
    require_valid,
)
from tatl.data.images import ImageFileError, inspect_image
from tatl.data.isic import (
    ATTRIBUTE_DIR,
    ATTRIBUTE_INFIX,
    IMAGE_EXTENSIONS,
    INPUT_DIR,
    LESION_DIR,
    LESION_SUFFIX,
    SUPERPIXELS_SUFFIX,
    Sample,
)
from tatl.errors import DataError
from tatl.folders import check_output_folder
from tatl.io import write_json

FEATURES_SUFFIX = "_features"
SUPERPIXELS_INDEX = "superpixels.json"  # in a converted folder: image id -> its superpixel map, for 2017 predictions
CONVERSION_STAMP = "conversion.json"  # written last: its fingerprint of the inputs makes conversion idempotent
CONVERTER_VERSION = "1"  # bump when the converted files change for the same inputs
_INCOMPLETE = ".tatl-conversion-incomplete"
_OFFICIAL = re.compile(r"^ISIC-2017_(?P<split>.+?)_(?:Data|Part[12]_GroundTruth)$")
_WORKERS = min(4, 2 * (os.cpu_count() or 1))  # superpixel maps of 30-megapixel images take ~120 MB each
T = TypeVar("T")


@dataclass(frozen=True)
class Sample2017:
    image_id: str
    image_path: Path
    superpixels_path: Path | None
    features_path: Path | None
    lesion_mask_path: Path | None


@dataclass
class Scan2017:
    root: Path
    layout: str
    samples: list[Sample2017] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # duplicated ids, files without an image


# ------------------------------------------------------------------------------------------- files and folders
def is_isic2017(root: Path) -> bool:
    """True when `root` is a folder holding superpixel maps and features JSONs (the ISIC 2017 Part 2 layout)."""
    root = Path(root)
    endings = (f"{FEATURES_SUFFIX}.json", f"{SUPERPIXELS_SUFFIX}.png")
    return root.is_dir() and all(any(_visible(p, root) for p in root.rglob(f"*{ending}")) for ending in endings)


def dataset_folders(root: Path) -> tuple[list[Path], str]:
    """The official folders of one split when `root` has them, else `root` itself; and the layout in words."""
    official = [p for p in sorted(Path(root).iterdir()) if p.is_dir() and _OFFICIAL.match(p.name)]
    if not official:
        return [Path(root)], "ISIC 2017, one folder tree"
    splits = sorted({_OFFICIAL.match(p.name)["split"] for p in official})
    if len(splits) > 1:
        raise DataError(
            f"{root}: holds the ISIC 2017 folders of several splits ({', '.join(splits)}); point DATA at a folder "
            "with the Data and GroundTruth folders of one split, so validation images never leak into training"
        )
    return official, f"ISIC 2017 official folders ({splits[0]})"


def index_files(folders: Sequence[Path]) -> dict[str, dict[str, list[Path]]]:
    """Kind ("image", "superpixels", "features", "lesion") -> id -> the files of that kind claiming the id."""
    index: dict[str, dict[str, list[Path]]] = {kind: {} for kind in ("image", "superpixels", "features", "lesion")}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            kind_id = _kind_and_id(path) if _visible(path, folder) and path.is_file() else None
            if kind_id:
                index[kind_id[0]].setdefault(kind_id[1], []).append(path)
    return index


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(root).parts)


def _kind_and_id(path: Path) -> tuple[str, str] | None:
    stem, suffix = path.stem, path.suffix.lower()
    if suffix == ".json":
        return ("features", stem[: -len(FEATURES_SUFFIX)]) if _ends_with(stem, FEATURES_SUFFIX) else None
    if suffix not in IMAGE_EXTENSIONS or ATTRIBUTE_INFIX in stem:
        return None
    for kind, ending in (("superpixels", SUPERPIXELS_SUFFIX), ("lesion", LESION_SUFFIX)):
        if _ends_with(stem, ending):
            return kind, stem[: -len(ending)]
    return "image", stem


def _ends_with(stem: str, ending: str) -> bool:
    return stem.endswith(ending) and len(stem) > len(ending)


def scan_isic2017(root: Path) -> Scan2017:
    """Pair every image with its superpixel map, features JSON and lesion mask; list duplicates and orphans."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder does not exist" if not root.exists() else f"{root}: is a file")
    folders, layout = dataset_folders(root)
    index = index_files(folders)
    scan = Scan2017(root, layout)
    for kind, claims in index.items():
        for image_id, paths in sorted(claims.items()):
            if len(paths) > 1:
                reason = f"id {image_id!r} has several {kind} files: keep one"
                scan.problems += [Problem(path, reason, ERROR) for path in paths]
            if kind != "image" and image_id not in index["image"]:
                reason = f"{kind} file without an image ({image_id}.jpg)"
                scan.problems += [Problem(path, reason, ERROR) for path in paths]
    for image_id, paths in sorted(index["image"].items()):
        first = {kind: index[kind].get(image_id, [None])[0] for kind in ("superpixels", "features", "lesion")}
        scan.samples.append(Sample2017(image_id, paths[0], first["superpixels"], first["features"], first["lesion"]))
    if not scan.samples:
        scan.problems.append(Problem(root, "no image found (looked for <id>.jpg beside <id>_superpixels.png)", ERROR))
    return scan


# --------------------------------------------------------------------------------------- reading and writing
def read_superpixels(path: Path) -> np.ndarray:
    """(H, W) int32 superpixel indices of an RGB PNG (R + 256 G + 65536 B); ImageFileError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode != "RGB":
                raise ImageFileError(path, f"superpixel map in mode {image.mode}: it must be an 8-bit RGB PNG")
            rgb = np.asarray(image).astype(np.int32)
    except FileNotFoundError:
        raise ImageFileError(path, "file not found") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise ImageFileError(path, f"cannot decode the superpixel map ({type(error).__name__}: {error})") from None
    return rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)


def write_superpixels(path: Path, superpixels: np.ndarray) -> None:
    """Encode (H, W) indices below 2**24 as the challenge's RGB PNG."""
    indices = np.asarray(superpixels, dtype=np.int64)
    if indices.min() < 0 or indices.max() >= 1 << 24:
        raise ValueError("superpixel indices must be in [0, 2**24) to fit three 8-bit channels")
    rgb = np.stack([(indices >> shift) & 255 for shift in (0, 8, 16)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def read_feature_values(path: Path) -> dict[str, np.ndarray]:
    """{feature: float64 values} of a features JSON with exactly the four 2017 keys, each a list of numbers."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageFileError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ImageFileError(path, f"cannot read it as JSON ({error})") from None
    if not isinstance(document, dict):
        raise ImageFileError(path, "the JSON is not an object with one key per feature")
    unknown, missing = sorted(set(document) - set(ATTRIBUTES_2017)), [a for a in ATTRIBUTES_2017 if a not in document]
    if unknown or missing:
        found = f"unknown key(s) {', '.join(unknown)}" if unknown else f"missing key(s) {', '.join(missing)}"
        raise ImageFileError(path, f"{found}; the keys must be exactly {', '.join(ATTRIBUTES_2017)}")
    for name in ATTRIBUTES_2017:
        values = document[name]
        if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
            raise ImageFileError(path, f"feature {name!r} is not a list of numbers (one per superpixel)")
    return {name: np.asarray(document[name], dtype=np.float64) for name in ATTRIBUTES_2017}


def read_features(path: Path) -> dict[str, np.ndarray]:
    """{feature: bool label per superpixel} of a ground-truth features JSON; ImageFileError naming the file."""
    values = read_feature_values(path)
    lengths = {name: len(v) for name, v in values.items()}
    if len(set(lengths.values())) > 1:
        raise ImageFileError(path, f"features have different lengths: {lengths}; each needs one value per superpixel")
    for name, labels in values.items():
        if not np.isin(labels, (0.0, 1.0)).all():
            odd = sorted(set(labels[~np.isin(labels, (0.0, 1.0))].tolist()))[:5]
            raise ImageFileError(path, f"feature {name!r} has values other than 0 and 1 ({odd}): labels must be 0/1")
    return {name: labels == 1.0 for name, labels in values.items()}


def write_features_json(path: Path, features: Mapping[str, Sequence[float]]) -> None:
    """Write a features JSON atomically (temporary file, then rename): 0/1 or bool labels as ints, else floats."""
    path = Path(path)
    document = {}
    for name in sorted(features):
        values = np.asarray(features[name])
        document[name] = (values.astype(np.int64) if values.dtype.kind in "bui" else values.astype(float)).tolist()
    write_json(path, document, durable=False, indent=None, separators=(",", ":"))


def rasterize(superpixels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(H, W) bool mask: each pixel takes its superpixel's label."""
    labels = np.asarray(labels, dtype=bool)
    if superpixels.size and int(superpixels.max()) >= len(labels):
        raise ValueError(f"superpixel index {int(superpixels.max())} has no label (only {len(labels)} labels)")
    return labels[superpixels]


def superpixel_means(superpixels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Mean of `probabilities` over each superpixel, indexed 0..max index (0.0 for an index with no pixel)."""
    if superpixels.shape != np.shape(probabilities):
        raise ValueError(f"superpixels {superpixels.shape} and probabilities {np.shape(probabilities)} differ")
    flat = superpixels.ravel()
    sums = np.bincount(flat, weights=np.asarray(probabilities, dtype=np.float64).ravel())
    counts = np.bincount(flat, minlength=len(sums))
    return np.divide(sums, counts, out=np.zeros(len(sums)), where=counts > 0)


# ----------------------------------------------------------------------------------------------- validation
def check_isic2017(
    root: Path, attributes: Sequence[str] = ATTRIBUTES_2017, need_lesion: bool = False,
    binarize_threshold: int | None = None,
) -> DataReport:
    """Every problem of an ISIC 2017 Part 2 dataset, as a check-data report (features in place of masks)."""
    return _check(scan_isic2017(root), attributes, need_lesion, binarize_threshold, None, f"checking {root}")


def _check(scan: Scan2017, attributes: Sequence[str], need_lesion: bool, binarize_threshold: int | None,
           masks_dir: Path | None, desc: str) -> DataReport:
    unknown = [a for a in attributes if a not in ATTRIBUTES_2017]
    if unknown:
        raise DataError(f"{scan.root}: ISIC 2017 has the features {', '.join(ATTRIBUTES_2017)}, not {unknown}")

    def check(sample: Sample2017) -> _SampleResult:
        return _check_sample(sample, need_lesion, binarize_threshold, masks_dir)

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:  # PNG and JPEG decoding release the GIL
        results = list(logs.progress(pool.map(check, scan.samples), desc, len(scan.samples), "image"))
    samples = [Sample(s.image_id, s.image_path, s.lesion_mask_path, {}) for s in scan.samples]
    report = DataReport(scan.root, samples, tuple(attributes), {}, {}, list(scan.problems), {}, scan.layout)
    for sample, result in zip(samples, results, strict=True):
        _add_result(report, sample, result)
    _add_fractions(report, results)
    return report


def _check_sample(sample: Sample2017, need_lesion: bool, binarize_threshold: int | None,
                  masks_dir: Path | None) -> _SampleResult:
    result = _SampleResult()
    info = _attempt(result, lambda: inspect_image(sample.image_path))
    if info:
        result.size = info.size
        result.problems += [Problem(sample.image_path, note, NOTE) for note in info.notes]
    superpixels, features = _superpixels(result, sample), _features(result, sample)
    if superpixels is not None and features is not None:
        count, labels = int(superpixels.max()) + 1, len(next(iter(features.values())))
        if labels == count:
            _add_features(result, sample, superpixels, features, masks_dir)
        else:
            reason = (f"{labels} labels per feature but {sample.superpixels_path.name} has {count} superpixels "
                      f"(indices 0..{count - 1}): one label per superpixel is needed")
            result.problems.append(Problem(sample.features_path, reason, ERROR))
    if sample.lesion_mask_path is not None:
        _check_mask(result, LESION, sample.lesion_mask_path, binarize_threshold)
    elif need_lesion:
        expected = f"{sample.image_id}{LESION_SUFFIX}.png"
        result.problems.append(Problem(sample.image_path, f"no lesion mask ({expected})", ERROR))
    return result


def _attempt(result: _SampleResult, read: Callable[[], T]) -> T | None:
    try:
        return read()
    except ImageFileError as error:
        result.problems.append(Problem(error.path, error.reason, ERROR))
        return None


def _superpixels(result: _SampleResult, sample: Sample2017) -> np.ndarray | None:
    if sample.superpixels_path is None:
        expected = f"{sample.image_id}{SUPERPIXELS_SUFFIX}.png"
        result.problems.append(Problem(sample.image_path, f"no superpixel map ({expected})", ERROR))
        return None
    superpixels = _attempt(result, lambda: read_superpixels(sample.superpixels_path))
    if superpixels is not None and result.size and superpixels.shape[::-1] != result.size:
        (width, height), image = superpixels.shape[::-1], result.size
        reason = f"superpixel map is {width}x{height} but its image is {image[0]}x{image[1]} (width x height)"
        result.problems.append(Problem(sample.superpixels_path, reason, ERROR))
        return None
    return superpixels


def _features(result: _SampleResult, sample: Sample2017) -> dict[str, np.ndarray] | None:
    if sample.features_path is None:
        expected = f"{sample.image_id}{FEATURES_SUFFIX}.json"
        result.problems.append(Problem(sample.image_path, f"no features file ({expected})", ERROR))
        return None
    return _attempt(result, lambda: read_features(sample.features_path))


def _add_features(result: _SampleResult, sample: Sample2017, superpixels: np.ndarray, features: dict[str, np.ndarray],
                  masks_dir: Path | None) -> None:
    """Positive pixel shares and, when converting an error-free sample, the rasterised masks."""
    pixels_per_superpixel = np.bincount(superpixels.ravel(), minlength=len(next(iter(features.values()))))
    for name, labels in features.items():
        result.positive_share[name] = float(pixels_per_superpixel[labels].sum() / superpixels.size)
    if masks_dir is not None and not any(p.severity == ERROR for p in result.problems):
        for name, labels in features.items():
            mask = rasterize(superpixels, labels).astype(np.uint8) * 255
            Image.fromarray(mask).save(masks_dir / f"{sample.image_id}{ATTRIBUTE_INFIX}{name}.png")


# ----------------------------------------------------------------------------------------------- conversion
def convert_to_isic2018_layout(root: Path, out_dir: Path, binarize_threshold: int | None = None) -> Path:
    """Write `out_dir` in the ISIC 2018 layout: links to the images (copies where links fail), the lesion masks
    and one rasterised `<id>_attribute_<name>.png` per feature; `superpixels.json` maps ids to superpixel maps.
    Every input is validated first (DataError listing the problems; `binarize_threshold` as for lesion masks in
    check-data). Nothing is redone when `out_dir` holds a conversion of the same files (paths, sizes, times)."""
    scan = scan_isic2017(root)
    out_dir = Path(out_dir)
    fingerprint = _fingerprint(scan)
    if _read_stamp(out_dir).get("fingerprint") == fingerprint:
        return out_dir
    _prepare_out_dir(out_dir)
    require_valid(_check(scan, ATTRIBUTES_2017, False, binarize_threshold, out_dir / ATTRIBUTE_DIR,
                         f"converting {root} (ISIC 2017)"))
    for sample in scan.samples:
        _link(sample.image_path, out_dir / INPUT_DIR / f"{sample.image_id}{sample.image_path.suffix}")
        if sample.lesion_mask_path is not None:
            _link(sample.lesion_mask_path, out_dir / LESION_DIR / f"{sample.image_id}{LESION_SUFFIX}.png")
    superpixels = {s.image_id: str(s.superpixels_path.resolve()) for s in scan.samples}
    (out_dir / SUPERPIXELS_INDEX).write_text(json.dumps(superpixels, indent=1) + "\n")
    stamp = {"version": CONVERTER_VERSION, "source": str(scan.root.resolve()), "images": len(scan.samples),
             "fingerprint": fingerprint}
    (out_dir / CONVERSION_STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    (out_dir / _INCOMPLETE).unlink()
    return out_dir


def _fingerprint(scan: Scan2017) -> str:
    digest = hashlib.sha256(f"{CONVERTER_VERSION}|{len(scan.problems)}".encode())
    for sample in scan.samples:
        for path in (sample.image_path, sample.superpixels_path, sample.features_path, sample.lesion_mask_path):
            stat = path.stat() if path is not None else None
            digest.update(f"{path and path.resolve()}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_stamp(out_dir: Path) -> dict:
    try:
        stamp = json.loads((out_dir / CONVERSION_STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _prepare_out_dir(out_dir: Path) -> None:
    """Refuse a foreign non-empty folder; empty a previous conversion (complete or interrupted) of ours."""
    check_output_folder(out_dir, "converted dataset")
    ours = (out_dir / CONVERSION_STAMP).exists() or (out_dir / _INCOMPLETE).exists()
    if out_dir.is_dir() and any(out_dir.iterdir()) and not ours:
        raise DataError(f"{out_dir}: folder exists, is not empty and is not a tatl conversion (nothing overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / _INCOMPLETE).touch()  # first: an interrupted conversion is recognised as ours and redone
    (out_dir / CONVERSION_STAMP).unlink(missing_ok=True)
    for folder in (INPUT_DIR, LESION_DIR, ATTRIBUTE_DIR):
        shutil.rmtree(out_dir / folder, ignore_errors=True)
        (out_dir / folder).mkdir()


def _link(target: Path, link: Path) -> None:
    try:
        link.symlink_to(target.resolve())
    except OSError:  # no symbolic links here (Windows without developer mode, some network file systems)
        shutil.copy2(target, link)
