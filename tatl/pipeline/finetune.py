"""`tatl finetune RUN NEW_DATA --out RUN2`: continue a finished run on new labels, in a new run folder.

What NEW_DATA holds decides what is fine-tuned (`plan`), before anything is written:
- an attribute with masks in NEW_DATA (`<id>_attribute_<name>.png`) fine-tunes its Stage-3 heads; every image must
  then have a mask of it (masks for some images only are an error). The other attributes' heads are copied from RUN
  unchanged, and so is Stage 2 (its union mask needs every attribute) unless NEW_DATA has every attribute's masks.
- lesion masks (`<id>_segmentation.png`) on every image fine-tune the Segment-Net (when the validation images have
  lesion masks too); without them RUN's Segment-Net is copied (pipeline.segment_net = RUN).
Everything else is the usual pipeline run with the config of RUN plus pipeline.init_from = RUN (every network starts
from RUN's best.pt; tatl.pipeline.parent), pipeline.init_copied, pipeline.init_with_original and --set values
(train.epochs, train.lr, ...). The networks (encoder, shapes, attributes, sizes, variants) stay RUN's: changing them
is a one-line ConfigError. RUN is only read. `--resume` continues RUN2 as `tatl run --resume` does.

NEW_DATA: a folder in the ISIC 2018 layout (as `tatl synth` writes) or any folder tree with the same file names;
masks may sit in a sub-folder, e.g. the web app's corrections: `NEW_DATA/<id>.jpg` and
`NEW_DATA/corrections/<id>_attribute_<name>.png` (a mask found twice for one image is an error naming both).

RUN2/finetune.json, written when the run has finished (RUN2/log.txt shows the progress until then):

    {"parent": "/abs/RUN", "new_data": "/abs/NEW_DATA", "with_original": false,
     "attributes_trained": ["pigment_network"], "attributes_copied": ["globules", ...],
     "segment_net": "fine-tuned" | "copied" | "unused", "stage2": "fine-tuned" | "copied" | "unused",
     "validation": "parent" | "new_data",     # whose split RUN2 was scored on (the parent's when its images are found)
     "images": {"train": 12, "val": 5},
     "data": {"new_data_fingerprint": "...", "parent_data_fingerprint": "..." | null, "run_data_fingerprint": "..."},
     "variant": "1,2,3", "model": "ensemble",  # which scores of metrics.json before and after are
     "before": {"macro_average": {"jaccard": 0.41, "dice": 0.55}, "per_attribute": {"globules": {"jaccard": ...,
                "dice": ...}, ...}, "stage1": {"jaccard": ..., "threshold_jaccard": ..., "dice": ...}},
     "after": {the same for RUN2}}

"before" holds RUN's scores on the same validation split: RUN/metrics.json's when it is RUN's split, else (RUN's
images not found) RUN's networks scored on the split of NEW_DATA as the pipeline scores its own
(tatl.pipeline.rescore). "stage1" is there when the validation images have lesion masks. Fingerprints: SHA-256
over the path, size and modification time of every image and mask (tatl.pipeline.reuse.data_identity).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tatl import distributed
from tatl.config import Config, load_config
from tatl.data.isic import Sample, attribute_names, find_samples
from tatl.errors import ConfigError, DataError
from tatl.io import write_json
from tatl.layout import RunLayout, default_variant, reported_model, variant_stages
from tatl.pipeline.context import RunContext
from tatl.pipeline.parent import Parent, open_parent, sources
from tatl.pipeline.rescore import scores_of
from tatl.pipeline.reuse import data_identity
from tatl.pipeline.train import Finish, override_list, train

log = logging.getLogger(__name__)

# What the networks are: a fine-tuned run keeps RUN's, so that every network starts from RUN's of the same shape.
FIXED = ("model.encoder_name", "model.shapes", "model.stage1_shape", "data.attributes", "data.image_size",
         "data.stage1_size", "pipeline.variants", "pipeline.encoder_mode", "pipeline.stages", "pipeline.init")


@dataclass(frozen=True)
class Plan:
    """What a fine-tuning trains and copies, decided from NEW_DATA and RUN."""

    trained: list[str]  # attributes with masks in NEW_DATA: their heads are fine-tuned
    copied: list[str]  # RUN's other attributes: their heads are copied
    segment_net: str  # "fine-tuned", "copied" or "unused" (no variant with Stage 1)
    stage2: str  # the same for the Attribute-Agnostic Segmenter
    new_samples: list[Sample]

    def overrides(self, parent: Parent, with_original: bool) -> list[str]:
        """The config values of the fine-tuned run (they win over --set)."""
        root = json.dumps(str(parent.layout.root.resolve()))
        copied = self.copied + (["stage2"] if self.stage2 == "copied" else [])
        mode = fine_tuned_encoder_mode(parent.config.pipeline.encoder_mode)
        return [f"pipeline.init_from={root}", f"pipeline.init_with_original={json.dumps(with_original)}",
                f"pipeline.init_copied={json.dumps(copied)}", "pipeline.reuse_stages_from=[]", "data.fold=null",
                f"pipeline.segment_net={root if self.segment_net == 'copied' else 'null'}",
                "model.encoder_weights=null",  # every weight comes from RUN
                # only where the mode changes (a joint parent): a --set changing any other is refused
                *([f"pipeline.encoder_mode={mode}"] if mode != parent.config.pipeline.encoder_mode else [])]


def finetune(run: str | Path, new_data: str | Path, out: str | Path, *, with_original: bool = False,
             overrides: Sequence[str] | Mapping[str, Any] | None = None, resume: bool = False,
             device: str | None = None, finish: Finish | None = None) -> dict:
    """Fine-tune the finished run `run` on `new_data` into the new run folder `out` (see the module's docstring);
    return out's metrics. overrides: config values as for tatl.pipeline.train.train; device: train.device."""
    run, new_data, out = Path(run), Path(new_data), Path(out)
    parent = open_parent(run)
    if out.resolve() == run.resolve():
        raise DataError(f"--out {out}: is RUN itself; a fine-tuned run goes into a new folder (RUN is never changed)")
    if not new_data.is_dir():
        raise DataError(f"{new_data}: is a file, not a dataset folder" if new_data.exists()
                        else f"{new_data}: dataset folder does not exist")
    plan = make_plan(parent, new_data, with_original)
    settings = override_list(overrides, None, device, False) + plan.overrides(parent, with_original)
    check_networks_kept(parent, load_config(parent.layout.config, settings))
    log.info(f"fine-tuning {run} on {new_data}: heads of {', '.join(plan.trained) or 'no attribute'} fine-tuned; "
             f"Segment-Net {plan.segment_net}, Stage 2 {plan.stage2}")
    metrics = train(new_data, out, None if resume else parent.layout.config, resume=resume, overrides=settings,
                    finish=finish)
    before = parent_metrics(parent, out)
    if distributed.is_main_process():
        record = finetune_record(parent, plan, out, before, metrics, with_original)
        write_json(RunLayout(out).finetune_record, record)
    return metrics


def parent_metrics(parent: Parent, out: Path) -> dict:
    """RUN's scores on RUN2's validation split: RUN/metrics.json when that split is RUN's own, else RUN's networks
    scored on it (tatl.pipeline.rescore; every rank calls this)."""
    if sources(RunLayout(out))["validation"] == "parent":
        return json.loads(parent.layout.metrics.read_text())
    log.info(f"scoring the networks of {parent.layout.root} on the validation split of {out}")
    return scores_of(parent.layout, RunContext.open(out), default_variant(parent.config.pipeline.variants))


def make_plan(parent: Parent, new_data: Path, with_original: bool) -> Plan:
    """What NEW_DATA fine-tunes; a one-line DataError for what cannot be fine-tuned."""
    config = parent.config
    attributes = config.data.attributes
    samples = find_samples(new_data, attributes)
    ignored = sorted(set(attribute_names(new_data)) - set(attributes))
    if ignored:
        log.warning(f"{new_data}: masks of {', '.join(ignored)} ignored: {parent.layout.root} does not segment them "
                    f"(its attributes: {', '.join(attributes)})")
    trained = [a for a in attributes if _all_or_none(new_data, samples, a, [s.attribute_mask_paths.get(a)
                                                                              for s in samples])]
    lesions = _all_or_none(new_data, samples, "lesion", [s.lesion_mask_path for s in samples])
    if with_original and not parent.samples:
        raise DataError(f"--with-original: the images of {parent.layout.root} are not reachable ({parent.unreachable})")
    copied = [a for a in attributes if a not in trained]
    if copied and trained and not parent.samples:
        raise DataError(f"{new_data} has no masks of {', '.join(copied)}, and the images of {parent.layout.root} are "
                        f"not reachable to score those heads on ({parent.unreachable}); give every attribute's masks")
    variants = config.pipeline.variants
    uses_stage1 = any(1 in variant_stages(v) for v in variants)
    validation = [parent.samples[i] for i in parent.val_ids] if parent.samples else samples
    tune_stage1 = uses_stage1 and lesions and all(s.lesion_mask_path for s in validation)
    if not trained and not tune_stage1:
        raise DataError(f"{new_data}: no masks of {parent.layout.root}'s attributes ({', '.join(attributes)}) "
                        "nor lesion masks (<id>_segmentation.png) to fine-tune on")
    if uses_stage1 and config.pipeline.crop_source == "truth" and not lesions:
        raise ConfigError(f"pipeline.crop_source=truth crops training images at their lesion masks, and {new_data} "
                          "has none: use --set pipeline.crop_source=predicted")
    with_stage2 = any(2 in variant_stages(v) for v in variants)
    return Plan(trained, copied, "unused" if not uses_stage1 else "fine-tuned" if tune_stage1 else "copied",
                "unused" if not with_stage2 else "copied" if copied else "fine-tuned", samples)


def _all_or_none(new_data: Path, samples: list[Sample], name: str, masks: list[Path | None]) -> bool:
    """True when every image has a `name` mask, False when none has; DataError when only some have."""
    lacking = [s.image_id for s, mask in zip(samples, masks, strict=True) if mask is None]
    if lacking and len(lacking) < len(samples):
        raise DataError(f"{new_data}: {name} masks for {len(samples) - len(lacking)} of {len(samples)} images "
                        f"(none for {', '.join(lacking[:3])}{' ...' if len(lacking) > 3 else ''}): give every image "
                        f"a {name} mask, or none to keep the parent's {name} network")
    return not lacking


def fine_tuned_encoder_mode(parent_mode: str) -> str:
    """A joint parent's attribute networks (its channels, saved as networks of their own) are fine-tuned one by one,
    as TATL-NF's: "trainable"; every other mode is kept."""
    return "trainable" if parent_mode == "joint" else parent_mode


def check_networks_kept(parent: Parent, config: Config) -> None:
    """A ConfigError for a --set that would change the networks (FIXED) away from RUN's."""
    for key in FIXED:
        section, name = key.split(".")
        theirs, mine = getattr(getattr(parent.config, section), name), getattr(getattr(config, section), name)
        if key == "pipeline.encoder_mode":
            theirs = fine_tuned_encoder_mode(theirs)
        if theirs != mine:
            raise ConfigError(f"{key}: {parent.layout.root} was trained with {theirs!r}, not {mine!r}; a fine-tuned "
                              "run keeps its parent's networks (start a new run with `tatl run` to change it)")


def finetune_record(parent: Parent, plan: Plan, out: Path, before: dict, metrics: dict, with_original: bool) -> dict:
    """RUN2/finetune.json (the module's docstring): `before` and `metrics` are RUN's and RUN2's metrics on RUN2's
    validation split."""
    run = RunContext.open(out)
    joined = sources(run.layout)
    variant = default_variant(parent.config.pipeline.variants)
    model = reported_model(parent.config.model.shapes)
    parent_identity = (data_identity(parent.layout.root, [parent.samples[i] for i in parent.train_ids + parent.val_ids])
                       if parent.samples else {})
    return {
        "parent": str(parent.layout.root.resolve()), "new_data": joined["new_data"], "with_original": with_original,
        "attributes_trained": plan.trained, "attributes_copied": plan.copied, "segment_net": plan.segment_net,
        "stage2": plan.stage2, "validation": joined["validation"],
        "images": {"train": len(run.train_ids), "val": len(run.val_ids)},
        "data": {"new_data_fingerprint": data_identity(Path(joined["new_data"]), plan.new_samples)["data_fingerprint"],
                 "parent_data_fingerprint": parent_identity.get("data_fingerprint"),
                 "run_data_fingerprint": run.data_identity["data_fingerprint"]},
        "variant": variant, "model": model,
        "before": _scores(before, variant, model), "after": _scores(metrics, variant, model),
    }


def _scores(metrics: dict, variant: str, model: str) -> dict:
    """The macro average and per-attribute Jaccard and Dice of one variant's model in a metrics.json, and the
    Segment-Net's scores when there are any."""
    scores = metrics[f"variant {variant}"][model]
    attributes = {k: v for k, v in scores.items() if k not in ("macro_average", "micro_average")}
    found = {"macro_average": scores["macro_average"], "per_attribute": attributes}
    stage1 = metrics.get("stage1") or {}
    if "jaccard" in stage1:
        found["stage1"] = {k: stage1[k] for k in ("jaccard", "threshold_jaccard", "dice")}
    return found
