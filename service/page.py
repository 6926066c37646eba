"""The page at ``/``: a person tries the service in a browser. Choose or drop an image (or a
bundled example), pick the model and version, see the mask over the image with a legend and the
stage timings, download the PNG mask and the RLE JSON.

    install_page(app)   # GET /, /page/assets/*, /page/examples, /page/examples/{name}

Plain HTML, CSS and JS from ``service/web/``: no build step, nothing from a CDN. The page calls
the public API (``GET /models``, ``POST /segment``) as any client does, with the API key typed
into it, so the page itself holds no data and is served without a key (``PUBLIC_PATHS``,
``PUBLIC_PREFIXES``; see ``service.security``). The examples are the image files of the
checkout's ``examples/`` folder, when there is one.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parent / "web"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

PUBLIC_PATHS = ("/",)
PUBLIC_PREFIXES = ("/page/",)


def example_names(folder: Path = EXAMPLES) -> list[str]:
    """The image files directly in ``folder``, by name; none when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def install_page(app: FastAPI) -> None:
    """Serve the page and its bundled examples on ``app`` (none of it is in the OpenAPI)."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/page/examples", include_in_schema=False)
    async def examples() -> list[str]:
        return example_names()

    @app.get("/page/examples/{name}", include_in_schema=False)
    async def example(name: str) -> FileResponse:
        if name not in example_names():  # only listed names: no path ever reaches the disk
            raise HTTPException(404)
        return FileResponse(EXAMPLES / name)

    app.mount("/page/assets", StaticFiles(directory=WEB), name="page-assets")
