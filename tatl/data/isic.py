"""Find the images and masks of an ISIC 2018 (Task 1 and Task 2) dataset and pair them by image id.

Two layouts are recognised:

- the official ISIC 2018 folders in DATA: `*Task1-2*_Input` (images), `*Task1*_GroundTruth` (lesion masks
  `<id>_segmentation.png`) and `*Task2*_GroundTruth*` (attribute masks `<id>_attribute_<name>.png`), for one
  split (Training, Validation or Test). A folder holding several splits is refused rather than silently mixed,
  because training on the validation images would leak them into the score;
- anything else: every file under DATA (any depth) with the same file naming, e.g. one flat folder.

The image id is the file stem (`ISIC_0000000`, `IMD002`, any stem); extensions are matched case-insensitively.
Hidden files and `__MACOSX` folders (left by unzipping on a Mac) are skipped, and so are files that are neither
images nor masks (README, csv, LICENSE, ISIC 2017 `*_superpixels.png`) and masks of attributes not asked for.
Missing masks are not errors here: a lesion-only dataset is valid for Stage 1; `tatl.data.checks` reports them
when a stage needs them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tatl.constants import ATTRIBUTES_2018
from tatl.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
LESION_SUFFIX = "_segmentation"
ATTRIBUTE_INFIX = "_attribute_"
SUPERPIXELS_SUFFIX = "_superpixels"
# The official ISIC 2018 training folders, as `tatl synth` and the ISIC 2017 conversion write them.
INPUT_DIR = "ISIC2018_Task1-2_Training_Input"
LESION_DIR = "ISIC2018_Task1_Training_GroundTruth"
ATTRIBUTE_DIR = "ISIC2018_Task2_Training_GroundTruth_v3"

_SPLIT_FOLDER = re.compile(r"Task(?:1-2|1|2)_(?P<split>[A-Za-z]+)_(?:Input|GroundTruth)")
_ANY_ATTRIBUTE = re.compile(r"^(?P<id>.+?)_attribute_(?P<name>\w+)$")


@dataclass(frozen=True)
class Sample:
    image_id: str  # file stem: ISIC_0000000, IMD002, any stem
    image_path: Path
    lesion_mask_path: Path | None  # <id>_segmentation.png
    attribute_mask_paths: dict[str, Path]  # attribute -> <id>_attribute_<name>.png, only those found


@dataclass
class Scan:
    """What a folder holds, problems included: `find_samples` raises on them, `check_dataset` lists them."""

    root: Path
    layout: str  # in words, for the summary
    samples: list[Sample] = field(default_factory=list)  # sorted by id; duplicated ids left out
    duplicates: dict[str, list[Path]] = field(default_factory=dict)  # id -> every image (or mask) file claiming it
    orphan_masks: list[Path] = field(default_factory=list)  # masks whose id has no image


def validate_attribute_names(attributes: Sequence[str]) -> tuple[str, ...]:
    """Attribute names become file names: refuse anything that could escape a folder or never match a file."""
    if isinstance(attributes, str):  # "streaks" would otherwise become seven one-letter attributes
        attributes = (attributes,)
    for name in attributes:
        if not isinstance(name, str) or not name.isidentifier():
            raise DataError(f"attribute name {name!r} is not valid: use letters, digits and '_' only")
    repeated = sorted({name for name in attributes if list(attributes).count(name) > 1})
    if repeated:
        raise DataError(f"attribute names listed twice: {', '.join(repeated)}")
    return tuple(attributes)


def find_samples(root: Path, attributes: Sequence[str] = ATTRIBUTES_2018) -> list[Sample]:
    """The dataset's samples sorted by id; DataError for a missing folder, no image or a duplicated id."""
    scan = scan_dataset(root, attributes)
    if not scan.samples and not scan.duplicates:
        raise DataError(f"{scan.root}: no image found ({no_image_reason()})")
    if scan.duplicates:
        image_id, paths = next(iter(sorted(scan.duplicates.items())))
        more = f" (and {len(scan.duplicates) - 1} more duplicated ids)" if len(scan.duplicates) > 1 else ""
        raise DataError(f"{scan.root}: id {image_id!r} is claimed by several files: {_names(paths)}{more}")
    return scan.samples


def join_samples(folders: Sequence[Sequence[Sample]]) -> dict[str, Sample]:
    """id -> sample of the images of several dataset folders (the Segment-Net on several lesion datasets); an id
    found in two folders is a DataError naming both files: one id names one image in a run (split, cache, boxes)."""
    joined: dict[str, Sample] = {}
    for samples in folders:
        for sample in samples:
            other = joined.setdefault(sample.image_id, sample)
            if other is not sample:
                raise DataError(f"{other.image_path} and {sample.image_path}: the same image id {sample.image_id!r} "
                                "in two DATA folders; ids must be unique across the folders (rename or drop one)")
    return joined


def scan_dataset(root: Path, attributes: Sequence[str] = ATTRIBUTES_2018) -> Scan:
    """Classify every file under `root` and pair images with masks; raises only for an unusable `root`."""
    attributes = validate_attribute_names(attributes)
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, not a dataset folder")
    folders, layout = _dataset_folders(root)
    images, lesions, attribute_masks = _classify(_files(folders), attributes)
    return _pair(Scan(root, layout), images, lesions, attribute_masks)


def attribute_names(root: Path) -> list[str]:
    """Every attribute name with at least one `<id>_attribute_<name>` mask under `root`, sorted."""
    folders, _ = _dataset_folders(Path(root))
    found = {match.group("name") for path in _files(folders) if (match := _ANY_ATTRIBUTE.match(path.stem))}
    return sorted(found)


def no_image_reason() -> str:
    return f"looked for {', '.join(IMAGE_EXTENSIONS)} files not named *{LESION_SUFFIX} or *{ATTRIBUTE_INFIX}*"


def _dataset_folders(root: Path) -> tuple[list[Path], str]:
    """The official ISIC folders of one split when `root` has them, else `root` itself."""
    official = [p for p in sorted(root.iterdir()) if p.is_dir() and _is_official_folder(p.name)]
    if not any(p.name.endswith("_Input") for p in official):
        return [root], "one folder tree"
    splits = sorted({_SPLIT_FOLDER.search(p.name).group("split") for p in official})
    if len(splits) > 1:
        raise DataError(
            f"{root}: holds the ISIC 2018 folders of several splits ({', '.join(splits)}); point DATA at a folder "
            "with the Input and GroundTruth folders of one split, so validation images never leak into training"
        )
    tasks = [_task(p.name) for p in official]
    repeated = [p.name for p in official if tasks.count(_task(p.name)) > 1]
    if repeated:  # e.g. Task2 ground truth v2 and v3 side by side: every mask would be claimed twice
        raise DataError(f"{root}: holds several folders of the same kind ({', '.join(repeated)}); keep one")
    return official, f"ISIC 2018 official folders ({splits[0]})"


def _task(folder_name: str) -> str:
    return _SPLIT_FOLDER.search(folder_name).group(0).split("_")[0]  # Task1-2, Task1 or Task2


def _is_official_folder(name: str) -> bool:
    if not _SPLIT_FOLDER.search(name):
        return False
    kind_ok = {"Task1-2": name.endswith("_Input"), "Task1": name.endswith("_GroundTruth")}
    return kind_ok.get(_task(name), "_GroundTruth" in name)  # Task2 ground truth has a version: _GroundTruth_v3


def _files(folders: list[Path]) -> list[Path]:
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            relative = path.relative_to(folder).parts
            if any(part.startswith(".") or part == "__MACOSX" for part in relative):
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                found.append(path)
    return sorted(found)


def _classify(
    files: list[Path], attributes: tuple[str, ...]
) -> tuple[dict[str, list[Path]], dict[str, list[Path]], dict[tuple[str, str], list[Path]]]:
    """id -> images, id -> lesion masks, (id, attribute) -> attribute masks; each list longer than 1 is a clash."""
    images: dict[str, list[Path]] = {}
    lesions: dict[str, list[Path]] = {}
    attribute_masks: dict[tuple[str, str], list[Path]] = {}
    for path in files:
        stem = path.stem
        if stem.endswith(SUPERPIXELS_SUFFIX):  # ISIC 2017 inputs ship superpixel maps beside the images
            continue
        if stem.endswith(LESION_SUFFIX) and len(stem) > len(LESION_SUFFIX):
            lesions.setdefault(stem[: -len(LESION_SUFFIX)], []).append(path)
            continue
        known = [a for a in attributes if stem.endswith(ATTRIBUTE_INFIX + a) and len(stem) > len(ATTRIBUTE_INFIX + a)]
        if known:
            name = max(known, key=len)  # "network" vs "pigment_network": the longest name is the right one
            attribute_masks.setdefault((stem[: -len(ATTRIBUTE_INFIX + name)], name), []).append(path)
        elif not _ANY_ATTRIBUTE.match(stem):  # masks of attributes not asked for are neither images nor problems
            images.setdefault(stem, []).append(path)
    return images, lesions, attribute_masks


def _pair(
    scan: Scan,
    images: dict[str, list[Path]],
    lesions: dict[str, list[Path]],
    attribute_masks: dict[tuple[str, str], list[Path]],
) -> Scan:
    for image_id, paths in images.items():
        if len(paths) > 1:
            scan.duplicates[image_id] = paths
    mask_lists = [*lesions.items(), *((image_id, paths) for (image_id, _), paths in attribute_masks.items())]
    for image_id, paths in mask_lists:
        if len(paths) > 1 and image_id in images:  # two lesion masks for one image, e.g. in two sub-folders
            scan.duplicates.setdefault(image_id, list(images[image_id])).extend(paths)
    scan.orphan_masks = sorted(
        [p for i, paths in lesions.items() if i not in images for p in paths]
        + [p for (i, _), paths in attribute_masks.items() if i not in images for p in paths]
    )
    by_image: dict[str, dict[str, Path]] = {}
    for (image_id, name), paths in attribute_masks.items():
        by_image.setdefault(image_id, {})[name] = paths[0]
    for image_id in sorted(images):
        if image_id in scan.duplicates:
            continue
        lesion = lesions.get(image_id, [None])[0]
        found = by_image.get(image_id, {})
        ordered = {name: found[name] for name in sorted(found)}
        scan.samples.append(Sample(image_id, images[image_id][0], lesion, ordered))
    return scan


def _names(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)
