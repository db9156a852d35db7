"""Predict dermoscopic attribute masks for new images with a trained run (or its ONNX export from `tatl export`).

INPUT is one image or a folder of images (.jpg .jpeg .png .bmp, any size), predicted one at a time. Writes to OUT:
  <id>_attribute_<name>.png   one per attribute: 8-bit greyscale, 0 or 255, at the image's size (the official ISIC
                              2018 Task 2 submission format; score it with `tatl evaluate OUT TRUTH`)
  <id>_segmentation.png       the Stage-1 lesion (variants with Stage 1)
  <id>_abnormal.png           the Stage-2 attribute-agnostic abnormal region (variants with Stage 2)
  predictions.json            per image and attribute: present, area as a share of the lesion, maximum probability;
                              the model, variant, shapes and thresholds used
  probabilities/              (--probabilities) <id>_attribute_<name>.png, probability x 255, 8-bit
  overlays/<id>.png           (--overlays) the Stage-1 lesion crop beside it annotated (lesion outline, abnormal
                              region dashed, attributes in colour) with a legend; with --truth also one panel per
                              attribute: truth green, prediction red, both yellow (the paper's Figure 5)
  scores.json                 (--truth) official ISIC 2018 Task 2 scores, also printed (as `tatl evaluate` does)
<id> is the file name without extension. Every file is written to a temporary name and renamed, so a killed run
never leaves half a PNG; existing files of the same name are replaced. An unreadable image is reported by name and
skipped; the exit code is then 1.

area_fraction = (attribute pixels inside the predicted lesion) / (lesion pixels), so always in [0, 1]. Without
Stage 1, or when Stage 1 finds no lesion, the lesion is the whole image ("area_reference": "image").
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from tatl.errors import DataError  # light: tatl.errors imports nothing

EXAMPLES = """\
examples:
  tatl predict runs/demo photos/ --out predictions/
  tatl predict runs/demo ISIC_0000000.jpg --out pred/ --overlays --probabilities
  tatl predict runs/pn ../shared/data/isic2018-sample/ISIC2018_Task1-2_Training_Input --out pred/ \\
      --truth ../shared/data/isic2018-sample/ISIC2018_Task2_Training_GroundTruth_v3 --overlays
  tatl predict runs/demo photos/ --out pred/ --variant 2,3 --tta --device cuda
  tatl export runs/demo --onnx runs/demo-onnx && tatl predict runs/demo-onnx photos/ --out pred/ --engine onnx
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN", type=Path, help="run folder of `tatl run`, or an ONNX export folder")
    parser.add_argument("input", metavar="INPUT", type=Path, help="an image, or a folder of images")
    parser.add_argument("--out", required=True, type=Path, help="folder for the masks and reports (created)")
    parser.add_argument("--truth", type=Path, metavar="DIR",
                        help="ground-truth attribute masks: score the prediction officially and draw truth panels")
    parser.add_argument("--overlays", action="store_true", help="write OUT/overlays/<id>.png for people to look at")
    parser.add_argument("--overlay-size", type=int, default=768, metavar="PX",
                        help="longest side of each overlay panel in pixels (default 768)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write 8-bit probability maps to OUT/probabilities/")
    parser.add_argument("--tta", action="store_true",
                        help="average over horizontal, vertical and both flips (4x the network time)")
    parser.add_argument("--variant", help="which trained variant: 3, 2,3, 1,3 or 1,2,3 (default 1,2,3 if trained)")
    parser.add_argument("--engine", choices=["torch", "onnx"],
                        help="torch for a run folder, onnx (onnxruntime) for an export folder (default: from RUN)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available, else CPU (fp32, channels-last)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for the networks (default: PyTorch's). On a machine whose cores are busy "
                             "with other work, 1 can be many times faster")


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from tqdm import tqdm

    from tatl.predict import load_predictor, write_json_file

    images = find_images(args.input)
    if args.threads is not None:
        if args.threads < 1:
            raise DataError(f"--threads {args.threads}: use 1 or more")
        import torch

        torch.set_num_threads(args.threads)
    predictor = load_predictor(args.model, args.variant, args.engine, args.device, args.tta)
    options = OutputOptions(args.out, args.overlays, args.overlay_size, args.probabilities, args.truth)
    options.prepare()
    records: dict[str, dict] = {}
    failed: dict[str, str] = {}
    started = time.perf_counter()
    for path in tqdm(images, unit="image", file=sys.stderr, disable=None, desc="predict"):
        try:
            image_id = options.image_id(path, records)
            records[image_id] = predict_image(predictor, path, image_id, options)
        except DataError as error:  # one bad file must not cost the other thousands
            failed[str(path)] = str(error).removeprefix(f"{path}: ")
            tqdm.write(f"tatl predict: skipped {path}: {failed[str(path)]}", file=sys.stderr)
    seconds = time.perf_counter() - started
    if not records:
        raise DataError(f"{args.input}: none of its {len(images)} image file(s) could be predicted (reasons above)")
    write_json_file(args.out / "predictions.json", run_report(predictor, records, failed))
    print(f"predicted {len(records)} image(s) in {seconds:.1f} s ({len(records) / seconds:.2f} images/s) into "
          f"{args.out}" + (f"; {len(failed)} skipped" if failed else ""), file=sys.stderr)
    if args.truth:
        from tatl.metrics import format_scores

        scores = score_against_truth(args.out, args.truth, predictor.settings.attributes, list(records))
        write_json_file(args.out / "scores.json", scores)
        print(format_scores(scores))
    return 1 if failed else 0


# ------------------------------------------------------------------------------------- inputs, ids and outputs
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
NOT_INPUTS = ("_segmentation", "_abnormal", "_superpixels")  # masks beside ISIC images, or our own outputs


def find_images(input_path: Path) -> list[Path]:
    """The image itself, or the image files of a folder (not recursive), sorted; DataError when there are none."""
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise DataError(f"{input_path}: no such image or folder")
    images = sorted(
        path for path in input_path.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        and "_attribute_" not in path.stem and not path.stem.endswith(NOT_INPUTS)
    )
    if not images:
        raise DataError(f"{input_path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return images


def check_image_id(image_id: str) -> str:
    """An id that names a file inside OUT: no path separators, not '.', '..' or empty, no NUL; else DataError."""
    if image_id in ("", ".", "..") or any(c in image_id for c in "/\\\0") or Path(image_id).is_absolute():
        raise DataError(f"image id {image_id!r} would write outside the output folder: rename the file")
    return image_id


class OutputOptions:
    """Where and what to write."""

    def __init__(self, out: Path, overlays: bool, overlay_size: int, probabilities: bool, truth: Path | None):
        self.out, self.overlays, self.overlay_size = Path(out), overlays, overlay_size
        self.probabilities, self.truth = probabilities, truth

    def prepare(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise DataError(f"{self.out}: output path exists and is not a folder")
        if self.truth is not None and not self.truth.is_dir():
            raise DataError(f"--truth {self.truth}: no such folder")
        if not 128 <= self.overlay_size <= 4096:
            raise DataError(f"--overlay-size {self.overlay_size}: use 128 to 4096 pixels")
        for folder in (self.out, self.out / "overlays", self.out / "probabilities"):
            for stale in folder.glob(".*.png.*.tmp"):  # left by a killed run; the ISIC scorer would see them
                stale.unlink(missing_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)

    def image_id(self, path: Path, done: dict) -> str:
        image_id = check_image_id(path.stem)
        if image_id in done:
            raise DataError(f"{path}: same id {image_id!r} as {done[image_id]['file']}; its masks would be replaced")
        return image_id

    def truth_mask(self, image_id: str, attribute: str, size: tuple[int, int]):
        """The ground-truth mask (H, W) bool, or None when the truth folder has none of the right size."""
        from tatl.metrics import PNG_THRESHOLD, read_score_png

        for stem in dict.fromkeys([image_id, scorer_id(image_id)]):
            path = self.truth / f"{stem}_attribute_{attribute}.png"
            if path.is_file():
                try:
                    mask = read_score_png(path) > PNG_THRESHOLD
                except DataError:  # a broken truth mask costs its panel, not the prediction
                    return None
                return mask if mask.shape == (size[1], size[0]) else None
        return None


def write_png(path: Path, image, compress_level: int = 1) -> None:
    """Write a PIL image or an (H, W) uint8 array as PNG via a temporary file and a rename. Level 1: binary masks
    compress almost as well as at the default 6, several times faster."""
    from PIL import Image

    from tatl.predict import write_atomically

    image = Image.fromarray(image) if not isinstance(image, Image.Image) else image
    write_atomically(path, lambda handle: image.save(handle, format="PNG", compress_level=compress_level))


def as_grey(mask):
    """A bool mask as 8-bit 0/255 without a wider temporary (np.where would make an int64 copy)."""
    return mask.view("uint8") * 255


def describe(mask, max_probability: float, reference) -> dict:
    """present, area_fraction (share of the reference region covered: never above 1) and maximum probability."""
    import numpy as np

    if reference is None:
        area = np.count_nonzero(mask) / mask.size
    else:
        area = np.count_nonzero(mask & reference) / np.count_nonzero(reference)
    return {"present": bool(mask.any()), "area_fraction": round(float(area), 6),
            "max_probability": float(max_probability)}


def predict_image(predictor, path: Path, image_id: str, options: OutputOptions) -> dict:
    """Predict one image and write its files; returns its predictions.json record. Holds at most one full-size
    probability map at a time, plus the full-size lesion mask."""
    import numpy as np

    from tatl.data.dataset import LESION, UNION
    from tatl.data.isic2017 import ATTRIBUTES_2017, superpixel_means, write_features_json
    from tatl.overlays import OverlayView

    prediction = predictor.predict(path)
    threshold, out = predictor.settings.threshold, options.out
    record: dict = {"file": str(path), "width": prediction.size[0], "height": prediction.size[1]}
    view = OverlayView(prediction, options.overlay_size) if options.overlays else None
    lesion = shown_lesion = shown_abnormal = None
    if LESION in prediction.maps:
        lesion = prediction.full_size(LESION) > threshold
        write_png(out / f"{image_id}_segmentation.png", as_grey(lesion))
        record["lesion"] = {"box": list(prediction.box), "whole_image_fallback": prediction.lesion_fallback,
                            "area_fraction_of_image": round(float(lesion.mean()), 6)}
        shown_lesion = view.shrink(lesion) if view else None
    reference = lesion if lesion is not None and lesion.any() else None
    record["area_reference"] = "lesion" if reference is not None else "image"
    layers: dict = {}
    superpixels = _superpixels_beside(path)  # ISIC 2017: also write the per-superpixel submission format
    features_2017: dict = {}
    for name in [UNION] * (2 in predictor.settings.stages) + predictor.settings.attributes:
        probabilities = prediction.full_size(name)
        if superpixels is not None and name in ATTRIBUTES_2017:
            features_2017[name] = superpixel_means(superpixels, probabilities).clip(0.0, 1.0).tolist()
        mask = probabilities > predictor.settings.threshold_for(name)
        summary = describe(mask, probabilities.max(), reference)
        stem = f"{image_id}_abnormal" if name == UNION else f"{image_id}_attribute_{name}"
        write_png(out / f"{stem}.png", as_grey(mask))
        if options.probabilities:  # in place: a 6000 x 4000 map is 96 MB
            np.rint(np.multiply(probabilities, 255, out=probabilities), out=probabilities)
            write_png(out / "probabilities" / f"{stem}.png", probabilities.astype(np.uint8))
        if name == UNION:
            record["abnormal"] = summary
            shown_abnormal = view.shrink(mask) if view else None
        else:
            record.setdefault("attributes", {})[name] = summary
            if view:
                truth = options.truth_mask(image_id, name, prediction.size) if options.truth else None
                layers[name] = view.layer(mask, summary, truth, record["area_reference"])
        del probabilities, mask
    if features_2017:
        write_features_json(out / f"{image_id}_features.json", features_2017)
        record["isic2017_features_file"] = f"{image_id}_features.json"
    if view:
        s = predictor.settings
        title = (f"{image_id}: {view.what}; TATL variant {s.variant}, {' + '.join(s.shapes)}, "
                 + ("tuned thresholds" if s.attribute_thresholds else f"threshold {s.threshold:g}")
                 + (", flip TTA" if predictor.tta else ""))
        picture = view.render(title, shown_lesion, shown_abnormal, layers, with_truth=options.truth is not None)
        write_png(out / "overlays" / f"{image_id}.png", picture, compress_level=6)
    return record


def _superpixels_beside(path: Path):
    """The ISIC 2017 superpixel map next to an image (ISIC_<id>_superpixels.png), if there is one."""
    from tatl.data.isic2017 import read_superpixels

    candidate = path.with_name(f"{path.stem}_superpixels.png")
    return read_superpixels(candidate) if candidate.is_file() else None


def run_report(predictor, records: dict[str, dict], failed: dict[str, str]) -> dict:
    from dataclasses import asdict

    return {
        "model": str(predictor.source), "engine": predictor.engine, "tta": predictor.tta,
        "settings": asdict(predictor.settings),
        "area_fraction": "attribute pixels inside the predicted lesion / lesion pixels (area_reference 'lesion'); "
                         "/ image pixels when there is no lesion mask (area_reference 'image')",
        "images": records, "failed": failed,
    }


def scorer_id(stem: str) -> str:
    """The image id the ISIC scorer reads from a file name: its ISIC_nnnnnnn, else the whole stem."""
    match = re.search(r"ISIC_[0-9]{7}", stem)
    return match.group(0) if match else stem


def score_against_truth(out: Path, truth: Path, attributes: list[str], image_ids: list[str]) -> dict:
    """Official Task 2 scores (tatl.metrics.score_task2_folders) of OUT against the truth masks of the images
    predicted now, on the attributes both have: a truth folder may hold more images (a subset was predicted)."""
    import shutil
    import sys
    import tempfile

    from tatl.metrics import score_task2_folders

    wanted = {scorer_id(i) for i in image_ids}
    kept = [p for p in sorted(truth.glob("*_attribute_*.png")) if p.stem.rpartition("_attribute_")[2] in attributes
            and scorer_id(p.stem.rpartition("_attribute_")[0]) in wanted]
    if not kept:
        raise DataError(f"--truth {truth}: no mask of the predicted images and attributes ({', '.join(attributes)})")
    with tempfile.TemporaryDirectory(prefix="tatl-truth-") as folder:
        for path in kept:  # the subset of the truth folder that this prediction answers
            try:
                (Path(folder) / path.name).symlink_to(path.resolve())
            except OSError:  # no symlinks (some Windows set-ups)
                shutil.copyfile(path, Path(folder) / path.name)
        scored = {scorer_id(p.stem.rpartition("_attribute_")[0]) for p in kept}
        print(f"scoring {len(scored)} of the {len(image_ids)} predicted image(s) against {truth}", file=sys.stderr)
        return score_task2_folders(out, Path(folder), sorted({p.stem.rpartition("_attribute_")[2] for p in kept}))
