"""Corrections: the official masks a person saved, their versions, and the autosaved draft.

A save writes exactly what the person did: the masks of the attributes they edited (`masks`, with `touched`:
where their tools went, tatl.serving.masks) and of those they confirmed as right without an edit (`confirmed`: the
mask they saw, the saved correction or else the active model's prediction, at the original size), and nothing of
any other attribute. A save carries the version it started from; another save in between makes it a 409 and
nothing is written.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from tatl.errors import DataError
from tatl.serving import predictions
from tatl.serving.masks import at_original_size, decode_mask, png_response, read_stored
from tatl.serving.security import check_name
from tatl.serving.services import Services, ServicesDep
from tatl.serving.store import NotFound

router = APIRouter(prefix="/api/images/{image_id}", tags=["corrections"])
DRAFT_PREFIX = "data:image/png;base64,"


class MasksIn(BaseModel):
    version: int = Field(description="the correction version the edit started from (0: none saved yet)")
    masks: dict[str, str] = Field(default_factory=dict, description=(
        "the edited attributes only: attribute -> PNG (base64 or a data URL), white = attribute, at the image's "
        "original or display size"))
    touched: dict[str, str] = Field(default_factory=dict, description=(
        "attribute -> PNG, white where the person's tools went (at the mask's size): only those pixels change at "
        "the original size; without it, the display pixels that changed"))
    confirmed: list[str] = Field(default_factory=list, description=(
        "attributes whose shown mask (the saved correction, else the prediction) the person confirmed as right"))


@router.get("/masks")
def masks(services: ServicesDep, image_id: str):
    store = services.store
    return {"version": store.state(image_id)["version"], "attributes": store.corrected_attributes(image_id),
            "versions": store.versions(image_id)}


@router.get("/masks/{attribute}.png")
def mask_png(services: ServicesDep, image_id: str, attribute: str, display: bool = False):
    store = services.store
    path = store.correction_path(image_id, attribute)
    if not path.is_file():
        raise NotFound(f"{image_id}: no correction of {attribute}")
    return png_response(path, store.display_size(image_id) if display else None)


@router.put("/masks")
def save_masks(services: ServicesDep, image_id: str, body: MasksIn):
    store = services.store
    size, display, known = store.size(image_id), store.display_size(image_id), set(services.attributes())
    for attribute in [*body.masks, *body.touched, *body.confirmed]:
        if check_name(attribute, "attribute") not in known:
            raise DataError(f"attribute {attribute!r}: not one of the model's ({', '.join(sorted(known))})")
    stray = sorted(set(body.touched) - set(body.masks))
    if stray:
        raise DataError(f"touched pixels of {', '.join(stray)} without its mask: send the edited mask too")
    if not body.masks and not body.confirmed:
        raise DataError("nothing to save: send {\"version\": n, \"masks\": {attribute: PNG}} for edited attributes "
                        "or \"confirmed\": [attribute, ...] for masks confirmed as shown")
    saved_masks = {}
    for attribute, data in body.masks.items():
        edited = decode_mask(data, size, display, attribute)
        touched = decode_mask(body.touched[attribute], size, display, f"{attribute} (touched)") \
            if attribute in body.touched else None
        saved_masks[attribute] = at_original_size(edited, edit_base(services, image_id, attribute, size), touched)
    confirmed = [a for a in body.confirmed if a not in body.masks]  # an edit of a confirmed mask is an edit
    for attribute in confirmed:
        saved_masks[attribute] = edit_base(services, image_id, attribute, size, required=True)
    saved = store.save_correction(image_id, saved_masks, body.version, services.versions.active, confirmed)
    return {"version": saved.version, "time": saved.time, "model": saved.model, "folder": saved.folder,
            "attributes": sorted(saved_masks), "confirmed": sorted(confirmed)}


def edit_base(services: Services, image_id: str, attribute: str, size: tuple[int, int],
              required: bool = False) -> np.ndarray:
    """What the page's mask of `attribute` started from: the correction, else the active model's prediction, else
    (unless `required`: a confirmation of nothing) an empty mask."""
    store = services.store
    if attribute in store.corrected_attributes(image_id):
        return store.read_correction(image_id, attribute)
    try:
        return read_stored(predictions.layer_path(store.folder, services.versions.active, image_id, attribute))
    except NotFound:
        if required:
            raise DataError(f"{image_id}: {attribute} has no correction nor prediction to confirm") from None
        return np.zeros((size[1], size[0]), bool)


@router.get("/draft")
def get_draft(services: ServicesDep, image_id: str):
    draft = services.store.draft(image_id)
    if draft is None:
        raise NotFound(f"{image_id}: no draft")
    return draft


@router.put("/draft")
def put_draft(services: ServicesDep, image_id: str, body: Annotated[dict, Body()]):
    services.store.image_path(image_id)
    for key in ("masks", "touched"):
        value = body.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) and v.startswith(DRAFT_PREFIX)
                                                  for v in value.values()):
            raise DataError(f"a draft's {key} are {DRAFT_PREFIX}... data URLs")
    confirmed = body.get("confirmed", [])
    if not isinstance(confirmed, list) or not all(isinstance(name, str) for name in confirmed):
        raise DataError("a draft's confirmed attributes are a list of names")
    for name in confirmed:
        check_name(name, "attribute")
    if not isinstance(body.get("version", 0), int):
        raise DataError("a draft's version is the correction version it started from (an integer)")
    services.store.save_draft(image_id, body)
    return {"saved": True}


@router.delete("/draft")
def delete_draft(services: ServicesDep, image_id: str):
    services.store.drop_draft(image_id)
    return {"deleted": True}
