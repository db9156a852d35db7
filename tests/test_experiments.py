"""`tatl experiment`: grid validation up front, job names, the local pool and Ray runner, resume, aggregation."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_settings

from tatl.cli import main
from tatl.errors import ConfigError, TatlError
from tatl.experiments.grid import Job, plan_jobs, read_grid, safe_name, write_tables

# The session's tiny settings on 16 images in batches of 8, two folds; encoder and shape are the grid's axes.
TINY_SET = tiny_settings({"synth.n": 16, "train.batch_size": 8, "data.n_folds": 2},
                         drop=("model.encoder_name", "model.shapes"))


def write_grid(folder: Path, **changes) -> Path:
    grid = {"data": "synthetic", "base_config": "demo", "set": list(TINY_SET), "backbones": ["tu-resnet10t"],
            "shapes": ["unet"], "folds": [0, 1], "seeds": [0],
            "settings": {"TATL (FE)": {"variant": "1,2,3", "set": ["pipeline.encoder_mode=frozen"]},
                         "Random": {"variant": "1,3", "set": ["pipeline.init=random"]}}}
    grid.update(changes)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def fail_before_any_job(tmp_path: Path, capsys, **changes) -> str:
    out = tmp_path / "out"
    assert main(["experiment", str(write_grid(tmp_path, **changes)), "--out", str(out)]) == 2
    assert not (out / "jobs").exists() and not (out / "data").exists()
    return capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(("changes", "named"), [
    ({"backbone": ["vgg16"]}, "'backbone'"),
    ({"set": ["train.epoch=2"]}, "train.epoch"),
    ({"settings": {"A": ["pipeline.encoder_mode=sideways"]}}, "pipeline.encoder_mode"),
    ({"settings": {"A": {"sett": []}}}, "settings.A.sett"),
    ({"settings": {"A": ['pipeline.variants=["3", "1,3"]']}}, "settings.A"),  # two variants, none named
    ({"settings": {"A": {"variant": "2,3", "set": ["pipeline.init=random"]}}}, "pipeline.init"),
    ({"set": ["model.encoder_name=vgg16"]}, "'backbones' axis"),
    ({"backbones": ["no-such-net"]}, "no-such-net"),
    ({"folds": [0, 2]}, "data.fold"),  # n_folds is 2
    ({"seeds": "0"}, "seeds"),
])
def test_bad_grid_fails_before_any_job_naming_the_key(tmp_path, capsys, changes, named):
    assert named in fail_before_any_job(tmp_path, capsys, **changes)


def test_missing_data_folder_fails_before_any_job(tmp_path, capsys):
    assert "no/such/folder" in fail_before_any_job(tmp_path, capsys, data="no/such/folder")


def test_jobs_are_the_product_with_safe_deterministic_names(tmp_path):
    grid = read_grid(write_grid(tmp_path, shapes=["unet", "linknet"], seeds=[0, 3]))
    jobs, _ = plan_jobs(grid)
    assert len(jobs) == 1 * 2 * 2 * 2 * 2
    assert jobs[0].name == "tu-resnet10t__unet__TATL-FE__fold0__seed0"
    assert [j.name for j in plan_jobs(grid)[0]] == [j.name for j in jobs]
    assert len({j.name for j in jobs}) == len(jobs)
    assert {j.variant for j in jobs if j.setting == "Random"} == {"1,3"}
    assert jobs[-1].overrides[-4:] == ['model.encoder_name="tu-resnet10t"', "model.shapes=[linknet]", "data.fold=1",
                                       "train.seed=3"]
    assert safe_name("a/b c:(d)") == "a-b-c-d"


def test_settings_colliding_on_disk_are_refused(tmp_path):
    grid = read_grid(write_grid(tmp_path, settings={"a b": [], "a/b": []}))
    with pytest.raises(ConfigError, match="same folder name"):
        plan_jobs(grid)


def test_ray_missing_gives_the_install_command(monkeypatch):
    from tatl.experiments.runners import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(TatlError, match=r"pip install 'tatl\[ray\]'"):
        import_ray()


# ------------------------------------------------------------------------------------------------- aggregation
def fake_metrics(job: Job, out: Path, dice: float) -> None:
    scores = {name: {"jaccard": dice / 2, "dice": dice} for name in ("pigment_network", "globules")}
    scores["macro_average"] = {"jaccard": dice / 2, "dice": dice}
    scores["micro_average"] = {"jaccard": 0.9, "dice": 0.95}
    job.run_dir(out).mkdir(parents=True)
    (job.run_dir(out) / "metrics.json").write_text(json.dumps({f"variant {job.variant}": {job.shape: scores}}))


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_tables_have_one_row_per_combination_and_mean_std(tmp_path):
    grid = read_grid(write_grid(tmp_path, backbones=["tu-resnet10t", "vgg16"], shapes=["unet", "linknet"]))
    jobs, _ = plan_jobs(grid)
    out = tmp_path / "out"
    unfinished = jobs[-1].name  # vgg16, linknet, Random, fold 1
    for job in jobs:
        if job.name != unfinished:
            fake_metrics(job, out, dice=0.2 + 0.2 * job.fold)
    write_tables(grid, jobs, out)
    table6 = read_csv(out / "table6.csv")
    assert [(r["backbone"], r["setting"]) for r in table6] == [(b, s) for b in ("tu-resnet10t", "vgg16")
                                                              for s in ("TATL (FE)", "Random")]
    first = table6[0]
    assert float(first["globules U-shape Dice mean"]) == pytest.approx(0.3)
    assert float(first["globules U-shape Dice std"]) == pytest.approx(0.1414, abs=1e-3)  # sample std of .2, .4
    last = table6[-1]
    assert last["pigment_network Link-shape Dice n"] == "1" and last["pigment_network Link-shape Dice std"] == ""
    table7 = read_csv(out / "table7.csv")
    assert len(table7) == 4 and float(table7[0]["U-shape Jaccard mean"]) == pytest.approx(0.15)
    markdown = (out / "table6.md").read_text().splitlines()
    rows = [line for line in markdown if line.startswith("| tu-resnet10t") or line.startswith("| vgg16")]
    assert len(rows) == 4 and "0.300 ± 0.141" in rows[0] and "(n=1)" in rows[-1]
    assert "Macro" in (out / "table7.md").read_text()
    results = read_csv(out / "results.csv")
    assert len(results) == len(jobs)
    assert {"macro jaccard", "micro dice", "pigment_network jaccard", "globules dice"} <= results[0].keys()
    assert [r["finished"] for r in results].count("False") == 1


# ------------------------------------------------------------------------------------------------- runners
def fake_job_arguments(job: Job, out: Path, fail: bool) -> list[str]:
    """`python -c` that writes the job's metrics.json (or fails), instead of a real `tatl run`."""
    metrics = job.run_dir(out) / "metrics.json"
    script = ("import sys; print('boom: bad value'); sys.exit(3)" if fail else
              f"import pathlib; p = pathlib.Path({str(metrics)!r}); p.parent.mkdir(parents=True); p.write_text('{{}}')")
    return ["-c", script]


def run_fake_jobs(tmp_path: Path, runner) -> tuple[list[Job], Path, dict]:
    from tatl.experiments.runners import GridRecord, Progress

    grid = read_grid(write_grid(tmp_path, shapes=["unet", "linknet"]))
    jobs, _ = plan_jobs(grid)
    out = tmp_path / "out"
    arguments = {job.name: fake_job_arguments(job, out, fail=job.setting == "Random") for job in jobs}
    record = GridRecord(grid, jobs, out)
    progress = Progress(record, len(jobs))
    runner(jobs, arguments, out, progress)
    progress.close()
    return jobs, out, json.loads((out / "grid.json").read_text())


def check_fake_jobs(jobs: list[Job], out: Path, status: dict) -> None:
    by_name = {entry["name"]: entry for entry in status["jobs"]}
    for job in jobs:
        entry = by_name[job.name]
        if job.setting == "Random":
            assert entry["status"] == "failed" and entry["returncode"] == 3
            assert "boom: bad value" in job.log_path(out).read_text()
        else:
            assert entry["status"] == "finished" and entry["returncode"] == 0 and job.is_finished(out)
    assert status["counts"] == {"finished": 4, "failed": 4, "running": 0, "pending": 0}


def test_local_pool_runs_every_job_and_reports_failures(tmp_path, capsys):
    from tatl.experiments.runners import run_local

    jobs, out, status = run_fake_jobs(tmp_path, lambda *a: run_local(*a, workers=3))
    check_fake_jobs(jobs, out, status)
    err = capsys.readouterr().err
    assert "failed   tu-resnet10t__unet__Random__fold0__seed0" in err and "boom: bad value" in err
    assert "[8/8 done, 0 running, 0 waiting]" in err


@pytest.mark.slow
def test_ray_runs_every_job_and_reports_failures(tmp_path):
    ray = pytest.importorskip("ray")
    from tatl.experiments.runners import run_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        jobs, out, status = run_fake_jobs(tmp_path, lambda *a: run_ray(ray, "local", *a, 0, 1))
    finally:
        ray.shutdown()
    check_fake_jobs(jobs, out, status)


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_grid_runs_resumes_and_reports_a_failing_job(tmp_path, capsys):
    settings = {"TATL-FE": {"variant": "1,2,3", "set": ["pipeline.encoder_mode=frozen"]},
                "Random": {"variant": "1,3", "set": ["pipeline.init=random"]},
                "Broken": {"variant": "1,3", "set": ["data.attributes=[no_such_attribute]"]}}  # fails in the run
    grid, out = write_grid(tmp_path, settings=settings), tmp_path / "out"
    command = ["experiment", str(grid), "--out", str(out), "--workers", "2"]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "FAILED tu-resnet10t__unet__Broken__fold0__seed0" in err and "no_such_attribute" in err
    status = json.loads((out / "grid.json").read_text())
    assert status["counts"] == {"finished": 4, "failed": 2, "running": 0, "pending": 0}
    finished = sorted((out / "jobs").glob("*/metrics.json"))
    assert len(finished) == 4 and (out / "data" / "README.txt").is_file()
    assert not list((out / "jobs").glob("*/synthetic-data"))  # generated once, in OUT/data
    mtimes = {path: path.stat().st_mtime_ns for path in finished}

    assert main(command) == 1  # again: the finished jobs are skipped, the broken ones retried
    assert "4 finished before (skipped), 2 to run" in capsys.readouterr().err
    assert {path: path.stat().st_mtime_ns for path in finished} == mtimes
    status = json.loads((out / "grid.json").read_text())
    assert sum(entry["skipped"] for entry in status["jobs"]) == 4
    table6, table7 = read_csv(out / "table6.csv"), read_csv(out / "table7.csv")
    assert [r["setting"] for r in table6] == ["TATL-FE", "Random", "Broken"] == [r["setting"] for r in table7]
    assert table7[0]["U-shape Dice n"] == "2" and table7[2]["U-shape Dice n"] == "0"
    assert 0 <= float(table6[0]["pigment_network U-shape Dice mean"]) <= 1
    assert len(read_csv(out / "results.csv")) == 6

    assert main([*command, "--aggregate-only"]) == 0
    assert "| tu-resnet10t | Broken | – | – |" in capsys.readouterr().out


@pytest.mark.slow
def test_settings_of_one_backbone_shape_fold_and_seed_train_stage_1_and_2_once(tmp_path, capsys):
    """TATL-NF copies TATL-FE's Segment-Net and Attribute-Agnostic Segmenter, Random its Segment-Net: their
    settings differ in Stage 3 only. (Other settings train their own: the next test.)"""
    settings = {"TATL-FE": {"variant": "1,2,3", "set": ["pipeline.encoder_mode=frozen"]},
                "TATL-NF": {"variant": "1,2,3", "set": ["pipeline.encoder_mode=trainable"]},
                "Random": {"variant": "1,3", "set": ["pipeline.init=random"]}}
    grid, out = write_grid(tmp_path, settings=settings, folds=[0]), tmp_path / "out"
    assert main(["experiment", str(grid), "--out", str(out)]) == 0
    capsys.readouterr()
    jobs = {name: out / "jobs" / f"tu-resnet10t__unet__{name}__fold0__seed0" for name in settings}
    logs = {name: (out / "logs" / f"{path.name}.log").read_text() for name, path in jobs.items()}
    assert "copied from" not in logs["TATL-FE"]
    assert f"stage 1: copied from {jobs['TATL-FE'] / 'stage1' / 'unet'}" in logs["TATL-NF"]
    assert f"stage 2 (crops, unet): copied from {jobs['TATL-FE'] / 'stage2-crops' / 'unet'}" in logs["TATL-NF"]
    assert "[stage 1] epoch" not in logs["TATL-NF"] and "[stage 2 (crops, unet)] epoch" not in logs["TATL-NF"]
    assert "stage 1: copied from" in logs["Random"] and "[stage 1] epoch" not in logs["Random"]
    for name, group in (("TATL-NF", "stage1/unet"), ("TATL-NF", "stage2-crops/unet"), ("Random", "stage1/unet")):
        for file in ("best.pt", "last.pt", "log.csv", "done.json"):
            assert (jobs[name] / group / file).read_bytes() == (jobs["TATL-FE"] / group / file).read_bytes()
    assert all((path / "metrics.json").is_file() for path in jobs.values())
    boxes = {name: json.loads((path / "stage1" / "boxes.json").read_text()) for name, path in jobs.items()}
    assert boxes["TATL-NF"] == boxes["TATL-FE"] == boxes["Random"]  # the same Segment-Net, the same crops


def write_folder_of_two_samples(folder: Path) -> list:
    """Two samples' files (their bytes do not matter: the fingerprint reads only their path, size and time)."""
    from tatl.data.isic import Sample

    folder.mkdir()
    samples = []
    for stem in ("a", "b"):
        image, mask = folder / f"{stem}.jpg", folder / f"{stem}_attribute_globules.png"
        image.write_bytes(b"image " + stem.encode())
        mask.write_bytes(b"mask")
        samples.append(Sample(stem, image, None, {"globules": mask}))
    return samples


def test_a_group_is_reused_only_when_finished_with_the_same_settings_and_split(tmp_path):
    from tatl.config import load_config, save_config
    from tatl.pipeline.reuse import data_identity, find_trained_group, settings_that_differ

    base = load_config("demo")
    stage3_changes = ["pipeline.encoder_mode=trainable", "pipeline.init=random", 'pipeline.variants=["1,3"]',
                      "model.shapes=[unet]", "pipeline.tune_thresholds=true"]
    assert settings_that_differ(base, load_config("demo", stage3_changes)) == []
    assert settings_that_differ(base, load_config("demo", ["train.lr=0.02", "data.fold=1"])) == ["data.fold",
                                                                                                  "train.lr"]
    # Stage 2 with its own epochs: the Stage-3 epochs and a patience that never stops it do not make it another network
    short_stage2 = load_config("demo", ["train.stage2_epochs=2", "train.epochs=6", "train.patience=6"])
    longer_stage3 = load_config("demo", ["train.stage2_epochs=2", "train.epochs=9", "train.patience=9"])
    assert settings_that_differ(short_stage2, longer_stage3, stage=2) == []
    assert settings_that_differ(short_stage2, longer_stage3, stage=1) == ["train.epochs", "train.patience"]
    assert settings_that_differ(short_stage2, longer_stage3) == ["train.epochs", "train.patience"]
    as_default = load_config("demo", ["train.epochs=2", "train.patience=5"])  # Stage 2 trains 2 epochs either way
    assert settings_that_differ(short_stage2, as_default, stage=2) == []
    longer_stage2 = load_config("demo", ["train.stage2_epochs=3", "train.epochs=6", "train.patience=6"])
    assert settings_that_differ(short_stage2, longer_stage2, stage=2) == ["train.epochs", "train.patience"]
    source, run = tmp_path / "source", tmp_path / "run"
    for folder in (source, run):
        (folder / "stage1" / "unet").mkdir(parents=True)
        save_config(base, folder / "config.yaml")
        (folder / "splits.json").write_text(json.dumps({"train": ["a", "b"], "val": ["c"]}))
    config = load_config("demo", [f"pipeline.reuse_stages_from={json.dumps([str(source)])}"])
    group = run / "stage1" / "unet"
    data_folder = tmp_path / "data"
    samples = write_folder_of_two_samples(data_folder)
    data = data_identity(data_folder, samples)
    assert find_trained_group(run, group, config, data) is None  # not finished there
    done = source / "stage1" / "unet" / "done.json"
    done.write_text(json.dumps({"heads": {}, **data}))
    assert find_trained_group(run, group, config, data) == source / "stage1" / "unet"
    assert find_trained_group(run, run / "stage3-v123" / "unet", config, data) is None  # Stage 3 is never copied
    other_folder = {**data, "data_folder": str(tmp_path / "other-data")}
    assert find_trained_group(run, group, config, other_folder) is None  # trained on other data
    other_rate = load_config("demo", ["train.lr=0.02", f"pipeline.reuse_stages_from={json.dumps([str(source)])}"])
    assert find_trained_group(run, group, other_rate, data) is None  # trained with other settings
    done.write_text(json.dumps({"heads": {}, "data_folder": data["data_folder"]}))
    assert find_trained_group(run, group, config, data) is None  # a run that did not record its fingerprint
    done.write_text(json.dumps({"heads": {}, **data}))
    os.utime(samples[1].image_path, ns=(1, 1))  # the same folder, an image replaced in place
    edited = data_identity(data_folder, samples)
    assert edited["data_folder"] == data["data_folder"] and edited != data
    assert find_trained_group(run, group, config, edited) is None
    assert find_trained_group(run, group, config, data) == source / "stage1" / "unet"  # the identity it recorded
    (source / "splits.json").write_text(json.dumps({"train": ["a", "c"], "val": ["b"]}))
    assert find_trained_group(run, group, config, data) is None  # another split
