"""The generalisation bound (Eq. 6-8): power iteration against closed-form Hessians, the formula on hand values,
and `tatl bound` on a tiny trained run."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tatl.cli import main
from tatl.constants import ATTRIBUTES_2018
from tatl.errors import DataError
from tatl.evaluation.bound import generalization_bound, hessian_spectral_norm, initialisations
from tatl.layout import RunLayout
from tatl.pipeline.context import RunContext


@pytest.fixture(scope="module")
def bound_run(tiny_run_factory) -> Path:
    """The session's tiny settings on 16 images with all five attributes, trained once per session (only the slow
    tests here use it)."""
    return tiny_run_factory(overrides={"synth.n": 16, "data.attributes": list(ATTRIBUTES_2018)})


def test_power_iteration_finds_the_largest_magnitude_eigenvalue_of_a_quadratic():
    generator = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    eigenvalues = torch.tensor([-5.0, 3.0, 2.0, 1.0, 0.5, -0.1], dtype=torch.float64)  # the largest |.| is negative
    a = rotation @ torch.diag(eigenvalues) @ rotation.T
    x = torch.randn(6, generator=generator, dtype=torch.float64, requires_grad=True)
    loss = 0.5 * x @ a @ x  # Hessian = A
    assert hessian_spectral_norm(loss, [x], iterations=200, tolerance=1e-10) == pytest.approx(5.0, rel=1e-3)


def test_power_iteration_matches_the_mse_hessian_of_a_linear_model_over_several_tensors():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    targets = torch.randn(40, 1, generator=generator, dtype=torch.float64)
    model = torch.nn.Linear(5, 1).double()
    loss = ((model(features) - targets) ** 2).mean()
    design = torch.cat([features, torch.ones(40, 1, dtype=torch.float64)], dim=1)  # the bias is a 6th weight
    expected = torch.linalg.eigvalsh(2 * design.T @ design / 40).abs().max().item()  # H = 2 X^T X / n
    found = hessian_spectral_norm(loss, list(model.parameters()), iterations=500, tolerance=1e-10)
    assert found == pytest.approx(expected, rel=1e-3)


def test_a_loss_without_curvature_has_norm_zero():
    x = torch.randn(4, requires_grad=True)
    assert hessian_spectral_norm((3 * x).sum(), [x]) == 0.0


def test_bound_formula_on_hand_values():
    terms = generalization_bound(risk=0.25, hessian_norm=1.5, m=16, c=0.01, k=4)
    assert (terms.gamma, terms.gamma_minus, terms.gamma_plus) == pytest.approx((2.0, 1.5, 2.5))
    # (1 + 1/0.015) * 0.25^(0.025/1.025) * sqrt(ln 4) / 16^(1/1.025)
    expected = 67.666667 * 0.96675318 * 1.17741002 / 14.9537874
    assert terms.bound == pytest.approx(expected, rel=1e-6)
    assert terms.bound == pytest.approx(5.1507079, rel=1e-6)


def test_bound_is_undefined_when_gamma_minus_is_not_positive():
    terms = generalization_bound(risk=0.0, hessian_norm=0.1, m=16)  # gamma 0.1 <= m^(-1/4) = 0.5
    assert terms.gamma_minus < 0 and terms.bound is None


@pytest.mark.slow
def test_tatl_bound_on_a_tiny_run_gives_finite_numbers_and_writes_its_files(bound_run: Path):
    assert main(["bound", str(bound_run), "--iterations", "2", "--max-samples", "1", "--device", "cpu"]) == 0
    for name in ("bound.json", "bound.md", "bound.png"):
        assert (bound_run / "bound" / name).is_file(), name
    result = json.loads((bound_run / "bound" / "bound.json").read_text())
    assert result["initialisations"] == ["tatl", "random"]
    finished = RunContext.open(bound_run)
    _, masks = finished.stage_inputs(finished.train, finished.boxes())
    present = masks.reshape(*masks.shape[:2], -1).any(axis=2).sum(axis=0)
    for index, (attribute, per_init) in enumerate(result["attributes"].items()):
        for terms in per_init.values():
            assert terms["m"] == present[index]  # m: the training images showing the attribute
            if terms["m"]:
                values = [terms[k] for k in ("risk", "hessian_norm", "gamma", "bound")]
                assert all(math.isfinite(v) for v in values), (attribute, terms)
                assert 0 <= terms["risk"] <= 1 and terms["estimated_on"] == 1
    table = (bound_run / "bound" / "bound.md").read_text()
    assert "| attribute | initialisation | m | R_S | mean Hessian norm | gamma | bound x100 |" in table


@pytest.mark.slow
def test_initialisations_are_stage2_weights_and_the_seeded_fresh_network(bound_run: Path):
    from tatl.checkpoints import load_checkpoint

    inits = initialisations(RunContext.open(bound_run), "unet", "1,2,3")
    stage2 = load_checkpoint(bound_run / "stage2-crops" / "unet" / "best.pt")["model"]
    assert all(torch.equal(inits["tatl"]()[k], v) for k, v in stage2.items())
    first, second = inits["random"](), inits["random"]()  # seeded: the same start Stage 3 of variant 1,3 gets
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["decoder.blocks.0.conv1.0.weight"], stage2["decoder.blocks.0.conv1.0.weight"])
    assert list(initialisations(RunContext.open(bound_run), "unet", "3")) == ["random"]  # no stage2-full in this run


@pytest.mark.slow
def test_the_augmentation_case_is_judged_on_the_augmented_training_set_it_trains_on(bound_run: Path, tmp_path: Path):
    """Figure 4's Augmentation bar: the ImageNet start, on pipeline.augmentation_copies strongly augmented copies of
    every training image; the ImageNet bar: the same start on the training images as they are."""
    from tatl.evaluation.bound import BoundSettings, estimate_bounds
    from tatl.models.networks import build_model

    torch.manual_seed(5)
    stand_in = tmp_path / "imagenet-stand-in.pt"  # offline: an encoder file in place of the ImageNet download
    torch.save(build_model("unet", "tu-resnet10t").encoder.state_dict(), stand_in)
    run = RunContext.open(bound_run)
    run.config.model.encoder_weights = str(stand_in)
    run.config.pipeline.init, run.config.pipeline.variants = "augmentation", ["1,3"]
    result = estimate_bounds(run, BoundSettings(variant="1,3", iterations=2, max_samples=1, device="cpu"))
    assert result["initialisations"] == ["tatl", stand_in.name, "augmentation"]
    copies = run.config.pipeline.augmentation_copies
    shown = [(per_init[stand_in.name], per_init["augmentation"]) for per_init in result["attributes"].values()
             if per_init[stand_in.name]["m"]]
    assert shown
    for imagenet, augmented in shown:
        assert imagenet["m"] < augmented["m"] <= copies * imagenet["m"]  # a shift or zoom may push a mask out
        assert augmented["risk"] != imagenet["risk"] and augmented["bound"] != imagenet["bound"]


@pytest.mark.slow
def test_a_run_without_its_data_asks_for_data(bound_run: Path, tmp_path: Path):
    for name in ("config.yaml", "splits.json"):
        shutil.copy(bound_run / name, tmp_path / name)
    with pytest.raises(DataError, match="--data"):
        RunContext.open(tmp_path)
    given = RunContext.open(tmp_path, bound_run / "synthetic-data")  # --data
    assert given.train_ids == RunContext.open(bound_run).train_ids and given.train == RunContext.open(bound_run).train


@pytest.mark.slow
def test_a_finished_run_records_the_data_it_was_trained_on(bound_run: Path):
    record = json.loads((bound_run / "data.json").read_text())
    assert record == {"data": "synthetic", "folder": str((bound_run / "synthetic-data").resolve()),
                      "folder_in_run": "synthetic-data"}


def test_the_table_says_when_the_bound_is_undefined_or_has_no_sample():
    from dataclasses import asdict

    from tatl.evaluation.bound_report import bound_markdown

    undefined = {**asdict(generalization_bound(risk=0.0, hessian_norm=0.1, m=16)), "estimated_on": 16}
    result = {"settings": {"variant": "1,2,3", "shape": "unet", "c": 0.01, "k": 4, "samples": "present",
                           "wrt": "all", "iterations": 20},
              "initialisations": ["tatl"],
              "attributes": {"streaks": {"tatl": undefined}, "globules": {"tatl": {"m": 0, "skipped": "no sample"}}}}
    table = bound_markdown(result)
    assert "| streaks | tatl | 16 | 0.0000 | 0.1 | 0.1000 | undefined (gamma- <= 0) |" in table
    assert "| globules | tatl | 0 |  |  |  | no sample |" in table


def test_initialisations_follow_the_runs_init(tmp_path: Path):
    """The bound is estimated at the start the run's Stage 3 really had (tatl.pipeline.plan.stage3_initialisation)."""
    from types import SimpleNamespace

    from tatl.config import load_config
    from tatl.models.networks import build_model

    def names(*overrides: str) -> list[str]:
        config = load_config(None, ["model.encoder_name=tu-resnet10t", "pipeline.variants=[\"1,3\"]", *overrides])
        return list(initialisations(SimpleNamespace(config=config, layout=RunLayout(tmp_path)), "unet", "1,3"))

    assert names("pipeline.init=imagenet") == ["imagenet"]
    assert names("pipeline.init=augmentation") == ["imagenet", "augmentation"]  # the same start, two training sets
    assert names("pipeline.init=random", "model.encoder_weights=lite0") == ["random"]
    assert names("pipeline.init=tatl") == ["random"]  # stage 3 alone, from the configured (no) weights
    pretext = tmp_path / "pretext-crops" / "unet" / "best.pt"
    pretext.parent.mkdir(parents=True)
    torch.manual_seed(1)
    restored = build_model("unet", "tu-resnet10t", None, classes=3).state_dict()
    torch.save({"model": restored}, pretext)
    config = load_config(None, ["model.encoder_name=tu-resnet10t", "pipeline.variants=[\"1,3\"]",
                                "pipeline.init=context-restoration"])
    inits = initialisations(SimpleNamespace(config=config, layout=RunLayout(tmp_path)), "unet", "1,3")
    assert list(inits) == ["context-restoration", "random"]
    start = inits["context-restoration"]()
    encoder_keys = [k for k in restored if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(start[k], restored[k]) for k in encoder_keys)  # transferred
    assert start["segmentation_head.0.weight"].shape[0] == 1  # the 3-channel head re-initialised for one class
