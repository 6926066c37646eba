"""The application factory: the core (``service.core.Service``) behind its front doors,
segserve's own API (``service.api``) and the Open Inference Protocol over HTTP (``service.oip``)
and, with ``SEGSERVE_GRPC_PORT``, over gRPC (``service.oip_grpc``) on the same event loop.

``create_app`` is given the scanned repository (a missing or empty one fails before serving).
The lifespan starts loading in the background so ``/healthz`` answers at once (with several
processes, see ``service.processes``, each waits for its models before it accepts); the
lifespan's end stops the gRPC server (its running calls finish), then drains the batchers and
closes the sessions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from service import api, apidocs, oip, page, repository_api
from service.access import AccessLog
from service.control import ModelControl
from service.core import Service, lone_process
from service.problems import LastResort, install_error_handlers
from service.repository import ModelRepository
from service.security import RequestIdMiddleware, install_security
from service.semantics import HeadAsGet
from service.settings import Settings


def create_app(
    settings: Settings,
    repository: ModelRepository,
    *,
    all_listening: Callable[[], bool] = lone_process,
) -> FastAPI:
    """The app serving ``repository``. ``all_listening``: whether every sibling server process
    listens yet (``service.processes``); readiness waits for it."""
    service = Service(settings, repository, all_listening=all_listening)
    control = ModelControl(service)

    app = FastAPI(
        title="segserve",
        version="0.1.0",
        summary="Semantic-segmentation masks over HTTP (ONNX Runtime, dynamic batching)",
        lifespan=partial(_lifespan, service, control),
        redirect_slashes=False,  # a 404 that names the right path, never a 307 (service/semantics)
        docs_url=None,  # served from bundled assets by service.apidocs
        redoc_url=None,
    )
    app.state.service = service
    app.state.control = control
    app.include_router(api.router)
    app.include_router(oip.router)
    app.include_router(repository_api.router)
    apidocs.install_api_docs(app)
    page.install_page(app)
    install_error_handlers(app, describe_invalid=api.describe_invalid_segment)
    # Each middleware added wraps those added before it: innermost first.
    app.add_middleware(api.SegmentDoor)  # the ones added after it see /segment too
    app.add_middleware(LastResort)
    app.add_middleware(HeadAsGet)  # inside the access log, which records the HEAD
    # The page and the docs' assets hold no data (the page's calls to the API carry the key
    # typed into it): they need no key.
    install_security(
        app,
        settings,
        public_paths=page.PUBLIC_PATHS,
        public_prefixes=(*page.PUBLIC_PREFIXES, *apidocs.PUBLIC_PREFIXES),
    )
    app.add_middleware(AccessLog)  # outside all that may answer: every answer has its line
    app.add_middleware(RequestIdMiddleware)  # outermost: the id exists before anything logs
    return app


@asynccontextmanager
async def _lifespan(service: Service, control: ModelControl, app: FastAPI) -> AsyncIterator[None]:
    """Load the models in the background (``/healthz`` answers at once), poll the repository
    and serve gRPC when configured; at the end drain the batchers and close the sessions."""
    settings = service.settings
    loading = asyncio.create_task(service.load(), name="load-models")
    if settings.processes > 1:
        # Processes share the port: uvicorn listens once this returns, so no request meets
        # a process that is still loading (service/processes.py).
        await asyncio.shield(loading)
    polling = asyncio.create_task(_after(loading, control, settings), name="model-control")
    grpc_server = None
    if settings.grpc_port is not None:
        # Imported only here: its messages (package ``inference``) would clash in protobuf's
        # default pool with any other copy of the protocol in the process, e.g.
        # tritonclient.grpc's in a test or a client embedding the app.
        from service import oip_grpc

        grpc_server = await oip_grpc.start_grpc(service, settings, app.version)
    try:
        yield
    finally:
        polling.cancel()
        if grpc_server is not None:
            await grpc_server.stop(settings.shutdown_timeout_s)
        await loading  # sessions being created finish before we close them
        await control.close()
        await service.close()


async def _after(loading: asyncio.Task[None], control: ModelControl, settings: Settings) -> None:
    """With ``SEGSERVE_MODEL_CONTROL=poll``, rescan the repository once the models are loaded."""
    await asyncio.shield(loading)
    if control.service.loaded and settings.model_control == "poll":
        await control.poll(settings.model_poll_interval_s)
