"""HTTP semantics FastAPI leaves out (RFC 9110): HEAD wherever GET is served, and a trailing
slash that is refused with a hint instead of redirected.

- ``HeadAsGet``: a HEAD request is served as the GET it stands for: the same status and headers
  (``Content-Length`` included), no body. FastAPI routes answer only the methods they declare.
- The app is built with ``redirect_slashes=False``: a redirect of ``POST /segment/`` is a 307 with
  an empty body that ``curl -o`` saves as a 0-byte mask. ``slashless_route`` lets the 404 problem
  name the path that exists instead.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """Serve ``HEAD`` as ``GET`` and drop the body; other requests pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


def slashless_route(request: Request) -> str | None:
    """The request's path without its trailing slash(es) when a route serves that path."""
    path = request.url.path
    if len(path) < 2 or not path.endswith("/"):
        return None
    stripped = {**request.scope, "path": path.rstrip("/") or "/"}
    routes = request.app.router.routes
    if any(route.matches(stripped)[0] is not Match.NONE for route in routes):
        return str(stripped["path"])
    return None
