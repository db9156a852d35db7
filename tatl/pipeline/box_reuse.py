"""Stage-1 boxes kept across a resume: predicting every image's lesion takes minutes on a CPU (5 on one thread for the
1,960 ISIC 2018 Task 2 images), and a resumed run has the same Segment-Net, settings and images, so the same boxes.

RUN/stage1/boxes-key.json records what RUN/stage1/boxes.json was computed from (a hash of the Segment-Net's best.pt
fingerprint, the settings boxes depend on, the data and the images in order) and the Stage-1 scores computed with
them. tatl.pipeline.stages.stage1_boxes reads both back when the key matches, and predicts again otherwise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tatl import distributed
from tatl.data.cache import file_fingerprint
from tatl.data.crops import Box
from tatl.errors import DataError
from tatl.io import write_json
from tatl.pipeline.context import TrainingContext


def boxes_key(ctx: TrainingContext, segment_net_best: Path) -> str:
    """What the boxes depend on, hashed: the Segment-Net's best.pt (path, size, modification time), the settings
    that turn its predictions into boxes, the data and the images in the order they are predicted."""
    cfg = ctx.config
    settings = {"stage1_size": cfg.data.stage1_size, "binarize_threshold": cfg.data.binarize_threshold,
                "threshold": cfg.pipeline.threshold, "crop_margin": cfg.pipeline.crop_margin,
                "crop_source": cfg.pipeline.crop_source, "min_lesion_fraction": cfg.pipeline.min_lesion_fraction}
    images = [[s.image_id for s in part] for part in (ctx.train, ctx.tune, ctx.val)]
    text = json.dumps([file_fingerprint(segment_net_best), settings, ctx.data_identity, images], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def reused_boxes(ctx: TrainingContext, key: str) -> tuple[dict[str, Box], dict] | None:
    """(boxes, Stage-1 scores) recorded with `key`, or None when there are none or they were computed otherwise."""
    try:
        record = json.loads(ctx.layout.boxes_record.read_text())
        if record.get("key") != key:
            return None
        return ctx.boxes(), record["scores"]
    except (OSError, ValueError, KeyError, TypeError, DataError):  # DataError: boxes.json is gone
        return None


def record_boxes(ctx: TrainingContext, key: str, scores: dict) -> None:
    """Say what boxes.json (written before: a kill between the two leaves no record) was computed from, and its
    scores (rank 0 writes)."""
    if distributed.is_main_process():
        write_json(ctx.layout.boxes_record, {"key": key, "scores": scores})
