"""What every area of the HTTP face shares: the gateway the routes act on.

``gateway_app`` is a FastAPI dependency giving the process's ``gateway.app.App`` (its
engine with the schema brought up to date, its processor, notifier and renderer), so a
route calls the actions (gateway.actions) exactly as the command line does.  The App is
made once, the first time a route asks for it: /healthz and /readyz never wait for it
(they read the database through the operations' own engine, gateway.http.ops).
"""

from __future__ import annotations

import threading

from fastapi import Request

from gateway.app import App

_LOCK = threading.Lock()


def gateway_app(request: Request) -> App:
    state = request.app.state
    app = getattr(state, "gateway", None)
    if app is None:
        with _LOCK:
            app = getattr(state, "gateway", None)
            if app is None:
                app = state.gateway = App(state.config)
    return app
