"""ONNX export of a finished run's inference networks (`tatl export`; its --help describes the files and manifest).

One .onnx file per network group `tatl predict` runs, each with dynamic batch, height and width and the names
`tatl predict --engine onnx` reads (input "image", one output per head), checked against PyTorch on a random batch
of another size before it is kept; manifest.json holds the prediction settings and the normalisation.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from tatl.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from tatl.errors import CheckpointError, ConfigError, DataError
from tatl.folders import check_output_folder
from tatl.inference.predictor import MANIFEST, load_predictor
from tatl.io import write_bytes, write_json

log = logging.getLogger(__name__)


def export_onnx(run_dir: Path, out_dir: Path, variant: str | None = None) -> Path:
    """Every inference network of one variant of RUN as ONNX files in OUT_DIR, with manifest.json; returns it."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"tatl export needs onnx and onnxruntime ({error}): pip install 'tatl[onnx]'") from None
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if (run_dir / MANIFEST).is_file():
        raise DataError(f"{run_dir} is already an ONNX export; give the run folder")
    check_output_folder(out_dir, "output folder")  # before the seconds of loading: a typo in OUT_DIR fails at once
    predictor = load_predictor(run_dir, variant, engine="torch", device="cpu")
    settings = predictor.settings
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # no permission, read-only file system
        raise DataError(f"{out_dir}: cannot create the output folder ({error.strerror or error})") from None
    entries = []
    for network in [*predictor.networks.stage1, *[n for ns in predictor.networks.targets.values() for n in ns]]:
        size = settings.stage1_size if network in predictor.networks.stage1 else settings.image_size
        entry = export_network(network, size, out_dir)
        entries.append(entry)
        log.info("wrote %s (outputs %s; max difference to PyTorch %.1e)", out_dir / entry["file"],
                 ", ".join(entry["outputs"]), entry["max_difference_to_torch"])
    write_json(out_dir / MANIFEST, manifest(run_dir, settings, entries))
    return out_dir / MANIFEST


OPSET = 17


TOLERANCE = 1e-4  # largest probability difference to PyTorch accepted at export time


def file_name(network) -> str:
    """stage1_unet, stage2_unet, stage3_unet_globules, stage23_unet (frozen: union and attributes share one file)."""
    stages = sorted({"1" if n == "lesion" else "2" if n == "union" else "3" for n in network.names})
    attributes = [n for n in network.names if n not in ("lesion", "union")]
    suffix = f"_{attributes[0]}" if len(attributes) == 1 else ""
    return f"stage{''.join(stages)}_{network.shape}{suffix}.onnx"


def export_network(network, size: int, out_dir: Path) -> dict:
    """Export one TorchNetwork (its ProbabilityHeads module) with dynamic batch and size; check it; describe it."""
    module = network.module.to(memory_format=torch.contiguous_format)
    example = torch.randn(1, 3, size, size)
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({name: {0: "batch", 1: "height", 2: "width"} for name in network.names})
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter (dynamo=False) is deprecated but needs no onnxscript, and handles these
        # convolutional networks with dynamic sizes exactly (checked below); torch 2.14 still ships it.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=network.names, dynamic_axes=dynamic)
    data = buffer.getvalue()
    import onnx

    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    difference = _difference_to_torch(module, data, network.names, size)
    name = file_name(network)
    if difference > TOLERANCE:
        raise CheckpointError(f"{name}: ONNX export differs from PyTorch by {difference:.2e} (> {TOLERANCE})")
    write_bytes(out_dir / name, data)
    return {"file": name, "shape": network.shape, "outputs": network.names, "input_size": size,
            "sources": [str(p) for p in network.sources], "max_difference_to_torch": difference}


def _difference_to_torch(module, data: bytes, names: list[str], size: int) -> float:
    """Largest probability difference between onnxruntime and PyTorch on a random batch of another size."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, size, size + 32, generator=torch.Generator().manual_seed(0))  # exercises dynamic axes
    with torch.no_grad():
        expected = [p.numpy() for p in module(x)]
    actual = session.run(names, {"image": x.numpy()})
    return float(max(np.abs(a - e).max() for a, e in zip(actual, expected, strict=True)))


def manifest(run_dir: Path, settings, entries: list[dict]) -> dict:
    return {
        "format": "tatl-onnx-1",
        "run": str(run_dir.resolve()),
        "settings": asdict(settings),
        "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "colour": "RGB",
                  "normalisation": "(pixel / 255 - mean) / std", "mean": IMAGENET_MEAN.tolist(),
                  "std": IMAGENET_STD.tolist(), "size_multiple": 32},
        "outputs": "probabilities (batch, height, width) per named head, after the sigmoid",
        "pipeline": "stage 1 on the whole image resized to stage1_size -> lesion box + crop_margin -> crop resized "
                    "to image_size -> mean of the shapes' probabilities -> pasted back at original size -> "
                    "> threshold",
        "networks": entries,
    }
