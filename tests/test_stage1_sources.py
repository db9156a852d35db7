"""Stage 1 from elsewhere (issue 14): a Segment-Net trained on several lesion datasets (`--stages 1`), predicting
lesions like any model, and cropping attribute data without lesion masks in another run (`--segment-net`).

Small subsets of the real folders in ../shared/data (linked into tmp folders); tiny sizes, one epoch."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data_path, tiny_cli_settings
from PIL import Image

import tatl
from tatl.cli import main
from tatl.errors import ConfigError, DataError

# The session's tiny settings (the synth.* keys do not apply: real data) in batches of 4, the attributes left to the
# data and the tests; TINY leaves data.stage1_size at its default, for a run that takes RUN1's.
STAGE1_TINY = tiny_cli_settings({"train.batch_size": 4}, drop=("data.attributes",))
TINY = tiny_cli_settings({"train.batch_size": 4}, drop=("data.attributes", "data.stage1_size"))
PH2_IDS = ("IMD002", "IMD003", "IMD004", "IMD006", "IMD008", "IMD010")


def _link(folder: Path, files) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        (folder / path.name).symlink_to(path)
    return folder


def _ph2_subset(folder: Path, ids=PH2_IDS) -> Path:
    ph2 = shared_data_path("ph2")
    images, masks = ph2 / "ISIC2018_Task1-2_Training_Input", ph2 / "ISIC2018_Task1_Training_GroundTruth"
    return _link(folder, [p for i in ids for p in (images / f"{i}.jpg", masks / f"{i}_segmentation.png")])


def _task2_subset(folder: Path, count: int = 10) -> Path:
    """The first `count` images of isic2018-task2-256 with their five attribute masks: no lesion masks."""
    task2 = shared_data_path("isic2018-task2-256")
    images = sorted((task2 / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))[:count]
    masks = [m for image in images
             for m in sorted((task2 / "ISIC2018_Task2_Training_GroundTruth_v3").glob(f"{image.stem}_attribute_*"))]
    return _link(folder, images + masks)


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory) -> list[Path]:
    """Two lesion datasets with different ids: six PH2 images and the four of isic2018-task1-extra."""
    return [_ph2_subset(tmp_path_factory.mktemp("ph2") / "ph2"), shared_data_path("isic2018-task1-extra")]


@pytest.fixture(scope="module")
def segment_net_run(lesion_data, tmp_path_factory) -> Path:
    """RUN1: the Segment-Net alone, trained on both lesion datasets."""
    run = tmp_path_factory.mktemp("runs") / "segnet"
    assert main(["run", *map(str, lesion_data), "--out", str(run), "--stages", "1", *STAGE1_TINY]) == 0
    return run


@pytest.fixture(scope="module")
def attribute_data(tmp_path_factory) -> Path:
    return _task2_subset(tmp_path_factory.mktemp("task2") / "task2")


@pytest.fixture(scope="module")
def cropped_run(segment_net_run, attribute_data, tmp_path_factory) -> Path:
    """RUN: attribute data without lesion masks, cropped with RUN1's Segment-Net; RUN1 (a copy of it) is deleted as
    soon as RUN is trained, so every test below shows RUN working without it."""
    runs = tmp_path_factory.mktemp("runs")
    borrowed = runs / "segnet-copy"
    shutil.copytree(segment_net_run, borrowed, ignore=shutil.ignore_patterns(".lock"))
    run = runs / "cropped"
    assert main(["run", str(attribute_data), "--out", str(run), "--segment-net", str(borrowed),
                 "--variants", "3", "1,2,3", *TINY]) == 0  # stage1_size left at its default: RUN1's is taken
    shutil.rmtree(borrowed)
    return run


# ------------------------------------------------------------------------------ a Segment-Net on several datasets
def test_a_segment_net_trains_on_several_lesion_datasets_and_records_every_folder(segment_net_run, lesion_data):
    from tatl.pipeline.context import RunContext

    record = json.loads((segment_net_run / "data.json").read_text())
    assert record["data"] == [str(p) for p in lesion_data]
    assert [f["folder"] for f in record["folders"]] == [str(p.resolve()) for p in lesion_data]
    assert set(json.loads((segment_net_run / "metrics.json").read_text())) == {"stage1"}
    run = RunContext.open(segment_net_run)  # the finished run finds both folders again
    assert run.data_roots == [p.resolve() for p in lesion_data]
    ids = set(run.train_ids + run.val_ids)
    assert ids == set(PH2_IDS) | {"ISIC_0000002", "ISIC_0000004", "ISIC_0000010", "ISIC_0000011"}
    assert {run.samples[i].image_path.parent.parent.name for i in ids if i.startswith("ISIC")} == {
        "isic2018-task1-extra"}
    done = json.loads((segment_net_run / "stage1" / "unet" / "done.json").read_text())
    assert done["data_folder"] == [str(p.resolve()) for p in lesion_data]
    assert not list(segment_net_run.glob("stage2-*")) and not list(segment_net_run.glob("stage3-*"))


def test_an_id_in_two_lesion_folders_is_a_named_error(tmp_path, capsys):
    first = _ph2_subset(tmp_path / "a", PH2_IDS[:3])
    second = _ph2_subset(tmp_path / "b", PH2_IDS[2:4])  # IMD004 in both
    run = tmp_path / "run"
    assert main(["run", str(first), str(second), "--out", str(run), "--stages", "1", *STAGE1_TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"tatl run: error: {first / 'IMD004.jpg'} and {second / 'IMD004.jpg'}: the same image id "
                       "'IMD004' in two DATA folders; ids must be unique across the folders (rename or drop one)")
    assert not (run / "splits.json").exists() and not (run / "stage1").exists()


def test_several_folders_are_refused_for_stages_2_and_3(tmp_path, lesion_data, capsys):
    assert main(["run", *map(str, lesion_data), "--out", str(tmp_path / "run"), *STAGE1_TINY]) == 2
    assert "several folders train the Segment-Net alone (--stages 1)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- a Segment-Net alone is a model
def test_predict_with_a_segment_net_alone_writes_lesion_masks_and_task1_scores(segment_net_run, tmp_path, capsys):
    from tatl.metrics.isic2018 import Task1Scorer

    ph2 = shared_data_path("ph2")
    images = _link(tmp_path / "images", [ph2 / "ISIC2018_Task1-2_Training_Input" / f"{i}.jpg" for i in PH2_IDS[:3]])
    truth = ph2 / "ISIC2018_Task1_Training_GroundTruth"
    out = tmp_path / "out"
    assert main(["predict", str(segment_net_run), str(images), "--out", str(out), "--overlays",
                 "--truth", str(truth)]) == 0
    printed = capsys.readouterr().out
    scorer = Task1Scorer()
    for image_id in PH2_IDS[:3]:
        mask = np.asarray(Image.open(out / f"{image_id}_segmentation.png"))
        assert mask.shape[::-1] == Image.open(images / f"{image_id}.jpg").size  # original size
        assert set(np.unique(mask)) <= {0, 255}
        assert (out / "overlays" / f"{image_id}.png").is_file()
        scorer.update(np.asarray(Image.open(truth / f"{image_id}_segmentation.png")) > 128, mask > 128)
    assert not list(out.glob("*_attribute_*")) and not list(out.glob("*_abnormal.png"))
    scores = json.loads((out / "scores.json").read_text())
    assert scores == {**scorer.result(), "images": 3}
    assert "ISIC 2018 Task 1 (lesion)" in printed and f"{scores['jaccard']:.4f}" in printed
    # the Python API gives the lesion `tatl predict` wrote
    result = tatl.load(segment_net_run).predict(images / f"{PH2_IDS[0]}.jpg")
    written = np.asarray(Image.open(out / f"{PH2_IDS[0]}_segmentation.png")) > 0
    assert result.attributes == {} and result.abnormal is None and result.lesion.shape == written.shape
    np.testing.assert_array_equal(result.masks["lesion"], written)


def test_a_segment_net_alone_refuses_an_attribute_variant(segment_net_run):
    with pytest.raises(ConfigError, match="trained the Segment-Net alone"):
        tatl.load(segment_net_run, variant="1,2,3")


@pytest.mark.slow
def test_resume_of_a_segment_net_alone_stays_stage_1_only(segment_net_run, lesion_data, capsys):
    before = json.loads((segment_net_run / "metrics.json").read_text())
    assert main(["run", *map(str, lesion_data), "--out", str(segment_net_run), "--resume"]) == 0
    assert "already trained" in capsys.readouterr().err
    after = json.loads((segment_net_run / "metrics.json").read_text())
    assert set(after) == {"stage1"}  # Stage 1 alone again, without --stages 1 (a reloaded network: floats may
    assert after["stage1"]["jaccard"] == pytest.approx(before["stage1"]["jaccard"], abs=1e-3)  # differ in a pixel)
    assert not list(segment_net_run.glob("stage2-*")) and not list(segment_net_run.glob("stage3-*"))
    assert main(["run", *map(str, lesion_data), "--out", str(segment_net_run), "--resume", "--stages", "1,2,3"]) == 2
    assert "--resume: pipeline.stages is '1'" in capsys.readouterr().err


def test_a_segment_net_alone_from_before_pipeline_stages_still_predicts_lesions(segment_net_run, tmp_path):
    import yaml

    old = tmp_path / "old"
    shutil.copytree(segment_net_run, old, ignore=shutil.ignore_patterns(".lock"))
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["pipeline"]["stages"]  # as `tatl run --stages 1` wrote it before the key existed
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    assert tatl.load(old).settings.variant == "1" and tatl.load(old).attributes == []


# ----------------------------------------------------------------------- data without lesion masks
def test_a_stage1_variant_on_data_without_lesion_masks_is_refused_naming_segment_net(attribute_data, tmp_path,
                                                                                     capsys):
    run = tmp_path / "run"
    assert main(["run", str(attribute_data), "--out", str(run), *STAGE1_TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no image has a lesion mask" in err
    assert "--segment-net RUN1" in err and "--variants 3 2,3" in err
    assert not (run / "splits.json").exists()


def test_variants_without_stage1_accept_data_without_lesion_masks(attribute_data, tmp_path):
    from tatl.config import load_config
    from tatl.data.checks import check_dataset
    from tatl.pipeline.setup import prepare_context

    (tmp_path / "run").mkdir()
    config = load_config("demo", ['pipeline.variants=["3", "2,3"]'])
    ctx = prepare_context(str(attribute_data), tmp_path / "run", config)
    assert len(ctx.train) + len(ctx.val) == 10 and not ctx.report.errors()
    assert not check_dataset(attribute_data).errors()  # `tatl check-data DATA` asks no lesion mask either


@pytest.mark.slow
def test_a_segment_net_run_trains_every_stage_and_records_where_stage1_came_from(cropped_run, segment_net_run):
    import yaml

    config = yaml.safe_load((cropped_run / "config.yaml").read_text())
    assert config["pipeline"]["segment_net"].endswith("segnet-copy") and config["data"]["stage1_size"] == 32
    metrics = json.loads((cropped_run / "metrics.json").read_text())
    assert {"stage1", "variant 3", "variant 1,2,3", "stage2-crops"} <= set(metrics)
    assert "jaccard" not in metrics["stage1"]  # no lesion masks in this data: no Stage-1 score on it
    origin = metrics["stage1"]["segment_net"]
    source_done = json.loads((segment_net_run / "stage1" / "unet" / "done.json").read_text())
    source_scores = json.loads((segment_net_run / "metrics.json").read_text())["stage1"]
    assert origin["run"] == config["pipeline"]["segment_net"]
    assert origin["data_fingerprint"] == source_done["data_fingerprint"]
    assert origin["data"] == json.loads((segment_net_run / "data.json").read_text())["data"]
    assert origin["scores"] == {k: source_scores[k] for k in ("jaccard", "threshold_jaccard", "dice")}
    assert json.loads((cropped_run / "stage1" / "unet" / "done.json").read_text())["segment_net"] == origin
    assert ((cropped_run / "stage1" / "unet" / "best.pt").read_bytes()
            == (segment_net_run / "stage1" / "unet" / "best.pt").read_bytes())
    for name in ("summary.md", "report.md"):
        text = (cropped_run / name).read_text()
        assert f"Segment-Net trained by the run {origin['run']}" in text
        assert "No lesion masks in this run's data" in text


@pytest.mark.slow
def test_a_segment_net_run_predicts_without_the_run_it_came_from(cropped_run, segment_net_run, attribute_data,
                                                                  tmp_path):
    image = sorted(attribute_data.glob("*.jpg"))[0]
    out = tmp_path / "out"
    assert main(["predict", str(cropped_run), str(image), "--out", str(out)]) == 0
    assert {p.name for p in out.glob("*.png")} >= {f"{image.stem}_segmentation.png", f"{image.stem}_abnormal.png",
                                                   f"{image.stem}_attribute_globules.png"}
    lesion = tatl.load(cropped_run).predict(image).masks["lesion"]
    np.testing.assert_array_equal(lesion, tatl.load(segment_net_run).predict(image).masks["lesion"])


@pytest.mark.slow
def test_a_segment_net_run_resumes_without_the_run_it_came_from(cropped_run, attribute_data, capsys):
    before = json.loads((cropped_run / "metrics.json").read_text())
    assert main(["run", str(attribute_data), "--out", str(cropped_run), "--resume"]) == 0
    assert "epoch 1/" not in capsys.readouterr().err  # nothing trained again
    assert json.loads((cropped_run / "metrics.json").read_text()) == before


@pytest.mark.parametrize("case", ["missing", "not a run", "no stage 1", "unfinished"])
def test_a_segment_net_that_is_not_a_finished_stage1_is_named_before_anything_is_written(
        case, segment_net_run, attribute_data, tmp_path):
    source = tmp_path / "source"
    if case != "missing":
        source.mkdir()
    if case in ("no stage 1", "unfinished"):
        shutil.copy(segment_net_run / "config.yaml", source / "config.yaml")
    if case == "no stage 1":
        shutil.copy(segment_net_run / "metrics.json", source / "metrics.json")
    if case == "unfinished":
        shutil.copytree(segment_net_run / "stage1", source / "stage1")
    expected = {"missing": "no such run folder", "not a run": "not a run folder of `tatl run` (no config.yaml)",
                "no stage 1": f"no trained Stage 1 ({source / 'stage1' / 'unet' / 'done.json'} missing)",
                "unfinished": "not a finished run (no metrics.json)"}[case]
    out = tmp_path / "run"
    with pytest.raises(DataError) as raised:
        tatl.train(attribute_data, out, overrides={"pipeline.segment_net": str(source)})
    assert str(raised.value).startswith(f"--segment-net {source}: {expected}")
    assert "\n" not in str(raised.value) and not out.exists()


def test_a_segment_net_of_another_encoder_is_refused(segment_net_run, attribute_data, tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.encoder_name: the Segment-Net of .* is a tu-resnet10t network"):
        tatl.train(attribute_data, tmp_path / "run", segment_net=segment_net_run,
                   overrides={"model.encoder_name": "tu-resnet18"})
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_segment_net_run_on_data_with_lesion_masks_scores_stage1_on_it(segment_net_run, tmp_path):
    run = tmp_path / "run"
    assert main(["run", str(shared_data_path("isic2018-sample")), "--out", str(run), "--segment-net",
                 str(segment_net_run), "--variants", "1,3", "--set", "data.attributes=[pigment_network]",
                 "--set", "data.val_fraction=0.34", *TINY]) == 0
    stage1 = json.loads((run / "metrics.json").read_text())["stage1"]
    assert {"jaccard", "threshold_jaccard", "dice", "segment_net"} <= set(stage1)
    assert "No lesion masks" not in (run / "summary.md").read_text()
