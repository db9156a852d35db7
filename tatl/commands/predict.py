"""Predict dermoscopic attribute masks for new images with a trained run (or its ONNX export from `tatl export`).

INPUT is one image or a folder of images (.jpg .jpeg .png .bmp, any size), predicted one at a time. Writes to OUT:
  <id>_attribute_<name>.png   one per attribute: 8-bit greyscale, 0 or 255, at the image's size (the official ISIC
                              2018 Task 2 submission format; score it with `tatl evaluate OUT TRUTH`)
  <id>_segmentation.png       the Stage-1 lesion (variants with Stage 1; all a Segment-Net alone, --stages 1, writes)
  <id>_abnormal.png           the Stage-2 attribute-agnostic abnormal region (variants with Stage 2)
  predictions.json            per image and attribute: present, area as a share of the lesion, maximum probability;
                              the model, variant, shapes and thresholds used
  probabilities/              (--probabilities) <id>_attribute_<name>.png, probability x 255, 8-bit
  overlays/<id>.png           (--overlays) the Stage-1 lesion crop beside it annotated (lesion outline, abnormal
                              region dashed, attributes in colour) with a legend; with --truth also one panel per
                              attribute: truth green, prediction red, both yellow (the paper's Figure 5)
  scores.json                 (--truth) official ISIC 2018 Task 2 scores, also printed (as `tatl evaluate` does);
                              for a Segment-Net alone, the Task 1 scores against the truth's <id>_segmentation.png
<id> is the file name without extension. Every file is written to a temporary name and renamed, so a killed run
never leaves half a PNG; existing files of the same name are replaced. An unreadable image is reported by name and
skipped; the exit code is then 1.

area_fraction = (attribute pixels inside the predicted lesion) / (lesion pixels), so always in [0, 1]. Without
Stage 1, or when Stage 1 finds no lesion, the lesion is the whole image ("area_reference": "image").
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tatl.errors import DataError  # light: tatl.errors imports nothing

log = logging.getLogger(__name__)

EXAMPLES = """\
examples:
  tatl predict runs/demo photos/ --out predictions/
  tatl predict runs/demo ISIC_0000000.jpg --out pred/ --overlays --probabilities
  tatl predict runs/pn ../shared/data/isic2018-sample/ISIC2018_Task1-2_Training_Input --out pred/ \\
      --truth ../shared/data/isic2018-sample/ISIC2018_Task2_Training_GroundTruth_v3 --overlays
  tatl predict runs/demo photos/ --out pred/ --variant 2,3 --tta --device cuda
  tatl predict runs/segnet ../shared/data/ph2/ISIC2018_Task1-2_Training_Input --out lesions/ --overlays \
      --truth ../shared/data/ph2/ISIC2018_Task1_Training_GroundTruth      # a Segment-Net alone: Task 1 scores
  tatl export runs/demo --onnx runs/demo-onnx && tatl predict runs/demo-onnx photos/ --out pred/ --engine onnx
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN", type=Path, help="run folder of `tatl run`, or an ONNX export folder")
    parser.add_argument("input", metavar="INPUT", type=Path, help="an image, or a folder of images")
    parser.add_argument("--out", required=True, type=Path, help="folder for the masks and reports (created)")
    parser.add_argument("--truth", type=Path, metavar="DIR",
                        help="ground-truth attribute masks: score the prediction officially and draw truth panels "
                             "(a Segment-Net alone: lesion masks <id>_segmentation.png, ISIC Task 1 scores)")
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
    import time

    from tatl import logs
    from tatl.inference.outputs import OutputOptions, find_images, predict_image, run_report, score_against_truth
    from tatl.inference.predictor import load_predictor
    from tatl.io import write_json

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
    for path in logs.progress(images, "predict", unit="image"):
        try:
            image_id = options.image_id(path, records)
            records[image_id] = predict_image(predictor, path, image_id, options)
        except DataError as error:  # one bad file must not cost the other thousands
            failed[str(path)] = str(error).removeprefix(f"{path}: ")
            log.warning(f"skipped {path}: {failed[str(path)]}")
    seconds = time.perf_counter() - started
    if not records:
        raise DataError(f"{args.input}: none of its {len(images)} image file(s) could be predicted (reasons above)")
    write_json(args.out / "predictions.json", run_report(predictor, records, failed))
    log.info(f"predicted {len(records)} image(s) in {seconds:.1f} s ({len(records) / seconds:.2f} images/s) into "
             f"{args.out}" + (f"; {len(failed)} skipped" if failed else ""))
    if args.truth:
        from tatl.inference.outputs import format_truth_scores

        scores = score_against_truth(args.out, args.truth, predictor.settings.attributes, list(records))
        write_json(args.out / "scores.json", scores)
        print(format_truth_scores(scores))
    return 1 if failed else 0


# ------------------------------------------------------------------------------------- inputs, ids and outputs


