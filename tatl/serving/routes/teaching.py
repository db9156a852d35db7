"""Fine-tuning on the saved corrections, and the model versions."""

from __future__ import annotations

from fastapi import APIRouter

from tatl.serving.services import ServicesDep

router = APIRouter(prefix="/api", tags=["teaching"])


@router.post("/training")
def start_training(services: ServicesDep):
    return services.teacher.start()


@router.get("/training")
def training_status(services: ServicesDep):
    return services.teacher.status()


@router.post("/training/stop")
def stop_training(services: ServicesDep):
    return services.teacher.stop()


@router.get("/models")
def list_models(services: ServicesDep):
    return services.versions.listing()


@router.post("/models/{name}/activate")
def activate(services: ServicesDep, name: str):
    return services.versions.activate(name)
