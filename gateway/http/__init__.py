"""The HTTP face of the gateway: an ASGI application (FastAPI) built by ``create_app``,
one router per area, as the URL's first word names it:

- ``ops``: /healthz, /readyz, /metrics, for the operators' monitoring (gateway.http.ops);
- ``api``: /api/v1, the API for agents' tools and integrations (gateway.http.api);
- ``admin``: /admin, the admins' console (gateway.http.admin);
- ``portal``: /portal, the customers' pages (gateway.http.portal).

Every area but ops acts through ``gateway.http.deps.gateway_app`` (the process's App)
and the actions layer (gateway.actions), never on the database by itself.

``gateway serve`` runs it with uvicorn in a process of its own (gateway.http.server), so
a slow page or a scrape never holds up the SMTP door's event loop.  A route stays a few
lines: it reads what it needs through its area's dependencies, calls the code that
knows the rule (gateway.health for ops), and shapes the answer.
"""

from __future__ import annotations

from fastapi import FastAPI

from gateway import __version__
from gateway.http.admin import router as admin_router
from gateway.http.ops import Ops
from gateway.http.ops import router as ops_router


def create_app(ops: Ops, config=None) -> FastAPI:
    """The application; ``ops`` is what the operations routes read (the database, this
    instance's processes and doors, the metrics folder); ``config`` (else ops') is the
    configuration the other areas act with (gateway.http.deps.gateway_app)."""
    app = FastAPI(title="Helpdesk mail gateway", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.ops = ops
    app.state.config = config if config is not None else ops.config
    app.include_router(ops_router)
    from gateway.http import api

    api.install(app)
    app.include_router(admin_router)
    if app.state.config.portal.enabled:
        from gateway.http.portal import router as portal_router

        app.include_router(portal_router)
    return app
