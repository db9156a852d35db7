"""What keeps the server's files inside FOLDER and its API to the people meant to use it.

- Image ids and attribute names are checked against a strict pattern before any path is built from them, and the
  resolved path must lie inside FOLDER: nothing is read or written elsewhere.
- Bound to a loopback address without a token, the server accepts only requests whose Host header is a loopback
  name (a web page elsewhere cannot reach it through DNS rebinding). On any other address a token is required on
  every request: `Authorization: Bearer T`, the `tatl_token` cookie (set when the page is opened with ?token=T), or
  the `token` query parameter.
- Uploads are limited in size; images are decoded with Pillow's decompression-bomb guard (tatl.data.images).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tatl.errors import DataError

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")  # attribute and model-version names
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
TOKEN_COOKIE = "tatl_token"


def check_id(image_id: str) -> str:
    """An image id (a file stem) made of letters, digits, '.', '_' and '-', starting with a letter or digit."""
    if not ID_PATTERN.match(image_id or "") or ".." in image_id:
        raise DataError(f"image id {image_id!r}: use letters, digits, '.', '_' and '-' only (at most 128)")
    return image_id


def check_name(name: str, what: str = "name") -> str:
    """An attribute or model-version name: lower-case letters, digits and '_'."""
    if not NAME_PATTERN.match(name or ""):
        raise DataError(f"{what} {name!r}: use lower-case letters, digits and '_' only")
    return name


def inside(folder: Path, path: Path) -> Path:
    """`path` resolved, refused unless it lies inside `folder` (a symlink pointing out of it included)."""
    resolved, root = Path(path).resolve(), Path(folder).resolve()
    if resolved != root and root not in resolved.parents:
        raise DataError(f"{path}: outside the served folder {folder}")
    return resolved


def upload_name(filename: str, suffixes: tuple[str, ...]) -> tuple[str, str]:
    """(id, suffix) of an uploaded file's name: its last path component, a valid id and an image suffix."""
    name = Path((filename or "").replace("\\", "/")).name
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    if suffix not in suffixes:
        raise DataError(f"{name or 'the file'}: not an image file name (use {', '.join(suffixes)})")
    return check_id(stem), suffix


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def host_header_name(host_header: str) -> str:
    """The host name of a Host header ("127.0.0.1:8000" -> "127.0.0.1", "[::1]:80" -> "[::1]")."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


@dataclass
class ServerSettings:
    run: Path  # the run folder (or ONNX export) predicting at start: model version "base"
    data: Path  # FOLDER: the images, and everything the server writes
    host: str = "127.0.0.1"  # the address to bind: another than loopback requires a token
    port: int = 8000
    token: str | None = None  # required on every request when set
    max_upload_bytes: int = 64 * 2**20  # per uploaded file


def check_request(settings: ServerSettings, headers: Mapping[str, str], query: Mapping[str, str],
                  cookies: Mapping[str, str]) -> tuple[int, str] | None:
    """None when the request may proceed, else (HTTP status, message)."""
    if settings.token is None:
        name = host_header_name(headers.get("host", ""))
        if not is_loopback(name):
            return 403, f"Host {name!r} refused: this server answers on its loopback address only"
        return None
    bearer = headers.get("authorization", "")
    given = (bearer[7:] if bearer.lower().startswith("bearer ") else None) or cookies.get(TOKEN_COOKIE) \
        or query.get("token")
    if not token_matches(given, settings.token):
        return 401, "token missing or wrong: open the address `tatl serve` printed (it ends with ?token=...)"
    return None
