"""Every problem of a dataset at once, before any training: `tatl check-data` and the start of `tatl run`.

Every image is decoded (JPEGs at 1/8 scale, which still reads every byte, so a truncated file shows) and every
mask is read in full (masks are small PNGs). Problems are collected, not raised, so one run of check-data lists
all of them: errors stop a run (`require_valid`), notes only say what tatl does with an unusual file (a grey image
made RGB, an EXIF orientation left unapplied).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tatl import logs
from tatl.constants import ATTRIBUTES_2018, LESION
from tatl.data.images import ImageFileError, inspect_image, inspect_mask
from tatl.data.isic import ATTRIBUTE_INFIX, LESION_SUFFIX, Sample, Scan, join_samples, no_image_reason, scan_dataset
from tatl.errors import DataError

ERROR, NOTE = "error", "note"
SHOWN_ERRORS = 20  # require_valid lists this many, then "and N more"


@dataclass
class Problem:
    path: Path
    reason: str
    severity: str  # "error" or "note"

    def __str__(self) -> str:
        return f"{self.path}: {'note: ' if self.severity == NOTE else ''}{self.reason}"


@dataclass
class DataReport:
    root: Path
    samples: list[Sample]
    attributes: tuple[str, ...]
    sizes: dict[str, tuple[int, int]]  # id -> (width, height)
    presence: dict[str, frozenset[str]]  # id -> attributes with a non-empty mask
    problems: list[Problem]
    attribute_pixel_fraction: dict[str, float]  # mean positive share over the images with that mask (0.0: none)
    layout: str = ""  # how the folder was read, in words
    # "lesion" and each attribute -> (valid masks, non-empty ones, mean share of positive pixels)
    mask_stats: dict[str, tuple[int, int, float]] = field(default_factory=dict)

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    def notes(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == NOTE]

    def summary_table(self) -> str:
        """Images, size range, and per mask kind: images with a mask, with a non-empty one, mean positive share."""
        lines = [f"{self.root} ({self.layout}): {len(self.samples)} images, sizes {_size_range(self.sizes)}"]
        lines += ["", "| mask | images with mask | non-empty | mean positive pixels |", "|---|---:|---:|---:|"]
        for kind in (LESION, *self.attributes):
            masks, non_empty, share = self.mask_stats.get(kind, (0, 0, 0.0))
            lines.append(f"| {kind} | {masks} | {non_empty} | {100 * share:.2f}% |")
        lines.append(f"\n{len(self.errors())} errors, {len(self.notes())} notes")
        return "\n".join(lines)


@dataclass
class _SampleResult:
    size: tuple[int, int] | None = None
    problems: list[Problem] = field(default_factory=list)
    positive_share: dict[str, float] = field(default_factory=dict)  # "lesion"/attribute -> share of valid mask


def check_dataset(
    root: Path,
    attributes: Sequence[str] = ATTRIBUTES_2018,
    need_lesion: bool = False,
    need_attributes: bool | Sequence[str] = True,
    binarize_threshold: int | None = None,
) -> DataReport:
    """Every problem of the dataset in `root`; DataError only when `root` itself is unusable. need_attributes: every
    image needs a mask of each of `attributes` (True), of the attributes listed, or of none (False)."""
    scan = scan_dataset(root, attributes)
    attributes = tuple(attributes) if not isinstance(attributes, str) else (attributes,)
    problems = _layout_problems(scan)

    def check(sample: Sample) -> _SampleResult:
        return _check_sample(sample, attributes, need_lesion, need_attributes, binarize_threshold)

    # Decoding and PNG inflating release the GIL: threads give a near-linear speed-up.
    with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
        checked = pool.map(check, scan.samples)
        results = list(logs.progress(checked, f"checking {scan.root}", len(scan.samples), "image"))
    report = DataReport(scan.root, scan.samples, attributes, {}, {}, problems, {}, scan.layout)
    for sample, result in zip(scan.samples, results, strict=True):
        _add_result(report, sample, result)
    _add_fractions(report, results)
    return report


def merge_reports(reports: Sequence[DataReport]) -> DataReport:
    """One report of several dataset folders' reports (their root: the first folder); a DataError naming both files
    when two folders hold the same image id. Each report is checked on its own first (require_valid)."""
    if len(reports) == 1:
        return reports[0]
    samples = sorted(join_samples([r.samples for r in reports]).values(), key=lambda s: s.image_id)
    merged = DataReport(reports[0].root, samples, reports[0].attributes, {}, {}, [], {},
                        f"{len(reports)} folders: " + ", ".join(str(r.root) for r in reports))
    for report in reports:
        merged.sizes.update(report.sizes)
        merged.presence.update(report.presence)
        merged.problems += report.problems
    for kind in (LESION, *merged.attributes):  # counts add up; the mean share is weighted by the masks counted
        stats = [r.mask_stats.get(kind, (0, 0, 0.0)) for r in reports]
        masks = sum(s[0] for s in stats)
        mean = sum(s[0] * s[2] for s in stats) / masks if masks else 0.0
        merged.mask_stats[kind] = (masks, sum(s[1] for s in stats), mean)
        if kind != LESION:
            merged.attribute_pixel_fraction[kind] = mean
    return merged


def require_valid(report: DataReport) -> None:
    """DataError naming the file and reason of each error (one line for one error), the first SHOWN_ERRORS then how
    many more."""
    errors = report.errors()
    if not errors:
        return
    if len(errors) == 1:  # one line: the file and the reason
        raise DataError(f"{errors[0]} (the only data error in {report.root})")
    shown = "\n".join(f"  {problem}" for problem in errors[:SHOWN_ERRORS])
    more = f"\n  and {len(errors) - SHOWN_ERRORS} more" if len(errors) > SHOWN_ERRORS else ""
    raise DataError(
        f"{report.root}: {len(errors)} data errors (run `tatl check-data {report.root}` for the full list):\n"
        f"{shown}{more}"
    )


def _layout_problems(scan: Scan) -> list[Problem]:
    problems = []
    if not scan.samples and not scan.duplicates:
        problems.append(Problem(scan.root, f"no image found ({no_image_reason()})", ERROR))
    for image_id, paths in sorted(scan.duplicates.items()):
        for path in paths:
            others = ", ".join(p.name for p in paths if p != path)
            problems.append(Problem(path, f"id {image_id!r} is also claimed by {others}: rename or remove one", ERROR))
    for path in scan.orphan_masks:
        problems.append(Problem(path, "mask without an image: no image file with this id was found", ERROR))
    return problems


def _check_sample(
    sample: Sample,
    attributes: tuple[str, ...],
    need_lesion: bool,
    need_attributes: bool | Sequence[str],
    binarize_threshold: int | None,
) -> _SampleResult:
    result = _SampleResult()
    try:
        info = inspect_image(sample.image_path)
        result.size = info.size
        result.problems += [Problem(sample.image_path, note, NOTE) for note in info.notes]
    except ImageFileError as error:
        result.problems.append(Problem(sample.image_path, error.reason, ERROR))
    masks = {LESION: sample.lesion_mask_path, **sample.attribute_mask_paths}
    for kind, path in masks.items():
        if path is not None:
            _check_mask(result, kind, path, binarize_threshold)
    if need_lesion and sample.lesion_mask_path is None:
        expected = f"{sample.image_id}{LESION_SUFFIX}.png"
        result.problems.append(Problem(sample.image_path, f"no lesion mask ({expected})", ERROR))
    needed = attributes if need_attributes is True else tuple(need_attributes or ())
    missing = [a for a in needed if a not in sample.attribute_mask_paths]
    if missing:
        expected = ", ".join(f"{sample.image_id}{ATTRIBUTE_INFIX}{a}.png" for a in missing)
        result.problems.append(Problem(sample.image_path, f"missing attribute masks: {expected}", ERROR))
    return result


def _check_mask(result: _SampleResult, kind: str, path: Path, binarize_threshold: int | None) -> None:
    info = inspect_mask(path, result.size, binarize_threshold)
    result.problems += [Problem(path, reason, ERROR) for reason in info.problems]
    if not info.problems and info.size:
        result.positive_share[kind] = info.positive_pixels / (info.size[0] * info.size[1])


def _add_result(report: DataReport, sample: Sample, result: _SampleResult) -> None:
    report.problems += result.problems
    if result.size is not None:
        report.sizes[sample.image_id] = result.size
    present = {k for k, share in result.positive_share.items() if share > 0 and k in report.attributes}
    report.presence[sample.image_id] = frozenset(present)


def _add_fractions(report: DataReport, results: list[_SampleResult]) -> None:
    for kind in (LESION, *report.attributes):
        shares = [r.positive_share[kind] for r in results if kind in r.positive_share]
        mean = sum(shares) / len(shares) if shares else 0.0
        report.mask_stats[kind] = (len(shares), sum(share > 0 for share in shares), mean)
        if kind != LESION:
            report.attribute_pixel_fraction[kind] = mean


def _size_range(sizes: dict[str, tuple[int, int]]) -> str:
    if not sizes:
        return "none readable"
    widths, heights = [s[0] for s in sizes.values()], [s[1] for s in sizes.values()]
    smallest, largest = f"{min(widths)}x{min(heights)}", f"{max(widths)}x{max(heights)}"
    return smallest if smallest == largest else f"{smallest} to {largest}"
