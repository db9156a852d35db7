"""benchmarks/peer_unet.py --init-from: the peer's five-channel U-Net started from a tatl Stage-2 union network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tatl.checkpoints import save_checkpoint
from tatl.models.networks import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from peer_unet import load_union_network  # noqa: E402

ENCODER = "tu-resnet10t"  # small, no download (the tests' tiny runs use it too)


def _stage2_checkpoint(tmp_path: Path, shape: str = "unet") -> tuple[Path, dict]:
    torch.manual_seed(0)
    union = build_model(shape, ENCODER, None, classes=1)
    path = tmp_path / "best.pt"
    save_checkpoint({"model": union.state_dict()}, path)
    return path, union.state_dict()


def test_every_weight_comes_from_stage2_and_each_attribute_channel_starts_as_the_union(tmp_path):
    path, union = _stage2_checkpoint(tmp_path)
    peer = build_model("unet", ENCODER, None, classes=5)
    load_union_network(peer, path)
    state = peer.state_dict()
    for key, value in union.items():
        if key.startswith("segmentation_head."):
            assert state[key].shape[0] == 5
            assert all(torch.equal(state[key][c], value[0]) for c in range(5)), key
        else:
            assert torch.equal(state[key], value), key
    x = torch.rand(1, 3, 32, 32)
    union_net = build_model("unet", ENCODER, None, classes=1)
    union_net.load_state_dict(union)
    peer.eval(), union_net.eval()
    with torch.no_grad():
        out, expected = peer(x), union_net(x)
    assert torch.allclose(out, expected.expand_as(out), atol=1e-5)


def test_a_network_of_another_shape_is_refused_naming_the_file(tmp_path):
    path, _ = _stage2_checkpoint(tmp_path, shape="linknet")
    with pytest.raises(SystemExit, match="best.pt: not a Stage-2 union network"):
        load_union_network(build_model("unet", ENCODER, None, classes=5), path)


def test_boxes_come_from_a_runs_boxes_json_and_a_missing_image_is_named(tmp_path):
    from peer_unet import read_boxes

    from tatl.io import write_json
    from tatl.layout import RunLayout

    with pytest.raises(SystemExit, match="boxes.json: missing"):
        read_boxes(tmp_path, ["a"])
    write_json(RunLayout(tmp_path).boxes, {"a": [1, 2, 30, 40]})
    assert read_boxes(tmp_path, ["a"]) == {"a": (1, 2, 30, 40)}
    with pytest.raises(SystemExit, match="no box for 1 image.*e.g. b"):
        read_boxes(tmp_path, ["a", "b"])
