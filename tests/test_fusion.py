"""Folding BatchNorm into convolutions for prediction: the same function, no BatchNorm left where it can go."""

import copy

import pytest
import torch
from torch import nn

from tatl.models.fusion import fold_batchnorm
from tatl.models.networks import build_model


def with_random_statistics(model: nn.Module) -> nn.Module:
    """BatchNorm as a trained network has it (fresh ones are the identity, which would hide a wrong fold)."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                      (module.weight.data, 0.5, 1.5), (module.bias.data, -0.2, 0.2)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return model.eval()


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(("shape", "encoder", "left"), [
    ("unet", "paper-efficientnet-b0", 0), ("linknet", "paper-efficientnet-b0", 0),
    ("unet", "efficientnet-b0", 0), ("linknet", "resnet18", 0),  # smp's Linknet: transposed conv + BN too
    ("unet", "tu-efficientnet_b0", 0),
    ("unet", "tu-resnet10t", 1),  # its deep stem ends in a Sequential, not a convolution: that BN stays
])
def test_a_folded_network_computes_what_the_unfolded_one_does(shape, encoder, left):
    torch.manual_seed(0)
    model = with_random_statistics(build_model(shape, encoder))
    folded = copy.deepcopy(model)
    count = fold_batchnorm(folded)
    assert count == batchnorms(model) - left and batchnorms(folded) == left
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    assert not torch.equal(expected, actual)  # folding really changed the arithmetic ...
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)  # ... not the function


def test_only_an_eval_mode_network_is_folded_and_batchnorm_without_statistics_stays():
    model = build_model("unet", "paper-efficientnet-b0")
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm(model.train())
    layer = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU()).eval()
    assert fold_batchnorm(layer) == 0 and isinstance(layer[1], nn.BatchNorm2d)  # it normalises by the batch


def test_predict_runs_the_folded_networks(tmp_path):
    from tatl.inference.predictor import TorchNetwork
    from tatl.models.multihead import MultiHeadSegmenter

    torch.manual_seed(0)
    model = MultiHeadSegmenter.from_model(with_random_statistics(build_model("linknet", "paper-efficientnet-b0")),
                                          ["a"])
    reference = copy.deepcopy(model).eval()
    network = TorchNetwork(model, "linknet", [tmp_path / "a.pt"], torch.device("cpu"))
    assert batchnorms(network.module) == 0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torch.sigmoid(reference(x)["a"])[:, 0].numpy()
    assert abs(network(x)["a"] - expected).max() < 1e-5
