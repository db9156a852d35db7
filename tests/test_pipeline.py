"""End to end: `tatl run` on tiny synthetic data writes every promised file; resume; refusals; real data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tatl.cli import main
from tatl.config import ATTRIBUTES_2018

TINY = [
    "--config", "demo",
    "--set", "synth.n=16", "--set", "synth.size=64",
    "--set", "data.stage1_size=32", "--set", "data.image_size=32",
    "--set", "train.epochs=1", "--set", "train.batch_size=4",
    "--set", "model.encoder_name=tu-resnet10t",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["run", "synthetic", "--out", str(run), *TINY]) == 0
    return run


def test_run_writes_every_file(tiny_run: Path):
    for name in ("config.yaml", "splits.json", "metrics.json", "summary.md", "stage1/boxes.json"):
        assert (tiny_run / name).is_file(), name
    for group in ("stage1/unet", "stage2-crops/unet", "stage2-full/linknet"):
        for name in ("best.pt", "last.pt", "log.csv", "done.json"):
            assert (tiny_run / group / name).is_file(), f"{group}/{name}"
    for variant in ("v3", "v23", "v13", "v123"):
        for shape in ("unet", "linknet"):
            for attribute in ATTRIBUTES_2018:
                for name in ("best.pt", "last.pt", "log.csv"):
                    assert (tiny_run / f"stage3-{variant}" / shape / attribute / name).is_file()


def test_metrics_have_every_variant_shape_and_the_ensemble(tiny_run: Path):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert {"stage1", "variant 3", "variant 2,3", "variant 1,3", "variant 1,2,3"} <= metrics.keys()
    assert {"jaccard", "threshold_jaccard", "dice"} <= metrics["stage1"].keys()
    for variant in ("variant 3", "variant 2,3", "variant 1,3", "variant 1,2,3"):
        assert set(metrics[variant]) == {"unet", "linknet", "ensemble"}
        for scores in metrics[variant].values():
            assert set(scores) == {*ATTRIBUTES_2018, "micro_average", "macro_average"}
            for value in scores.values():
                assert 0.0 <= value["jaccard"] <= value["dice"] <= 1.0
    summary = (tiny_run / "summary.md").read_text()
    assert "| **Average (macro)** |" in summary and "stages 1,2,3 Jaccard" in summary


def test_frozen_stage3_shares_the_stage2_encoder(tiny_run: Path):
    import torch

    from tatl.checkpoints import load_checkpoint

    stage2 = load_checkpoint(tiny_run / "stage2-crops/unet/best.pt")["model"]
    for attribute in ATTRIBUTES_2018:
        target = load_checkpoint(tiny_run / f"stage3-v123/unet/{attribute}/best.pt")["model"]
        encoder_keys = [k for k in stage2 if k.startswith("encoder.")]
        assert encoder_keys and all(torch.equal(stage2[k], target[k]) for k in encoder_keys)


def test_existing_run_folder_is_refused_without_resume(tiny_run: Path, capsys):
    before = (tiny_run / "metrics.json").read_bytes()
    assert main(["run", "synthetic", "--out", str(tiny_run), *TINY]) == 2
    assert "use --resume" in capsys.readouterr().err
    assert (tiny_run / "metrics.json").read_bytes() == before


def test_resume_of_a_finished_run_retrains_nothing_and_gives_the_same_metrics(tiny_run: Path, capsys):
    before = json.loads((tiny_run / "metrics.json").read_text())
    assert main(["run", "synthetic", "--out", str(tiny_run), "--resume"]) == 0
    assert "already trained" in capsys.readouterr().err
    assert json.loads((tiny_run / "metrics.json").read_text()) == before


def test_output_path_that_is_a_file_is_refused(tmp_path: Path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["run", "synthetic", "--out", str(target), *TINY]) == 2
    assert "is a file" in capsys.readouterr().err


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


def test_real_isic_sample_with_pigment_network_only(isic_sample: Path, tmp_path: Path):
    run = tmp_path / "run"
    args = ["run", str(isic_sample), "--out", str(run), *TINY[2:], "--set", "data.attributes=[pigment_network]",
            "--set", "model.shapes=[unet]", "--set", "data.val_fraction=0.34"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["variant 1,2,3"]["unet"]) == {"pigment_network", "micro_average", "macro_average"}


def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path: Path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from tatl.runs import prepare_run_dir; "
         "prepare_run_dir(Path(sys.argv[1]), False); print('locked', flush=True); time.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run / "config.yaml").write_text("{}\n")
        from tatl.errors import DataError
        from tatl.runs import prepare_run_dir

        with pytest.raises(DataError, match="another tatl process"):
            prepare_run_dir(run, resume=True)
    finally:
        holder.kill()
        holder.wait()
    from tatl.runs import prepare_run_dir

    prepare_run_dir(run, resume=True)  # the dead holder's lock is gone with it


def test_a_checkpoint_of_another_architecture_in_the_run_is_a_clear_error(tiny_run: Path, tmp_path: Path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".lock"))
    foreign = run / "stage3-v123" / "linknet" / "globules" / "best.pt"  # a Link decoder where a U decoder belongs
    shutil.copy(foreign, run / "stage3-v123" / "unet" / "globules" / "best.pt")
    assert main(["run", "synthetic", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "stage3-v123/unet/globules/best.pt: does not fit the 'globules' network" in err
    assert "Traceback" not in err
