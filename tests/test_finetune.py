"""`tatl finetune RUN NEW_DATA --out RUN2` (tatl.pipeline.finetune, tatl.pipeline.parent): every network starts from
RUN's, only what NEW_DATA has masks for is trained, RUN is never changed, RUN2 records its parent and the scores
before and after. Tiny synthetic data (32 px networks), one epoch, U-shape only."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_RUN_SETTINGS

import tatl
from tatl.checkpoints import load_checkpoint
from tatl.cli import main
from tatl.data.isic import ATTRIBUTE_DIR, INPUT_DIR, LESION_DIR
from tatl.data.synth import write_synthetic_dataset
from tatl.errors import ConfigError, DataError

ATTRIBUTES = TINY_RUN_SETTINGS["data.attributes"]  # pigment_network, globules
# The session's tiny settings (the synth.* keys do not apply: the data is written here), batches of 4, two variants.
TINY = {**TINY_RUN_SETTINGS, "train.batch_size": 4, "pipeline.variants": ["3", "1,2,3"]}


def _files_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _new_data(folder: Path, n: int, seed: int, lesions: bool = True, attributes=("pigment_network", "globules"),
              masks_in: str = "") -> Path:
    """A synthetic dataset with ids NEW_000i (the parent's are ISIC_...), flat: images in `folder`, masks in
    `folder/masks_in`."""
    source = folder.with_name(folder.name + "-synth")
    write_synthetic_dataset(source, n=n, size=64, seed=seed)
    (folder / masks_in).mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(sorted((source / INPUT_DIR).glob("*.jpg"))):
        new_id = f"NEW_{index:04d}"
        shutil.copy(image, folder / f"{new_id}.jpg")
        if lesions:
            shutil.copy(source / LESION_DIR / f"{image.stem}_segmentation.png", folder / f"{new_id}_segmentation.png")
        for name in attributes:
            shutil.copy(source / ATTRIBUTE_DIR / f"{image.stem}_attribute_{name}.png",
                        folder / masks_in / f"{new_id}_attribute_{name}.png")
    return folder


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> dict:
    """RUN: variants 3 (one trainable network per attribute) and 1,2,3 (frozen encoder); its files' hashes."""
    root = tmp_path_factory.mktemp("parent")
    write_synthetic_dataset(root / "data", n=16, size=64, seed=0)
    tatl.train(root / "data", root / "run", overrides=TINY)
    return {"run": root / "run", "hashes": _files_hash(root / "run")}


@pytest.fixture(scope="module")
def full(parent, tmp_path_factory) -> dict:
    """RUN2 on new data with lesion and every attribute's masks; the state of every group as fit received it."""
    from tatl.pipeline import groups

    root = tmp_path_factory.mktemp("full")
    new = _new_data(root / "new", n=6, seed=1)
    starts: dict[str, dict] = {}
    real_fit = groups.fit

    def recording_fit(model, *args, **kwargs):
        label = args[5]
        starts[label] = {name: model.head_state(name) for name in model.heads}
        return real_fit(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(groups, "fit", recording_fit)
        trained = tatl.finetune(parent["run"], new, root / "run2", overrides={"train.lr": 0.001})
    return {"run": trained.run_dir, "new": new, "starts": starts, "trained": trained}


@pytest.fixture(scope="module")
def partial(parent, tmp_path_factory) -> dict:
    """RUN2 on corrections of pigment network alone, as the web app writes them: images in a folder, masks in
    FOLDER/corrections/, no lesion masks."""
    root = tmp_path_factory.mktemp("partial")
    new = _new_data(root / "new", n=5, seed=2, lesions=False, attributes=["pigment_network"], masks_in="corrections")
    val_id = json.loads((parent["run"] / "splits.json").read_text())["val"][0]
    for path in new.rglob("NEW_0000*"):  # a correction of an image the parent validates on
        path.rename(path.with_name(path.name.replace("NEW_0000", val_id)))
    assert main(["finetune", str(parent["run"]), str(new), "--out", str(root / "run2")]) == 0
    return {"run": root / "run2", "new": new, "val_id": val_id}


# -------------------------------------------------------------------------------------------- starts and copies
@pytest.mark.slow
def test_every_network_starts_from_the_parents_best_weights(parent, full):
    run, run2, starts = parent["run"], full["run"], full["starts"]
    assert set(starts) == {"stage 1", "stage 2 (crops, unet)", "stage 3 (variant 1,2,3, unet, frozen encoder)",
                           "stage 3 (variant 3, unet, pigment_network)", "stage 3 (variant 3, unet, globules)"}
    whole = {"stage 1": {"lesion": run / "stage1/unet"}, "stage 2 (crops, unet)": {"union": run / "stage2-crops/unet"},
             **{f"stage 3 (variant 3, unet, {a})": {a: run / f"stage3-v3/unet/{a}"} for a in ATTRIBUTES}}
    for label, heads in whole.items():
        for name, folder in heads.items():
            expected = load_checkpoint(folder / "best.pt")["model"]
            assert starts[label][name].keys() == expected.keys()
            for key, value in expected.items():
                assert torch.equal(starts[label][name][key], value), (label, key)
    # frozen encoder: the decoders from the parent's heads, the encoder this run's fine-tuned Stage 2 (TATL-FE)
    frozen = starts["stage 3 (variant 1,2,3, unet, frozen encoder)"]
    stage2 = load_checkpoint(run2 / "stage2-crops/unet/best.pt")["model"]
    for name in ATTRIBUTES:
        expected = load_checkpoint(run / f"stage3-v123/unet/{name}/best.pt")["model"]
        for key, value in frozen[name].items():
            assert torch.equal(value, stage2[key] if key.startswith("encoder.") else expected[key]), (name, key)
    assert not torch.equal(stage2["encoder.model.conv1.0.weight"],
                           load_checkpoint(run / "stage2-crops/unet/best.pt")["model"]["encoder.model.conv1.0.weight"])


@pytest.mark.slow
def test_the_first_training_loss_is_the_parents_on_the_same_batch(parent, full):
    """The Stage-2 network as fit received it computes, on one batch, the very loss of the parent's network."""
    from tatl.models.multihead import MultiHeadSegmenter
    from tatl.models.networks import build_model
    from tatl.training.losses import TatlLoss

    def loss_of(state: dict) -> torch.Tensor:
        model = MultiHeadSegmenter.from_model(build_model("unet", "tu-resnet10t", None), ["union"])
        model.load_head_state("union", state)
        model.eval()
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        return TatlLoss()(model(x)["union"], (x[:, :1] > 0.5).float())

    parent_state = load_checkpoint(parent["run"] / "stage2-crops/unet/best.pt")["model"]
    assert loss_of(full["starts"]["stage 2 (crops, unet)"]["union"]).item() == loss_of(parent_state).item()


@pytest.mark.slow
def test_the_parent_is_never_changed(parent, full, partial, with_original):
    assert _files_hash(parent["run"]) == parent["hashes"]


@pytest.mark.slow
def test_partial_labels_train_only_those_heads_and_copy_the_rest_bit_for_bit(parent, partial):
    run, run2 = parent["run"], partial["run"]
    record = json.loads((run2 / "finetune.json").read_text())
    assert (record["attributes_trained"], record["attributes_copied"]) == (["pigment_network"], ["globules"])
    assert (record["segment_net"], record["stage2"]) == ("copied", "copied")
    same = ["stage1/unet/best.pt", "stage2-crops/unet/best.pt", "stage3-v123/unet/globules/best.pt",
            "stage3-v3/unet/globules/best.pt"]
    for name in same:
        assert (run2 / name).read_bytes() == (run / name).read_bytes(), name
    for name in ("stage3-v123/unet/pigment_network/best.pt", "stage3-v3/unet/pigment_network/best.pt"):
        assert (run2 / name).read_bytes() != (run / name).read_bytes(), name
    config = yaml.safe_load((run2 / "config.yaml").read_text())
    assert config["pipeline"]["init_copied"] == ["globules", "stage2"]
    plan = {entry["folder"]: entry for entry in json.loads((run2 / "plan.json").read_text())["groups"]}
    assert {folder: entry["start"] for folder, entry in plan.items()} == {  # where every network started
        "stage1/unet": "copy", "stage3-v3/unet/pigment_network": "weights", "stage3-v3/unet/globules": "copy",
        "stage2-crops/unet": "copy", "stage3-v123/unet": "weights", "stage3-v123/unet/globules": "copy"}
    assert plan["stage1/unet"]["source"] == str(run.resolve() / "stage1/unet")
    assert plan["stage3-v123/unet"]["head_starts"] == {
        "pigment_network": str(run.resolve() / "stage3-v123/unet/pigment_network/best.pt")}
    assert config["pipeline"]["segment_net"] == str(run.resolve())
    # the copied heads score on the parent's validation split what they scored in the parent (same Segment-Net)
    before, after = record["before"]["per_attribute"]["globules"], record["after"]["per_attribute"]["globules"]
    assert after["jaccard"] == pytest.approx(before["jaccard"], abs=1e-3)


@pytest.mark.slow
def test_a_finetuned_run_predicts_like_any_run(partial, tmp_path):
    image = sorted(partial["new"].glob("*.jpg"))[0]
    out = tmp_path / "predicted"
    assert main(["predict", str(partial["run"]), str(image), "--out", str(out)]) == 0
    assert (out / f"{image.stem}_attribute_pigment_network.png").is_file()
    assert tatl.load(partial["run"]).attributes == ATTRIBUTES


# --------------------------------------------------------------------------------------- data, split, record
@pytest.mark.slow
def test_validation_is_the_parents_split_and_the_new_images_train(parent, full):
    splits = json.loads((full["run"] / "splits.json").read_text())
    assert splits["val"] == json.loads((parent["run"] / "splits.json").read_text())["val"]
    assert splits["train"] == sorted(p.stem for p in full["new"].glob("*.jpg"))
    data = json.loads((full["run"] / "data.json").read_text())
    assert data["data"] == str(full["new"]) and data["folder_in_run"] == "finetune-data"


@pytest.mark.slow
def test_the_record_holds_the_parent_the_data_and_the_scores_before_and_after(parent, full):
    record = json.loads((full["run"] / "finetune.json").read_text())
    assert record["parent"] == str(parent["run"].resolve()) and record["new_data"] == str(full["new"].resolve())
    assert (record["attributes_trained"], record["attributes_copied"]) == (ATTRIBUTES, [])
    assert (record["segment_net"], record["stage2"], record["validation"]) == ("fine-tuned", "fine-tuned", "parent")
    assert (record["variant"], record["model"], record["images"]) == ("1,2,3", "unet", {"train": 6, "val": 4})
    for when, run in (("before", parent["run"]), ("after", full["run"])):
        scores = _metrics(run)["variant 1,2,3"]["unet"]
        assert record[when]["macro_average"] == scores["macro_average"]
        assert record[when]["per_attribute"] == {a: scores[a] for a in ATTRIBUTES}
        assert record[when]["stage1"]["jaccard"] == _metrics(run)["stage1"]["jaccard"]
    summary = (full["run"] / "summary.md").read_text()
    assert summary.startswith(f"# TATL run {full['run']}, fine-tuned from {parent['run'].resolve()}\n")
    plan = json.loads((full["run"] / "plan.json").read_text())
    assert plan["parent"] == record["parent"] and {entry["start"] for entry in plan["groups"]} == {"weights"}
    fingerprints = record["data"]
    assert len({fingerprints[k] for k in ("new_data_fingerprint", "parent_data_fingerprint",
                                          "run_data_fingerprint")}) == 3
    assert full["trained"].metrics == _metrics(full["run"])


@pytest.fixture(scope="module")
def with_original(parent, partial, tmp_path_factory) -> Path:
    """RUN2 on the partial corrections and RUN's own training images."""
    run2 = tmp_path_factory.mktemp("original") / "run2"
    assert main(["finetune", str(parent["run"]), str(partial["new"]), "--out", str(run2), "--with-original",
                 "--set", "train.epochs=1"]) == 0
    return run2


@pytest.mark.slow
def test_with_original_the_parents_training_images_train_too(parent, partial, with_original):
    splits, parents = (json.loads((run / "splits.json").read_text()) for run in (with_original, parent["run"]))
    assert splits["val"] == parents["val"]
    new = [p.stem for p in partial["new"].glob("*.jpg") if p.stem != partial["val_id"]]
    assert splits["train"] == sorted(parents["train"] + new)
    assert json.loads((with_original / "finetune.json").read_text())["with_original"] is True


@pytest.mark.slow
def test_resume_of_a_finished_finetuning_trains_nothing_again(parent, partial, tmp_path, capsys):
    before = _metrics(partial["run"])
    assert main(["finetune", str(parent["run"]), str(partial["new"]), "--out", str(partial["run"]), "--resume"]) == 0
    assert "epoch 1/" not in capsys.readouterr().err
    assert _metrics(partial["run"]) == before
    other = _new_data(tmp_path / "other", n=3, seed=4, lesions=False, attributes=["pigment_network"])
    with pytest.raises(DataError, match=f"was fine-tuned on {partial['new'].resolve()}; resume it with that folder"):
        tatl.finetune(parent["run"], other, partial["run"], resume=True)


@pytest.mark.slow
def test_an_interrupted_finetuning_resumes_where_it_stopped(parent, partial, tmp_path, monkeypatch, capsys):
    from tatl.pipeline import groups

    real_fit, labels = groups.fit, []

    def stopping_fit(model, *args, **kwargs):
        labels.append(args[5])
        if len(labels) == 2:
            raise KeyboardInterrupt  # killed while training the second network
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(groups, "fit", stopping_fit)
    run2 = tmp_path / "run2"
    with pytest.raises(KeyboardInterrupt):
        tatl.finetune(parent["run"], partial["new"], run2)
    assert not (run2 / "finetune.json").exists() and (run2 / "stage3-v3/unet/pigment_network/done.json").is_file()
    capsys.readouterr()
    assert main(["finetune", str(parent["run"]), str(partial["new"]), "--out", str(run2), "--resume"]) == 0
    assert labels == ["stage 3 (variant 3, unet, pigment_network)", "stage 3 (variant 1,2,3, unet, frozen encoder)",
                      "stage 3 (variant 1,2,3, unet, frozen encoder)"]  # the first network was not trained again
    assert "stage 3 (variant 3, unet, pigment_network): already trained" in capsys.readouterr().err
    assert json.loads((run2 / "finetune.json").read_text())["attributes_trained"] == ["pigment_network"]


@pytest.mark.slow
def test_an_image_of_the_parents_validation_split_is_scored_not_trained(partial):
    splits = json.loads((partial["run"] / "splits.json").read_text())
    val_id = partial["val_id"]
    assert val_id in splits["val"] and val_id not in splits["train"] and len(splits["train"]) == 4
    assert (f"left out of training (scored with the parent's masks instead): {val_id}"
            in (partial["run"] / "log.txt").read_text())
    assert ((partial["run"] / "finetune-data" / f"{val_id}.jpg").read_bytes()
            != (partial["new"] / f"{val_id}.jpg").read_bytes())  # the parent's image, not the correction's


# ------------------------------------------------------------------------------------------------- bad inputs
def _unreachable_copy(parent: Path, folder: Path) -> Path:
    """A copy of the parent whose data.json names a folder that no longer exists."""
    shutil.copytree(parent, folder, ignore=shutil.ignore_patterns(".lock", "cache"))
    record = json.loads((folder / "data.json").read_text())
    (folder / "data.json").write_text(json.dumps({**record, "folder": str(folder / "gone")}))
    return folder


@pytest.mark.slow
def test_without_the_parents_images_validation_is_a_split_of_the_new_data(parent, full, tmp_path):
    run = _unreachable_copy(parent["run"], tmp_path / "moved")
    tatl.finetune(run, full["new"], tmp_path / "run2")
    record = json.loads((tmp_path / "run2" / "finetune.json").read_text())
    assert record["validation"] == "new_data"
    splits = json.loads((tmp_path / "run2" / "splits.json").read_text())
    assert set(splits["train"] + splits["val"]) == {p.stem for p in full["new"].glob("*.jpg")}
    # "before": the parent's networks scored on that split (tatl.pipeline.rescore), which scores a run's own
    # networks as its pipeline did
    from tatl.layout import RunLayout
    from tatl.pipeline.context import RunContext
    from tatl.pipeline.rescore import scores_of

    assert record["before"]["per_attribute"].keys() == set(ATTRIBUTES) and "stage1" in record["before"]
    assert record["before"] != record["after"]
    rescored = scores_of(RunLayout(tmp_path / "run2"), RunContext.open(tmp_path / "run2"), "1,2,3")
    after = _metrics(tmp_path / "run2")
    for name in ATTRIBUTES:
        assert rescored["variant 1,2,3"]["unet"][name]["jaccard"] == pytest.approx(
            after["variant 1,2,3"]["unet"][name]["jaccard"], abs=1e-3)
    assert rescored["stage1"]["jaccard"] == pytest.approx(after["stage1"]["jaccard"], abs=1e-3)


@pytest.mark.parametrize("case", ["no run", "unfinished", "no data", "shapes", "encoder", "attributes", "some masks",
                                  "no masks", "out is run", "original unreachable", "partial unreachable"])
@pytest.mark.slow
def test_bad_inputs_are_one_line_errors_before_anything_is_written(case, parent, full, partial, tmp_path, capsys):
    run, new, out, extra = parent["run"], full["new"], tmp_path / "run2", []
    if case == "no run":
        run = tmp_path / "nothing"
    elif case == "unfinished":
        run = tmp_path / "unfinished"
        shutil.copytree(parent["run"], run, ignore=shutil.ignore_patterns(".lock", "cache", "metrics.json"))
    elif case == "no data":
        new = tmp_path / "missing"
    elif case in ("shapes", "encoder", "attributes"):
        extra = ["--set", {"shapes": "model.shapes=[linknet]", "encoder": "model.encoder_name=tu-resnet18",
                           "attributes": "data.attributes=[streaks]"}[case]]
    elif case in ("some masks", "no masks"):
        new = tmp_path / "new"
        shutil.copytree(full["new"], new)
        for path in sorted(new.glob("*_attribute_*.png"))[: 1 if case == "some masks" else None]:
            path.unlink()
        if case == "no masks":
            for path in new.glob("*_segmentation.png"):
                path.unlink()
    elif case == "out is run":
        out = run
    elif case in ("original unreachable", "partial unreachable"):
        run = _unreachable_copy(parent["run"], tmp_path / "moved")
        extra, new = (["--with-original"], new) if case == "original unreachable" else ([], partial["new"])
    capsys.readouterr()
    assert main(["finetune", str(run), str(new), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = {
        "no run": "no such run folder", "unfinished": "not a finished run (no metrics.json)",
        "no data": "dataset folder does not exist", "shapes": "model.shapes: ", "encoder": "model.encoder_name: ",
        "attributes": "data.attributes: ", "some masks": "globules masks for 5 of 6 images",
        "no masks": "nor lesion masks", "out is run": "is RUN itself",
        "original unreachable": "--with-original: the images of", "partial unreachable": "not reachable to score",
    }[case]
    assert len(err) == 1 and err[0].startswith("tatl finetune: error: ") and expected in err[0], err
    assert case == "out is run" or not out.exists()


@pytest.mark.slow
def test_the_library_raises_the_error_classes(parent, full, tmp_path):
    with pytest.raises(ConfigError, match="keeps its parent's networks"):
        tatl.finetune(parent["run"], full["new"], tmp_path / "a", overrides={"pipeline.encoder_mode": "trainable"})
    with pytest.raises(DataError, match="no such run folder"):
        tatl.finetune(tmp_path / "none", full["new"], tmp_path / "b")


@pytest.mark.parametrize(("overrides", "message"), [
    (["pipeline.init_copied=[globules]"], "need pipeline.init_from"),
    (["pipeline.init_from=R", "pipeline.init_copied=[stage2, globulez]"], "'globulez' is neither stage2 nor one of"),
    (["pipeline.init_from=R", "pipeline.init_copied=[globules]"], "share the frozen encoder of the parent's Stage 2"),
    (["pipeline.init_from=R", "data.fold=1"], "set data.fold=null (not 1)"),
])
def test_the_parent_keys_are_checked(overrides, message):
    from tatl.config import load_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)
    assert load_config(None, ["pipeline.init_from=R", "pipeline.init_copied=[stage2, globules]"]).pipeline.init_copied
