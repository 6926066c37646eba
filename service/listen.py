"""The listening addresses, bound (or, for gRPC's, tried) before any model loads: a port in use
ends the start at once, with one line naming the setting and exit code 3
(``EXIT_CANNOT_LISTEN``), whether the server runs as one process or several
(``service.processes``)."""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("segserve")

EXIT_CANNOT_LISTEN = 3  # as uvicorn's own start-up failure


def bound_socket(host: str, port: int, *, shared: bool = False) -> socket.socket:
    """A TCP socket bound to ``host``:``port``, not yet listening (uvicorn listens on it).
    ``shared``: with SO_REUSEPORT, for the processes of one server, each binding its own."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def cannot_listen(host: str, port: int, exc: OSError, setting: str = "SEGSERVE_PORT") -> int:
    """Say why ``host``:``port`` cannot be had, naming the ``setting`` to change; the exit
    code for it."""
    log.error(
        "cannot listen on %s:%d (%s); choose a free port with %s "
        "(or another address with SEGSERVE_HOST)",
        host,
        port,
        exc.strerror or exc,
        setting,
    )
    return EXIT_CANNOT_LISTEN


def taken(host: str, port: int, setting: str) -> int | None:
    """The exit code when nobody else may bind ``host``:``port`` now (said in a log line naming
    ``setting``); None when it is free. A program sharing it by SO_REUSEPORT holds it too."""
    try:
        bound_socket(host, port).close()
    except OSError as exc:
        return cannot_listen(host, port, exc, setting)
    return None
