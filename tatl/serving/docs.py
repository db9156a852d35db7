"""The OpenAPI docs at /docs with Swagger UI served by this server (the swagger-ui-bundle package), not from a
CDN: the docs work with no internet, and the browser asks no other address for anything."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)


def add_docs(app: FastAPI) -> None:
    """GET /docs: Swagger UI from /docs-static/; without swagger-ui-bundle, a plain list of the endpoints."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        log.warning("swagger-ui-bundle is not installed: /docs lists the endpoints without Swagger UI "
                    "(pip install 'tatl[serve]')")
        app.get("/docs", include_in_schema=False)(_endpoint_list(app))
        return
    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs-openapi.json", include_in_schema=False)
    def schema_for_swagger_ui():
        # The bundled Swagger UI (4.x) refuses a document that says 3.1 (FastAPI's), but renders this one; the
        # API's own /openapi.json keeps its true version.
        return {**app.openapi(), "openapi": "3.0.3"}

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/docs-openapi.json", title=f"{app.title}: API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon-32x32.png",
                                   swagger_ui_parameters={"validatorUrl": None})  # no badge from swagger.io


def _endpoint_list(app: FastAPI):
    from html import escape

    from fastapi.responses import HTMLResponse

    def docs():
        rows = [f"<li><code>{escape(method.upper())} {escape(path)}</code> {escape(op.get('summary', ''))}</li>"
                for path, item in app.openapi()["paths"].items() for method, op in item.items()]
        return HTMLResponse(f"<h1>{escape(app.title)}: API</h1><p><a href='{app.openapi_url}'>openapi.json</a></p>"
                            f"<ul>{''.join(rows)}</ul>")

    return docs
