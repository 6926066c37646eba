"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from assets installed with the service, so both
work without internet access. The JS and CSS come from the pinned ``fastapi-offline`` package,
which ships Swagger UI's and ReDoc's release bundles; FastAPI's own pages point at a CDN.
ReDoc's bundle is served with its one CDN reference made local (below), so that neither page
sends a request anywhere but to this server.

    install_api_docs(app)   # the app is built with docs_url=None, redoc_url=None
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
PUBLIC_PREFIXES = (f"{ASSETS_PATH}/",)  # library files, no data: served without an API key
_ASSETS = Path(str(files("fastapi_offline") / "static"))
_REDOC_JS = "redoc.standalone.js"
# The sidebar's "by Redocly" logo, which hides itself when it cannot load: "data:," loads none.
_REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def install_api_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` and ReDoc at ``/redoc``, both reading ``app.openapi_url``."""
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        )

    @app.get(f"{ASSETS_PATH}/{_REDOC_JS}", include_in_schema=False)  # ahead of the mount
    async def redoc_bundle() -> Response:
        return Response(_redoc_bundle(), media_type="text/javascript")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{ASSETS_PATH}/{_REDOC_JS}",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    app.mount(ASSETS_PATH, StaticFiles(directory=_ASSETS), name="docs-assets")


@functools.cache
def _redoc_bundle() -> bytes:
    return (_ASSETS / _REDOC_JS).read_bytes().replace(_REDOC_CDN_LOGO, b"data:,")
