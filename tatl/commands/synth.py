"""Write a synthetic ISIC-like dermoscopy dataset in the official ISIC 2018 layout (the project's demo data).

Each image has skin, a dark dermatoscope vignette, an irregular brown lesion, optional hairs, a lesion mask and the
five Task 2 attribute masks. Present attributes are drawn with their ISIC 2018 frequencies and filled with a
distinct texture inside the lesion: pigment network (dark mesh), negative network (pale mesh around dark cells),
globules (dark dots), milia-like cysts (white spots) and streaks (radial lines at the rim). Images are SIZE wide and
SIZE*3/4 high (the ISIC aspect) unless --image-size-range is given. The same arguments write the same bytes; OUT
must be new, empty, or a previous synthetic dataset (which is replaced). --format isic2017 writes the ISIC 2017
Part 2 layout instead: SLIC0 superpixel maps and per-superpixel labels of the four 2017 features.
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  tatl synth data/synth                                   # 300 images, 256 x 192 px, seed 0
  tatl synth data/synth --n 240 --size 192 --seed 1
  tatl synth data/synth-varied --n 50 --image-size-range 300 1024 --no-hairs
  tatl synth data/synth2017 --format isic2017 --n 100 --size 192    # ISIC 2017 Part 2 layout (superpixels)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="folder to write (new, empty, or a previous synthetic dataset)")
    parser.add_argument("--n", type=int, default=300, help="number of images (default: 300)")
    parser.add_argument("--size", type=int, default=256, help="image width in pixels, height 3/4 of it (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    parser.add_argument(
        "--image-size-range",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="draw each image's width in [LO, HI] instead of using --size (height stays 3/4 of the width)",
    )
    parser.add_argument("--no-hairs", action="store_true", help="draw no hairs")
    parser.add_argument(
        "--format",
        choices=["isic2018", "isic2017"],
        default="isic2018",
        help="isic2018: attribute masks (default); isic2017: superpixel maps and features JSONs",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tatl.data.synth import write_synthetic_dataset, write_synthetic_isic2017

    out = Path(args.out)
    size_range = tuple(args.image_size_range) if args.image_size_range else None
    write = write_synthetic_isic2017 if args.format == "isic2017" else write_synthetic_dataset
    ids = write(out, args.n, args.size, args.seed, size_range, hairs=not args.no_hairs)
    counts = _counts_2017(out, ids) if args.format == "isic2017" else _counts_2018(out, ids)
    shape = f"{args.size} px wide" if size_range is None else f"{size_range[0]}-{size_range[1]} px wide"
    summary = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(
        f"wrote {len(ids)} synthetic images ({shape}, seed {args.seed}, {args.format} layout) to {out}; images "
        f"per attribute: {summary}"
    )
    return 0


def _counts_2018(out, ids: list[str]) -> dict[str, int]:
    from PIL import Image

    from tatl.data.isic import ATTRIBUTE_DIR
    from tatl.data.synth import ATTRIBUTE_FREQUENCIES

    counts = dict.fromkeys(ATTRIBUTE_FREQUENCIES, 0)
    for image_id in ids:
        for name in counts:
            # getextrema()[1] > 0: the mask has a positive pixel; reading back counts what was really written
            with Image.open(out / ATTRIBUTE_DIR / f"{image_id}_attribute_{name}.png") as mask:
                counts[name] += mask.getextrema()[1] > 0
    return counts


def _counts_2017(out, ids: list[str]) -> dict[str, int]:
    from tatl.constants import ATTRIBUTES_2017
    from tatl.data.isic2017 import read_features
    from tatl.data.synth import ISIC2017_DIRS

    counts = dict.fromkeys(ATTRIBUTES_2017, 0)
    for image_id in ids:
        for name, labels in read_features(out / ISIC2017_DIRS[2] / f"{image_id}_features.json").items():
            counts[name] += bool(labels.any())
    return counts
