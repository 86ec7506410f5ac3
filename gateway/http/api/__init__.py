"""/api/v1: the HTTP API for agents' tools and integrations, one router per area as the
URL's first word names it (tickets, people, inbound, outbox, templates), each route a
few lines over gateway.actions, the layer the command line calls too.

Who may call: API tokens (auth.py); errors: problem documents (problems.py); the
OpenAPI document at /api/v1/openapi.json and a page listing the operations at
/api/v1/docs, served from here with no asset from elsewhere (docs.py).  The access log
(``gateway.http.access``) names the method, the route's pattern (not the path: no
search text, no name), the status, the time and the token's name: never ticket content.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request

from gateway.http.api import docs, inbound, outbox, people, problems, templates, tickets
from gateway.http.api.auth import FailedAttempts

PREFIX = "/api/v1"
access = logging.getLogger("gateway.http.access")


def install(app: FastAPI) -> None:
    """Mount /api/v1 on ``app``: an application of its own (its error handlers, its
    OpenAPI document, its access log), acting with ``app``'s configuration."""
    from gateway import __version__

    api = FastAPI(title="Helpdesk mail gateway API", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", description=docs.DESCRIPTION)
    api.state.config = app.state.config
    api.state.api_failures = FailedAttempts()
    for area in (tickets, people, inbound, outbox, templates):
        api.include_router(area.router)
    api.include_router(docs.router)
    api.openapi = lambda: docs.document(api)
    problems.install(api)

    @api.middleware("http")
    async def access_log(request: Request, call_next):
        started = time.monotonic()
        response = await call_next(request)
        route = request.scope.get("route")
        caller = getattr(request.state, "caller", None)
        access.info("%s %s%s %s %.1f ms %s", request.method, PREFIX, getattr(route, "path", " (no route)"),
                    response.status_code, (time.monotonic() - started) * 1000,
                    f"token:{caller.name}" if caller else "-", extra={"status": response.status_code})
        return response

    app.mount(PREFIX, api)
