"""Every path inside the served folder FOLDER, stated once (the tree and what each file holds: tatl.serving's
docstring). Nothing here touches the disk or checks a name: ids and names are checked (tatl.serving.security)
before a path is built from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVER_FOLDER = ".tatl-serve"  # hidden: dataset readers (tatl check-data, tatl finetune) skip it
CACHES = ("display", "thumbnails", "states", "drafts", "uploads")  # the server's folders of one file per image


@dataclass(frozen=True)
class ServedFolder:
    """FOLDER, or a folder laid out as it is (a teaching snapshot: images and corrections/)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ----------------------------------------------------------------------------------- the dataset
    @property
    def corrections(self) -> Path:
        return self.root / "corrections"

    def versions(self, image_id: str) -> Path:
        """Every saved version of an image's corrections, one folder each; hidden, so no mask is found twice."""
        return self.corrections / ".versions" / image_id

    # ----------------------------------------------------------------------------------- the server's files
    @property
    def server(self) -> Path:
        return self.root / SERVER_FOLDER

    def cache(self, kind: str) -> Path:
        """One of CACHES."""
        return self.server / kind

    def scaled(self, kind: str, image_id: str) -> Path:
        """The JPEG copy of an image in "display" or "thumbnails"."""
        return self.cache(kind) / f"{image_id}.jpg"

    def state(self, image_id: str) -> Path:
        return self.cache("states") / f"{image_id}.json"

    def draft(self, image_id: str) -> Path:
        return self.cache("drafts") / f"{image_id}.json"

    def predictions(self, model: str) -> Path:
        return self.server / "predictions" / model

    @property
    def models_record(self) -> Path:
        return self.server / "models.json"

    @property
    def models(self) -> Path:
        return self.server / "models"

    def model_run(self, name: str) -> Path:
        """The run folder a fine-tuning of the Teach button writes (`tatl finetune --out`)."""
        return self.models / name

    def model_output(self, name: str) -> Path:
        """What that fine-tuning printed."""
        return self.models / f"{name}.output.txt"

    @property
    def teach(self) -> Path:
        return self.server / "teach"

    def model_step(self, name: str, step: int) -> Path:
        """The run of one step of a fine-tuning in several steps, but the last (tatl.serving.training)."""
        return self.models / f"{name}.steps" / str(step)

    def teach_step(self, name: str, step: int) -> Path:
        """The snapshot of the corrections that one step of a fine-tuning trains on (laid out as FOLDER: images,
        corrections/)."""
        return self.teach / name / f"step_{step}"

    @property
    def lock(self) -> Path:
        """Held by the one server that serves FOLDER (tatl.serving.server)."""
        return self.server / "server.lock"
