"""The model versions a server can predict with: the run it was started with ("base") and the runs fine-tuned by
the Teach button (FOLDER/.tatl-serve/models/run_<n>), listed in FOLDER/.tatl-serve/models.json:

    {"active": "run-2", "versions": [{"name": "base", "path": "...", "status": "ready", "created": "...",
      "scores": {...}, "reason": "..."}, ...]}

status: "ready" (can serve), "kept aside" (finished but scored lower than the model it was fine-tuned from; reason
says by how much), "failed" (the fine-tuning failed; reason holds its message). The server starts with the RUN it
was given active ("base"), whatever an earlier server of the folder had active: the model served is the one named.
Only a ready version can be activated, and only once its networks have loaded; the active one's networks are
loaded once and kept.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from tatl.errors import DataError, TatlError
from tatl.io import write_json
from tatl.serving.folder import ServedFolder
from tatl.serving.security import check_name

if TYPE_CHECKING:  # torch: loaded when the first image is predicted
    from tatl.inference.predictor import Predictor

BASE = "base"
READY, KEPT_ASIDE, FAILED = "ready", "kept aside", "failed"


class ModelVersions:
    def __init__(self, folder: Path, base_run: Path, load: Callable[[Path], Predictor] | None = None):
        """load(path) -> a predictor (tatl.inference.predictor.load_predictor by default; tests may pass another)."""
        self.paths = ServedFolder(folder)
        self.file = self.paths.models_record
        self._load = load or _load_predictor
        self._lock = threading.Lock()
        self._loaded: tuple[str, Predictor] | None = None
        self._weights: dict[str, dict[str, float]] = {}
        data = self._read()
        base = {"name": BASE, "path": str(Path(base_run).resolve()), "status": READY, "created": _now(),
                "scores": None, "reason": "the run `tatl serve` was started with"}
        versions = [base] + [v for v in data.get("versions", []) if v["name"] != BASE]
        self._write({"active": BASE, "versions": versions})

    def _read(self) -> dict:
        return json.loads(self.file.read_text()) if self.file.is_file() else {}

    def _write(self, data: dict) -> None:
        write_json(self.file, data)

    def listing(self) -> dict:
        return self._read()

    @property
    def active(self) -> str:
        return self._read()["active"]

    def version(self, name: str) -> dict:
        for version in self._read()["versions"]:
            if version["name"] == name:
                return version
        raise DataError(f"model version {name!r}: no such version")

    def path(self, name: str) -> Path:
        return Path(self.version(name)["path"])

    def next_name(self) -> str:
        """run_<n>, n one more than any version's or folder's (a stopped fine-tuning leaves a folder, no version)."""
        names = [v["name"] for v in self._read()["versions"]]
        names += [p.name for folder in (self.paths.models, self.paths.teach) for p in folder.glob("run_*")]
        numbers = [int(n.split("_")[1]) for n in names if n.startswith("run_") and n.split("_")[1].isdigit()]
        return f"run_{max(numbers, default=0) + 1}"

    def add(self, name: str, path: Path, status: str, scores: dict | None, reason: str) -> dict:
        check_name(name, "model version")
        version = {"name": name, "path": str(Path(path).resolve()), "status": status, "created": _now(),
                   "scores": scores, "reason": reason}
        with self._lock:
            data = self._read()
            data["versions"] = [v for v in data["versions"] if v["name"] != name] + [version]
            self._write(data)
        return version

    def activate(self, name: str) -> dict:
        """Make `name` the active version once its networks have loaded (a version that cannot serve is never
        recorded as active)."""
        version = self.version(name)
        if version["status"] != READY:
            raise DataError(f"model version {name!r} is {version['status']}: {version['reason']}")
        with self._lock:
            self._networks_of(name)
            data = self._read()
            data["active"] = name
            self._write(data)
        return version

    def load(self, name: str) -> Predictor:
        """The networks of version `name`; a one-line DataError naming its folder when they do not load."""
        path = self.path(name)
        try:
            return self._load(path)
        except TatlError as error:
            raise DataError(f"model version {name!r} ({path}) cannot be served: {error}") from error

    def predictor(self) -> tuple[str, Predictor]:
        """The active version's networks, loaded when first needed after a switch."""
        with self._lock:
            name = self._read()["active"]
            return name, self._networks_of(name)

    def _networks_of(self, name: str) -> Predictor:
        """Version `name`'s networks, loaded unless they are the ones held (one version's at a time; under _lock)."""
        if self._loaded is None or self._loaded[0] != name:
            self._loaded = (name, self.load(name))
        return self._loaded[1]

    def weights(self, name: str, predictor: Predictor) -> dict[str, float]:
        """The attribute weights of `tatl select`'s score for a version (its training masks read once)."""
        if name not in self._weights:
            from tatl.experiments.ranking import attribute_weights

            self._weights[name] = attribute_weights(predictor) if predictor.settings.attributes else {}
        return self._weights[name]


def _load_predictor(path: Path) -> Predictor:
    from tatl.inference.predictor import load_predictor

    return load_predictor(path, None)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
