"""Who may call the API: ``Authorization: Bearer <token>`` (gateway.actions.api_tokens), checked
at every request (a revoked token is refused at once), and the role the route needs.

- no token, an unknown or a revoked one: 401, ``WWW-Authenticate: Bearer``;
- a role that may not: 403 naming the role needed;
- more than FAILURES_ALLOWED failed attempts from one client address within
  FAILURE_WINDOW seconds: 429 with ``Retry-After``, before the token is even looked at,
  so guessing tokens goes nowhere (one process serves the API; the counts are its own).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from fastapi import Depends, Request

from gateway.http.api.problems import Problem
from gateway.http.deps import gateway_app
from gateway.actions import api_tokens
from gateway.actions.api_tokens import Caller
from store.db import reader

FAILURES_ALLOWED = 10
FAILURE_WINDOW = 60.0  # seconds


class FailedAttempts:
    """Failed authentications per client address, in a sliding window."""

    def __init__(self, allowed: int = FAILURES_ALLOWED, window: float = FAILURE_WINDOW):
        self.allowed, self.window = allowed, window
        self._seen: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _trim(self, client: str, now: float) -> deque:
        seen = self._seen[client]
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        return seen

    def blocked_for(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0: now."""
        now = time.monotonic()
        with self._lock:
            seen = self._trim(client, now)
            if len(seen) < self.allowed:
                if not seen:
                    self._seen.pop(client, None)
                return 0
            return max(int(seen[0] + self.window - now) + 1, 1)

    def failed(self, client: str) -> None:
        with self._lock:
            self._trim(client, time.monotonic()).append(time.monotonic())


def client_of(request: Request) -> str:
    return request.client.host if request.client else ""


def caller(request: Request) -> Caller:
    """The caller the request's token names (401 / 429 otherwise)."""
    attempts: FailedAttempts = request.app.state.api_failures
    client = client_of(request)
    wait = attempts.blocked_for(client)
    if wait:
        raise Problem(429, f"too many failed attempts from {client}: try again in {wait} seconds",
                      {"Retry-After": str(wait)})
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    found = None
    if scheme.lower() == "bearer" and token.strip():
        with reader(gateway_app(request).engine) as session:
            found = api_tokens.check(session, token.strip())
    if found is None:
        attempts.failed(client)
        raise Problem(401, "a valid API token is needed: Authorization: Bearer <token> (gateway tokens create)",
                      {"WWW-Authenticate": 'Bearer realm="gateway"'})
    request.state.caller = found
    return found


def require(role: str):
    """A dependency: the caller, who must hold ``role`` (or a higher one)."""

    def check(found: Caller = Depends(caller)) -> Caller:
        if not found.may(role):
            raise Problem(403, f"the token {found.name!r} has the role {found.role}; this needs {role}")
        return found

    return check


def actor_of(request: Request, found: Caller):
    from gateway.actions.tickets import Actor

    return Actor(found.actor, client_of(request))
