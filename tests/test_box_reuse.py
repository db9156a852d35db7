"""A resumed run reads its Stage-1 boxes back (tatl.pipeline.box_reuse) instead of predicting every image again, when
the Segment-Net, the box settings and the images are those the boxes were computed from; otherwise it predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_RUN_SETTINGS

import tatl
from tatl.layout import RunLayout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def run(tmp_path) -> Path:
    """A tiny finished run with Stage 1 (variant 1,3), resumed in place by the tests (a copy elsewhere has other
    paths, so other fingerprints: it predicts its boxes again)."""
    tatl.train("synthetic", tmp_path / "run", overrides={**TINY_RUN_SETTINGS, "pipeline.variants": ["1,3"]})
    return tmp_path / "run"


def _resume(run: Path) -> tuple[str, dict, dict]:
    """(what the resumed run logged, its boxes, its metrics)."""
    layout = RunLayout(run)
    before = len(layout.log.read_text())
    tatl.train("synthetic", run, resume=True)
    return layout.log.read_text()[before:], json.loads(layout.boxes.read_text()), json.loads(
        (run / "metrics.json").read_text())


@pytest.mark.slow
def test_a_resumed_run_reads_its_boxes_back_and_predicts_them_again_when_they_may_differ(run):
    layout = RunLayout(run)
    boxes, metrics = json.loads(layout.boxes.read_text()), json.loads((run / "metrics.json").read_text())
    log, boxes_after, metrics_after = _resume(run)
    assert "boxes of the same Segment-Net, settings and images read from" in log
    assert boxes_after == boxes and metrics_after == metrics  # Stage-1 scores included
    best = next(run.glob("stage1/*/best.pt"))
    best.write_bytes(best.read_bytes())  # the same weights, rewritten: its fingerprint changes
    log, boxes_after, _ = _resume(run)
    assert "read from" not in log and boxes_after == boxes
    layout.boxes_record.unlink()  # as a kill between boxes.json and its record leaves it
    log, _, _ = _resume(run)
    assert "read from" not in log and layout.boxes_record.is_file()  # predicted and recorded again
    assert "read from" in _resume(run)[0]
