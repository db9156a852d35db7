"""End to end: `tatl run` on tiny synthetic data writes every promised file; resume; refusals; real data."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from compare import assert_close_numbers
from conftest import tiny_cli_settings
from thread_ranks import ThreadRanks

from tatl.cli import main
from tatl.constants import ATTRIBUTES_2018

# The session's tiny settings on 16 images in batches of 4, with the demo preset's shapes and attributes (both, all
# five); TINY[2:] leaves out the preset.
TINY = ["--config", "demo",
        *tiny_cli_settings({"synth.n": 16, "train.batch_size": 4}, drop=("model.shapes", "data.attributes"))]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """`tatl run` as a user types it: all four variants, U and Link, five attributes (not the session's `tiny_run`,
    which is one shape and one variant, trained through the API)."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["run", "synthetic", "--out", str(run), *TINY]) == 0
    return run


@pytest.mark.slow
def test_run_writes_every_file(cli_run: Path):
    import yaml

    from tatl.checkpoints import load_checkpoint

    for name in ("config.yaml", "splits.json", "plan.json", "metrics.json", "summary.md", "stage1/boxes.json"):
        assert (cli_run / name).is_file(), name
    for group in ("stage1/unet", "stage2-crops/unet", "stage2-full/linknet"):
        for name in ("best.pt", "last.pt", "log.csv", "done.json"):
            assert (cli_run / group / name).is_file(), f"{group}/{name}"
    for variant in ("v3", "v23", "v13", "v123"):
        for shape in ("unet", "linknet"):
            for attribute in ATTRIBUTES_2018:
                for name in ("best.pt", "last.pt", "log.csv"):
                    assert (cli_run / f"stage3-{variant}" / shape / attribute / name).is_file()
    # Every checkpoint holds model, optimizer, epoch, best score and the full resolved config of config.yaml.
    resolved = yaml.safe_load((cli_run / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == 1 and resolved["model"]["encoder_name"] == "tu-resnet10t"
    checkpoints = sorted(p for p in cli_run.rglob("*.pt") if p.name in ("best.pt", "last.pt"))
    assert len(checkpoints) == 2 * (1 + 4 + 4 * 2 * len(ATTRIBUTES_2018))  # stage 1, 2 x 2 stage 2, stage 3
    for path in checkpoints:
        state = load_checkpoint(path)
        assert {"model", "optimizer", "epoch", "best_score", "config"} <= state.keys(), path
        assert state["model"] and any(k.startswith("encoder.") for k in state["model"]), path
        assert {"state", "param_groups"} <= state["optimizer"].keys(), path
        assert state["optimizer"]["param_groups"][0]["lr"] == resolved["train"]["lr"], path
        assert state["epoch"] == 0, path  # train.epochs=1
        assert isinstance(state["best_score"], float) and 0.0 <= state["best_score"] <= 1.0, path
        assert state["config"] == resolved, path


@pytest.mark.slow
def test_metrics_have_every_variant_shape_and_the_ensemble(cli_run: Path):
    metrics = json.loads((cli_run / "metrics.json").read_text())
    assert {"stage1", "variant 3", "variant 2,3", "variant 1,3", "variant 1,2,3"} <= metrics.keys()
    assert {"jaccard", "threshold_jaccard", "dice"} <= metrics["stage1"].keys()
    for variant in ("variant 3", "variant 2,3", "variant 1,3", "variant 1,2,3"):
        assert set(metrics[variant]) == {"unet", "linknet", "ensemble"}
        for scores in metrics[variant].values():
            assert set(scores) == {*ATTRIBUTES_2018, "micro_average", "macro_average"}
            for value in scores.values():
                assert 0.0 <= value["jaccard"] <= value["dice"] <= 1.0
    summary = (cli_run / "summary.md").read_text()
    assert "| **Average (macro)** |" in summary and "stages 1,2,3 Jaccard" in summary


@pytest.mark.slow
def test_frozen_stage3_shares_the_stage2_encoder(cli_run: Path):
    import torch

    from tatl.checkpoints import load_checkpoint

    stage2 = load_checkpoint(cli_run / "stage2-crops/unet/best.pt")["model"]
    for attribute in ATTRIBUTES_2018:
        target = load_checkpoint(cli_run / f"stage3-v123/unet/{attribute}/best.pt")["model"]
        encoder_keys = [k for k in stage2 if k.startswith("encoder.")]
        assert encoder_keys and all(torch.equal(stage2[k], target[k]) for k in encoder_keys)


@pytest.mark.slow
def test_stage1_keeps_the_epoch_of_the_best_thresholded_jaccard_the_other_stages_of_train_monitor(cli_run: Path):
    import csv

    from tatl.checkpoints import load_checkpoint

    def log_of(group: str) -> list[dict]:
        return list(csv.DictReader((cli_run / group / "log.csv").read_text().splitlines()))

    stage1 = load_checkpoint(cli_run / "stage1" / "unet" / "best.pt")
    assert stage1["best_score"] == pytest.approx(float(log_of("stage1/unet")[0]["threshold_jaccard"]))
    assert "threshold_jaccard" not in log_of("stage2-crops/unet")[0]
    stage2 = load_checkpoint(cli_run / "stage2-crops" / "unet" / "best.pt")
    assert stage2["best_score"] == pytest.approx(float(log_of("stage2-crops/unet")[0]["jaccard"]))


@pytest.mark.slow
def test_existing_run_folder_is_refused_without_resume(cli_run: Path, capsys):
    before = (cli_run / "metrics.json").read_bytes()
    assert main(["run", "synthetic", "--out", str(cli_run), *TINY]) == 2
    assert "use --resume" in capsys.readouterr().err
    assert (cli_run / "metrics.json").read_bytes() == before


@pytest.mark.slow
def test_resume_of_a_finished_run_retrains_nothing_and_gives_the_same_metrics(cli_run: Path, capsys):
    before = json.loads((cli_run / "metrics.json").read_text())
    assert main(["run", "synthetic", "--out", str(cli_run), "--resume"]) == 0
    assert "already trained" in capsys.readouterr().err
    assert json.loads((cli_run / "metrics.json").read_text()) == before


def test_output_path_that_is_a_file_is_refused(tmp_path: Path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["run", "synthetic", "--out", str(target), *TINY]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_stage1_alone_on_a_lesion_only_dataset(tmp_path: Path, capsys):
    from tatl.data.synth import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, n=12, size=64, seed=1)
    for mask in (data / "ISIC2018_Task2_Training_GroundTruth_v3").iterdir():
        mask.unlink()  # lesion masks only, like PH2
    run = tmp_path / "run"
    assert main(["run", str(data), "--out", str(run), "--stages", "1", *TINY[2:]]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"stage1"}
    assert "thresholded Jaccard" in (run / "summary.md").read_text()


@pytest.mark.slow
def test_real_isic_sample_with_pigment_network_only(isic_sample: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = ["run", str(isic_sample), "--out", str(run), *TINY[2:], "--set", "data.attributes=[pigment_network]",
            "--set", "model.shapes=[unet]", "--set", "data.val_fraction=0.34"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["variant 1,2,3"]["unet"]) == {"pigment_network", "micro_average", "macro_average"}


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path: Path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from tatl.pipeline.setup import prepare_run_dir; "
         "prepare_run_dir(Path(sys.argv[1]), False); print('locked', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run / "config.yaml").write_text("{}\n")
        from tatl.errors import DataError
        from tatl.pipeline.setup import prepare_run_dir

        with pytest.raises(DataError, match="another tatl process"):
            prepare_run_dir(run, resume=True)
    finally:
        holder.kill()
        holder.wait()
    from tatl.pipeline.setup import prepare_run_dir

    prepare_run_dir(run, resume=True)  # the dead holder's lock is gone with it


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture_in_the_run_is_a_clear_error(cli_run: Path, tmp_path: Path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(cli_run, run, ignore=shutil.ignore_patterns(".lock"))
    foreign = run / "stage3-v123" / "linknet" / "globules" / "best.pt"  # a Link decoder where a U decoder belongs
    shutil.copy(foreign, run / "stage3-v123" / "unet" / "globules" / "best.pt")
    assert main(["run", "synthetic", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "stage3-v123/unet/globules/best.pt: does not fit the 'globules' network" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ a finished run, reloaded through the pipeline
@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory) -> Path:
    """Full TATL only, thresholds tuned on validation, training crops from the ground-truth lesion masks."""
    run = tmp_path_factory.mktemp("runs") / "tuned"
    assert main(["run", "synthetic", "--out", str(run), *TINY, "--variants", "1,2,3",
                 "--set", "pipeline.tune_thresholds=true", "--set", "pipeline.crop_source=truth"]) == 0
    return run


def _context(run: Path):
    from tatl.config import load_config
    from tatl.pipeline.setup import prepare_context

    return prepare_context("synthetic", run, load_config(run / "config.yaml"), stage1_only=False)


def _boxes(run: Path) -> dict:
    return {k: tuple(v) for k, v in json.loads((run / "stage1" / "boxes.json").read_text()).items()}


def _validation_probabilities(ctx, variant: str, boxes) -> dict:
    """{shape: {attribute: probabilities}} of the variant's networks, reloaded from the run (nothing retrained)."""
    from tatl.data.dataset import load_images
    from tatl.pipeline import stages as pipeline

    images = load_images(ctx.val, ctx.config.data.image_size, boxes, ctx.cache_dir)
    out = {}
    for shape in ctx.config.model.shapes:
        agnostic = pipeline.stage2_agnostic(ctx, shape, boxes) if "2" in variant.split(",") else None
        out[shape] = pipeline.predict_targets(ctx, pipeline.stage3_targets(ctx, variant, shape, boxes, agnostic),
                                              images)
    return out


def _truth_box(ctx, sample):
    from tatl.constants import LESION
    from tatl.data.crops import lesion_box
    from tatl.data.dataset import full_size_target

    size, p = ctx.report.sizes[sample.image_id], ctx.config.pipeline
    return lesion_box(full_size_target(sample, LESION, size), size, p.crop_margin, p.min_lesion_fraction)[0]


@pytest.mark.slow
def test_the_ensemble_scores_are_those_of_the_mean_of_the_two_shapes(cli_run: Path, capsys):
    from tatl.pipeline.scoring import score_attributes

    stored = json.loads((cli_run / "thresholds.json").read_text())
    assert stored["tuned"] is False
    assert {t for shapes in stored["variants"].values() for per in shapes.values() for t in per.values()} == {0.5}
    metrics = json.loads((cli_run / "metrics.json").read_text())["variant 1,2,3"]
    ctx, boxes = _context(cli_run), _boxes(cli_run)
    probabilities = _validation_probabilities(ctx, "1,2,3", boxes)
    err = capsys.readouterr().err
    assert "already trained" in err and "epoch 1/" not in err
    where = (ctx.val, boxes, ctx.report.sizes)
    for shape in ("unet", "linknet"):
        assert score_attributes(probabilities[shape], *where, 0.5) == metrics[shape]
    unet, linknet = probabilities["unet"], probabilities["linknet"]
    mean = {a: (unet[a] + linknet[a]) / 2 for a in unet}
    assert all(not np.array_equal(mean[a], unet[a]) and not np.array_equal(mean[a], linknet[a]) for a in mean)
    assert score_attributes(mean, *where, 0.5) == metrics["ensemble"]
    assert metrics["ensemble"] != metrics["unet"] and metrics["ensemble"] != metrics["linknet"]


@pytest.mark.slow
def test_tuned_thresholds_are_stored_per_variant_shape_and_attribute_and_scored(tuned_run: Path):
    from tatl.pipeline.scoring import THRESHOLD_GRID, score_attributes, tune_thresholds

    stored = json.loads((tuned_run / "thresholds.json").read_text())
    assert stored["tuned"] is True and set(stored["variants"]) == {"1,2,3"}
    thresholds = stored["variants"]["1,2,3"]
    assert set(thresholds) == {"unet", "linknet", "ensemble"}
    for per_attribute in thresholds.values():
        assert set(per_attribute) == set(ATTRIBUTES_2018)
        assert all(t in THRESHOLD_GRID for t in per_attribute.values())
    assert any(t != 0.5 for per_attribute in thresholds.values() for t in per_attribute.values())
    assert set(stored["stage2"]["crops"]["unet"]) == {"union"}  # the Stage-2 scores' thresholds are kept too
    from tatl.reporting.summary import TUNED_NOTE

    assert TUNED_NOTE in (tuned_run / "summary.md").read_text()  # and the scores are labelled optimistic
    assert TUNED_NOTE in (tuned_run / "report.md").read_text()
    metrics = json.loads((tuned_run / "metrics.json").read_text())["variant 1,2,3"]
    ctx, boxes = _context(tuned_run), _boxes(tuned_run)
    probabilities = _validation_probabilities(ctx, "1,2,3", boxes)
    probabilities["ensemble"] = {a: (probabilities["unet"][a] + probabilities["linknet"][a]) / 2
                                 for a in probabilities["unet"]}
    where = (ctx.val, boxes, ctx.report.sizes)
    gained = 0
    for name, maps in probabilities.items():
        assert tune_thresholds(maps, *where) == thresholds[name], name
        assert score_attributes(maps, *where, thresholds[name]) == metrics[name], name  # the scores at the tuned
        at_half = score_attributes(maps, *where, 0.5)
        for attribute in ATTRIBUTES_2018:  # tuning maximises each attribute's Jaccard on this split; 0.5 is a choice
            for score in ("jaccard", "dice"):
                assert metrics[name][attribute][score] >= at_half[attribute][score], (name, attribute, score)
            gained += metrics[name][attribute]["jaccard"] > at_half[attribute]["jaccard"]
        assert metrics[name]["macro_average"]["jaccard"] >= at_half["macro_average"]["jaccard"]
    assert gained > 0  # the stored scores are not the 0.5 ones


@pytest.mark.slow
def test_truth_crop_source_crops_training_images_at_their_lesion_masks(tuned_run: Path):
    from tatl.constants import LESION
    from tatl.data.crops import lesion_box
    from tatl.data.dataset import load_images
    from tatl.pipeline import stages as pipeline
    from tatl.pipeline.scoring import predict_probabilities

    ctx, boxes = _context(tuned_run), _boxes(tuned_run)
    cfg, p = ctx.config, ctx.config.pipeline
    assert p.crop_source == "truth"
    samples = ctx.train + ctx.val  # predicted in one go, in the order stage1_boxes predicts them
    segment_net = pipeline.stage1_segment_net(ctx)  # reloaded from stage1/unet
    images = load_images(samples, cfg.data.stage1_size, None, ctx.cache_dir)
    lesion = predict_probabilities(segment_net, images, ctx.device, cfg.train.batch_size)[LESION]
    predicted = {s.image_id: lesion_box(lesion[i] > p.threshold, ctx.report.sizes[s.image_id], p.crop_margin,
                                        p.min_lesion_fraction)[0] for i, s in enumerate(samples)}
    truth = {s.image_id: _truth_box(ctx, s) for s in samples}
    assert set(boxes) == set(truth)
    for sample in ctx.train:
        assert boxes[sample.image_id] == truth[sample.image_id], sample.image_id
    for sample in ctx.val:
        assert boxes[sample.image_id] == predicted[sample.image_id], sample.image_id
    # the two sources really differ here, so the checks above tell them apart
    assert any(truth[s.image_id] != predicted[s.image_id] for s in ctx.train)
    assert any(truth[s.image_id] != predicted[s.image_id] for s in ctx.val)


@pytest.mark.slow
def test_stage2_trains_on_every_training_image_including_those_with_an_empty_union(tuned_run: Path, monkeypatch):
    from tatl.constants import UNION
    from tatl.data.dataset import full_size_target
    from tatl.pipeline import stages as pipeline
    from tatl.pipeline.plan import FRESH, GroupStart, RunPlan

    ctx, boxes = _context(tuned_run), _boxes(tuned_run)
    seen = {}

    def capture(ctx, spec, start, data):
        seen.update(names=list(spec.heads), train=data[0], val=data[1])
        return "trained"

    monkeypatch.setattr(pipeline, "train_group", capture)
    stage2 = ctx.layout.stage2("crops", "unet")  # planned as if not yet trained (the run has finished it)
    untrained = RunPlan(None, {stage2: GroupStart(stage2, FRESH, (UNION,))})
    assert pipeline.stage2_agnostic(ctx, "unet", boxes, untrained) == "trained"
    train = seen["train"]
    assert seen["names"] == [UNION] and train.targets == [UNION]
    assert len(train) == len(train.images) == len(train.masks) == len(ctx.train)
    assert len(seen["val"]) == len(ctx.val)
    absent = [i for i, s in enumerate(ctx.train)
              if not full_size_target(s, UNION, ctx.report.sizes[s.image_id]).any()]
    assert absent  # the synthetic data has images without any attribute
    empty = [i for i in range(len(train)) if not train.masks[i].any()]
    assert set(absent) <= set(empty) and len(empty) < len(train)
    _, all_zero_mask = train[absent[0]]
    assert all_zero_mask.shape == (1, ctx.config.data.image_size, ctx.config.data.image_size)
    assert not all_zero_mask.any()


@pytest.mark.slow
def test_strict_transfer_from_the_three_class_pretext_head_logs_its_reinitialisation(tmp_path: Path, capsys):
    from tatl.checkpoints import load_checkpoint

    run = tmp_path / "run"
    assert main(["run", "synthetic", "--out", str(run), *TINY, "--variants", "3",
                 "--set", "pipeline.init=context-restoration", "--set", "model.shapes=[unet]",
                 "--set", "data.attributes=[pigment_network]"]) == 0
    err = capsys.readouterr().err
    assert ("stage 3 (variant 3, unet, pigment_network): re-initialised segmentation_head.0.bias, "
            "segmentation_head.0.weight (shape differs from the source)") in err
    pretext = load_checkpoint(run / "pretext-full" / "unet" / "best.pt")["model"]
    target = load_checkpoint(run / "stage3-v3" / "unet" / "pigment_network" / "best.pt")["model"]
    assert pretext["segmentation_head.0.weight"].shape[0] == 3 and target["segmentation_head.0.weight"].shape[0] == 1
    assert pretext.keys() == target.keys()  # every other tensor was transferred, strictly


@pytest.mark.slow
def test_ranks_share_out_stage1_boxes_and_validation_scoring_and_agree_with_one_process(tuned_run, monkeypatch):
    """Under torchrun each rank predicts and scores only its share of the images (tuned thresholds included) and
    every rank ends with the boxes and scores one process computes."""
    from tatl.pipeline import stages as pipeline

    ctx, boxes = _context(tuned_run), _boxes(tuned_run)
    segment_net = pipeline.stage1_segment_net(ctx)
    models = {shape: pipeline.stage3_targets(ctx, "1,2,3", shape, boxes, pipeline.stage2_agnostic(ctx, shape, boxes))
              for shape in ctx.config.model.shapes}
    one_boxes, one_lesion_scores = pipeline.stage1_boxes(ctx, segment_net)
    one_scores, one_thresholds = pipeline.evaluate_variant(ctx, models, boxes)

    ranks = ThreadRanks()
    predicted: dict[int, list[int]] = {0: [], 1: []}
    predict = pipeline.predict_probabilities

    def counting_predict(model, images, *args, **kwargs):
        predicted[ranks.rank()].append(len(images))
        return predict(model, images, *args, **kwargs)

    ranks.play_torchrun(monkeypatch)
    monkeypatch.setattr(pipeline, "predict_probabilities", counting_predict)
    ctx.layout.boxes_record.unlink()  # the ranks predict the boxes again instead of reading the single process's
    results = ranks.run(lambda: (pipeline.stage1_boxes(ctx, segment_net),
                                 pipeline.evaluate_variant(ctx, models, boxes)))

    everything, val = len(ctx.train) + len(ctx.val), len(ctx.val)
    for rank, ((rank_boxes, lesion_scores), (scores, thresholds)) in enumerate(results):
        assert rank_boxes == one_boxes and list(rank_boxes) == list(one_boxes)
        assert_close_numbers(lesion_scores, one_lesion_scores)
        assert thresholds == one_thresholds
        assert_close_numbers(scores, one_scores)
        share, val_share = (-(-n // 2) if rank == 0 else n // 2 for n in (everything, val))  # every 2nd, from rank
        stage3_networks = sum(len(group) for group in models.values())
        assert predicted[rank] == [share] + [val_share] * stage3_networks  # its own images, never the whole set
    assert any(t != 0.5 for per in one_thresholds.values() for t in per.values())  # tuning really ran
