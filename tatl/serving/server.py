"""Start the app with uvicorn: check the run, the folder and the port first, refuse a non-loopback address without
a token (one is generated and printed), hold the folder's lock, load the model, print the address and the model.

One server serves a folder at a time: a second one on the same FOLDER is refused on one line (it would rewrite
the model versions and the states under the first). The lock is an flock on FOLDER/.tatl-serve/server.lock, so a
killed server leaves no stale lock behind. The port is bound before anything is announced, and the bound socket
is the one uvicorn serves on: a port in use is one line and exit code 2, never an address printed in vain.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from tatl.data.images import pixel_limit
from tatl.errors import DataError
from tatl.io import LockHeld, hold_lock
from tatl.serving.folder import ServedFolder
from tatl.serving.security import ServerSettings, is_loopback, new_token

log = logging.getLogger(__name__)


def prepare(settings: ServerSettings) -> tuple[ServerSettings, str]:
    """The settings to serve with (a token generated when the host needs one) and the address to open."""
    if not Path(settings.run).is_dir():
        raise DataError(f"RUN {settings.run}: no such run folder")
    if not Path(settings.data).is_dir():
        raise DataError(f"--data {settings.data}: no such folder")
    if not 1 <= settings.port <= 65535:
        raise DataError(f"--port {settings.port}: use 1 to 65535")
    if settings.token is None and not is_loopback(settings.host):
        settings.token = new_token()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"http://{host}:{settings.port}/" + (f"?token={settings.token}" if settings.token else "")
    return settings, address


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; a one-line DataError when the port is taken or the address is not ours."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise DataError(f"--host {host}: cannot listen there ({error.strerror or error})") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise DataError(f"--port {port}: already in use on {host} (another tatl serve or program?); "
                            "choose another with --port") from None
        raise DataError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error})") from None
    return sock


@contextlib.contextmanager
def folder_lock(folder: Path, address: str) -> Iterator[None]:
    """Held while this process serves `folder`; DataError when another server holds it."""
    path = ServedFolder(Path(folder).resolve()).lock
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = hold_lock(path, f"tatl serve (process {os.getpid()}) at {address.split('?')[0]}")
    except LockHeld as held:
        raise DataError(f"--data {folder}: already served by {held.holder}; stop that server first (one server per "
                        "folder, so that no save or model switch is lost)") from None
    try:
        yield
    finally:
        handle.close()  # releases the lock


def serve(settings: ServerSettings, announce: Callable[[str], object] = log.info) -> None:
    """Serve until stopped; `announce` gets the line with the address to open and the model (`tatl serve` prints
    it)."""
    import uvicorn

    from tatl.serving.app import create_app

    settings, address = prepare(settings)
    with folder_lock(settings.data, address), contextlib.closing(bind(settings.host, settings.port)) as sock:
        app = create_app(settings)
        versions = app.state.versions
        _, predictor = versions.predictor()  # load the networks now: a broken RUN fails here, not on the first image
        announce(f"tatl serve: {address}  (model {versions.active}: {versions.path(versions.active)}; images in "
                 f"{Path(settings.data).resolve()}; Ctrl+C stops)")
        with pixel_limit(predictor.settings.max_image_pixels):  # RUN's limit for the server's reads, until it stops
            uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
