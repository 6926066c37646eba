"""The id of the request being served, for log lines written anywhere below the HTTP edge.

The edge (``service.security.RequestIdMiddleware``) sets it; ``service.logs`` reads it; worker
threads see it because ``service.threads`` runs each call in a copy of the caller's context.
"""

from __future__ import annotations

from contextvars import ContextVar

NO_REQUEST = "-"

request_id_var: ContextVar[str] = ContextVar("segserve_request_id", default=NO_REQUEST)
