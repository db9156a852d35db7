"""The generalisation bound of Proposition 1 (paper Section 4.4, Eq. 6-8; Section 5.6, Figure 4).

For an initialisation w and an attribute with m training samples z_i:

    R_S(w)   = 1/m sum_i l(w, z_i)                                   the empirical risk (Eq. 1 loss, in [0, 1])
    gamma    = 1/m sum_i ||Hessian_w l(w, z_i)||_2 + sqrt(R_S(w))    (Eq. 8)
    gamma+-  = gamma +- m^(-1/4)                                     (Eq. 7)
    bound    = (1 + 1/(c gamma-)) R_S^(c gamma+ / (1 + c gamma+)) sqrt(log K) / m^(1 / (1 + c gamma+))   (Eq. 6)

The spectral norm of a symmetric Hessian is its largest |eigenvalue|. Power iteration on Hessian-vector products
(double backward) converges to the eigenvector of the eigenvalue of largest MAGNITUDE, whatever its sign (a
non-convex loss has negative ones); ||H v|| for the unit iterate v estimates that magnitude from below and never
decreases from one iteration to the next, so it is what we report (the Rayleigh quotient v^T H v carries the sign
and stalls when +lambda and -lambda tie). BatchNorm runs in eval mode, so a sample's loss depends on that sample
only. The bound needs gamma- > 0; otherwise it is reported as undefined.

Which samples: by default the training images in which the attribute is present (a non-empty mask at the stage
input), m differing per attribute as in the paper's Table 1 counts and its remark that Streaks and Negative Network
have "fewer samples"; `samples="all"` takes every training image, empty masks included, as Stage 3 trains on.
`max_samples` estimates the two means on a seeded random subset, for speed; the bound keeps the attribute's full m,
since the subset only estimates means over the m samples.

The Augmentation case (a run with pipeline.init augmentation) starts from the same ImageNet weights as the ImageNet
case but is judged on the training set it trains on: pipeline.augmentation_copies copies of every image through the
strong transform (tatl.pipeline.groups.training_set, as in epoch 0), so its m and its means are those of the
enlarged, augmented set and both bars are shown.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tatl import logs
from tatl.checkpoints import load_checkpoint
from tatl.data.dataset import SegmentationDataset, normalize
from tatl.device import resolve_device
from tatl.errors import ConfigError, TatlError
from tatl.layout import BEST, VARIANTS, default_variant, inputs_of, variant_stages
from tatl.models.networks import build_model
from tatl.models.weights import transfer_weights
from tatl.pipeline.context import RunContext
from tatl.pipeline.groups import training_set
from tatl.training.losses import TatlLoss

log = logging.getLogger(__name__)
Initialisation = Callable[[], dict[str, Tensor]]  # returns the state dict of a whole single network
AUGMENTATION = "augmentation"  # the initialisation judged on the augmented training set


# ------------------------------------------------------------------------------------------------- the formula
@dataclass
class BoundTerms:
    m: int
    risk: float
    hessian_norm: float  # mean spectral norm of the per-sample Hessians
    gamma: float
    gamma_minus: float
    gamma_plus: float
    bound: float | None  # None: undefined (gamma- <= 0)


def generalization_bound(risk: float, hessian_norm: float, m: int, c: float = 0.01, k: int = 4) -> BoundTerms:
    """Eq. 6-8 (without the O()'s constant) for one initialisation and attribute."""
    gamma = hessian_norm + math.sqrt(risk)
    gamma_minus, gamma_plus = gamma - m ** -0.25, gamma + m ** -0.25
    bound = None
    if gamma_minus > 0:
        exponent = c * gamma_plus / (1 + c * gamma_plus)
        bound = (1 + 1 / (c * gamma_minus)) * risk**exponent * math.sqrt(math.log(k)) / m ** (1 / (1 + c * gamma_plus))
    return BoundTerms(m, risk, hessian_norm, gamma, gamma_minus, gamma_plus, bound)


# ----------------------------------------------------------------------------------------------- the curvature
def hessian_spectral_norm(loss: Tensor, params: list[Tensor], iterations: int = 20, tolerance: float = 1e-3,
                          seed: int = 0) -> float:
    """||Hessian of loss w.r.t. params||_2 by power iteration on Hessian-vector products (double backward)."""
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    # A parameter whose gradient is constant (or absent) has an all-zero Hessian row and column: leave it out.
    pairs = [(g, p) for g, p in zip(grads, params, strict=True) if g is not None and g.requires_grad]
    if not pairs:
        return 0.0
    grads, params = [g for g, _ in pairs], [p for _, p in pairs]
    generator = torch.Generator().manual_seed(seed)
    vector = _unit([torch.randn(p.shape, generator=generator).to(p) for p in params])
    estimate = 0.0
    for _ in range(iterations):
        product = torch.autograd.grad(grads, params, grad_outputs=vector, retain_graph=True, allow_unused=True)
        product = [torch.zeros_like(p) if h is None else h for h, p in zip(product, params, strict=True)]
        norm = math.sqrt(sum(float(h.pow(2).sum()) for h in product))
        if norm == 0.0:
            return 0.0
        previous, estimate = estimate, norm
        vector = [h / norm for h in product]
        if abs(estimate - previous) <= tolerance * estimate:
            break
    return estimate


def _unit(vectors: list[Tensor]) -> list[Tensor]:
    norm = math.sqrt(sum(float(v.pow(2).sum()) for v in vectors))
    return [v / norm for v in vectors]


def per_sample_estimates(model: nn.Module, images: np.ndarray, masks: np.ndarray, device: torch.device,
                         iterations: int = 20, tolerance: float = 1e-3, wrt: str = "all",
                         desc: str = "Hessian norms") -> tuple[list[float], list[float]]:
    """(Eq. 1 loss, Hessian spectral norm) of each sample; wrt "decoder" leaves the encoder's weights out."""
    model.to(device).eval()  # BatchNorm from running statistics: each sample's loss is its own
    params = [p for name, p in model.named_parameters() if wrt == "all" or not name.startswith("encoder.")]
    loss_fn = TatlLoss()
    losses, norms = [], []
    for index in logs.progress(range(len(images)), desc, unit="sample"):
        x = normalize(images[index])[None].to(device)
        y = torch.from_numpy(masks[index].astype(np.float32))[None].to(device)
        loss = loss_fn(model(x), y)
        losses.append(loss.detach().item())
        norms.append(hessian_spectral_norm(loss, params, iterations, tolerance, seed=index))
    return losses, norms


# ------------------------------------------------------------------------------------------ initialisations
def weights_name(encoder_weights: str | None) -> str:
    """How a configured encoder start is called in tables: random, imagenet, lite0 or the weights file's name."""
    if encoder_weights in (None, "", "none"):
        return "random"
    return encoder_weights if encoder_weights in ("imagenet", "lite0") else Path(encoder_weights).name


def initialisations(run: RunContext, shape: str, variant: str) -> dict[str, Initialisation]:
    """Name -> the Stage-3 starting weights of `variant`'s inputs: TATL (Stage 2), the context-restoration pretext
    network when the run trained one, and the start `pipeline.init` gives a fresh network (tatl.pipeline.plan's
    stage3_initialisation): ImageNet for imagenet and augmentation, random for random, else the configured encoder; with
    init augmentation that ImageNet start once more as "augmentation", judged on the augmented set."""
    m, init = run.config.model, run.config.pipeline.init
    stage2 = run.layout.stage2(inputs_of(variant), shape) / BEST
    pretext = run.layout.pretext(inputs_of(variant), shape) / BEST
    weights = m.encoder_weights
    if init == "random":
        weights = None
    elif init in ("imagenet", "augmentation") and weights in (None, "", "none"):
        weights = "imagenet"

    def fresh(start: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        torch.manual_seed(run.config.train.seed)  # the very start tatl.pipeline.groups.train_group gives Stage 3
        model = build_model(shape, m.encoder_name, weights if start is None else None)
        if start is not None:
            transfer_weights(start, model)  # the 3-channel restoration head is re-initialised, as in the pipeline
        return model.state_dict()

    found: dict[str, Initialisation] = {"tatl": lambda: load_checkpoint(stage2)["model"]} if stage2.is_file() else {}
    if init == "context-restoration" and pretext.is_file():
        found["context-restoration"] = lambda: fresh(load_checkpoint(pretext)["model"])
    augmented = {AUGMENTATION: fresh} if init == AUGMENTATION else {}
    return {**found, weights_name(weights): fresh, **augmented}


# --------------------------------------------------------------------------------------------- the estimate
@dataclass
class BoundSettings:
    variant: str | None = None  # whose inputs and Stage 2; None: tatl.layout.default_variant of those trained
    shape: str | None = None  # None: the run's first shape
    c: float = 0.01
    k: int = 4
    iterations: int = 20
    tolerance: float = 1e-3
    max_samples: int | None = None
    samples: str = "present"  # "present": images showing the attribute; "all": every training image
    wrt: str = "all"  # Hessian w.r.t. "all" weights or the "decoder" (+ head) only, what TATL-FE trains
    device: str = "auto"  # auto: CUDA when available

    def __post_init__(self) -> None:
        if self.samples not in ("present", "all") or self.wrt not in ("all", "decoder"):
            raise ConfigError(f"samples {self.samples!r}, wrt {self.wrt!r}: use present or all, and all or decoder")
        if self.iterations < 1 or self.c <= 0 or self.k < 2 or (self.max_samples is not None and self.max_samples < 1):
            raise ConfigError("iterations and max_samples must be at least 1, c positive and K at least 2")


def estimate_bounds(run: RunContext, settings: BoundSettings) -> dict:
    """{"settings", "initialisations", "attributes": {attribute: {init: BoundTerms + "estimated_on", or "m" and
    "skipped"}}}."""
    trained = run.config.pipeline.variants
    variant = settings.variant or default_variant(trained)
    shape = settings.shape or run.config.model.shapes[0]
    if variant not in VARIANTS or shape not in run.config.model.shapes:
        raise ConfigError(f"variant {variant}, shape {shape}: variants are {', '.join(VARIANTS)}; this run trained "
                          f"the shapes {', '.join(run.config.model.shapes)}")
    starts = _starting_states(initialisations(run, shape, variant))
    sets = _training_samples(run, variant, with_augmented=AUGMENTATION in starts)
    result: dict = {"settings": {**asdict(settings), "variant": variant, "shape": shape},
                    "initialisations": list(starts), "attributes": {}}
    for index, attribute in enumerate(run.config.data.attributes):
        result["attributes"][attribute] = per_init = {}
        for name, state in starts.items():
            samples = sets[AUGMENTATION if name == AUGMENTATION else "plain"]
            rows, used = _which_samples(samples.present[:, index], settings, run.config.train.seed)
            if not len(rows):
                per_init[name] = {"m": 0, "skipped": "no training sample"}
                continue
            model = build_model(shape, run.config.model.encoder_name)
            transfer_weights(state, model)
            log.info(f"bound: {attribute}, {name}: {len(used)} of m = {len(rows)} samples")
            images, masks = samples.take(used, index)
            losses, norms = per_sample_estimates(model, images, masks,
                                                 resolve_device(settings.device, "--device"), settings.iterations,
                                                 settings.tolerance, settings.wrt, f"bound: {attribute}, {name}")
            terms = generalization_bound(float(np.mean(losses)), float(np.mean(norms)), len(rows), settings.c,
                                         settings.k)
            per_init[name] = {**asdict(terms), "estimated_on": len(used)}
    return result


def _starting_states(inits: dict[str, Initialisation]) -> dict[str, dict[str, Tensor]]:
    """The states that can be had: e.g. imagenet weights offline and not cached are left out, with a note."""
    out = {}
    for name, make in inits.items():
        try:
            out[name] = make()
        except TatlError as error:
            log.warning(f"bound: initialisation {name} left out: {error}")
    return out


@dataclass
class TrainingSamples:
    """The training samples an initialisation is judged on, item by item as Stage 3 reads them (an augmented item
    is made again, identically, when it is needed, rather than kept: copies x images x attributes masks)."""

    dataset: SegmentationDataset
    present: np.ndarray  # (samples, attributes) bool: the attribute's mask is not empty

    @classmethod
    def of(cls, dataset: SegmentationDataset) -> TrainingSamples:
        masks = (dataset.pixels(i)[1] for i in logs.progress(range(len(dataset)), "bound: samples", unit="sample"))
        return cls(dataset, np.stack([m.reshape(len(m), -1).any(axis=1) for m in masks]))

    def take(self, rows: np.ndarray, attribute: int) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, S, S, 3) and the attribute's masks (N, S, S) of `rows`."""
        items = [self.dataset.pixels(int(row)) for row in rows]
        return np.stack([image for image, _ in items]), np.stack([masks[attribute] for _, masks in items])


def _training_samples(run: RunContext, variant: str, with_augmented: bool) -> dict[str, TrainingSamples]:
    """"plain": the stage inputs of the training split; "augmentation": the set init augmentation trains on."""
    images, masks = run.stage_inputs(run.train, run.boxes() if 1 in variant_stages(variant) else None)
    attributes = run.config.data.attributes
    sets = {"plain": TrainingSamples.of(SegmentationDataset(images, masks))}
    if with_augmented:
        sets[AUGMENTATION] = TrainingSamples.of(training_set(images, masks, run.config, attributes, True, strong=True))
    return sets


def _which_samples(present: np.ndarray, settings: BoundSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the attribute's m training rows, the rows the means are estimated on), from whether each sample shows it."""
    rows = np.arange(len(present))
    if settings.samples == "present":
        rows = rows[present]
    used = rows
    if settings.max_samples is not None and len(rows) > settings.max_samples:
        used = np.sort(np.random.default_rng(seed).choice(rows, settings.max_samples, replace=False))
    return rows, used
