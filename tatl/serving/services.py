"""What the routes of `tatl serve` share, built once per app and handed to each route by FastAPI's dependency
injection (`ServicesDep`): the settings, the folder's store, the model versions, the teacher, and one prediction
service that upload and predict both call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from tatl.serving import predictions
from tatl.serving.models import ModelVersions
from tatl.serving.security import ServerSettings
from tatl.serving.store import Store
from tatl.serving.training import Teacher, finetune_command

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4"]


@dataclass
class Services:
    settings: ServerSettings
    store: Store
    versions: ModelVersions
    teacher: Teacher

    @classmethod
    def build(cls, settings: ServerSettings, versions: ModelVersions | None = None,
              command: Callable[[Path, Path, Path], list[str]] | None = None) -> Services:
        """versions and command (run, data, out) -> a fine-tuning command line: stand-ins for tests."""
        store = Store(settings.data)
        versions = versions or ModelVersions(settings.data, settings.run)
        return cls(settings, store, versions, Teacher(store, versions, command or finetune_command))

    def attributes(self) -> list[str]:
        """The active model's attributes."""
        return list(self.versions.predictor()[1].settings.attributes)

    def colours(self) -> dict[str, str]:
        names = self.attributes()
        return dict(zip(names, COLOURS * 3, strict=False))

    def predict(self, image_id: str) -> dict:
        """The active model's prediction of an image, made once per model version and kept."""
        name, predictor = self.versions.predictor()
        return predictions.predict_and_store(predictor, self.versions.weights(name, predictor), self.store.folder,
                                             name, image_id, self.store.image_path(image_id))


def services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]
