"""`tatl serve`'s REST API in-process (FastAPI's TestClient): predictions in `tatl predict`'s format, corrections
saved as official masks with every version kept, version conflicts, drafts, uploads refused with a reason, ids that
cannot leave FOLDER, tokens and hosts, and the fine-tuning job with a stand-in command."""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import tatl  # noqa: E402
from tatl.data.isic import INPUT_DIR, scan_dataset  # noqa: E402
from tatl.layout import RunLayout  # noqa: E402
from tatl.serving import store as store_module  # noqa: E402
from tatl.serving.app import create_app  # noqa: E402
from tatl.serving.models import ModelVersions  # noqa: E402
from tatl.serving.security import ServerSettings  # noqa: E402
from tatl.serving.server import prepare  # noqa: E402

ATTRIBUTES = ["pigment_network", "globules"]


@pytest.fixture(scope="module")
def loaded(tiny_run):
    """The tiny run's networks, loaded once for every app of this module."""
    return tatl.load(tiny_run).predictor


@pytest.fixture
def folder(tiny_run, tmp_path) -> Path:
    images = sorted((tiny_run / "synthetic-data" / INPUT_DIR).glob("*.jpg"))[:3]
    data = tmp_path / "photos"
    data.mkdir()
    for image in images:
        shutil.copy(image, data / image.name)
    return data


def client_for(tiny_run, folder, loaded, token=None, teacher_command=None) -> TestClient:
    settings = ServerSettings(tiny_run, folder, token=token, max_upload_bytes=200_000)
    versions = ModelVersions(folder, tiny_run, load=lambda path: loaded)
    return TestClient(create_app(settings, versions, teacher_command), base_url="http://127.0.0.1")


@pytest.fixture
def client(tiny_run, folder, loaded) -> TestClient:
    return client_for(tiny_run, folder, loaded)


def png_base64(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def save(client, image_id: str, version: int, masks: dict[str, np.ndarray]):
    body = {"version": version, "masks": {name: png_base64(mask) for name, mask in masks.items()}}
    return client.put(f"/api/images/{image_id}/masks", json=body)


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def first_id(client) -> str:
    return client.get("/api/images").json()[0]["id"]


def test_the_gallery_lists_the_images_and_a_prediction_is_what_tatl_load_predicts(client, folder, loaded):
    rows = client.get("/api/images").json()
    assert [r["id"] for r in rows] == sorted(p.stem for p in folder.glob("*.jpg"))
    assert {r["state"] for r in rows} == {"not predicted"}
    image_id = rows[0]["id"]
    record = client.post(f"/api/images/{image_id}/predict").json()
    assert set(record["attributes"]) == set(ATTRIBUTES) and 0.0 <= record["uncertainty"] <= 1.0
    assert set(record["attributes"]["globules"]) == {"present", "area_fraction", "max_probability"}
    expected = tatl.api.Model(loaded).predict(folder / f"{image_id}.jpg")
    for name in ATTRIBUTES:
        response = client.get(f"/api/images/{image_id}/predictions/{name}.png")
        assert response.status_code == 200
        mask = np.asarray(Image.open(io.BytesIO(response.content)))
        np.testing.assert_array_equal(mask > 127, expected.masks[name])
    assert client.get(f"/api/images/{image_id}/predictions.json").json() == record
    states = {r["id"]: r["state"] for r in client.get("/api/images?sort=state").json()}
    assert states[image_id] == "predicted"
    assert client.get("/api/images?sort=uncertainty").json()[0]["id"] == image_id  # predicted first


def test_a_saved_correction_is_official_versioned_and_leaves_the_prediction_alone(client, folder):
    image_id = first_id(client)
    client.post(f"/api/images/{image_id}/predict")
    prediction_file = folder / ".tatl-serve" / "predictions" / "base" / f"{image_id}_attribute_globules.png"
    predicted = read_png(prediction_file).copy()
    width, height = Image.open(folder / f"{image_id}.jpg").size
    mask = np.zeros((height, width), bool)
    mask[5:15, 10:30] = True
    client.put(f"/api/images/{image_id}/draft", json={"masks": {}})
    saved = client.put(f"/api/images/{image_id}/masks", json={"version": 0, "masks": {"globules": png_base64(mask)}})
    assert saved.status_code == 200 and saved.json()["version"] == 1
    official = read_png(folder / "corrections" / f"{image_id}_attribute_globules.png")
    assert official.dtype == np.uint8 and official.shape == (height, width)
    assert set(np.unique(official)) == {0, 255}
    np.testing.assert_array_equal(official > 127, mask)
    np.testing.assert_array_equal(read_png(prediction_file), predicted)
    assert client.get(f"/api/images/{image_id}/draft").status_code == 404  # saving drops the draft
    second = client.put(f"/api/images/{image_id}/masks", json={"version": 1, "masks": {"globules": png_base64(~mask)}})
    assert second.json()["version"] == 2
    versions = client.get(f"/api/images/{image_id}/masks").json()["versions"]
    assert [(v["version"], v["model"]) for v in versions] == [(1, "base"), (2, "base")]
    first_folder = folder / "corrections" / ".versions" / image_id
    kept = sorted(first_folder.glob(f"*-base/{image_id}_attribute_globules.png"))
    np.testing.assert_array_equal(read_png(kept[0]) > 127, mask)
    np.testing.assert_array_equal(read_png(kept[1]) > 127, ~mask)
    row = next(r for r in client.get("/api/images").json() if r["id"] == image_id)
    assert row["state"] == "corrected" and row["corrected"] == ["globules"]
    scan = scan_dataset(folder, ATTRIBUTES)  # FOLDER stays a flat dataset: versions and the server's files hidden
    assert not scan.duplicates and not scan.orphan_masks and len(scan.samples) == 3
    sample = next(s for s in scan.samples if s.image_id == image_id)
    assert sample.attribute_mask_paths == {"globules": folder / "corrections" / f"{image_id}_attribute_globules.png"}


def test_the_second_of_two_saves_from_the_same_version_is_a_409_and_loses_nothing(client, folder):
    image_id = first_id(client)
    width, height = Image.open(folder / f"{image_id}.jpg").size
    first, second = np.zeros((height, width), bool), np.ones((height, width), bool)
    assert client.put(f"/api/images/{image_id}/masks",
                      json={"version": 0, "masks": {"globules": png_base64(first)}}).status_code == 200
    conflict = save(client, image_id, 0, {"globules": second})
    assert conflict.status_code == 409 and "saved elsewhere" in conflict.json()["detail"]
    assert conflict.json()["version"] == 1
    official = read_png(folder / "corrections" / f"{image_id}_attribute_globules.png")
    assert not official.any()


def test_a_mask_at_the_display_size_is_saved_at_the_original_size(client, folder, monkeypatch):
    monkeypatch.setattr(store_module, "DISPLAY_SIDE", 32)  # the 64x48 images show at 32x24
    image_id = first_id(client)
    detail = client.get(f"/api/images/{image_id}").json()
    assert detail["display"] == [32, 24] and (detail["width"], detail["height"]) == (64, 48)
    small = np.zeros((24, 32), bool)
    small[2:4, 5:6] = True
    assert client.put(f"/api/images/{image_id}/masks",
                      json={"version": 0, "masks": {"pigment_network": png_base64(small)}}).status_code == 200
    official = read_png(folder / "corrections" / f"{image_id}_attribute_pigment_network.png") > 127
    expected = np.zeros((48, 64), bool)
    expected[4:8, 10:12] = True
    np.testing.assert_array_equal(official, expected)
    wrong = save(client, image_id, 1, {"globules": small[:5]})
    assert wrong.status_code == 400 and "display size" in wrong.json()["detail"]


def test_a_save_that_fails_half_way_changes_no_official_mask(client, folder, monkeypatch):
    image_id = first_id(client)
    width, height = Image.open(folder / f"{image_id}.jpg").size
    before = np.zeros((height, width), bool)
    save(client, image_id, 0, {n: before for n in ATTRIBUTES})
    calls = []

    def write_then_fail(path, image, compress_level=1):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        original_write_png(path, image, compress_level)

    original_write_png = store_module.write_png
    monkeypatch.setattr(store_module, "write_png", write_then_fail)
    with pytest.raises(OSError):
        client.put(f"/api/images/{image_id}/masks",
                   json={"version": 1, "masks": {n: png_base64(~before) for n in ATTRIBUTES}})
    for name in ATTRIBUTES:
        assert not read_png(folder / "corrections" / f"{image_id}_attribute_{name}.png").any()
    assert client.get(f"/api/images/{image_id}/masks").json()["version"] == 1


def test_drafts_approval_and_the_next_image(client):
    ids = [r["id"] for r in client.get("/api/images").json()]
    draft = {"version": 0, "masks": {"globules": "data:image/png;base64,AAAA"}}
    assert client.put(f"/api/images/{ids[0]}/draft", json=draft).status_code == 200
    elsewhere = {"masks": {"globules": "https://example.com/x.png"}}  # the page would load it
    assert client.put(f"/api/images/{ids[0]}/draft", json=elsewhere).status_code == 400
    touched_elsewhere = {"masks": {}, "touched": {"globules": "https://example.com/x.png"}}
    assert client.put(f"/api/images/{ids[0]}/draft", json=touched_elsewhere).status_code == 400
    odd_names = {"masks": {}, "confirmed": ["../globules"]}
    assert client.put(f"/api/images/{ids[0]}/draft", json=odd_names).status_code == 400
    assert client.get(f"/api/images/{ids[0]}").json()["draft_version"] == 0  # the version the draft started from
    huge = client.put(f"/api/images/{ids[0]}/draft", content=b"{}", headers={"Content-Length": str(10**9),
                                                                            "Content-Type": "application/json"})
    assert huge.status_code == 413
    assert client.get(f"/api/images/{ids[0]}/draft").json() == draft
    assert client.get(f"/api/images/{ids[0]}").json()["has_draft"] is True
    client.delete(f"/api/images/{ids[0]}/draft")
    assert client.get(f"/api/images/{ids[0]}").json()["has_draft"] is False
    for image_id in ids[1:]:
        client.post(f"/api/images/{image_id}/predict")
    most_uncertain = client.get("/api/images?sort=uncertainty").json()[0]["id"]
    assert client.get("/api/next").json()["id"] == most_uncertain  # predicted and unreviewed, most uncertain first
    for image_id in ids:
        assert client.post(f"/api/images/{image_id}/approve", json={"approved": True}).json()["approved"]
    assert {r["state"] for r in client.get("/api/images").json()} == {"approved"}
    assert client.get("/api/next").json()["id"] is None


def jpeg_bytes(size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, format="JPEG")
    return buffer.getvalue()


def test_an_upload_is_added_and_predicted_at_once(client, folder):
    response = client.post("/api/images", files=[("files", ("new photo.jpg", jpeg_bytes(), "image/jpeg"))])
    assert response.status_code == 415 and "letters, digits" in response.json()["detail"]  # a space in the id
    response = client.post("/api/images", files=[("files", ("../../new_photo.jpg", jpeg_bytes(), "image/jpeg"))])
    assert response.status_code == 200, response.text
    added = response.json()["added"][0]
    assert added["width"] == 40 and set(added["attributes"]) == set(ATTRIBUTES)
    assert (folder / "new_photo.jpg").is_file() and not (folder.parent.parent / "new_photo.jpg").exists()
    again = client.post("/api/images", files=[("files", ("new_photo.jpg", jpeg_bytes(), "image/jpeg"))])
    assert again.status_code == 415 and "already in the folder" in again.json()["detail"]


@pytest.mark.parametrize("name, data, reason", [
    ("notes.jpg", b"this is text, not a photo", "not an image Pillow can read"),
    ("notes.txt", jpeg_bytes(), "not an image file name"),
    ("big.jpg", jpeg_bytes() + b"\0" * 300_000, "larger than the upload limit"),
    ("empty.png", b"", "empty file"),
    ("x_attribute_globules.png", jpeg_bytes(), "named like a mask"),
])
def test_uploads_that_are_not_images_are_refused_with_a_message(client, folder, name, data, reason):
    response = client.post("/api/images", files=[("files", (name, data, "application/octet-stream"))])
    assert response.status_code == 415 and reason in response.json()["refused"][0]["reason"]
    assert not (folder / name).exists() and not list((folder / ".tatl-serve" / "uploads").iterdir())


def test_a_decompression_bomb_is_refused(client, folder, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    response = client.post("/api/images", files=[("files", ("bomb.jpg", jpeg_bytes((40, 30)), "image/jpeg"))])
    assert response.status_code == 415 and "decompression-bomb" in response.json()["detail"]


@pytest.mark.parametrize("path", [
    "/api/images/%2e%2e/image", "/api/images/.hidden/image", "/api/images/a%5Cb/masks",
    "/api/images/ISIC_0000000/masks/..%2F..%2Fx.png", "/api/images/ISIC_0000000/predictions/LESION.png",
])
def test_ids_and_names_that_could_leave_the_folder_are_refused(client, path):
    assert client.get(path).status_code in (400, 404)


def test_a_symlink_to_a_file_outside_the_folder_is_not_served(client, folder, tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    (folder / "link.png").symlink_to(secret)
    response = client.get("/api/images/link/image?size=original")
    assert response.status_code == 400 and "outside the served folder" in response.json()["detail"]


def test_a_token_is_needed_on_every_request_when_set(tiny_run, folder, loaded):
    client = client_for(tiny_run, folder, loaded, token="s3cret")
    assert client.get("/api/images").status_code == 401
    assert client.get("/static/app.css").status_code == 401
    assert client.get("/api/images", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/images", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    opened = client.get("/?token=s3cret", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"  # the token leaves the address bar
    assert "tatl_token" in opened.headers["set-cookie"] and "HttpOnly" in opened.headers["set-cookie"]
    assert client.get("/").status_code == 200
    assert client.get("/api/images").status_code == 200  # the cookie the page got


def test_without_a_token_only_loopback_host_names_are_answered(client):
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info", headers={"Host": "localhost:8000"}).status_code == 200
    refused = client.get("/api/info", headers={"Host": "attacker.example:8000"})
    assert refused.status_code == 403 and "loopback" in refused.json()["detail"]


def test_another_host_than_loopback_gets_a_generated_token(tiny_run, folder):
    settings, address = prepare(ServerSettings(tiny_run, folder, host="0.0.0.0", port=8123))
    assert settings.token and len(settings.token) >= 24 and address.endswith(f"?token={settings.token}")
    settings, address = prepare(ServerSettings(tiny_run, folder))
    assert settings.token is None and address == "http://127.0.0.1:8000/"


FAKE_FINETUNE = """
import json, sys
from pathlib import Path
out, data = Path(sys.argv[1]), Path(sys.argv[3]); out.mkdir(parents=True)
print("trained on", sorted(p.name for p in data.rglob("*.*")))
(out / "log.txt").write_text("epoch 1/1 loss 0.5\\n")
if sys.argv[2] == "silent":
    sys.exit(0)
if sys.argv[2] == "fail":
    print("tatl finetune: error: no corrected image has masks of every attribute")
    sys.exit(2)
json.dump({"before": {"macro_average": {"jaccard": 0.5}}, "after": {"macro_average": {"jaccard": float(sys.argv[2])}}},
          open(out / "finetune.json", "w"))
"""


def fake_command(outcome: str):
    return lambda run, data, out: [sys.executable, "-c", FAKE_FINETUNE, str(out), outcome, str(data)]


@pytest.mark.parametrize("outcome, state, status, active", [
    ("0.6", "done", "ready", "run_1"),
    ("0.4", "done", "kept aside", "base"),
    ("fail", "failed", "failed", "base"),
    ("silent", "done", "failed", "base"),  # finished without its scores: never activated
])
def test_fine_tuning_activates_a_new_model_only_when_it_does_not_score_lower(tiny_run, folder, loaded, outcome,
                                                                            state, status, active):
    client = client_for(tiny_run, folder, loaded, teacher_command=fake_command(outcome))
    refused = client.post("/api/training")
    assert refused.status_code == 400 and "no corrected image" in refused.json()["detail"]
    image_id = first_id(client)
    client.put(f"/api/images/{image_id}/masks", json={"version": 0, "masks": {"globules": png_base64(
        np.ones((48, 64), bool))}})
    assert client.post("/api/training").json()["state"] == "running"
    client.app.state.teacher.job.wait(60)
    status_now = client.get("/api/training").json()
    assert status_now["state"] == state and status_now["result"]["status"] == status
    models = client.get("/api/models").json()
    assert models["active"] == active and [v["name"] for v in models["versions"]] == ["base", "run_1"]
    if outcome == "fail":
        assert "no corrected image has masks" in status_now["result"]["reason"]
    if outcome == "silent":
        assert "finetune.json: no scores before and after" in status_now["result"]["reason"]
    if outcome == "0.4":
        assert "lower than 0.5000" in status_now["result"]["reason"]
        assert client.post("/api/models/run_1/activate").status_code == 400
    if outcome == "0.6":
        assert "epoch 1/1" in status_now["log"][-1]
        record = json.loads(RunLayout(folder / ".tatl-serve" / "models" / "run_1").finetune_record.read_text())
        assert record["after"]["macro_average"]["jaccard"] == 0.6
        trained_on = (folder / ".tatl-serve" / "models" / "run_1.output.txt").read_text()
        assert f"'{image_id}.jpg', '{image_id}_attribute_globules.png'" in trained_on  # the corrected image only
        assert trained_on.count(".jpg") == 1
        assert client.post("/api/models/base/activate").json()["name"] == "base"
        assert client.get("/api/info").json()["model"] == "base"


def test_a_running_fine_tuning_can_be_stopped(tiny_run, folder, loaded):
    sleeper = lambda run, data, out: [sys.executable, "-c", "import time; time.sleep(60)"]  # noqa: E731
    client = client_for(tiny_run, folder, loaded, teacher_command=sleeper)
    image_id = first_id(client)
    client.put(f"/api/images/{image_id}/masks", json={"version": 0, "masks": {"globules": png_base64(
        np.ones((48, 64), bool))}})
    client.post("/api/training")
    assert client.post("/api/training").status_code == 400  # one at a time
    assert client.post("/api/training/stop").json()["state"] in ("running", "stopped")
    client.app.state.teacher.job.wait(30)
    assert client.get("/api/training").json()["state"] == "stopped"
    assert client.get("/api/models").json()["active"] == "base"


def test_the_openapi_docs_list_the_endpoints(client):
    assert client.get("/docs").status_code == 200
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/images", "/api/images/{image_id}/masks", "/api/next", "/api/training", "/api/models"):
        assert path in paths


def test_tatl_serve_starts_prints_its_address_and_answers(tiny_run, folder, tmp_path):
    import os
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(tatl.__file__).parents[1])}
    server = subprocess.Popen([sys.executable, "-m", "tatl", "serve", str(tiny_run), "--data", str(folder),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env)
    try:
        line = server.stdout.readline()
        assert line.startswith(f"tatl serve: http://127.0.0.1:{port}/"), line
        info = None
        for _ in range(300):  # the address is printed just before uvicorn binds it
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=30) as response:
                    info = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.1)
        assert info is not None and info["attributes"] == ATTRIBUTES
    finally:
        server.terminate()
        try:
            server.wait(120)  # uvicorn's graceful shutdown; slow on a busy machine, not a failure of the app
        except subprocess.TimeoutExpired:
            server.kill()
            raise


def test_tatl_serve_refuses_a_missing_run_on_one_line(folder, tmp_path, capsys):
    from tatl.cli import main

    assert main(["serve", str(tmp_path / "nowhere"), "--data", str(folder)]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_the_uncertainty_is_tatl_selects_score_of_the_prediction(client, folder, loaded):
    from tatl.experiments.ranking import attribute_weights
    from tatl.inference.selection import score_image

    image_id = first_id(client)
    record = client.post(f"/api/images/{image_id}/predict").json()
    result = tatl.api.Model(loaded).predict(folder / f"{image_id}.jpg")
    lesion = None if result.lesion_fallback else result.masks["lesion"]
    expected = score_image({"mean": result.attributes}, lesion, attribute_weights(loaded), "uncertainty")
    assert record["uncertainty"] == pytest.approx(expected.score, abs=0.01)  # from 8-bit maps
    assert record["uncertainty_per_attribute"] == pytest.approx(expected.per_attribute, abs=0.01)


def test_an_edit_at_the_display_size_keeps_the_full_size_detail_it_did_not_touch(client, folder, monkeypatch):
    image_id = first_id(client)
    fine = np.zeros((48, 64), bool)
    fine[::2, ::3] = True  # detail no 32x24 display copy can show
    assert save(client, image_id, 0, {"globules": fine}).status_code == 200
    monkeypatch.setattr(store_module, "DISPLAY_SIDE", 32)
    shown = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{image_id}/masks/globules.png?display=1")
                                             .content))) > 127
    assert shown.shape == (24, 32)
    edited = shown.copy()
    edited[10:12, 20:24] = ~edited[10:12, 20:24]  # a stroke over a few display pixels
    assert save(client, image_id, 1, {"globules": edited}).status_code == 200
    official_mask = read_png(folder / "corrections" / f"{image_id}_attribute_globules.png") > 127
    touched = np.zeros((48, 64), bool)
    touched[20:24, 40:48] = True  # those display pixels at the original size
    np.testing.assert_array_equal(official_mask[~touched], fine[~touched])
    upscaled = np.repeat(np.repeat(edited[10:12, 20:24], 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(official_mask[touched], upscaled.ravel())


def test_a_save_writes_only_the_edited_and_confirmed_attributes(client, folder):
    """Defect: saving one attribute wrote all of them, the unedited ones as the model's prediction."""
    image_id = first_id(client)
    client.post(f"/api/images/{image_id}/predict")
    edited = np.zeros((48, 64), bool)
    edited[5:9, 5:9] = True
    response = client.put(f"/api/images/{image_id}/masks", json={"version": 0, "masks": {
        "pigment_network": png_base64(edited)}})
    assert response.status_code == 200 and response.json()["attributes"] == ["pigment_network"]
    assert sorted(p.name for p in (folder / "corrections").glob("*.png")) == [
        f"{image_id}_attribute_pigment_network.png"]
    confirmed = client.put(f"/api/images/{image_id}/masks", json={"version": 1, "confirmed": ["globules"]}).json()
    assert confirmed["attributes"] == ["globules"] and confirmed["confirmed"] == ["globules"]
    predicted = folder / ".tatl-serve" / "predictions" / "base" / f"{image_id}_attribute_globules.png"
    np.testing.assert_array_equal(read_png(folder / "corrections" / f"{image_id}_attribute_globules.png") > 127,
                                  read_png(predicted) > 127)  # confirmed: the mask the person saw
    records = client.get(f"/api/images/{image_id}/masks").json()["versions"]
    assert [(r["edited"], r["confirmed"]) for r in records] == [(["pigment_network"], []), ([], ["globules"])]
    nothing = client.put(f"/api/images/{image_id}/masks", json={"version": 2})
    assert nothing.status_code == 400 and "nothing to save" in nothing.json()["detail"]
    stray = client.put(f"/api/images/{image_id}/masks", json={"version": 2, "touched": {
        "globules": png_base64(edited)}})
    assert stray.status_code == 400 and "without its mask" in stray.json()["detail"]


def test_touched_pixels_change_at_full_size_and_nothing_else_does(client, folder, monkeypatch):
    """With `touched` (where the tools went), a display-size edit changes every full-size pixel under the touched
    display pixels, specks the display copy cannot show included, and no other."""
    image_id = first_id(client)
    specks = np.zeros((48, 64), bool)
    specks[::2, ::2] = True  # a 2x nearest-neighbour display copy (odd pixels) shows none of them
    assert save(client, image_id, 0, {"globules": specks}).status_code == 200
    monkeypatch.setattr(store_module, "DISPLAY_SIDE", 32)
    erased = np.zeros((24, 32), bool)  # the eraser on a mask that looks empty: the edited mask is empty
    touched = np.zeros((24, 32), bool)
    touched[4:10, 6:20] = True
    body = {"version": 1, "masks": {"globules": png_base64(erased)}, "touched": {"globules": png_base64(touched)}}
    assert client.put(f"/api/images/{image_id}/masks", json=body).status_code == 200
    saved = read_png(folder / "corrections" / f"{image_id}_attribute_globules.png") > 127
    under = np.zeros((48, 64), bool)
    under[8:20, 12:40] = True
    assert not saved[under].any()
    np.testing.assert_array_equal(saved[~under], specks[~under])
    absent = {"version": 2, "masks": {"globules": png_base64(erased)}, "touched": {"globules": png_base64(~erased)}}
    assert client.put(f"/api/images/{image_id}/masks", json=absent).status_code == 200
    assert not (read_png(folder / "corrections" / f"{image_id}_attribute_globules.png") > 0).any()


def test_the_served_model_is_the_run_named_not_the_folders_last_active_one(tiny_run, folder, loaded, tmp_path):
    """Defect: a folder served before kept serving its last active version and ignored RUN."""
    other = tmp_path / "other-run"
    shutil.copytree(tiny_run, other, ignore=shutil.ignore_patterns("synthetic-data", "cache"))
    first = ModelVersions(folder, tiny_run, load=lambda path: loaded)
    first.add("run_1", other, "ready", None, "fine-tuned")
    first.activate("run_1")
    again = ModelVersions(folder, tiny_run, load=lambda path: loaded)
    assert again.active == "base" and again.path("base") == tiny_run.resolve()
    assert [v["name"] for v in again.listing()["versions"]] == ["base", "run_1"]  # still there to switch to


def test_a_version_that_does_not_load_is_never_made_active(tiny_run, folder, loaded, tmp_path):
    from tatl.errors import CheckpointError

    def load(path):
        if path != Path(tiny_run).resolve():
            raise CheckpointError(f"{path}/config.yaml: missing")
        return loaded

    client = TestClient(create_app(ServerSettings(tiny_run, folder), ModelVersions(folder, tiny_run, load=load)),
                        base_url="http://127.0.0.1")
    client.app.state.versions.add("run_1", tmp_path / "broken", "ready", None, "fine-tuned")
    refused = client.post("/api/models/run_1/activate")
    assert refused.status_code == 400 and "cannot be served" in refused.json()["detail"]
    assert client.get("/api/models").json()["active"] == "base"
    assert client.get("/api/info").json()["model"] == "base"


def test_a_second_server_on_the_same_folder_is_refused_on_one_line(folder):
    from tatl.errors import DataError
    from tatl.serving.server import folder_lock

    with folder_lock(folder, "http://127.0.0.1:8000/"):
        with pytest.raises(DataError, match=r"already served by tatl serve \(process \d+\) at http://127.0.0.1:8000/"):
            with folder_lock(folder, "http://127.0.0.1:8001/"):
                pass
    with folder_lock(folder, "http://127.0.0.1:8001/"):  # released when the first server stops
        pass


def test_tatl_serve_on_a_port_in_use_says_so_on_one_line_and_prints_no_address(tiny_run, folder):
    import socket
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {**__import__("os").environ, "PYTHONPATH": str(Path(tatl.__file__).parents[1])}
        result = subprocess.run([sys.executable, "-m", "tatl", "serve", str(tiny_run), "--data", str(folder),
                                 "--port", str(port)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert "http://" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--port {port}: already in use" in lines[0], result.stderr


def test_tatl_serve_refuses_a_folder_that_is_not_a_run_naming_it(folder, tmp_path, capsys):
    import socket

    from tatl.cli import main

    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["serve", str(empty), "--data", str(folder), "--port", str(port)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(empty) in error[0], error


STEP_FINETUNE = """
import json, shutil, sys
from pathlib import Path
run, data, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
out.mkdir(parents=True)
masks = sorted(p.name for p in (data / "corrections").glob("*.png"))
trained = sorted({m.rsplit("_attribute_", 1)[1][:-4] for m in masks})
scores = lambda j: {"macro_average": {"jaccard": j}, "per_attribute": {"globules": {"jaccard": j},
                                                                        "pigment_network": {"jaccard": j}}}
json.dump({"parent": str(run), "attributes_trained": trained, "images": {"train": len(masks), "val": 3},
           "validation": "parent", "before": scores(0.5), "after": scores(0.5 + 0.01 * len(masks)),
           "data": masks}, open(out / "finetune.json", "w"))
"""


def test_teach_trains_each_attribute_on_the_images_where_it_was_corrected_and_nowhere_else(tiny_run, folder, loaded):
    """Pigment network corrected on one image and globules confirmed on two others: two steps, each on its own
    images and masks only, the second starting from the first; the scores compared are the first's before and the
    last's after."""
    command = lambda run, data, out: [sys.executable, "-c", STEP_FINETUNE, str(run), str(data), str(out)]  # noqa: E731
    client = client_for(tiny_run, folder, loaded, teacher_command=command)
    ids = [row["id"] for row in client.get("/api/images").json()]
    mask = np.zeros((48, 64), bool)
    mask[4:9, 4:9] = True
    assert save(client, ids[0], 0, {"pigment_network": mask}).status_code == 200
    for image_id in ids[1:]:
        client.post(f"/api/images/{image_id}/predict")
        assert client.put(f"/api/images/{image_id}/masks", json={"version": 0, "confirmed": ["globules"]}).status_code \
            == 200
    status = client.post("/api/training").json()
    assert status["steps"] == 2
    client.app.state.teacher.job.wait(60)
    models = folder / ".tatl-serve" / "models"
    first = json.loads((models / "run_1.steps" / "1" / "finetune.json").read_text())
    last = json.loads((models / "run_1" / "finetune.json").read_text())
    assert first["data"] == [f"{i}_attribute_globules.png" for i in ids[1:]]
    assert last["data"] == [f"{ids[0]}_attribute_pigment_network.png"]
    assert first["parent"] == str(tiny_run.resolve()) and last["parent"] == str(models / "run_1.steps" / "1")
    result = client.get("/api/training").json()["result"]
    assert result["status"] == "ready" and result["scores"]["trained"] == ["globules", "pigment_network"]
    assert (result["scores"]["before"], result["scores"]["after"]) == (0.5, 0.51)  # first's before, last's after


def test_scores_are_shown_with_the_decimals_that_tell_them_apart():
    from tatl.serving.training import both

    assert both(0.51, 0.5) == ("0.5100", "0.5000")
    assert both(0.018957, 0.018966) == ("0.01896", "0.01897")
