"""The gallery, uploads, an image's details and files, approval and the next image to review."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel

from tatl.errors import DataError
from tatl.inference.outputs import IMAGE_SUFFIXES
from tatl.serving import predictions
from tatl.serving.gallery import gallery, next_image
from tatl.serving.security import upload_name
from tatl.serving.services import ServicesDep

router = APIRouter(prefix="/api", tags=["images"])


class Approval(BaseModel):
    approved: bool = True


@router.get("/info")
def info(services: ServicesDep):
    return {"attributes": services.attributes(), "colours": services.colours(), "model": services.versions.active,
            "model_path": str(services.versions.path(services.versions.active)), "folder": str(services.store.folder),
            "max_upload_bytes": services.settings.max_upload_bytes}


@router.get("/images")
def list_images(services: ServicesDep, sort: str = "name"):
    return gallery(services.store, services.versions.active, sort)


@router.post("/images")
def upload(services: ServicesDep, files: Annotated[list[UploadFile], File()]):
    limit = services.settings.max_upload_bytes
    added, refused = [], []
    for file in files:
        data = file.file.read(limit + 1)
        try:
            if len(data) > limit:
                raise DataError(f"{file.filename}: larger than the upload limit of {limit // 2**20} MiB")
            image_id, suffix = upload_name(file.filename, IMAGE_SUFFIXES)
            services.store.add_upload(image_id, suffix, data)
        except DataError as error:
            refused.append({"file": file.filename, "reason": str(error)})
            continue
        try:
            added.append(services.predict(image_id))
        except DataError as error:  # kept in the folder (the gallery shows it), but say why it has no layers
            refused.append({"file": file.filename, "reason": f"added, but not predicted: {error}"})
    if refused and not added:
        detail = "; ".join(r["reason"] for r in refused)
        return JSONResponse({"detail": detail, "added": added, "refused": refused}, status_code=415)
    return {"added": added, "refused": refused}


@router.get("/images/{image_id}")
def image_detail(services: ServicesDep, image_id: str):
    store, active = services.store, services.versions.active
    size = store.size(image_id)
    draft = store.draft(image_id)
    return {"id": image_id, "width": size[0], "height": size[1], "display": store.display_size(image_id),
            "state": store.state(image_id), "model": active,
            "prediction": predictions.record(store.folder, active, image_id),
            "corrected": store.corrected_attributes(image_id), "versions": store.versions(image_id),
            "has_draft": draft is not None, "draft_version": None if draft is None else draft.get("version")}


@router.get("/images/{image_id}/image")
def image_file(services: ServicesDep, image_id: str, size: str = "display"):
    store = services.store
    path = {"original": store.image_path, "display": store.display,
            "thumbnail": store.thumbnail}.get(size, store.display)(image_id)
    return FileResponse(str(path), headers={"Cache-Control": "max-age=60"})


@router.post("/images/{image_id}/approve")
def approve(services: ServicesDep, image_id: str, body: Approval):
    services.store.image_path(image_id)
    return services.store.set_approved(image_id, body.approved)


@router.get("/next")
def next_to_review(services: ServicesDep, after: str | None = None):
    return {"id": next_image(services.store, services.versions.active, after)}
