"""The FastAPI app of `tatl serve`: the page (static/), and the REST API documented at /docs.

    GET  /api/info                                  attributes, colours, active model, limits
    GET  /api/images?sort=name|uncertainty|state    the gallery: id, state, attributes present, uncertainty
    POST /api/images                                upload images (multipart "files"); each is predicted at once
    GET  /api/images/{id}                           size, state, prediction record, corrections and versions
    GET  /api/images/{id}/image?size=display        the image: original, display (<= 2048 px) or thumbnail
    POST /api/images/{id}/predict                   predict with the active model (kept once per model)
    GET  /api/images/{id}/predictions.json          the image's predictions.json record
    GET  /api/images/{id}/predictions/{layer}.png   a predicted mask (or ?probabilities=1); ?display=1 downscaled
    GET  /api/images/{id}/masks                     the correction's version and its saved versions
    GET  /api/images/{id}/masks/{attribute}.png     the official corrected mask (?display=1 downscaled)
    PUT  /api/images/{id}/masks                     {"version": n, "masks": {attribute: PNG}, "touched": {...},
                                                    "confirmed": [attribute]}: the edited and confirmed attributes
                                                    only -> the next version; 409 when n is not the current one
    GET|PUT|DELETE /api/images/{id}/draft           the autosaved draft
    POST /api/images/{id}/approve                   {"approved": true|false}
    GET  /api/next?after=id                         the next image to review
    POST /api/training, GET /api/training, POST /api/training/stop   fine-tuning on the corrections
    GET  /api/models, POST /api/models/{name}/activate               model versions

`create_app` only assembles: the routers (tatl.serving.routes), what they share (tatl.serving.services), the
request guard and the error handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from tatl.errors import DataError
from tatl.serving.docs import add_docs
from tatl.serving.models import ModelVersions
from tatl.serving.routes import corrections, images, predictions, teaching
from tatl.serving.security import TOKEN_COOKIE, ServerSettings, check_request
from tatl.serving.services import Services
from tatl.serving.store import NotFound, VersionConflict

UPLOAD_FILES = 16  # an upload request may carry this many files of the size limit
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'")


def create_app(settings: ServerSettings, versions: ModelVersions | None = None,
               command: Callable[[Path, Path, Path], list[str]] | None = None) -> FastAPI:
    """The app; versions and command (run, data, out) -> the fine-tuning command line: stand-ins for tests."""
    services = Services.build(settings, versions, command)
    app = FastAPI(title="tatl serve", description="See, correct and teach TATL's skin attribute masks.",
                  docs_url=None, redoc_url=None)
    add_docs(app)
    app.state.services = services
    app.state.store, app.state.versions, app.state.teacher = services.store, services.versions, services.teacher
    app.middleware("http")(_guard(settings))
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(VersionConflict, _conflict)
    static = resources.files("tatl.serving") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_api_route("/", lambda: FileResponse(str(static / "index.html"), headers={"Cache-Control": "no-store"}),
                      include_in_schema=False)
    for module in (images, predictions, corrections, teaching):
        app.include_router(module.router)
    return app


def _guard(settings: ServerSettings):
    """The middleware every request passes: the token and host check, the body-size cap, the page's headers."""
    async def guard(request: Request, call_next):
        refused = check_request(settings, request.headers, request.query_params, request.cookies)
        length = request.headers.get("content-length", "0")
        limit = settings.max_upload_bytes * (UPLOAD_FILES if request.url.path == "/api/images" else 1)
        if refused is None and (not length.isdigit() or int(length) > limit):
            refused = 413, f"request body over {limit // 2**20} MiB"
        if refused is not None:
            return JSONResponse({"detail": refused[1]}, status_code=refused[0])
        token = request.query_params.get("token")
        if settings.token and token and request.url.path == "/":
            # The page's later requests carry the cookie; the token leaves the address bar (and the history).
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.url.path == "/":  # the page loads nothing from anywhere else, and no other site frames it
            response.headers["Content-Security-Policy"] = PAGE_POLICY
        return response

    return guard


async def _data_error(request: Request, error: DataError):
    return JSONResponse({"detail": str(error)}, status_code=404 if isinstance(error, NotFound) else 400)


async def _conflict(request: Request, error: VersionConflict):
    return JSONResponse({"detail": str(error), "version": error.current}, status_code=409)
