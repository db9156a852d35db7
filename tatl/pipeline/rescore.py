"""A finished run's networks scored on another run's validation split, the way the pipeline scores its own.

`tatl finetune` records the parent's scores "before" fine-tuning: RUN/metrics.json when RUN2 validates on RUN's own
split; when RUN's images cannot be found and RUN2 validates on a split of the new data instead, this module scores
RUN's networks there (its Segment-Net's boxes, then tatl.pipeline.stages.evaluate_variant), so that "before" and
"after" are scores of the same images. Under torchrun every rank calls it (the scores are summed across ranks).
"""

from __future__ import annotations

from pathlib import Path

from tatl import distributed
from tatl.checkpoints import load_checkpoint
from tatl.constants import LESION
from tatl.data.checks import DataReport
from tatl.data.crops import Box, lesion_box
from tatl.data.dataset import load_images
from tatl.data.images import image_size
from tatl.layout import BEST, RunLayout, variant_stages
from tatl.models.multihead import MultiHeadSegmenter
from tatl.models.networks import build_model
from tatl.pipeline.context import RunContext, TrainingContext
from tatl.pipeline.scoring import predict_probabilities, score_lesions
from tatl.pipeline.stages import evaluate_variant


def scores_of(networks: RunLayout, run: RunContext, variant: str) -> dict:
    """{"stage1": Task 1 scores (when the images have lesion masks), "variant V": {shape or "ensemble": Task 2
    scores}} of the networks in `networks` (a run with `run`'s settings) on `run`'s validation images."""
    cfg = run.config
    sizes = {s.image_id: image_size(s.image_path) for s in run.val}
    run = TrainingContext.of(run, DataReport(run.data_root, run.val, tuple(cfg.data.attributes), sizes, {}, [], {}))
    metrics: dict = {}
    boxes = None
    if 1 in variant_stages(variant):
        boxes, metrics["stage1"] = _boxes(networks, run)
    models = {shape: [_network(networks.stage3_head(variant, shape, a), shape, a, cfg.model.encoder_name)
                      for a in cfg.data.attributes] for shape in cfg.model.shapes}
    metrics[f"variant {variant}"], _ = evaluate_variant(run, models, boxes)
    return metrics


def _boxes(networks: RunLayout, run: TrainingContext) -> tuple[dict[str, Box], dict]:
    """The lesion box of every validation image from the Segment-Net in `networks`, and its Task 1 scores."""
    cfg, p = run.config, run.config.pipeline
    segment_net = _network(networks.stage1(cfg.model.stage1_shape), cfg.model.stage1_shape, LESION,
                           cfg.model.encoder_name)
    mine = distributed.my_share(run.val)
    images = distributed.my_share(load_images(run.val, cfg.data.stage1_size, None, run.cache_dir))
    probabilities = predict_probabilities(segment_net, images, run.device, cfg.train.batch_size)[LESION]
    boxes = {s.image_id: lesion_box(lesion > p.threshold, run.report.sizes[s.image_id], p.crop_margin,
                                    p.min_lesion_fraction)[0] for s, lesion in zip(mine, probabilities, strict=True)}
    for rank_boxes in distributed.gather_from_ranks(boxes):
        boxes.update(rank_boxes)
    scores = {}
    if all(s.lesion_mask_path for s in run.val):
        scores = score_lesions(probabilities, mine, run.report.sizes, p.threshold, cfg.data.binarize_threshold,
                               across_ranks=True)
    return boxes, scores


def _network(folder: Path, shape: str, name: str, encoder_name: str) -> MultiHeadSegmenter:
    network = MultiHeadSegmenter.from_model(build_model(shape, encoder_name, None), [name])
    network.load_head_state(name, load_checkpoint(folder / BEST)["model"], folder / BEST)
    return network
