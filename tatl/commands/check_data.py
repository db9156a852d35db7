"""Validate a dataset before training: print every problem as `path: reason`, or a summary when it is clean.

Reads the official ISIC 2018 folders (Task1-2 Input, Task1 and Task2 GroundTruth of one split) or any folder tree
with the same file naming (<id>.jpg, <id>_segmentation.png, <id>_attribute_<name>.png). Every image is decoded
and every mask read: unreadable or truncated files, masks missing, of the wrong size, with more than one channel
or with values other than 0 and 255, masks without an image and duplicated ids are errors (exit code 1). Notes
say what tatl does with unusual but usable files (grey or CMYK images made RGB, an EXIF orientation that is not
applied because masks refer to the stored pixels). A missing folder is reported on one line (exit code 2).

An ISIC 2017 Part 2 folder (superpixel maps `<id>_superpixels.png` and `<id>_features.json` labels) is recognised
and checked as such: every superpixel map decoded and matched to its image's size, every JSON to the number of
superpixels, labels 0/1, exactly the four 2017 features; the table counts rasterised positive pixels.
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  tatl check-data ../shared/data/isic2018-sample --attributes pigment_network
  tatl check-data ../shared/data/ph2 --lesion-only          # lesion masks only (PH2, ISIC Task 1)
  tatl check-data ISIC2018/ --need-lesion                   # all five attributes and the lesion masks
  tatl check-data soft-masks/ --binarize 128                # accept soft masks, positive = value > 128
  tatl check-data huge/ --max-image-pixels 300000000        # images above Pillow's 89-megapixel guard
  tatl check-data ISIC2017/training                         # ISIC 2017 Part 2: superpixels and features JSONs
exit codes: 0 no errors (notes may be printed), 1 data errors, 2 unusable folder or arguments.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="dataset folder (ISIC 2018 folders, or one folder tree with the same naming)")
    parser.add_argument(
        "--attributes",
        type=_names,
        default=None,
        help="comma-separated attribute masks to expect (default: the five ISIC 2018 attributes)",
    )
    parser.add_argument(
        "--lesion-only",
        action="store_true",
        help="lesion segmentation data (e.g. PH2): lesion masks required, attribute masks not",
    )
    parser.add_argument("--need-lesion", action="store_true", help="also require a lesion mask for every image")
    parser.add_argument(
        "--binarize",
        type=_threshold,
        default=None,
        metavar="T",
        help="accept soft masks: positive = value > T (the official scorer uses 128); default: refuse them",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=_positive_int,
        default=None,
        metavar="N",
        help="raise Pillow's decompression-bomb limit (default 89478485 pixels) for genuinely huge images",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tatl.constants import ATTRIBUTES_2017, ATTRIBUTES_2018
    from tatl.data.checks import check_dataset
    from tatl.data.images import pixel_limit
    from tatl.data.isic2017 import check_isic2017, is_isic2017

    isic2017 = not args.lesion_only and is_isic2017(Path(args.data))  # lesion-only: the ISIC 2018 reading fits
    with pixel_limit(args.max_image_pixels or None):  # process-wide in Pillow: put back after (a Python caller)
        if isic2017:
            report = check_isic2017(Path(args.data), args.attributes or ATTRIBUTES_2017,
                                    need_lesion=args.need_lesion, binarize_threshold=args.binarize)
        else:
            report = check_dataset(
                Path(args.data),
                args.attributes or (() if args.lesion_only else ATTRIBUTES_2018),
                need_lesion=args.need_lesion or args.lesion_only,
                need_attributes=not args.lesion_only,
                binarize_threshold=args.binarize,
            )
    for problem in report.problems:
        print(problem)
    if report.problems:
        print()
    print(report.summary_table())
    if not isic2017:  # 2017 labels live in JSONs: its samples list no mask files for the hint to count
        _print_attribute_hint(report, not args.lesion_only)
    return 1 if report.errors() else 0


def _print_attribute_hint(report, need_attributes: bool) -> None:
    """A dataset with only some attributes (like the ISIC sample) fails on every image: say the likely fix once."""
    found = {a for sample in report.samples for a in sample.attribute_mask_paths}
    absent = [a for a in report.attributes if a not in found]
    if need_attributes and absent and report.samples:
        present = ",".join(a for a in report.attributes if a in found)
        fix = f"--attributes {present}" if present else "--lesion-only"
        print(f"hint: no image has a mask for {', '.join(absent)}; if the dataset lacks them, pass {fix}")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one attribute name")
    return names


def _threshold(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else -1
    if not 0 <= value <= 254:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 254, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, not {text!r}")
    return int(text)
