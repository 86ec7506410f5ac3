"""API tokens: made, listed, revoked, and checked for the HTTP API (gateway.http.api).

A token is ``gwt_`` and 43 characters of ``secrets.token_urlsafe`` (256 random bits): it
is shown once, when made; only its SHA-256 is stored.  A random token needs no slow
hash (nothing to guess from its SHA-256), and the lookup is by the hash's index, the
match confirmed with ``hmac.compare_digest`` so that no comparison's time tells how much
of a guess was right.  A revoked token is refused from the next request on: the check
reads the row every time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from gateway.errors import NotFound, Refused
from store.models import ApiToken, utcnow

ROLES = ("read", "agent", "admin")
PREFIX = "gwt_"


@dataclass(frozen=True)
class Caller:
    """Who calls the API: the token's name and role (never the token)."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        """admin may all an agent may, an agent all a reader may."""
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def actor(self) -> str:
        return f"token:{self.name}"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def create(session: Session, name: str, role: str, now: datetime | None = None) -> tuple[ApiToken, str]:
    """A new token (the row, and the token to show once); the caller commits."""
    name = (name or "").strip()
    if not name or len(name) > 100 or any(c.isspace() or not c.isprintable() for c in name):
        raise Refused(f"a token's name is one word of printable characters, up to 100 ({name!r} is not)")
    if role not in ROLES:
        raise Refused(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if session.exec(select(ApiToken.id).where(ApiToken.name == name)).first() is not None:
        raise Refused(f"a token named {name!r} exists already (revoked ones keep their name)")
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, role=role, token_hash=digest(token), prefix=token[:8], created_at=now or utcnow())
    session.add(row)
    session.flush()
    return row, token


def listing(session: Session) -> list[ApiToken]:
    return list(session.exec(select(ApiToken).order_by(col(ApiToken.id))))


def revoke(session: Session, name: str, now: datetime | None = None) -> ApiToken:
    """Revoke the token ``name`` (a revoked one stays revoked); the caller commits."""
    row = session.exec(select(ApiToken).where(ApiToken.name == name)).first()
    if row is None:
        raise NotFound(f"no API token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
        session.add(row)
    return row


def check(session: Session, token: str) -> Caller | None:
    """The caller a presented token is, or None (unknown, malformed or revoked)."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    wanted = digest(token)
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == wanted)).first()
    if row is None or not hmac.compare_digest(row.token_hash, wanted) or row.revoked_at is not None:
        return None
    return Caller(row.name, row.role)
