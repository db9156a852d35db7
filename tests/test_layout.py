"""The run folder's layout (tatl.layout) and a finished run read back through it (tatl.pipeline.context): the paths
are those run folders have always had, and a run finds the data it was trained on through RUN/data.json."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_settings

from tatl.config import load_config, save_config
from tatl.errors import DataError
from tatl.layout import (
    DEFAULT_VARIANT,
    VARIANTS,
    RunLayout,
    default_variant,
    inputs_of,
    reported_model,
    variant_stages,
)
from tatl.pipeline.context import RunContext

TINY = tiny_settings({"data.cache": False})  # the session's tiny settings, without the image cache


def test_run_layout_paths_are_those_run_folders_have(tmp_path: Path):
    run = RunLayout(tmp_path)
    files = {"config.yaml": run.config, "data.json": run.data_record, "splits.json": run.splits,
             "metrics.json": run.metrics, "thresholds.json": run.thresholds, "synthetic-data": run.synthetic_data,
             "isic2017-converted": run.isic2017_converted, "cache": run.cache, "stage1/boxes.json": run.boxes,
             "bound/bound.json": run.bound_json, "bound/bound.png": run.bound_chart}
    networks = {"stage1/unet": run.stage1("unet"), "stage2-crops/linknet": run.stage2("crops", "linknet"),
                "stage2-full/unet": run.stage2("full", "unet"), "stage3-v123/unet": run.stage3("1,2,3", "unet"),
                "stage3-v13/linknet/streaks": run.stage3_head("1,3", "linknet", "streaks"),
                "stage3-v3/unet": run.stage3("3", "unet"), "pretext-full/unet": run.pretext("full", "unet")}
    for relative, path in {**files, **networks}.items():
        assert path == tmp_path / relative, relative


def test_variants_parse_into_stages_inputs_and_a_default():
    assert [sorted(variant_stages(v)) for v in VARIANTS] == [[3], [2, 3], [1, 3], [1, 2, 3]]
    assert [inputs_of(v) for v in VARIANTS] == ["full", "full", "crops", "crops"]
    assert default_variant(["3", "1,2,3", "1,3"]) == DEFAULT_VARIANT == "1,2,3"
    assert default_variant(["3", "1,3"]) == "1,3"  # the last trained, when full TATL was not
    assert (reported_model(["unet", "linknet"]), reported_model(["linknet"])) == ("ensemble", "linknet")


def test_checkpoints_of_variants_with_and_without_stage2(tmp_path: Path):
    run = RunLayout(tmp_path)
    attributes = ["globules", "streaks"]
    assert run.checkpoints("1,2,3", "unet", attributes) == {
        "union": tmp_path / "stage2-crops" / "unet" / "best.pt",
        "globules": tmp_path / "stage3-v123" / "unet" / "globules" / "best.pt",
        "streaks": tmp_path / "stage3-v123" / "unet" / "streaks" / "best.pt"}
    assert run.checkpoints("2,3", "linknet", attributes)["union"] == tmp_path / "stage2-full" / "linknet" / "best.pt"
    assert run.checkpoints("1,3", "unet", attributes) == {
        "globules": tmp_path / "stage3-v13" / "unet" / "globules" / "best.pt",
        "streaks": tmp_path / "stage3-v13" / "unet" / "streaks" / "best.pt"}  # no Stage 2: no union head
    assert list(run.checkpoints("3", "unet", ["globules"]).values()) == [
        tmp_path / "stage3-v3" / "unet" / "globules" / "best.pt"]


def test_stage_folders_are_the_network_folders_present(tmp_path: Path):
    for name in ("stage3-v13", "stage1", "pretext-crops", "stage2-full", "synthetic-data", "cache", "bound"):
        (tmp_path / name).mkdir()
    (tmp_path / "stage2-crops").write_text("a file, not a folder")
    assert [p.name for p in RunLayout(tmp_path).stage_folders()] == ["pretext-crops", "stage1", "stage2-full",
                                                                     "stage3-v13"]


def prepared_run(run: Path, data: str):
    """A run folder as `tatl run` leaves it once its data is accepted (config, data, split, data.json): no training."""
    from tatl.pipeline.setup import prepare_context

    config = load_config("demo", TINY)
    run.mkdir(parents=True)
    save_config(config, run / "config.yaml")
    return prepare_context(data, run, config, stage1_only=False)


def test_a_moved_run_finds_the_synthetic_data_it_keeps(tmp_path: Path):
    ctx = prepared_run(tmp_path / "run", "synthetic")
    record = json.loads((tmp_path / "run" / "data.json").read_text())
    assert record == {"data": "synthetic", "folder": str((tmp_path / "run" / "synthetic-data").resolve()),
                      "folder_in_run": "synthetic-data"}
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(tmp_path / "run", moved)
    finished = RunContext.open(moved)
    assert finished.data_root == moved / "synthetic-data"  # where it is now, not where data.json was written
    assert finished.train_ids == [s.image_id for s in ctx.train] and finished.val_ids == [s.image_id for s in ctx.val]
    assert all(s.image_path.is_relative_to(moved) for s in finished.train + finished.val)


def test_a_run_finds_its_outside_data_without_data_even_moved_and_asks_when_the_data_moved(tmp_path, monkeypatch):
    from tatl.data.synth import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "datasets" / "tiny", n=12, size=64, seed=1)
    monkeypatch.chdir(tmp_path / "datasets")
    prepared_run(tmp_path / "run", "tiny")  # DATA given relative to the working folder
    record = json.loads((tmp_path / "run" / "data.json").read_text())
    assert record == {"data": "tiny", "folder": str((tmp_path / "datasets" / "tiny").resolve()), "folder_in_run": None}
    moved = tmp_path / "archive" / "run"
    shutil.move(tmp_path / "run", moved)
    monkeypatch.chdir(tmp_path / "archive")  # neither the working folder nor the run's place matters: absolute
    finished = RunContext.open(moved)
    assert finished.data_root == (tmp_path / "datasets" / "tiny").resolve() and len(finished.train) > 0
    shutil.move(tmp_path / "datasets" / "tiny", tmp_path / "moved-data")
    with pytest.raises(DataError, match=r"data\.json: the run's data folder .* no longer exists; pass --data"):
        RunContext.open(moved)
    assert RunContext.open(moved, need_data=False).samples == {}  # a report still opens it, without the data
    again = RunContext.open(moved, tmp_path / "moved-data")  # --data: where the data is now
    assert again.train_ids == finished.train_ids and again.data_root == tmp_path / "moved-data"


def test_a_run_from_before_data_json_opens_with_the_data_it_keeps(tmp_path: Path):
    ctx = prepared_run(tmp_path / "run", "synthetic")
    (tmp_path / "run" / "data.json").unlink()  # as run folders were written before data.json
    finished = RunContext.open(tmp_path / "run")
    assert finished.data_root == tmp_path / "run" / "synthetic-data"
    assert finished.train == ctx.train and finished.val == ctx.val
    shutil.rmtree(tmp_path / "run" / "synthetic-data")
    with pytest.raises(DataError, match="not stored in the run; pass --data"):
        RunContext.open(tmp_path / "run")


def test_a_folder_with_only_a_lock_and_a_log_has_nothing_to_resume(tmp_path: Path):
    from tatl.pipeline.train import _nothing_written

    run = RunLayout(tmp_path / "run")
    assert _nothing_written(run.root)  # no folder yet
    run.root.mkdir()
    run.lock.touch()
    run.log.write_text("stopped before its config was saved\n")
    assert _nothing_written(run.root)
    run.splits.write_text("{}")
    assert not _nothing_written(run.root)


def test_a_run_being_trained_and_a_finished_run_are_two_types(tmp_path: Path):
    from tatl.pipeline.context import TrainingContext

    ctx = prepared_run(tmp_path / "run", "synthetic")
    assert isinstance(ctx, TrainingContext) and ctx.report.sizes  # the data check's report: always there
    assert ctx.image_sizes(ctx.val) == {s.image_id: ctx.report.sizes[s.image_id] for s in ctx.val}
    finished = RunContext.open(tmp_path / "run")
    assert type(finished) is RunContext and not hasattr(finished, "report")  # no report to read without a guard
    assert finished.image_sizes(finished.val) == ctx.image_sizes(ctx.val)  # read from the files instead
    with pytest.raises(TypeError, match="report"):
        TrainingContext(finished.layout, finished.config, finished.train_ids, finished.val_ids)  # report is required
    bare = RunContext.open(tmp_path / "run")
    with pytest.raises(ValueError, match="needs its data"):
        TrainingContext.of(RunContext(bare.layout, bare.config, bare.train_ids, bare.val_ids), ctx.report)  # no data
    assert TrainingContext.of(finished, ctx.report).val == ctx.val
