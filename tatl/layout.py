"""The run folder of `tatl run`: every path inside it, and the variants, stated once.

    RUN/config.yaml                     the fully resolved config (tatl.config)
    RUN/data.json                       the data folder(s) the run was trained on, as given and resolved
    RUN/splits.json                     train/validation ids and k folds
    RUN/plan.json                       where every network group started (tatl.pipeline.plan)
    RUN/log.txt                         everything the run logged, with timestamps
    RUN/stage1/<shape>/                 the Segment-Net: best.pt, last.pt, log.csv, done.json (or another run's, copied)
    RUN/stage1/boxes.json               its lesion box of every image
    RUN/stage1/boxes-key.json           what boxes.json was computed from, and the Stage-1 scores (a resume reuses both)
    RUN/stage2-<inputs>/<shape>/        the Attribute-Agnostic Segmenter on crops or full images
    RUN/stage3-v<stages>/<shape>/<attribute>/   one Target-Segmenter per attribute, per variant
    RUN/stage3-v<stages>/<shape>/joint/         a joint Stage 3's one network (pipeline.encoder_mode joint), which
                                        writes each attribute's folder above (its channel) when it is done
    RUN/pretext-<inputs>/<shape>/       the context-restoration pretext network (a Stage-3 start)
    RUN/metrics.json, summary.md, thresholds.json   the scores, their Markdown table, the thresholds used
    RUN/report.html, report.md, report/ the report (tatl.reporting.report) and its pictures
    RUN/bound/bound.json, bound.md, bound.png   the Eq. 6-8 bound (tatl bound)
    RUN/cache/                          decoded images (data.cache)
    RUN/synthetic-data/, isic2017-converted/   data the run generated or converted for itself
    RUN/finetune-data/                  a fine-tuned run's images: links to the new data and the parent run's
    RUN/finetune-data/sources.json      what was joined there, written last (tatl.pipeline.parent)
    RUN/finetune.json                   a fine-tuned run's parent, data and scores before and after (tatl finetune)

A variant names the stages it uses (the ablations of the paper's Tables 2-3): "3" (targets on full images), "2,3"
(agnostic then targets, full images), "1,3" (targets on Stage-1 crops) and "1,2,3" (the whole of TATL). Variants
with Stage 1 read crops, the others full images: `inputs_of(variant)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tatl.constants import JOINT, UNION

VARIANTS = ("3", "2,3", "1,3", "1,2,3")
STAGES = ("1", "1,2,3")  # what a run trains (pipeline.stages): "1" the Segment-Net alone, "1,2,3" the variants
DEFAULT_VARIANT = "1,2,3"  # the whole of TATL: what a run trains and predicts unless told otherwise
INPUTS = ("crops", "full")  # what Stage 2 and 3 read: Stage-1 lesion crops or whole images (inputs_of)

ENSEMBLE = "ensemble"  # metrics.json's and thresholds.json's name of the U+Link average (paper Section 5.3)

BEST = "best.pt"  # the best validation epoch's weights: what prediction and later stages load
LAST = "last.pt"  # the last epoch's weights and optimiser state: what --resume continues from
LOG_CSV = "log.csv"  # one row per epoch
DONE = "done.json"  # written last, when a group has finished training: its best epochs and the data it saw


def variant_stages(variant: str) -> set[int]:
    """{1, 2, 3} for "1,2,3"."""
    return {int(stage) for stage in variant.split(",")}


def inputs_of(variant: str) -> str:
    """"crops" for variants with Stage 1 (the lesion box, upscaled), else "full" (the whole image)."""
    return "crops" if 1 in variant_stages(variant) else "full"


def default_variant(trained: Sequence[str]) -> str:
    """The variant a finished run predicts with unless told: DEFAULT_VARIANT if trained, else the last trained."""
    return DEFAULT_VARIANT if DEFAULT_VARIANT in trained else trained[-1]


def reported_model(shapes: Sequence[str]) -> str:
    """The model a run's scores are reported for: ENSEMBLE when it trained several shapes, else its one shape."""
    return ENSEMBLE if len(shapes) > 1 else shapes[0]


class ReportFiles:
    """The report of a folder (a run, a grid, an active-learning experiment): the same three names in each."""

    root: Path

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_markdown(self) -> Path:
        return self.root / "report.md"

    @property
    def report_pictures(self) -> Path:
        return self.root / "report"


@dataclass(frozen=True)
class RunLayout(ReportFiles):
    """Paths inside one run folder. Nothing here touches the disk."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------------------------------------- run files
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_record(self) -> Path:
        return self.root / "data.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.md"

    @property
    def thresholds(self) -> Path:
        return self.root / "thresholds.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def synthetic_data(self) -> Path:
        return self.root / "synthetic-data"

    @property
    def isic2017_converted(self) -> Path:
        return self.root / "isic2017-converted"

    @property
    def finetune_data(self) -> Path:
        return self.root / "finetune-data"

    @property
    def finetune_sources(self) -> Path:
        return self.finetune_data / "sources.json"

    @property
    def finetune_record(self) -> Path:
        return self.root / "finetune.json"

    @property
    def bound(self) -> Path:
        return self.root / "bound"

    @property
    def bound_json(self) -> Path:
        return self.bound / "bound.json"

    @property
    def bound_markdown(self) -> Path:
        return self.bound / "bound.md"

    @property
    def bound_chart(self) -> Path:
        return self.bound / "bound.png"

    # ----------------------------------------------------------------------------------- network folders
    def stage1(self, shape: str) -> Path:
        return self.root / "stage1" / shape

    @property
    def boxes(self) -> Path:
        return self.root / "stage1" / "boxes.json"

    @property
    def boxes_record(self) -> Path:
        return self.root / "stage1" / "boxes-key.json"

    def stage2(self, inputs: str, shape: str) -> Path:
        """inputs: "crops" or "full" (inputs_of(variant))."""
        return self.root / f"stage2-{inputs}" / shape

    def stage3(self, variant: str, shape: str) -> Path:
        return self.root / f"stage3-v{variant.replace(',', '')}" / shape

    def stage3_head(self, variant: str, shape: str, attribute: str) -> Path:
        return self.stage3(variant, shape) / attribute

    def stage3_joint(self, variant: str, shape: str) -> Path:
        return self.stage3(variant, shape) / JOINT

    def pretext(self, inputs: str, shape: str) -> Path:
        return self.root / f"pretext-{inputs}" / shape

    def stage_folders(self) -> list[Path]:
        """Every stage's top folder present: stage1, stage2-*, stage3-v*, pretext-* (for curves and reports)."""
        patterns = ("stage1", "stage2-*", "stage3-v*", "pretext-*")
        return sorted(path for pattern in patterns for path in self.root.glob(pattern) if path.is_dir())

    def checkpoints(self, variant: str, shape: str, attributes: Sequence[str]) -> dict[str, Path]:
        """{head name: best.pt} of the Stage-2 (head "union", variants with Stage 2) and Stage-3 networks of one
        variant and shape, as `tatl run` writes them."""
        paths = {}
        if 2 in variant_stages(variant):
            paths[UNION] = self.stage2(inputs_of(variant), shape) / BEST
        paths.update({a: self.stage3_head(variant, shape, a) / BEST for a in attributes})
        return paths


def stated_stages(layout: RunLayout) -> str | None:
    """pipeline.stages of a run as RUN/config.yaml states it. Runs from before that key state none: a finished
    Stage-1-only one is told by its metrics.json (Stage 1's scores alone) -> "1"; otherwise None (unknown)."""
    try:
        saved = yaml.safe_load(layout.config.read_text()) or {}
        stages = (saved.get("pipeline") or {}).get("stages")
        if stages is not None:
            return str(stages)
        metrics = json.loads(layout.metrics.read_text())
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    return "1" if isinstance(metrics, dict) and set(metrics) == {"stage1"} else None
