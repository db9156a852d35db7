"""Where every network group starts (tatl.pipeline.plan): a fresh run, a run with a parent (pipeline.init_from, with
and without pipeline.init_copied), a run reusing another's Stage 1-2 (pipeline.reuse_stages_from), a run with another
run's Segment-Net (--segment-net); the plan of a finished group (OWN) and RUN/plan.json. Plans are resolved from
configs and hand-made run folders: nothing trains, but for the last test (the session's tiny run)."""

import json
from pathlib import Path

import pytest

from tatl.config import load_config, save_config
from tatl.layout import BEST, DONE, RunLayout
from tatl.pipeline.plan import BY_PARENT, BY_REUSE, BY_SEGMENT_NET, COPY, FRESH, OWN, WEIGHTS, resolve_plan, write_plan

SETTINGS = ['pipeline.variants=["3", "1,2,3"]', 'model.shapes=["unet"]',
            'data.attributes=["pigment_network", "globules"]']
DATA = {"data_folder": "/data", "data_fingerprint": "abc"}  # a run's data identity (tatl.pipeline.reuse)


def _config(*overrides: str):
    return load_config(None, [*SETTINGS, *overrides])


def _kinds(plan, root: Path) -> dict[str, str]:
    return {str(folder.relative_to(root)): start.kind for folder, start in plan.groups.items()}


def _finished_run(root: Path, config, stage1_only: bool = False) -> RunLayout:
    """A run folder as a finished run leaves it, for what the plan reads: config.yaml, splits.json, metrics.json and
    a finished Segment-Net (done.json recording DATA, best.pt)."""
    run = RunLayout(root)
    run.stage1("unet").mkdir(parents=True)
    save_config(config, run.config)
    run.splits.write_text(json.dumps({"train": ["a"], "val": ["b"]}))
    run.metrics.write_text(json.dumps({"stage1": {}} if stage1_only else {}))
    (run.stage1("unet") / DONE).write_text(json.dumps(DATA))
    (run.stage1("unet") / BEST).write_bytes(b"")
    return run


def test_a_fresh_run_starts_every_network_from_the_configured_weights_and_stage3_from_stage2(tmp_path):
    run = RunLayout(tmp_path / "run")
    plan = resolve_plan(_config(), run, DATA)
    assert plan.parent is None
    assert _kinds(plan, run.root) == {  # in the order the pipeline trains them
        "stage1/unet": FRESH, "stage3-v3/unet/pigment_network": FRESH, "stage3-v3/unet/globules": FRESH,
        "stage2-crops/unet": FRESH, "stage3-v123/unet": WEIGHTS}
    assert plan.start(run.stage1("unet")).encoder_weights is None  # the default: random
    frozen = plan.start(run.stage3("1,2,3", "unet"))
    assert frozen.state == run.stage2("crops", "unet") / BEST and not frozen.head_starts
    assert frozen.heads == ("pigment_network", "globules")
    assert "random weights" in plan.start(run.stage1("unet")).describe()


@pytest.mark.parametrize(("init", "state", "weights"), [
    ("random", None, None), ("imagenet", None, "imagenet"), ("augmentation", None, "imagenet"),
    ("context-restoration", "pretext-full/unet/best.pt", None), ("tatl", None, None)])
def test_stage3_without_stage2_starts_as_pipeline_init_says(tmp_path, init, state, weights):
    run = RunLayout(tmp_path / "run")
    plan = resolve_plan(_config('pipeline.variants=["3"]', f"pipeline.init={init}"), run, DATA)
    start = plan.start(run.stage3_head("3", "unet", "globules"))
    assert start.kind == (WEIGHTS if state else FRESH)
    assert start.state == (run.root / state if state else None)
    assert start.encoder_weights == weights


def test_a_run_with_a_parent_starts_every_network_from_the_parents_heads(tmp_path):
    run, parent = RunLayout(tmp_path / "run"), tmp_path / "parent"
    plan = resolve_plan(_config(f"pipeline.init_from={parent}"), run, DATA)
    assert plan.parent == str(parent)
    assert set(_kinds(plan, run.root).values()) == {WEIGHTS}
    assert plan.start(run.stage1("unet")).head_starts == {"lesion": parent / "stage1/unet" / BEST}
    assert plan.start(run.stage1("unet")).state is None  # nothing but the parent's weights
    frozen = plan.start(run.stage3("1,2,3", "unet"))
    assert frozen.state == run.stage2("crops", "unet") / BEST  # this run's Stage-2 encoder, the parent's decoders
    assert frozen.head_starts == {a: parent / "stage3-v123/unet" / a / BEST for a in ("pigment_network", "globules")}
    one = plan.start(run.stage3_head("3", "unet", "globules"))
    assert one.head_starts == {"globules": parent / "stage3-v3/unet/globules" / BEST} and one.state is None


def test_a_run_with_a_parent_copies_the_networks_init_copied_names(tmp_path):
    run, parent = RunLayout(tmp_path / "run"), tmp_path / "parent"
    plan = resolve_plan(_config(f"pipeline.init_from={parent}", 'pipeline.init_copied=["stage2", "globules"]'), run,
                        DATA)
    copied = {folder: start for folder, start in plan.groups.items() if start.kind == COPY}
    assert set(copied) == {run.stage2("crops", "unet"), run.stage3_head("3", "unet", "globules"),
                           run.stage3_head("1,2,3", "unet", "globules")}
    assert all(start.copied_by == BY_PARENT and start.source == parent / folder.relative_to(run.root)
               for folder, start in copied.items())
    frozen = plan.start(run.stage3("1,2,3", "unet"))  # the trained heads alone
    assert frozen.kind == WEIGHTS and frozen.heads == ("pigment_network",)
    assert plan.start(run.stage3_head("3", "unet", "pigment_network")).kind == WEIGHTS
    assert "pipeline.init_copied" in plan.start(run.stage2("crops", "unet")).describe()


def test_a_run_reuses_another_runs_identical_stage1(tmp_path):
    config = _config()
    source = _finished_run(tmp_path / "source", config)
    run = RunLayout(tmp_path / "run")
    run.root.mkdir()
    run.splits.write_text(source.splits.read_text())
    plan = resolve_plan(_config(f"pipeline.reuse_stages_from=[{json.dumps(str(source.root))}]"), run, DATA)
    start = plan.start(run.stage1("unet"))
    assert (start.kind, start.copied_by, start.source) == (COPY, BY_REUSE, source.stage1("unet"))
    assert plan.start(run.stage2("crops", "unet")).kind == FRESH  # not trained there
    other = resolve_plan(_config(f"pipeline.reuse_stages_from=[{json.dumps(str(source.root))}]"), run,
                         {**DATA, "data_fingerprint": "other"})
    assert other.start(run.stage1("unet")).kind == FRESH  # other data: trained here


def test_a_run_with_another_runs_segment_net_copies_it(tmp_path):
    source = _finished_run(tmp_path / "run1", _config("pipeline.stages=1"), stage1_only=True)
    run = RunLayout(tmp_path / "run")
    plan = resolve_plan(_config(f"pipeline.segment_net={source.root}"), run, DATA)
    start = plan.start(run.stage1("unet"))
    assert (start.kind, start.copied_by, start.source) == (COPY, BY_SEGMENT_NET, source.stage1("unet"))
    assert plan.start(run.stage2("crops", "unet")).kind == FRESH


def test_a_finished_group_is_reloaded_and_plan_json_keeps_where_it_started(tmp_path):
    run = RunLayout(tmp_path / "run")
    run.stage1("unet").mkdir(parents=True)
    config = _config()
    write_plan(run, resolve_plan(config, run, DATA))
    first = json.loads(run.plan.read_text())
    (run.stage1("unet") / DONE).write_text("{}")
    resumed = resolve_plan(config, run, DATA)
    assert resumed.start(run.stage1("unet")).kind == OWN
    write_plan(run, resumed)
    assert json.loads(run.plan.read_text()) == first  # still says where Stage 1 started the first time
    run.plan.unlink()
    write_plan(run, resumed)
    assert json.loads(run.plan.read_text())["groups"][0] == {
        "folder": "stage1/unet", "start": OWN, "heads": ["lesion"],
        "described": "its own finished weights (done.json), reloaded"}


@pytest.mark.slow
def test_plan_json_of_a_finished_run_names_every_group_and_its_start(tiny_run: Path):
    plan = json.loads(RunLayout(tiny_run).plan.read_text())
    assert plan["parent"] is None
    entries = {entry["folder"]: entry for entry in plan["groups"]}
    assert list(entries) == ["stage1/unet", "stage2-crops/unet", "stage3-v123/unet"]
    assert all((tiny_run / folder / DONE).is_file() for folder in entries)
    assert entries["stage1/unet"]["start"] == FRESH
    assert entries["stage3-v123/unet"]["start"] == WEIGHTS
    assert entries["stage3-v123/unet"]["state"] == str(tiny_run / "stage2-crops/unet" / BEST)
    assert entries["stage3-v123/unet"]["heads"] == ["pigment_network", "globules"]
