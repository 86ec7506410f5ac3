"""The admin console's accounts and sessions: who may sign in, and the sessions they hold.

A password is kept as an argon2id hash (argon2-cffi, its recommended parameters: memory-
hard, salted, with the parameters in the hash so a later change re-hashes at the next
sign-in), never in clear.  A sign-in that fails counts against the account; after
``[admin] max_failures`` in a row the account is locked for ``lock_minutes`` (a correct
password then is refused too, and says so only as "locked").  A session is a random token
in the cookie and its SHA-256 in the database, with the CSRF token of its forms; signing
out ends it for good, on every instance.  Every change is in the audit log (store.audit).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel import col, select

from gateway.errors import NotFound, Refused
from store import audit
from store.addresses import InvalidAddress, mailbox
from store.db import session_for
from store.models import AdminSession, AdminUser, utcnow

_HASHER = PasswordHasher()
MIN_PASSWORD = 12
LANGUAGES = ("fr", "nl", "en", "de")
# A hash to verify against when the address is unknown: the answer takes as long as for
# a known one, so timing does not tell which addresses are admins.
_DUMMY = _HASHER.hash("not-a-password-" + secrets.token_hex(8))


class SignInRefused(Refused):
    """A sign-in refused: ``locked`` when the account is locked (for the page's words)."""

    def __init__(self, message: str, locked: bool = False):
        super().__init__(message)
        self.locked = locked


@dataclass(frozen=True)
class Signed:
    """A session just opened: the cookie's token (shown once), its CSRF token, the admin."""

    token: str
    csrf: str
    admin_id: int
    email: str
    language: str
    expires_at: datetime


@dataclass(frozen=True)
class Current:
    """The admin a valid session token stands for."""

    session_id: int
    admin_id: int
    email: str
    language: str
    csrf: str
    expires_at: datetime

    @property
    def actor(self) -> str:
        return f"admin:{self.email}"


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _address(email: str) -> str:
    try:
        return mailbox(email or "").addr_spec.lower()
    except InvalidAddress as exc:
        raise Refused(f"{email!r} is not an e-mail address: {exc}") from None


def add_admin(app, email: str, password: str, *, language: str = "en", actor: str = "cli") -> AdminUser:
    """A new admin, or a new password for an existing one (which ends their sessions)."""
    email = _address(email)
    if len(password or "") < MIN_PASSWORD:
        raise Refused(f"the password needs at least {MIN_PASSWORD} characters")
    if language not in LANGUAGES:
        raise Refused(f"language {language!r}: one of {', '.join(LANGUAGES)}")
    with session_for(app.engine) as session:
        admin = session.exec(select(AdminUser).where(AdminUser.email == email)).first()
        before = None
        if admin is None:
            admin = AdminUser(email=email, password_hash=_HASHER.hash(password), language=language)
            action = "admin.add"
        else:
            before = {"language": admin.language, "disabled": admin.disabled}
            admin.password_hash, admin.language, admin.failures, admin.locked_until = (
                _HASHER.hash(password), language, 0, None)
            action = "admin.password"
            _end_all(session, admin.id)
        session.add(admin)
        session.flush()
        audit.record(session, actor, action, f"admin:{email}", before=before,
                     after={"language": language, "disabled": False})
        session.commit()
        session.refresh(admin)
        return admin


def list_admins(app) -> list[AdminUser]:
    with session_for(app.engine) as session:
        return list(session.exec(select(AdminUser).order_by(col(AdminUser.email))))


def sign_in(app, email: str, password: str, *, client: str = "", now: datetime | None = None) -> Signed:
    """A new session for ``email`` if ``password`` is theirs and the account is not
    locked; raises SignInRefused (one message for an unknown address and a wrong password)."""
    settings = app.config.admin
    now = now or utcnow()
    email = (email or "").strip().lower()
    with session_for(app.engine) as session:
        admin = session.exec(select(AdminUser).where(AdminUser.email == email)).first()
        if admin is None or admin.disabled:
            _verify(_DUMMY, password)
            raise SignInRefused("wrong address or password")
        locked = _aware(admin.locked_until)
        if locked is not None and locked > now:
            audit.record(session, f"admin:{email}", "admin.sign-in-locked", f"admin:{email}", client=client, at=now)
            session.commit()
            raise SignInRefused("this account is locked for a while after too many failed sign-ins", locked=True)
        if not _verify(admin.password_hash, password):
            before = {"failures": admin.failures}
            admin.failures += 1
            if admin.failures >= settings.max_failures:
                admin.locked_until = now + timedelta(minutes=settings.lock_minutes)
                admin.failures = 0
            session.add(admin)
            audit.record(session, f"admin:{email}", "admin.sign-in-failed", f"admin:{email}", before=before,
                         after={"failures": admin.failures, "locked_until": admin.locked_until}, client=client,
                         at=now)
            session.commit()
            if admin.locked_until is not None and _aware(admin.locked_until) > now:
                raise SignInRefused("this account is locked for a while after too many failed sign-ins", locked=True)
            raise SignInRefused("wrong address or password")
        if _HASHER.check_needs_rehash(admin.password_hash):
            admin.password_hash = _HASHER.hash(password)
        admin.failures, admin.locked_until = 0, None
        session.add(admin)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = now + timedelta(hours=settings.session_hours)
        session.add(AdminSession(token_hash=_digest(token), admin_id=admin.id, csrf=csrf, created_at=now,
                                 expires_at=expires, client=client))
        audit.record(session, f"admin:{email}", "admin.sign-in", f"admin:{email}", client=client, at=now)
        session.commit()
        return Signed(token, csrf, admin.id, admin.email, admin.language, expires)


def _verify(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password or "")
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def current(app, token: str | None, *, now: datetime | None = None) -> Current | None:
    """The admin of a valid session ``token``: not ended, not expired, account enabled."""
    if not token:
        return None
    now = now or utcnow()
    with session_for(app.engine) as session:
        found = session.exec(select(AdminSession, AdminUser).join(AdminUser, AdminUser.id == AdminSession.admin_id)
                             .where(AdminSession.token_hash == _digest(token))).first()
    if found is None:
        return None
    row, admin = found
    if row.ended_at is not None or _aware(row.expires_at) <= now or admin.disabled:
        return None
    return Current(row.id, admin.id, admin.email, admin.language, row.csrf, _aware(row.expires_at))


def sign_out(app, who: Current, *, client: str = "", now: datetime | None = None) -> None:
    """End the session for good: its token is refused from now on, everywhere."""
    now = now or utcnow()
    with session_for(app.engine) as session:
        row = session.get(AdminSession, who.session_id)
        if row is not None and row.ended_at is None:
            row.ended_at = now
            session.add(row)
        audit.record(session, who.actor, "admin.sign-out", f"admin:{who.email}", client=client, at=now)
        session.commit()


def set_language(app, who: Current, language: str, *, client: str = "") -> None:
    """The console's language for this admin."""
    if language not in LANGUAGES:
        raise Refused(f"language {language!r}: one of {', '.join(LANGUAGES)}")
    with session_for(app.engine) as session:
        admin = session.get(AdminUser, who.admin_id)
        if admin is None:
            raise NotFound("no such admin")
        before = admin.language
        admin.language = language
        session.add(admin)
        audit.record(session, who.actor, "admin.language", f"admin:{who.email}", before={"language": before},
                     after={"language": language}, client=client)
        session.commit()


def _end_all(session, admin_id: int) -> None:
    for row in session.exec(select(AdminSession).where(AdminSession.admin_id == admin_id,
                                                       col(AdminSession.ended_at).is_(None))):
        row.ended_at = utcnow()
        session.add(row)
