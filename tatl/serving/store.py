"""The images of FOLDER and what people did with them: display copies, thumbnails, states, corrections with every
saved version, and drafts (the folder layout is in tatl.serving's docstring).

A save carries the version the editor started from; when another save came first the save is refused
(VersionConflict, HTTP 409) and nothing is written. Saves of one store are serialised by a lock (one server process
owns FOLDER). A save writes the version folder first (masks, then version.json last), then the official masks,
then the state: a server killed half-way leaves whole files, and a version without version.json is ignored.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from tatl.data.images import image_size, inspect_image, read_image
from tatl.errors import DataError
from tatl.inference.outputs import IMAGE_SUFFIXES, NOT_INPUTS, as_grey, find_images
from tatl.io import link_or_copy, remove_stale_temporaries, write_bytes, write_json, write_png
from tatl.serving.folder import CACHES, ServedFolder
from tatl.serving.masks import read_stored
from tatl.serving.security import check_id, check_name, inside

DISPLAY_SIDE = 2048  # longest side of the copy the browser shows: smooth zoom and pan on a 6000x4000 photo
THUMBNAIL_SIDE = 256


class VersionConflict(Exception):
    """Another save of the same image came first."""

    def __init__(self, current: int, given: int):
        super().__init__(f"this image was saved elsewhere meanwhile (version {current}; this edit started from "
                         f"version {given}): nothing was written; load version {current} and apply the edit on top")
        self.current = current


class NotFound(DataError):
    """An image, mask or file the request names does not exist."""


@dataclass(frozen=True)
class Saved:
    version: int
    time: str
    model: str
    folder: str


class Store:
    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise DataError(f"--data {folder}: no such folder")
        self.paths = ServedFolder(self.folder)
        self.corrections = self.paths.corrections
        self._lock = threading.Lock()
        for kind in CACHES:
            self.paths.cache(kind).mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.paths.cache(kind))
        self.corrections.mkdir(exist_ok=True)
        remove_stale_temporaries(self.corrections)

    # ------------------------------------------------------------------------------------------------- images
    def image_ids(self) -> list[str]:
        try:
            paths = find_images(self.folder)
        except DataError:  # an empty folder is a gallery with nothing in it yet
            return []
        return sorted(p.stem for p in paths if _valid_id(p.stem))

    def image_path(self, image_id: str) -> Path:
        check_id(image_id)
        for candidate in sorted(self.folder.glob(f"{image_id}.*")):  # the id pattern holds no glob characters
            if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
                return inside(self.folder, candidate)
        raise NotFound(f"image {image_id!r}: not in {self.folder}")

    def size(self, image_id: str) -> tuple[int, int]:
        return image_size(self.image_path(image_id))

    def add_upload(self, image_id: str, suffix: str, data: bytes) -> Path:
        """Write an uploaded image into FOLDER once it decodes as an image tatl accepts (DataError otherwise)."""
        check_id(image_id)
        if "_attribute_" in image_id or image_id.endswith(NOT_INPUTS):
            raise DataError(f"{image_id}{suffix}: named like a mask (<id>_attribute_<name>, <id>_segmentation, ...), "
                            "not an image to predict: rename it")
        staged = self.paths.cache("uploads") / f"{image_id}.{secrets.token_hex(4)}{suffix}"  # one per upload
        write_bytes(staged, data)
        try:
            inspect_image(staged)  # decodes it all: non-images, truncated files and decompression bombs are refused
        except DataError as error:
            staged.unlink(missing_ok=True)
            raise DataError(str(error).replace(str(staged), f"{image_id}{suffix}")) from None
        final = self.folder / f"{image_id}{suffix}"
        with self._lock:  # two uploads of one id: the second is refused, not renamed over the first
            if any(p.suffix.lower() in IMAGE_SUFFIXES for p in self.folder.glob(f"{image_id}.*")):
                staged.unlink(missing_ok=True)
                raise DataError(f"{image_id}{suffix}: an image with id {image_id!r} is already in the folder")
            os.replace(staged, final)
        return final

    def display(self, image_id: str) -> Path:
        return self._scaled(image_id, "display", DISPLAY_SIDE)

    def thumbnail(self, image_id: str) -> Path:
        return self._scaled(image_id, "thumbnails", THUMBNAIL_SIDE)

    def display_size(self, image_id: str) -> tuple[int, int]:
        return scaled_size(self.size(image_id), DISPLAY_SIDE)

    def _scaled(self, image_id: str, kind: str, side: int) -> Path:
        """A JPEG copy no larger than `side`, made once and kept until the image changes."""
        source = self.image_path(image_id)
        cached = self.paths.scaled(kind, image_id)
        if not cached.is_file() or cached.stat().st_mtime < source.stat().st_mtime:
            pixels = read_image(source, scaled_size(image_size(source), side))
            write_bytes(cached, _jpeg(pixels))
        return cached

    # ------------------------------------------------------------------------------------------------- states
    def state(self, image_id: str) -> dict:
        path = self.paths.state(check_id(image_id))
        return json.loads(path.read_text()) if path.is_file() else {"version": 0, "approved": False}

    def set_approved(self, image_id: str, approved: bool) -> dict:
        with self._lock:
            state = self.state(image_id) | {"approved": bool(approved)}
            write_json(self.paths.state(image_id), state)
            return state

    # ----------------------------------------------------------------------------------- corrections, versions
    def correction_path(self, image_id: str, attribute: str) -> Path:
        return self.corrections / f"{check_id(image_id)}_attribute_{check_name(attribute, 'attribute')}.png"

    def corrected_index(self) -> dict[str, list[str]]:
        """Image id -> its corrected attributes, from one listing of the corrections folder (the gallery's)."""
        index: dict[str, list[str]] = {}
        for path in sorted(self.corrections.glob("*_attribute_*.png")):
            image_id, _, attribute = path.stem.rpartition("_attribute_")
            index.setdefault(image_id, []).append(attribute)
        return index

    def corrected_attributes(self, image_id: str) -> list[str]:
        prefix = f"{check_id(image_id)}_attribute_"
        return sorted(p.stem[len(prefix):] for p in self.corrections.glob(f"{prefix}*.png"))

    def save_correction(self, image_id: str, masks: dict[str, np.ndarray], expected_version: int, model: str,
                        confirmed: Sequence[str] = ()) -> Saved:
        """Write the masks ((H, W) bool at the original size) of the attributes the person edited or confirmed
        (`confirmed`: "this mask is right" without an edit) as the next version, and nothing of any other attribute;
        VersionConflict when expected_version is not the current one."""
        size = self.size(image_id)
        for attribute, mask in masks.items():
            check_name(attribute, "attribute")
            if mask.shape != (size[1], size[0]):
                raise DataError(f"{image_id} {attribute}: mask is {mask.shape[1]}x{mask.shape[0]}, the image "
                                f"{size[0]}x{size[1]}")
        with self._lock:
            state = self.state(image_id)
            if int(expected_version) != state["version"]:
                raise VersionConflict(state["version"], int(expected_version))
            version = state["version"] + 1
            time = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            folder = self.paths.versions(image_id) / f"{time}-{check_name(model, 'model')}"
            for attribute, mask in masks.items():
                write_png(folder / f"{image_id}_attribute_{attribute}.png", as_grey(mask))
            record = {"version": version, "time": time, "model": model, "attributes": sorted(masks),
                      "edited": sorted(set(masks) - set(confirmed)), "confirmed": sorted(set(confirmed) & set(masks))}
            write_json(folder / "version.json", record)
            for attribute, mask in masks.items():
                write_png(self.correction_path(image_id, attribute), as_grey(mask))
            present = state.get("present", {}) | {a: bool(m.any()) for a, m in masks.items()}
            write_json(self.paths.state(image_id), state | {"version": version, "present": present})
            self.drop_draft(image_id)
        return Saved(version, time, model, str(folder.relative_to(self.folder)))

    def versions(self, image_id: str) -> list[dict]:
        folder = self.paths.versions(check_id(image_id))
        records = [json.loads(p.read_text()) for p in sorted(folder.glob("*/version.json"))]
        return sorted(records, key=lambda r: r["version"])

    def read_correction(self, image_id: str, attribute: str) -> np.ndarray:
        path = self.correction_path(image_id, attribute)
        if not path.is_file():
            raise NotFound(f"{image_id}: no correction of {attribute}")
        return read_stored(path)

    def teaching_groups(self) -> list[tuple[list[str], list[str]]]:
        """What the saved corrections can teach: (attributes, the image ids with a correction of each of them),
        one entry per set of images, attributes sharing the same images together; DataError when none is saved.
        An attribute is taught on its own images only: nothing any person did not correct or confirm is a label."""
        index = self.corrected_index()
        images: dict[str, list[str]] = {}
        for image_id in self.image_ids():
            for attribute in index.get(image_id, []):
                images.setdefault(attribute, []).append(image_id)
        if not images:
            raise DataError("no corrected image yet: save at least one correction before fine-tuning")
        groups: dict[tuple[str, ...], list[str]] = {}
        for attribute in sorted(images):
            groups.setdefault(tuple(images[attribute]), []).append(attribute)
        return [(attributes, list(ids)) for ids, attributes in groups.items()]

    def teaching_snapshot(self, folder: Path, attributes: Sequence[str], image_ids: Sequence[str]) -> Path:
        """`image_ids` and their official masks of `attributes` only, linked into `folder` as they are now (the
        data of one `tatl finetune`): <id>.<ext> and corrections/<id>_attribute_<name>.png."""
        for image_id in image_ids:
            image = self.image_path(image_id)
            link_or_copy(image, folder / image.name)
            for name in attributes:
                path = self.correction_path(image_id, name)
                link_or_copy(path, ServedFolder(folder).corrections / path.name)
        return folder

    # ---------------------------------------------------------------------------------------------- drafts
    def save_draft(self, image_id: str, draft: dict) -> None:
        write_json(self.paths.draft(check_id(image_id)), draft, durable=False, indent=None)

    def draft(self, image_id: str) -> dict | None:
        path = self.paths.draft(check_id(image_id))
        return json.loads(path.read_text()) if path.is_file() else None

    def drafted(self) -> set[str]:
        """The ids with a draft, from one listing (the gallery marks their cards)."""
        return {p.stem for p in self.paths.cache("drafts").glob("*.json")}

    def drop_draft(self, image_id: str) -> None:
        self.paths.draft(check_id(image_id)).unlink(missing_ok=True)


def scaled_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _jpeg(pixels: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _valid_id(stem: str) -> bool:
    try:
        check_id(stem)
    except DataError:
        return False
    return True
