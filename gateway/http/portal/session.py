"""Who is signed in on the customers' pages, and the forms' CSRF tokens.

A session is a cookie signed with the gateway's secret (gateway.tokens.signature):
``<person id>.<scope>.<until>.<nonce>.<signature>``.  Its scope is ``all`` after a
sign-in link (every ticket the person may see), or one ticket's number after that
ticket's link from a mail (that ticket only).  Nothing is kept on the server: a session
ends when its time is up, or when the person signs out (the cookie is dropped).

Every form carries a CSRF token: the signature of a random value kept in a cookie of
its own (``gw_portal_csrf``, set by the page that shows the form), so a page elsewhere
cannot post a form in the customer's name; a POST without it, or with another, is
refused before anything is read or done.  Cookies are HttpOnly, SameSite=Lax, and
Secure when the public address is https.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from gateway.tokens import signature, verified_signature

SESSION_COOKIE = "gw_portal"
CSRF_COOKIE = "gw_portal_csrf"
LANGUAGE_COOKIE = "gw_portal_lang"
ALL = "all"
_SESSION = re.compile(r"^(?P<person>[1-9]\d{0,11})\.(?P<scope>all|(?:INC|SR|CHG)-\d{6})\.(?P<until>\d{1,12})"
                      r"\.(?P<nonce>[0-9a-f]{16})\.(?P<sig>[0-9a-f]{32})$")


@dataclass(frozen=True)
class Session:
    person_id: int
    scope: str  # ALL, or the one ticket number a mail's link opened

    @property
    def everything(self) -> bool:
        return self.scope == ALL

    def allows(self, number: str) -> bool:
        return self.everything or self.scope == number.strip().upper()


def _secure(config) -> bool:
    return config.public_url.startswith("https://")


def read(request: Request, config, now) -> Session | None:
    value = request.cookies.get(SESSION_COOKIE, "")
    m = _SESSION.match(value)
    if not m:
        return None
    payload = value.rsplit(".", 1)[0]
    if not verified_signature(config.gateway.verifying_secrets(), "portal-session", payload, m.group("sig")):
        return None
    if int(m.group("until")) < now.timestamp():
        return None
    return Session(int(m.group("person")), m.group("scope"))


def start(response: Response, config, person_id: int, scope: str, now) -> None:
    until = int(now.timestamp()) + config.portal.session_hours * 3600
    payload = f"{person_id}.{scope}.{until}.{secrets.token_hex(8)}"
    response.set_cookie(SESSION_COOKIE, f"{payload}.{signature(config.gateway.secret, 'portal-session', payload)}",
                        max_age=config.portal.session_hours * 3600, httponly=True, samesite="lax",
                        secure=_secure(config), path="/portal")


def end(response: Response, config) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/portal", httponly=True, samesite="lax", secure=_secure(config))


def csrf_nonce(request: Request) -> tuple[str, bool]:
    """The CSRF cookie's value, and whether it is new (then the page must set it)."""
    value = request.cookies.get(CSRF_COOKIE, "")
    if re.fullmatch(r"[0-9a-f]{32}", value):
        return value, False
    return secrets.token_hex(16), True


def csrf_token(config, nonce: str) -> str:
    return signature(config.gateway.secret, "portal-csrf", nonce)


def keep_csrf(response: Response, config, nonce: str) -> None:
    response.set_cookie(CSRF_COOKIE, nonce, httponly=True, samesite="lax", secure=_secure(config), path="/portal")


def csrf_ok(request: Request, config, token: str | None) -> bool:
    nonce = request.cookies.get(CSRF_COOKIE, "")
    return bool(token and re.fullmatch(r"[0-9a-f]{32}", nonce)
                and verified_signature(config.gateway.verifying_secrets(), "portal-csrf", nonce, token))
