"""pipeline.encoder_mode joint (beyond the paper, issue 22): Stage 3 as one network with an output channel per
attribute, started from Stage 2 (its channel repeated), trained with a trainable encoder, and saved as one network per
attribute (its channel of the last convolution), which prediction, rescoring and fine-tuning read as TATL-NF's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN_SETTINGS
from test_predict import assert_engines_agree

import tatl
import tatl.cli
from tatl.checkpoints import load_checkpoint
from tatl.config import load_config
from tatl.constants import JOINT
from tatl.data.synth import write_synthetic_dataset
from tatl.errors import ConfigError
from tatl.inference.predictor import load_predictor
from tatl.layout import BEST, DONE, RunLayout
from tatl.models.multihead import DecoderHead, MultiHeadSegmenter, merge_identical_decoders
from tatl.models.networks import build_model
from tatl.models.weights import repeat_output_channel
from tatl.training.losses import PooledLoss
from tatl.training.targets import head_loss, head_scores, target_parts

ENCODER = TINY_RUN_SETTINGS["model.encoder_name"]
ATTRIBUTES = TINY_RUN_SETTINGS["data.attributes"]  # pigment_network, globules
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _joint(classes: int = 3) -> MultiHeadSegmenter:
    torch.manual_seed(0)
    return MultiHeadSegmenter.joint(build_model("unet", ENCODER, None, classes=classes), ["a", "b", "c"][:classes])


def test_each_channel_saved_as_a_network_of_its_own_predicts_what_the_joint_network_does():
    joint = _joint().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = joint(x)
    assert list(out) == ["a", "b", "c"] == joint.targets and all(v.shape == (2, 1, 32, 32) for v in out.values())
    for name in "abc":
        single = build_model("unet", ENCODER, None, classes=1)
        single.load_state_dict(joint.head_state(name), strict=True)  # the single-network format, strictly
        with torch.no_grad():
            assert torch.allclose(single.eval()(x), out[name], atol=1e-5), name
    assert joint.head_state(JOINT)["segmentation_head.0.weight"].shape[0] == 3  # the head itself: every channel
    with pytest.raises(KeyError, match="no head or channel 'd'"):
        joint.head_state("d")


def _empty_head(classes: int) -> DecoderHead:
    network = build_model("unet", ENCODER, None, classes=classes)
    return DecoderHead(network.decoder, network.segmentation_head)


def test_prediction_runs_the_attributes_saved_from_one_joint_network_as_one_decoder_again():
    joint = _joint().eval()
    torch.manual_seed(2)
    union = build_model("unet", ENCODER, None, classes=1)
    loaded = MultiHeadSegmenter.from_model(build_model("unet", ENCODER, None), ["union", "a", "b", "c"])
    for name in "abc":  # as the predictor loads a run folder: one single network per attribute
        loaded.load_head_state(name, joint.head_state(name))
    loaded.heads["union"].load_state_dict({k: v for k, v in union.state_dict().items() if not k.startswith("enc")})
    merged = merge_identical_decoders(loaded, _empty_head).eval()
    assert list(merged.heads) == ["union", "a+b+c"] and merged.channels["a+b+c"] == ["a", "b", "c"]
    assert merged.targets == ["union", "a", "b", "c"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before, after = loaded.eval()(x), merged(x)
    for name in before:
        assert torch.allclose(after[name], before[name], atol=1e-5), name
    assert not torch.allclose(after["a"], after["b"])  # each channel its own attribute, in order
    distinct = MultiHeadSegmenter.from_model(build_model("unet", ENCODER, None), ["a", "b"])
    torch.nn.init.normal_(distinct.heads["b"].decoder.blocks[0].conv1[0].weight)  # another decoder: not merged
    assert merge_identical_decoders(distinct, _empty_head) is distinct


def test_stage2s_union_channel_is_repeated_so_every_attribute_starts_as_the_union():
    torch.manual_seed(1)
    union = build_model("unet", ENCODER, None, classes=1).eval()
    joint = build_model("unet", ENCODER, None, classes=3).eval()
    joint.load_state_dict(repeat_output_channel(union.state_dict(), 3), strict=True)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(joint(x), union(x).expand(1, 3, 32, 32), atol=1e-5)
    three = build_model("unet", ENCODER, None, classes=3).state_dict()  # e.g. the context-restoration network
    assert all(torch.equal(three[k], v) for k, v in repeat_output_channel(three, 5).items())


def test_a_joint_heads_loss_and_scores_are_each_channels_as_if_it_were_a_head_of_its_own():
    class Masks:
        targets = ["c", "a", "b"]  # the dataset's channel order need not be the network's

    joint = _joint()
    parts = target_parts(Masks(), joint)
    assert parts == {JOINT: [1, 2, 0]}
    torch.manual_seed(2)
    logits, y = torch.randn(2, 3, 8, 8), (torch.rand(2, 3, 8, 8) > 0.7).float()
    target = y[:, parts[JOINT]]
    expected = sum(PooledLoss(bce=True)(logits[:, c : c + 1], target[:, c]) for c in range(3)) / 3
    assert head_loss(PooledLoss(bce=True), logits, target, parts[JOINT]).item() == pytest.approx(expected.item(),
                                                                                                  rel=1e-6)
    restored = torch.nn.MSELoss()  # an image to restore (the pretext): its channels are one target, never split
    assert head_loss(restored, logits, target, slice(None)).item() == pytest.approx(restored(logits, target).item())
    totals = {"a": {"jaccard": 0.1, "dice": 0.2}, "b": {"jaccard": 0.3, "dice": 0.4},
              "c": {"jaccard": 0.5, "dice": 0.6}}
    scores = head_scores(totals, ["a", "b", "c"])
    assert scores["jaccard"] == pytest.approx(0.3) and scores["dice"] == pytest.approx(0.4)
    assert scores["jaccard_b"] == 0.3
    assert head_scores(totals, ["b"]) == {"jaccard": 0.3, "dice": 0.4}


def test_joint_cannot_start_a_fine_tuning_of_its_own():
    with pytest.raises(ConfigError, match="pipeline.encoder_mode joint: a fine-tuned run"):
        load_config(None, ["pipeline.encoder_mode=joint", "pipeline.init_from=/some/run", "data.tune_fraction=0"])
    with pytest.raises(ConfigError, match="pipeline.encoder_mode: 'shared' \\(one of frozen, trainable, joint\\)"):
        load_config(None, ["pipeline.encoder_mode=shared"])
    with pytest.raises(ConfigError, match="train.stage2_epochs must be >= 1 or null, got 0"):
        load_config(None, ["train.stage2_epochs=0"])


# ------------------------------------------------------------------------------------------------- a whole run
def test_without_stage2_the_joint_network_starts_as_pipeline_init_says(tmp_path):
    from tatl.pipeline.plan import resolve_plan

    config = load_config(None, ["pipeline.encoder_mode=joint", 'pipeline.variants=["1,3"]',
                                "model.encoder_weights=lite0", "model.encoder_name=paper-efficientnet-lite0"])
    layout = RunLayout(tmp_path)
    start = resolve_plan(config, layout, {}).start(layout.stage3("1,3", "unet"))
    assert (start.kind, start.encoder_weights, start.heads) == ("fresh", "lite0", tuple(config.data.attributes))


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("joint")
    write_synthetic_dataset(root / "data", n=14, size=64, seed=0)
    overrides = {**TINY_RUN_SETTINGS, "train.epochs": 2, "train.stage2_epochs": 1, "train.batch_size": 4,
                 "pipeline.encoder_mode": "joint", "pipeline.variants": ["1,2,3"]}
    tatl.train(root / "data", root / "run", overrides=overrides)
    return root / "run"


@pytest.mark.slow
def test_a_joint_run_starts_from_stage2_and_writes_each_attributes_network(joint_run):
    layout = RunLayout(joint_run)
    plan = {g["folder"]: g for g in json.loads(layout.plan.read_text())["groups"]}
    group = plan["stage3-v123/unet"]
    assert group["start"] == "weights" and group["state"].endswith("stage2-crops/unet/best.pt")
    assert group["heads"] == ATTRIBUTES
    for variant in ("1,2,3",):
        joint = load_checkpoint(layout.stage3_joint(variant, "unet") / BEST)["model"]
        assert joint["segmentation_head.0.weight"].shape[0] == len(ATTRIBUTES)
        assert (layout.stage3(variant, "unet") / DONE).is_file()
        for c, attribute in enumerate(ATTRIBUTES):
            saved = load_checkpoint(layout.stage3_head(variant, "unet", attribute) / BEST)
            sliced = {k: v[c : c + 1] if k.startswith("segmentation_head.") else v for k, v in joint.items()}
            assert saved["model"].keys() == sliced.keys()
            assert all(torch.equal(saved["model"][k], sliced[k]) for k in sliced), attribute
            assert (layout.stage3_head(variant, "unet", attribute) / DONE).is_file()
    rows = (layout.stage3_joint("1,2,3", "unet") / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and all(f"jaccard_{a}" in rows[0] for a in ATTRIBUTES)  # train.epochs: 2
    assert len((layout.stage2("crops", "unet") / "log.csv").read_text().splitlines()) == 2  # train.stage2_epochs: 1
    metrics = json.loads((joint_run / "metrics.json").read_text())
    assert set(metrics["variant 1,2,3"]["unet"]) >= {*ATTRIBUTES, "macro_average", "micro_average"}


@pytest.mark.slow
def test_a_resumed_joint_run_reloads_and_scores_the_same(joint_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(joint_run, copy)
    before = json.loads((copy / "metrics.json").read_text())
    tatl.train(joint_run.parent / "data", copy, resume=True)
    assert json.loads((copy / "metrics.json").read_text())["variant 1,2,3"] == before["variant 1,2,3"]
    assert "stage 3 (variant 1,2,3, unet, joint): already trained, reusing" in (copy / "log.txt").read_text()


@pytest.mark.slow
def test_a_joint_run_predicts_and_fine_tunes_as_one_network_per_attribute(joint_run, tmp_path):
    import shutil

    image = sorted((joint_run.parent / "data").rglob("*.jpg"))[0]
    predicted = tatl.load(joint_run).predict(image)
    assert set(predicted.attributes) == set(ATTRIBUTES) and predicted.abnormal is not None
    networks = tatl.load(joint_run).predictor.networks.targets["unet"]  # union; the attributes' one decoder
    assert [network.names for network in networks] == [["union"], list(ATTRIBUTES)]
    heads = [head for network in networks for head in network.module.model.heads]
    assert heads == ["union", "+".join(ATTRIBUTES)]
    if importlib.util.find_spec("onnxruntime"):  # the merged head exports, one output per attribute
        assert tatl.cli.main(["export", str(joint_run), "--onnx", str(tmp_path / "onnx")]) == 0
        assert_engines_agree(tatl.load(joint_run).predictor, load_predictor(tmp_path / "onnx"), image)
    new = tmp_path / "new"  # corrections of pigment network alone: globules is copied from the joint run
    shutil.copytree(joint_run.parent / "data", new)
    for mask in new.rglob("*_attribute_globules.png"):
        mask.unlink()
    child = tatl.finetune(joint_run, new, tmp_path / "run2")
    layout = RunLayout(child.run_dir)
    assert load_config(layout.config).pipeline.encoder_mode == "trainable"  # each attribute's network on its own
    plan = {g["folder"]: g for g in json.loads(layout.plan.read_text())["groups"]}
    trained, copied = (f"stage3-v123/unet/{a}" for a in ATTRIBUTES)  # pigment_network, globules
    assert plan[trained]["start"] == "weights" and plan[copied]["start"] == "copy"
    assert plan[trained]["head_starts"][ATTRIBUTES[0]] == str(joint_run.resolve() / trained / BEST)
    assert (child.run_dir / copied / BEST).read_bytes() == (joint_run / copied / BEST).read_bytes()
