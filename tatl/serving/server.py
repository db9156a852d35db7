"""Start the app with uvicorn: check the run and the folder first, refuse a non-loopback address without a token
(one is generated and printed), print the address."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tatl.errors import DataError
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


def serve(settings: ServerSettings, announce: Callable[[str], object] = log.info) -> None:
    """Serve until stopped; `announce` gets the line with the address to open (`tatl serve` prints it)."""
    import uvicorn

    from tatl.serving.app import create_app

    settings, address = prepare(settings)
    app = create_app(settings)
    app.state.versions.predictor()  # load the networks now: a broken run fails here, not on the first image
    announce(f"tatl serve: {address}  (images in {Path(settings.data).resolve()}; Ctrl+C stops)")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
