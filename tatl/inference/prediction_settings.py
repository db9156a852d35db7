"""What prediction needs besides the weights (`PredictionSettings`): from a run's config.yaml and thresholds.json
(`settings_from_config`), or from an ONNX export's manifest.json (tatl.inference.predictor)."""

from __future__ import annotations

from dataclasses import dataclass

from tatl.config import Config
from tatl.errors import ConfigError
from tatl.layout import VARIANTS, default_variant, reported_model, variant_stages


@dataclass(frozen=True)
class PredictionSettings:
    """Everything inference needs besides the weights; from a run's config.yaml or an export's manifest.json."""

    variant: str
    attributes: list[str]
    shapes: list[str]
    stage1_shape: str
    stage1_size: int
    image_size: int
    threshold: float
    crop_margin: int
    min_lesion_fraction: float
    encoder_mode: str
    encoder_name: str
    max_image_pixels: int | None = None
    attribute_thresholds: dict[str, float] | None = None  # tuned on validation (pipeline.tune_thresholds)

    @property
    def stages(self) -> set[int]:
        return variant_stages(self.variant)

    def threshold_for(self, name: str) -> float:
        return (self.attribute_thresholds or {}).get(name, self.threshold)


def settings_from_config(config: Config, variant: str | None, tuned: dict | None = None) -> PredictionSettings:
    """The settings of one trained variant: `variant`, else tatl.layout.default_variant of those trained; "1" (no
    attributes nor U/Link shapes) for a Segment-Net alone (pipeline.stages 1). `tuned`: RUN/thresholds.json, whose
    per-attribute thresholds of the ensemble (or single shape) are used when the run tuned them."""
    d, m, p = config.data, config.model, config.pipeline
    attributes, shapes, trained = list(d.attributes), list(m.shapes), p.variants
    if p.stages == "1":  # the Segment-Net alone: variant "1", lesion masks only
        if variant not in (None, "1"):
            raise ConfigError(f"--variant {variant}: this run trained the Segment-Net alone (stages 1); it predicts "
                              "lesion masks only")
        variant, attributes, shapes = "1", [], []
    variant = variant or default_variant(trained)
    if variant != "1" and (variant not in VARIANTS or variant not in trained):
        raise ConfigError(f"--variant {variant}: this run trained variant(s) {', '.join(trained)}")
    per_attribute = None
    if tuned and tuned.get("tuned") and shapes:
        per_attribute = tuned.get("variants", {}).get(variant, {}).get(reported_model(shapes))
    return PredictionSettings(variant, attributes, shapes, m.stage1_shape, d.stage1_size, d.image_size, p.threshold,
                              p.crop_margin, p.min_lesion_fraction, p.encoder_mode, m.encoder_name,
                              d.max_image_pixels, per_attribute)
