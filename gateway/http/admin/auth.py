"""Signing in and out of the console.

The sign-in page's form carries a CSRF token checked against a cookie of its own (there
is no session yet).  A client address may try ``[admin] attempts_per_minute`` times a
minute, whatever the accounts (429 after, counted in this process); an account is locked
after ``max_failures`` wrong passwords in a row (gateway.actions.admins, in the
database: every instance sees it).  Signing out ends the session in the database, so the
cookie is worth nothing afterwards, even replayed.
"""

from __future__ import annotations

import hmac
import shutil
import threading
import time
from collections import defaultdict, deque

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gateway.actions import admins
from gateway.errors import Refused
from gateway.http.admin import web
from gateway.http.admin.notifications import draft_dir as drafts
from gateway.http.deps import gateway_app

router = APIRouter()


class Attempts:
    """Sign-in attempts per client address in the last minute (a sliding window)."""

    def __init__(self) -> None:
        self._seen: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, client: str, limit: int, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._seen[client]
            while seen and seen[0] <= now - 60:
                seen.popleft()
            if len(seen) >= limit:
                return False
            seen.append(now)
            if len(self._seen) > 10_000:  # forget quiet clients
                for key in [k for k, v in self._seen.items() if not v]:
                    del self._seen[key]
            return True


ATTEMPTS = Attempts()


def _sign_in_page(request: Request, *, error: str = "", status: int = 200, email: str = "",
                  next_url: str = "") -> Response:
    token = web.pre_token(request)
    response = web.page(request, "sign-in.html.j2", status=status, csrf=token, error=error, email=email,
                        next_url=web.safe_next(next_url))
    web.set_pre(response, request, token)
    return response


@router.get("/sign-in")
def sign_in_form(request: Request, next: str = "") -> Response:
    if admins.current(gateway_app(request), request.cookies.get(web.COOKIE)) is not None:
        return web.redirect(web.safe_next(next))
    return _sign_in_page(request, next_url=next)


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    fields = await request.form()
    sent, expected = str(fields.get("csrf", "")), request.cookies.get(web.PRE_COOKIE, "")
    lang = web.negotiated(request)
    email, next_url = str(fields.get("email", "")), str(fields.get("next", ""))
    if not sent or not expected or not hmac.compare_digest(sent, expected):
        return _sign_in_page(request, status=403, email=email, next_url=next_url,
                             error=web.gettext(lang, "This form has expired: please sign in again."))
    app = gateway_app(request)
    address = web.client(request)
    if not ATTEMPTS.allow(address, app.config.admin.attempts_per_minute):
        return _sign_in_page(request, status=429, email=email, next_url=next_url,
                             error=web.gettext(lang, "Too many attempts: wait a minute before trying again."))
    try:
        signed = await _run(admins.sign_in, app, email, str(fields.get("password", "")), client=address)
    except admins.SignInRefused as exc:
        message = (web.gettext(lang, "This account is locked for a while after too many failed sign-ins.")
                   if exc.locked else web.gettext(lang, "Wrong address or password."))
        return _sign_in_page(request, status=401, email=email, next_url=next_url, error=message)
    response = web.redirect(web.safe_next(next_url))
    web.set_session(response, request, signed.token, app.config.admin.session_hours * 3600)
    response.delete_cookie(web.PRE_COOKIE, path=web.PATH)
    return response


async def _run(func, *args, **kwargs):
    """A blocking action (argon2, the database) off the event loop."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(func, *args, **kwargs)


@router.post("/sign-out")
def sign_out(request: Request, fields: dict = Depends(web.form),
             who: admins.Current = Depends(web.signed_in)) -> Response:
    app = gateway_app(request)
    admins.sign_out(app, who, client=web.client(request))
    shutil.rmtree(drafts(app, who), ignore_errors=True)  # the session's unsaved drafts go with it
    response = web.redirect(f"{web.PATH}/sign-in")
    web.clear_session(response, request)
    return response


@router.post("/language")
def language(request: Request, fields: dict = Depends(web.form),
             who: admins.Current = Depends(web.signed_in)) -> Response:
    try:
        admins.set_language(gateway_app(request), who, fields.get("language", ""), client=web.client(request))
    except Refused:
        pass
    return web.redirect(web.safe_next(fields.get("next")))
