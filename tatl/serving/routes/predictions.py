"""An image predicted by the active model (or a named version), its record and its layers."""

from __future__ import annotations

from fastapi import APIRouter

from tatl.serving import predictions
from tatl.serving.masks import png_response
from tatl.serving.services import ServicesDep
from tatl.serving.store import NotFound

router = APIRouter(prefix="/api/images/{image_id}", tags=["predictions"])


@router.post("/predict")
def predict(services: ServicesDep, image_id: str):
    return services.predict(image_id)


@router.get("/predictions.json")
def prediction_record(services: ServicesDep, image_id: str, model: str | None = None):
    model = model or services.versions.active
    found = predictions.record(services.store.folder, model, image_id)
    if found is None:
        raise NotFound(f"{image_id}: not predicted by model {model} yet (POST .../predict)")
    return found


@router.get("/predictions/{layer}.png")
def prediction_png(services: ServicesDep, image_id: str, layer: str, display: bool = False,
                   probabilities: bool = False, model: str | None = None):
    store = services.store
    path = predictions.layer_path(store.folder, model or services.versions.active, image_id, layer, probabilities)
    return png_response(path, store.display_size(image_id) if display else None)
