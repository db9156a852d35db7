"""Predict attribute masks for new images with a trained run folder or its ONNX export (`tatl export`).

One image at a time, as `tatl run` evaluates: Stage 1 on the whole image resized to `stage1_size` gives the lesion
box (+ margin); the box is cropped and resized to `image_size` (the whole image for variants without Stage 1);
every U/Link network gives its probabilities, the shapes are averaged, and `ImagePrediction.full_size` pastes a
map back at the image's original size. Networks whose checkpoints hold bit-identical encoders (TATL-FE: the frozen
Stage-2 encoder under the abnormal-region head and every attribute head) are merged into one `MultiHeadSegmenter`,
so the encoder runs once per image; any other checkpoint runs as its own network. Heads whose decoders are
bit-identical too (a joint Stage 3, saved as one network per attribute that differ only in the last convolution's
output channel) become one head with a channel each, so the decoder runs once as well. Merging compares the weights
themselves, so it never trusts the config: a run whose encoders differ is still predicted correctly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from tatl.checkpoints import load_checkpoint
from tatl.config import load_config
from tatl.constants import LESION
from tatl.data.crops import Box, full_size_probabilities, lesion_box, whole_image_box
from tatl.data.dataset import normalize
from tatl.data.images import pixel_limit
from tatl.data.sources import ImageSource, image_source
from tatl.device import resolve_device
from tatl.errors import CheckpointError, ConfigError, DataError
from tatl.inference.prediction_settings import PredictionSettings, settings_from_config
from tatl.layout import BEST, RunLayout, stated_stages
from tatl.models.ensemble import average_probabilities
from tatl.models.fusion import fold_batchnorm
from tatl.models.multihead import DecoderHead, MultiHeadSegmenter, merge_identical_decoders, same_tensors
from tatl.models.networks import build_model

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class Network(Protocol):
    """One network group: probabilities (B, H, W) per head name for normalised images (B, 3, H, W)."""

    shape: str
    names: list[str]

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]: ...


class ProbabilityHeads(nn.Module):
    """A MultiHeadSegmenter returning a tuple of sigmoid probabilities (B, H, W) in `names` order (its targets):
    what the torch engine runs and what `tatl export` writes, so both engines compute the same function."""

    def __init__(self, model: MultiHeadSegmenter):
        super().__init__()
        self.model, self.names = model, model.targets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(x)
        return tuple(torch.sigmoid(logits[name].float())[:, 0] for name in self.names)


class TorchNetwork:
    def __init__(self, model: MultiHeadSegmenter, shape: str, sources: list[Path], device: torch.device):
        # fp32 + channels_last: measured the fastest on CPU (DEVELOPERS.md); exact on GPU (no autocast). BatchNorm
        # folded into the convolutions: the same function, 12-23% faster per network (benchmarks/RESULTS.md).
        module = ProbabilityHeads(model).eval()
        fold_batchnorm(module)
        self.module = module.to(device, memory_format=torch.channels_last)
        self.shape, self.names, self.sources, self.device = shape, self.module.names, sources, device

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        return {name: p.cpu().numpy() for name, p in zip(self.names, self.module(x), strict=True)}


class OnnxNetwork:
    def __init__(self, path: Path, shape: str, names: list[str], device: str):
        import onnxruntime

        providers = ["CPUExecutionProvider"]
        has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if device == "cuda" and not has_cuda:
            raise ConfigError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        if device != "cpu" and has_cuda:
            providers.insert(0, "CUDAExecutionProvider")
        if not path.is_file():
            raise CheckpointError(f"{path}: ONNX model listed in {MANIFEST} not found")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # one knob (--threads) for both engines
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.shape, self.names, self.sources = shape, names, [path]

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.names, {"image": x.numpy()})
        return dict(zip(self.names, outputs, strict=True))


@dataclass
class Networks:
    stage1: list[Network]  # heads: "lesion"; empty for variants without Stage 1
    targets: dict[str, list[Network]]  # shape -> networks holding "union" (with Stage 2) and every attribute


def load_run_networks(run_dir: Path, settings: PredictionSettings, device: torch.device,
                      share_encoders: bool = True, merge_decoders: bool = True) -> Networks:
    """Torch networks of a run folder; with share_encoders, heads on bit-identical encoders share one network, and
    with merge_decoders too, heads with bit-identical decoders one decoder (False for both: benchmarks, tests)."""
    merge_decoders = share_encoders and merge_decoders
    layout, stage1 = RunLayout(run_dir), []
    if 1 in settings.stages:
        lesion_path = layout.stage1(settings.stage1_shape) / BEST
        stage1 = _torch_networks(settings, settings.stage1_shape, {LESION: lesion_path}, device, share_encoders,
                                 merge_decoders)
    targets = {shape: _torch_networks(settings, shape, layout.checkpoints(settings.variant, shape, settings.attributes),
                                      device, share_encoders, merge_decoders) for shape in settings.shapes}
    if share_encoders and settings.encoder_mode == "frozen" and 2 in settings.stages:
        for shape, networks in targets.items():
            if len(networks) > 1:  # frozen training cannot change the encoder: a mixed-up or edited run folder
                log.warning(f"{shape}: frozen-encoder run, but its checkpoints hold {len(networks)} different "
                            "encoders; running each network on its own")
    return Networks(stage1, targets)


def _torch_networks(settings: PredictionSettings, shape: str, paths: dict[str, Path], device: torch.device,
                    share_encoders: bool, merge_decoders: bool) -> list[Network]:
    groups: list[tuple[dict[str, torch.Tensor], dict[str, dict]]] = []  # (encoder state, {name: full state})
    for name, path in paths.items():
        state = load_checkpoint(path).get("model")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: no 'model' state in this checkpoint")
        encoder = {k: v for k, v in state.items() if k.startswith("encoder.")}
        group = next((g for g in groups if share_encoders and same_tensors(g[0], encoder)), None)
        if group is None:
            groups.append((encoder, {name: state}))
        else:
            group[1][name] = state
    return [_build_network(settings, shape, states, paths, device, merge_decoders) for _, states in groups]


def _build_network(settings: PredictionSettings, shape: str, states: dict[str, dict], paths: dict[str, Path],
                   device: torch.device, merge_decoders: bool) -> TorchNetwork:
    model = MultiHeadSegmenter.from_model(build_model(shape, settings.encoder_name), list(states))
    for index, (name, state) in enumerate(states.items()):
        try:
            if index == 0:
                model.load_head_state(name, state, paths[name])  # its message names the file
            else:  # the encoder is the same tensor for tensor: load only the decoder and head
                model.heads[name].load_state_dict({k: v for k, v in state.items() if not k.startswith("encoder.")})
        except RuntimeError as error:
            raise CheckpointError(f"{paths[name]}: does not fit a {shape} {settings.encoder_name} network: "
                                  f"{str(error).splitlines()[0]}") from None
    if merge_decoders:
        model = merge_identical_decoders(model, lambda classes: _empty_head(shape, settings.encoder_name, classes))
    return TorchNetwork(model, shape, [paths[name] for name in states], device)


def _empty_head(shape: str, encoder_name: str, classes: int) -> DecoderHead:
    network = build_model(shape, encoder_name, classes=classes)
    return DecoderHead(network.decoder, network.segmentation_head)


def load_export_networks(export_dir: Path, device: str = "auto") -> tuple[PredictionSettings, Networks]:
    """Settings and onnxruntime networks of a `tatl export` folder."""
    try:
        manifest = json.loads((export_dir / MANIFEST).read_text())
        settings = PredictionSettings(**manifest["settings"])  # TypeError on unknown or missing keys
        entries = manifest["networks"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{export_dir / MANIFEST}: not a tatl ONNX manifest ({error})") from None
    networks = Networks([], {shape: [] for shape in settings.shapes})
    for entry in entries:
        network = OnnxNetwork(export_dir / entry["file"], entry["shape"], entry["outputs"], device)
        (networks.stage1 if entry["outputs"] == [LESION] else networks.targets[entry["shape"]]).append(network)
    return settings, networks


@dataclass
class ImagePrediction:
    """Stage-resolution probabilities of one image; `full_size` pastes one map back at the original size."""

    source: ImageSource  # the file or in-memory image (overlays read it again)
    size: tuple[int, int]  # (width, height)
    box: Box  # the Stage-1 crop (whole image without Stage 1 or when no lesion was found)
    lesion_fallback: bool  # Stage 1 found no plausible lesion: whole image used
    maps: dict[str, np.ndarray]  # "lesion" (stage1_size^2, with Stage 1), "union" (with Stage 2), attributes
    # predict(keep_members=True): each ensemble member's "union" and attribute maps before averaging, by member
    # name: the shape ("unet", "linknet"), with TTA "<shape>/<flip>" for each of FLIPS (inference.selection reads it)
    members: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def full_size(self, name: str) -> np.ndarray:
        box = whole_image_box(self.size) if name == LESION else self.box
        return full_size_probabilities(self.maps[name], box, self.size)

    @property
    def path(self) -> Path | None:
        return self.source.path


class Predictor:
    """Loaded networks and their settings; `predict(image)` runs one image (a path, a PIL image or an RGB uint8
    array: tatl.data.sources)."""

    def __init__(self, settings: PredictionSettings, networks: Networks, engine: str, source: Path,
                 tta: bool = False):
        self.settings, self.networks, self.engine, self.source, self.tta = settings, networks, engine, source, tta

    def predict(self, image: str | Path | Image.Image | np.ndarray | ImageSource,
                keep_members: bool = False) -> ImagePrediction:
        """keep_members: also keep each shape's (and, with TTA, each flip's) maps in `ImagePrediction.members`."""
        with pixel_limit(self.settings.max_image_pixels):  # the model's limit for its own reads only
            return self._predict(image, keep_members)

    def _predict(self, image: str | Path | Image.Image | np.ndarray | ImageSource,
                 keep_members: bool) -> ImagePrediction:
        s, source = self.settings, image_source(image)
        size = source.size
        box, fell_back, maps, members = whole_image_box(size), False, {}, {}
        if 1 in s.stages:
            maps[LESION] = self._probabilities(self.networks.stage1, source.read((s.stage1_size,) * 2))[LESION]
            box, fell_back = lesion_box(maps[LESION] > s.threshold, size, s.crop_margin, s.min_lesion_fraction)
        if self.networks.targets:  # none for a Segment-Net alone
            crop = source.read((s.image_size,) * 2, box=box)
            per_shape = []
            for shape, networks in self.networks.targets.items():
                views = self._views(networks, crop)
                per_shape.append(_mean_of_views(views))
                if keep_members:
                    members.update({shape: views[0]} if len(views) == 1 else
                                   {f"{shape}/{flip}": view for flip, view in zip(FLIPS, views, strict=True)})
            maps.update(average_probabilities(per_shape))  # the U+Link ensemble (paper Section 5.3)
        return ImagePrediction(source, size, box, fell_back, maps, members)

    def _probabilities(self, networks: list[Network], image: np.ndarray) -> dict[str, np.ndarray]:
        return _mean_of_views(self._views(networks, image))

    def _views(self, networks: list[Network], image: np.ndarray) -> list[dict[str, np.ndarray]]:
        """The networks' maps of the image as is, and with TTA also of each flip, flipped back (FLIPS order)."""
        x = normalize(image)[None]
        if self.tta:  # one batch of four: as is, flipped left-right, up-down, both
            x = torch.cat([x, x.flip(3), x.flip(2), x.flip((2, 3))])
        out: dict[str, np.ndarray] = {}
        for network in networks:
            out.update(network(x))
        if not self.tta:
            return [{name: p[0] for name, p in out.items()}]
        return [{name: p[0] for name, p in out.items()}, {name: p[1][:, ::-1] for name, p in out.items()},
                {name: p[2][::-1, :] for name, p in out.items()}, {name: p[3][::-1, ::-1] for name, p in out.items()}]


FLIPS = ("as-is", "left-right", "up-down", "both")  # the TTA views, in the batch order of Predictor._views


def _mean_of_views(views: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(views) == 1:
        return views[0]
    # Flipped back before averaging, in probability space; summed in this order as it always was (bit-identical).
    return {name: (views[0][name] + views[1][name] + views[2][name] + views[3][name]) / 4 for name in views[0]}


def load_predictor(model_dir: Path, variant: str | None = None, engine: str | None = None, device: str = "auto",
                   tta: bool = False, share_encoders: bool = True, merge_decoders: bool = True) -> Predictor:
    """A Predictor from a run folder (engine torch) or a `tatl export` folder (engine onnx)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        reason = "is a file, not" if model_dir.exists() else "does not exist: expected"
        raise DataError(f"{model_dir}: {reason} a run folder of `tatl run` or an ONNX export of `tatl export`")
    run = RunLayout(model_dir)
    is_run, is_export = run.config.is_file(), (model_dir / MANIFEST).is_file()
    if not (is_run or is_export):
        raise DataError(f"{model_dir}: neither a run folder (config.yaml) nor an ONNX export ({MANIFEST})")
    engine = engine or ("torch" if is_run else "onnx")
    if engine == "onnx" and not is_export:
        raise ConfigError(f"--engine onnx reads an export folder: run `tatl export {model_dir} --onnx DIR`, then "
                          f"`tatl predict DIR ...`")
    if engine == "torch" and not is_run:
        raise ConfigError(f"{model_dir} is an ONNX export: use --engine onnx or the run folder it was exported from")
    if engine == "torch":
        tuned = json.loads(run.thresholds.read_text()) if run.thresholds.is_file() else None
        config = load_config(run.config)
        config.pipeline.stages = stated_stages(run) or config.pipeline.stages  # a Stage-1 run from before the key
        settings = settings_from_config(config, variant, tuned)
        networks = load_run_networks(model_dir, settings, resolve_device(device, "--device"), share_encoders,
                                     merge_decoders)
    else:
        settings, networks = load_export_networks(model_dir, device)
        if variant and variant != settings.variant:
            raise ConfigError(f"--variant {variant}: {model_dir} holds variant {settings.variant} only")
    return Predictor(settings, networks, engine, model_dir, tta)

