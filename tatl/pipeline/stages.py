"""The TATL pipeline, read top to bottom (paper Sections 4.1-4.3 and 5.2-5.3).

    Stage 1  Segment-Net on lesion masks -> a box per image (+ margin) -> lesion crops, resized.
    Stage 2  Attribute-Agnostic Segmenter on the union (pixel OR) of the attribute masks (Eq. 4).
    Stage 3  one Target-Segmenter per attribute, every weight initialised from Stage 2; encoder frozen and shared
             (TATL-FE) or trainable (TATL-NF).
    Eval     U and Link probabilities averaged, pasted back at each image's original size, official ISIC scores.

The ablation variants of Tables 2-3 name the stages they use: "3" (targets on full images from the configured
encoder weights), "2,3" (agnostic then targets, full images), "1,3" (targets on crops), "1,2,3" (full TATL).
Variants without Stage 2 have no task-trained encoder to freeze, so their encoders are trained (the paper's
vanilla encoder-decoder). Shared stages are trained once and reused by every variant.
"""

from __future__ import annotations

import logging

import numpy as np

from tatl import distributed
from tatl.constants import JOINT, LESION, UNION
from tatl.data.crops import Box, lesion_box
from tatl.data.dataset import full_size_target, load_images
from tatl.io import write_json
from tatl.layout import BEST, ENSEMBLE, inputs_of, variant_stages
from tatl.models.ensemble import average_probabilities
from tatl.models.multihead import MultiHeadSegmenter
from tatl.pipeline import box_reuse
from tatl.pipeline.context import RunContext, TrainingContext
from tatl.pipeline.groups import Datasets, GroupSpec, copied_heads, stage_dataset, train_group
from tatl.pipeline.plan import BY_SEGMENT_NET, WEIGHTS, GroupStart, RunPlan, plan_run, write_plan
from tatl.pipeline.scoring import (
    predict_probabilities,
    score_attributes,
    score_lesions,
    tune_thresholds,
)
from tatl.pipeline.segment_net import recorded_origin, uses_segment_net
from tatl.training.head_progress import THRESHOLD_JACCARD
from tatl.training.pretext import train_context_restoration

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- Stage 1
def stage1_segment_net(ctx: TrainingContext, plan: RunPlan | None = None) -> MultiHeadSegmenter:
    """Train the Segment-Net on whole images resized to stage1_size, one head: "lesion"; or reload it, finished
    here or copied (another run's, pipeline.segment_net: tatl.pipeline.segment_net), as the run's `plan` says
    (default: resolved now).

    Its early stopping and best.pt follow the score Stage 1 reports, ISIC 2018 Task 1's thresholded Jaccard, ties
    broken by the Jaccard (tatl.training.head_progress.ranking), not train.monitor; computed at stage1_size each
    epoch (original size would upscale every prediction for a score that differs only at the lesion borders).
    stage1_boxes reports the original-size scores once training is done."""
    cfg = ctx.config
    size, shape, group_dir = cfg.data.stage1_size, cfg.model.stage1_shape, ctx.layout.stage1(cfg.model.stage1_shape)
    start = (plan or plan_run(ctx)).start(group_dir)
    label = f"stage 1 (Segment-Net of {cfg.pipeline.segment_net})" if start.copied_by == BY_SEGMENT_NET else "stage 1"
    spec = GroupSpec(shape, {LESION: group_dir}, train_encoder=True, label=label, monitor=THRESHOLD_JACCARD)
    datasets = None if start.finished else tuple(  # a finished one needs no data (nor lesion masks)
        stage_dataset(ctx, samples, [LESION], size, None, augment=samples is ctx.train)
        for samples in (ctx.train, ctx.selection))
    return train_group(ctx, spec, start, datasets)


def stage1_boxes(ctx: TrainingContext, segment_net: MultiHeadSegmenter) -> tuple[dict[str, Box], dict]:
    """Lesion boxes for every image from the Segment-Net's predictions (or truth, for training crops, if asked).

    Under torchrun each rank predicts its share of the images; boxes and scores are then put together on every rank.
    A resumed run reads them back when the Segment-Net, settings and images are the same (tatl.pipeline.box_reuse).
    """
    cfg = ctx.config
    key = box_reuse.boxes_key(ctx, ctx.layout.stage1(cfg.model.stage1_shape) / BEST)
    reused = box_reuse.reused_boxes(ctx, key)
    if reused is not None:
        log.info(f"stage 1: boxes of the same Segment-Net, settings and images read from {ctx.layout.boxes}")
        return reused
    samples = ctx.train + ctx.tune + ctx.val
    train_ids = {s.image_id for s in ctx.train}
    val_ids = {s.image_id for s in ctx.val}
    mine = distributed.my_share(samples)
    images = distributed.my_share(load_images(samples, cfg.data.stage1_size, None, ctx.cache_dir))
    probabilities = predict_probabilities(segment_net, images, ctx.device, cfg.train.batch_size)[LESION]
    boxes: dict[str, Box] = {}
    fallbacks: set[str] = set()
    for sample, lesion_probabilities in zip(mine, probabilities, strict=True):
        mask = lesion_probabilities > cfg.pipeline.threshold
        if cfg.pipeline.crop_source == "truth" and sample.image_id in train_ids:
            mask = full_size_target(sample, LESION, ctx.report.sizes[sample.image_id], cfg.data.binarize_threshold)
        box, fell_back = lesion_box(mask, ctx.report.sizes[sample.image_id], cfg.pipeline.crop_margin,
                                    cfg.pipeline.min_lesion_fraction)
        boxes[sample.image_id] = box
        if fell_back:
            fallbacks.add(sample.image_id)
    for rank_boxes, rank_fallbacks in distributed.gather_from_ranks((boxes, fallbacks)):
        boxes.update(rank_boxes)
        fallbacks |= rank_fallbacks
    boxes = {s.image_id: boxes[s.image_id] for s in samples}  # in the images' order, on every rank alike
    fallback_ids = [s.image_id for s in samples if s.image_id in fallbacks]
    if fallback_ids:
        log.warning(f"stage 1: no plausible lesion predicted for {len(fallback_ids)} image(s), whole image used: "
                    + ", ".join(fallback_ids[:10]) + (" ..." if len(fallback_ids) > 10 else ""))
    scores: dict = {}
    if any(s.lesion_mask_path for s in ctx.val):  # the same on every rank; data without lesion masks has no score
        # the validation images with a lesion mask (all of them, unless the Segment-Net came from another run)
        is_val = np.array([s.image_id in val_ids and s.lesion_mask_path is not None for s in mine], dtype=bool)
        scores = score_lesions(probabilities[is_val], [s for s, v in zip(mine, is_val, strict=True) if v],
                               ctx.report.sizes, cfg.pipeline.threshold, cfg.data.binarize_threshold,
                               across_ranks=True)
    scores["whole_image_fallbacks"] = fallback_ids
    write_json(ctx.layout.boxes, {k: list(v) for k, v in boxes.items()})
    box_reuse.record_boxes(ctx, key, scores)
    return boxes, scores


# ----------------------------------------------------------------------------------------------------- Stage 2
def stage2_agnostic(ctx: TrainingContext, shape: str, boxes: dict[str, Box] | None,
                   plan: RunPlan | None = None) -> MultiHeadSegmenter:
    """Train the Attribute-Agnostic Segmenter on union masks (images with an empty union included)."""
    kind = "crops" if boxes else "full"
    group_dir = ctx.layout.stage2(kind, shape)
    start = (plan or plan_run(ctx)).start(group_dir)
    datasets = None if start.finished else tuple(
        stage_dataset(ctx, samples, [UNION], ctx.config.data.image_size, boxes, augment=samples is ctx.train)
        for samples in (ctx.train, ctx.selection))
    spec = GroupSpec(shape, {UNION: group_dir}, train_encoder=True, label=f"stage 2 ({kind}, {shape})",
                     epochs=ctx.config.train.stage2_epochs)
    return train_group(ctx, spec, start, datasets)


# ----------------------------------------------------------------------------------------------------- Stage 3
def stage3_targets(ctx: TrainingContext, variant: str, shape: str, boxes: dict[str, Box] | None,
                   agnostic: MultiHeadSegmenter | None, plan: RunPlan | None = None) -> list[MultiHeadSegmenter]:
    """One Target-Segmenter per attribute, started as the run's `plan` says: from Stage 2 (`agnostic`, trained or
    reloaded before), or from pipeline.init's start (tatl.pipeline.plan.stage3_initialisation), or the parent's.

    Returns the trained networks: one multi-head network (frozen, shared encoder), one network per attribute, or
    one joint network (an output channel per attribute).
    """
    cfg = ctx.config
    plan = plan or plan_run(ctx)
    heads = {a: ctx.layout.stage3_head(variant, shape, a) for a in cfg.data.attributes}
    label = f"stage 3 (variant {variant}, {shape}"
    if agnostic is not None and cfg.pipeline.encoder_mode == "frozen":
        # TATL-FE: one frozen encoder pass per batch feeds every attribute's decoder.
        label += ", frozen encoder)"
        shape_dir = ctx.layout.stage3(variant, shape)
        copied = [a for a in cfg.data.attributes if heads[a] in plan.groups]  # the parent's, copied unchanged
        groups = [copied_heads(ctx, GroupSpec(shape, {a: heads[a] for a in copied}, False, label),
                               [plan.start(heads[a]) for a in copied])] if copied else []
        if shape_dir in plan.groups:
            start = plan.start(shape_dir)
            spec = GroupSpec(shape, {a: heads[a] for a in start.heads}, train_encoder=False, label=label)
            groups.insert(0, train_group(ctx, spec, start, _stage3_data(ctx, [start], boxes, strong=False)))
        return groups
    strong = agnostic is None and cfg.pipeline.init == "augmentation"  # Stage 2's start is never augmented
    if cfg.pipeline.encoder_mode == "joint":
        # Beyond the paper: one network, trainable encoder, an output channel per attribute (tatl.config).
        start = plan.start(ctx.layout.stage3(variant, shape))
        spec = GroupSpec(shape, {JOINT: ctx.layout.stage3_joint(variant, shape)}, train_encoder=True,
                         label=f"{label}, joint)", channel_dirs=heads)
        _train_pretext(ctx, [start], variant, shape, boxes)
        return [train_group(ctx, spec, start, _stage3_data(ctx, [start], boxes, strong))]
    # TATL-NF and the baselines without Stage 2: one whole network per attribute.
    starts = {a: plan.start(heads[a]) for a in cfg.data.attributes}
    data = _stage3_data(ctx, list(starts.values()), boxes, strong)
    _train_pretext(ctx, list(starts.values()), variant, shape, boxes)
    return [train_group(ctx, GroupSpec(shape, {a: heads[a]}, True, f"{label}, {a})"), starts[a], data)
            for a in cfg.data.attributes]


def _stage3_data(ctx: TrainingContext, starts: list[GroupStart], boxes: dict[str, Box] | None,
                 strong: bool) -> Datasets | None:
    """The training and selection sets of the attributes the groups of `starts` train (every such attribute's masks:
    each group picks its own), with `strong` augmented copies (pipeline.init augmentation); None when every group is
    finished (copied heads need no masks, nor have them in a fine-tuned run's new data)."""
    trained = [a for start in starts if not start.finished for a in start.heads]
    if not trained:
        return None
    size = ctx.config.data.image_size
    train_set = stage_dataset(ctx, ctx.train, trained, size, boxes, augment=True, strong=strong)
    return train_set, stage_dataset(ctx, ctx.selection, trained, size, boxes, augment=False)


def _train_pretext(ctx: TrainingContext, starts: list[GroupStart], variant: str, shape: str,
                   boxes: dict[str, Box] | None) -> None:
    """The context-restoration pretext network (pipeline.init context-restoration), trained or reloaded when a
    group of `starts` starts from it."""
    cfg, pretext = ctx.config, ctx.layout.pretext(inputs_of(variant), shape)
    if not any(start.kind == WEIGHTS and start.state == pretext / BEST for start in starts):
        return
    images = [load_images(s, cfg.data.image_size, boxes, ctx.cache_dir) for s in (ctx.train, ctx.selection)]
    train_context_restoration(shape, cfg.model.encoder_name, cfg.model.encoder_weights, *images, cfg.train, pretext)


def predict_targets(ctx: RunContext, models: list[MultiHeadSegmenter], images: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities of every attribute, from however many networks hold the heads."""
    out: dict[str, np.ndarray] = {}
    for model in models:
        out.update(predict_probabilities(model, images, ctx.device, ctx.config.train.batch_size))
    return out


def evaluate_variant(ctx: TrainingContext, variant_models: dict[str, list[MultiHeadSegmenter]],
                     boxes: dict[str, Box] | None) -> tuple[dict, dict]:
    """Official scores at original size for each shape and the U+Link ensemble, and the thresholds used."""
    cfg = ctx.config
    per_shape = _shape_probabilities(ctx, variant_models, boxes, ctx.val)
    where = (distributed.my_share(ctx.val), boxes, ctx.report.sizes)
    tuning = (_shape_probabilities(ctx, variant_models, boxes, ctx.tune), distributed.my_share(ctx.tune), boxes,
              ctx.report.sizes) if ctx.tune else (per_shape, *where)  # no tuning split: validation (optimistic)
    scores, thresholds = {}, {}
    for name, probabilities in per_shape.items():
        thresholds[name] = dict.fromkeys(probabilities, cfg.pipeline.threshold)
        if cfg.pipeline.tune_thresholds:
            thresholds[name] = tune_thresholds(tuning[0][name], *tuning[1:],
                                               binarize_threshold=cfg.data.binarize_threshold, across_ranks=True)
        scores[name] = score_attributes(probabilities, *where, thresholds[name], cfg.data.binarize_threshold,
                                        across_ranks=True)
    return scores, thresholds


def _shape_probabilities(ctx: TrainingContext, variant_models: dict[str, list[MultiHeadSegmenter]],
                         boxes: dict[str, Box] | None, samples: list) -> dict[str, dict[str, np.ndarray]]:
    """{shape or ensemble: {attribute: probabilities}} of this rank's share of `samples` (under torchrun each rank
    predicts and scores its share; the scores' sums are added up)."""
    images = distributed.my_share(load_images(samples, ctx.config.data.image_size, boxes, ctx.cache_dir))
    per_shape = {shape: predict_targets(ctx, model, images) for shape, model in variant_models.items()}
    if len(per_shape) > 1:
        per_shape[ENSEMBLE] = average_probabilities(list(per_shape.values()))
    return per_shape


# ----------------------------------------------------------------------------------------------------- the run
def run_pipeline(ctx: TrainingContext) -> dict:
    """Train every stage the configured variants need (each once) and score every variant; return metrics.
    pipeline.stages "1": the Segment-Net alone. Where each network starts is planned first (RUN/plan.json)."""
    cfg = ctx.config
    plan = plan_run(ctx)
    write_plan(ctx.layout, plan)
    metrics: dict = {}
    boxes = None
    stage1_only = cfg.pipeline.stages == "1"
    if stage1_only or any(1 in variant_stages(v) for v in cfg.pipeline.variants):
        boxes, metrics["stage1"] = stage1_boxes(ctx, stage1_segment_net(ctx, plan))
        if uses_segment_net(cfg):
            metrics["stage1"]["segment_net"] = recorded_origin(ctx.layout, cfg.model.stage1_shape)
        _log_stage1(metrics["stage1"])
        if stage1_only:
            return metrics
    agnostic: dict[tuple[str, str], MultiHeadSegmenter] = {}
    thresholds: dict[str, dict] = {}
    stage2_thresholds: dict[str, dict] = {}
    for variant in cfg.pipeline.variants:
        stages = variant_stages(variant)
        variant_boxes = boxes if 1 in stages else None
        kind = inputs_of(variant)
        models = {}
        for shape in cfg.model.shapes:
            start = None
            if 2 in stages:
                if (kind, shape) not in agnostic:
                    agnostic[(kind, shape)] = stage2_agnostic(ctx, shape, variant_boxes, plan)
                start = agnostic[(kind, shape)]
            models[shape] = stage3_targets(ctx, variant, shape, variant_boxes, start, plan)
        if 2 in stages and f"stage2-{kind}" not in metrics:
            stage2_models = {s: [m] for (k, s), m in agnostic.items() if k == kind}
            metrics[f"stage2-{kind}"], stage2_thresholds[kind] = evaluate_variant(ctx, stage2_models, variant_boxes)
        metrics[f"variant {variant}"], thresholds[variant] = evaluate_variant(ctx, models, variant_boxes)
        _log_variant(variant, metrics[f"variant {variant}"])
    tuned_on = ("tuning split" if ctx.tune else "validation") if cfg.pipeline.tune_thresholds else None
    write_json(ctx.layout.thresholds, {"tuned": cfg.pipeline.tune_thresholds, "tuned_on": tuned_on,
                                       "variants": thresholds, "stage2": stage2_thresholds})
    return metrics


def _log_stage1(scores: dict) -> None:
    if "jaccard" in scores:
        log.info(f"stage 1 (validation, original size): Jaccard {scores['jaccard']:.3f}, thresholded Jaccard "
                 f"{scores['threshold_jaccard']:.3f}, Dice {scores['dice']:.3f}")
    else:
        log.info("stage 1: no lesion masks in this run's data, so no Stage-1 scores on it")


def _log_variant(variant: str, scores: dict) -> None:
    best = scores.get("ensemble") or next(iter(scores.values()))
    name = "ensemble" if "ensemble" in scores else next(iter(scores))
    log.info(f"variant {variant} ({name}, validation, original size): macro Jaccard "
             f"{best['macro_average']['jaccard']:.3f}, Dice {best['macro_average']['dice']:.3f}; micro Jaccard "
             f"{best['micro_average']['jaccard']:.3f}")
