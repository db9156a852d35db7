"""The FastAPI app of `tatl serve`: the page (static/), and the REST API documented at /docs.

    GET  /api/info                                  attributes, colours, active model, limits
    GET  /api/images?sort=name|uncertainty|state    the gallery: id, state, attributes present, uncertainty
    POST /api/images                                upload images (multipart "files"); each is predicted at once
    GET  /api/images/{id}                           size, state, prediction record, corrections and versions
    GET  /api/images/{id}/image?size=display        the image: original, display (<= 2048 px) or thumbnail
    POST /api/images/{id}/predict                   predict with the active model (kept once per model)
    GET  /api/images/{id}/predictions.json          the image's predictions.json record
    GET  /api/images/{id}/predictions/{layer}.png   a predicted mask (or ?probabilities=1); ?display=1 downscaled
    GET  /api/images/{id}/masks                     the correction's version and its saved versions
    GET  /api/images/{id}/masks/{attribute}.png     the official corrected mask (?display=1 downscaled)
    PUT  /api/images/{id}/masks                     {"version": n, "masks": {attribute: PNG as base64 or data URL}}
                                                    -> the next version; 409 when version n is not the current one
    GET|PUT|DELETE /api/images/{id}/draft           the autosaved draft
    POST /api/images/{id}/approve                   {"approved": true|false}
    GET  /api/next?after=id                         the next image to review
    POST /api/training, GET /api/training, POST /api/training/stop   fine-tuning on the corrections
    GET  /api/models, POST /api/models/{name}/activate               model versions
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Body, FastAPI, File, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from tatl.errors import DataError
from tatl.inference.outputs import IMAGE_SUFFIXES
from tatl.serving import predictions
from tatl.serving.docs import add_docs
from tatl.serving.gallery import gallery, next_image
from tatl.serving.masks import at_original_size, decode_mask, png_response, read_stored
from tatl.serving.models import ModelVersions
from tatl.serving.security import TOKEN_COOKIE, ServerSettings, check_name, check_request, upload_name
from tatl.serving.store import NotFound, Store, VersionConflict
from tatl.serving.training import Teacher


class MasksIn(BaseModel):
    version: int = Field(description="the correction version the edit started from (0: none saved yet)")
    masks: dict[str, str] = Field(description="attribute -> PNG (base64 or a data URL), white = attribute, at the "
                                              "image's original or display size")


class Approval(BaseModel):
    approved: bool = True


UPLOAD_FILES = 16  # an upload request may carry this many files of the size limit
DRAFT_PREFIX = "data:image/png;base64,"
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'")
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4"]


def create_app(settings: ServerSettings, versions: ModelVersions | None = None,
               command: Callable[[Path, Path, Path], list[str]] | None = None) -> FastAPI:
    """The app; versions and command (run, data, out) -> the fine-tuning command line: stand-ins for tests."""
    store = Store(settings.data)
    versions = versions or ModelVersions(settings.data, settings.run)
    teacher = Teacher(store, versions, command) if command else Teacher(store, versions)
    app = FastAPI(title="tatl serve", description="See, correct and teach TATL's skin attribute masks.",
                  docs_url=None, redoc_url=None)
    add_docs(app)
    app.state.store, app.state.versions, app.state.teacher = store, versions, teacher

    @app.middleware("http")
    async def guard(request: Request, call_next):
        refused = check_request(settings, request.headers, request.query_params, request.cookies)
        length = request.headers.get("content-length", "0")
        limit = settings.max_upload_bytes * (UPLOAD_FILES if request.url.path == "/api/images" else 1)
        if refused is None and (not length.isdigit() or int(length) > limit):
            refused = 413, f"request body over {limit // 2**20} MiB"
        if refused is not None:
            return JSONResponse({"detail": refused[1]}, status_code=refused[0])
        token = request.query_params.get("token")
        if settings.token and token and request.url.path == "/":
            # The page's later requests carry the cookie; the token leaves the address bar (and the history).
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.url.path == "/":  # the page loads nothing from anywhere else, and no other site frames it
            response.headers["Content-Security-Policy"] = PAGE_POLICY
        return response

    @app.exception_handler(DataError)
    async def data_error(request: Request, error: DataError):
        return JSONResponse({"detail": str(error)}, status_code=404 if isinstance(error, NotFound) else 400)

    @app.exception_handler(VersionConflict)
    async def conflict(request: Request, error: VersionConflict):
        return JSONResponse({"detail": str(error), "version": error.current}, status_code=409)

    static = resources.files("tatl.serving") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(str(static / "index.html"), headers={"Cache-Control": "no-store"})

    def attributes() -> list[str]:
        return list(predictor_settings().attributes)

    def predictor_settings():
        return versions.predictor()[1].settings

    @app.get("/api/info")
    def info():
        names = attributes()
        return {"attributes": names, "colours": dict(zip(names, COLOURS * 3, strict=False)),
                "model": versions.active, "folder": str(store.folder), "max_upload_bytes": settings.max_upload_bytes}

    @app.get("/api/images")
    def list_images(sort: str = "name"):
        return gallery(store, versions.active, sort)

    @app.post("/api/images")
    def upload(files: Annotated[list[UploadFile], File()]):
        added, refused = [], []
        for file in files:
            data = file.file.read(settings.max_upload_bytes + 1)
            try:
                if len(data) > settings.max_upload_bytes:
                    raise DataError(f"{file.filename}: larger than the upload limit of "
                                    f"{settings.max_upload_bytes // 2**20} MiB")
                image_id, suffix = upload_name(file.filename, IMAGE_SUFFIXES)
                store.add_upload(image_id, suffix, data)
            except DataError as error:
                refused.append({"file": file.filename, "reason": str(error)})
                continue
            try:
                added.append(predict(image_id))
            except DataError as error:  # kept in the folder (the gallery shows it), but say why it has no layers
                refused.append({"file": file.filename, "reason": f"added, but not predicted: {error}"})
        if refused and not added:
            detail = "; ".join(r["reason"] for r in refused)
            return JSONResponse({"detail": detail, "added": added, "refused": refused}, status_code=415)
        return {"added": added, "refused": refused}

    @app.get("/api/images/{image_id}")
    def image_detail(image_id: str):
        size = store.size(image_id)
        return {"id": image_id, "width": size[0], "height": size[1], "display": store.display_size(image_id),
                "state": store.state(image_id), "model": versions.active,
                "prediction": predictions.record(store.folder, versions.active, image_id),
                "corrected": store.corrected_attributes(image_id), "versions": store.versions(image_id),
                "has_draft": store.draft(image_id) is not None}

    @app.get("/api/images/{image_id}/image")
    def image_file(image_id: str, size: str = "display"):
        path = {"original": store.image_path, "display": store.display,
                "thumbnail": store.thumbnail}.get(size, store.display)(image_id)
        return FileResponse(str(path), headers={"Cache-Control": "max-age=60"})

    @app.post("/api/images/{image_id}/predict")
    def predict(image_id: str):
        name, predictor = versions.predictor()
        return predictions.predict_and_store(predictor, versions.weights(name, predictor), store.folder, name,
                                             image_id, store.image_path(image_id))

    @app.get("/api/images/{image_id}/predictions.json")
    def prediction_record(image_id: str, model: str | None = None):
        found = predictions.record(store.folder, model or versions.active, image_id)
        if found is None:
            raise NotFound(f"{image_id}: not predicted by model {model or versions.active} yet (POST .../predict)")
        return found

    @app.get("/api/images/{image_id}/predictions/{layer}.png")
    def prediction_png(image_id: str, layer: str, display: bool = False, probabilities: bool = False,
                       model: str | None = None):
        path = predictions.layer_path(store.folder, model or versions.active, image_id, layer, probabilities)
        return png_response(path, store.display_size(image_id) if display else None)

    @app.get("/api/images/{image_id}/masks")
    def masks(image_id: str):
        return {"version": store.state(image_id)["version"], "attributes": store.corrected_attributes(image_id),
                "versions": store.versions(image_id)}

    @app.get("/api/images/{image_id}/masks/{attribute}.png")
    def mask_png(image_id: str, attribute: str, display: bool = False):
        path = store.correction_path(image_id, attribute)
        if not path.is_file():
            raise NotFound(f"{image_id}: no correction of {attribute}")
        return png_response(path, store.display_size(image_id) if display else None)

    @app.put("/api/images/{image_id}/masks")
    def save_masks(image_id: str, body: MasksIn):
        size, known = store.size(image_id), set(attributes())
        decoded = {}
        for attribute, data in body.masks.items():
            if check_name(attribute, "attribute") not in known:
                raise DataError(f"attribute {attribute!r}: not one of the model's ({', '.join(sorted(known))})")
            edited = decode_mask(data, size, store.display_size(image_id), attribute)
            decoded[attribute] = at_original_size(edited, edit_base(image_id, attribute, size))
        if not decoded:
            raise DataError("no masks in the request: send {\"version\": n, \"masks\": {attribute: PNG}}")
        saved = store.save_correction(image_id, decoded, body.version, versions.active)
        return {"version": saved.version, "time": saved.time, "model": saved.model, "folder": saved.folder}

    def edit_base(image_id: str, attribute: str, size: tuple[int, int]):
        """What the page's edit of `attribute` started from: the correction, else the prediction, else nothing."""
        if attribute in store.corrected_attributes(image_id):
            return store.read_correction(image_id, attribute)
        try:
            return read_stored(predictions.layer_path(store.folder, versions.active, image_id, attribute))
        except NotFound:
            return np.zeros((size[1], size[0]), bool)

    @app.get("/api/images/{image_id}/draft")
    def get_draft(image_id: str):
        draft = store.draft(image_id)
        if draft is None:
            raise NotFound(f"{image_id}: no draft")
        return draft

    @app.put("/api/images/{image_id}/draft")
    def put_draft(image_id: str, body: Annotated[dict, Body()]):
        store.image_path(image_id)
        masks = body.get("masks", {})
        if not isinstance(masks, dict) or not all(isinstance(v, str) and v.startswith(DRAFT_PREFIX)
                                                  for v in masks.values()):
            raise DataError(f"a draft's masks are {DRAFT_PREFIX}... data URLs")
        store.save_draft(image_id, body)
        return {"saved": True}

    @app.delete("/api/images/{image_id}/draft")
    def delete_draft(image_id: str):
        store.drop_draft(image_id)
        return {"deleted": True}

    @app.post("/api/images/{image_id}/approve")
    def approve(image_id: str, body: Approval):
        store.image_path(image_id)
        return store.set_approved(image_id, body.approved)

    @app.get("/api/next")
    def next_to_review(after: str | None = None):
        return {"id": next_image(store, versions.active, after)}

    @app.post("/api/training")
    def start_training():
        return teacher.start()

    @app.get("/api/training")
    def training_status():
        return teacher.status()

    @app.post("/api/training/stop")
    def stop_training():
        return teacher.stop()

    @app.get("/api/models")
    def list_models():
        return versions.listing()

    @app.post("/api/models/{name}/activate")
    def activate(name: str):
        version = versions.activate(name)
        versions.predictor()
        return version

    return app
