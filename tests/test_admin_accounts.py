"""The console's accounts and sessions (issue 23), on SQLite and PostgreSQL: argon2 hashes,
the lock after failed sign-ins, sessions that expire and end for good at sign-out, each
change in the audit log."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import select

from gateway.actions import admins
from gateway.errors import Refused
from store.audit import entries
from store.db import session_for
from store.models import AdminSession, AdminUser, utcnow

PASSWORD = "correct horse battery staple"


def test_password_kept_as_argon2_and_sign_in_gives_a_session_that_sign_out_ends(gw):
    admins.add_admin(gw, "Ann.Admin@Example.com", PASSWORD, language="fr")
    with session_for(gw.engine) as session:
        stored = session.exec(select(AdminUser)).one()
    assert stored.email == "ann.admin@example.com"
    assert stored.password_hash.startswith("$argon2id$") and PASSWORD not in stored.password_hash

    signed = admins.sign_in(gw, "ann.admin@example.com", PASSWORD, client="192.0.2.7")
    with session_for(gw.engine) as session:
        row = session.exec(select(AdminSession)).one()
    assert row.token_hash != signed.token and signed.token not in row.token_hash  # only its digest is kept
    who = admins.current(gw, signed.token)
    assert who is not None and (who.email, who.language, who.csrf) == ("ann.admin@example.com", "fr", signed.csrf)

    admins.sign_out(gw, who, client="192.0.2.7")
    assert admins.current(gw, signed.token) is None
    with session_for(gw.engine) as session:
        actions = [(e.action, e.actor, e.client) for e in entries(session, target="admin:ann.admin@example.com")]
    assert actions == [("admin.sign-out", "admin:ann.admin@example.com", "192.0.2.7"),
                       ("admin.sign-in", "admin:ann.admin@example.com", "192.0.2.7"),
                       ("admin.add", "cli", "")]


def test_a_session_expires(gw):
    admins.add_admin(gw, "ann@example.com", PASSWORD)
    signed = admins.sign_in(gw, "ann@example.com", PASSWORD)
    hours = gw.config.admin.session_hours
    assert admins.current(gw, signed.token, now=utcnow() + timedelta(hours=hours) - timedelta(minutes=1))
    assert admins.current(gw, signed.token, now=utcnow() + timedelta(hours=hours, minutes=1)) is None


def test_repeated_failures_lock_the_account_even_for_the_right_password_until_the_lock_ends(gw):
    admins.add_admin(gw, "ann@example.com", PASSWORD)
    settings = gw.config.admin
    now = utcnow()
    for attempt in range(settings.max_failures):
        with pytest.raises(admins.SignInRefused) as refused:
            admins.sign_in(gw, "ann@example.com", "wrong password!", now=now)
        assert refused.value.locked == (attempt == settings.max_failures - 1)
    with pytest.raises(admins.SignInRefused) as refused:
        admins.sign_in(gw, "ann@example.com", PASSWORD, now=now + timedelta(minutes=1))
    assert refused.value.locked
    later = now + timedelta(minutes=settings.lock_minutes, seconds=1)
    assert admins.sign_in(gw, "ann@example.com", PASSWORD, now=later).token
    with session_for(gw.engine) as session:
        failed = [json.loads(e.after) for e in entries(session, target="admin:ann@example.com")
                  if e.action == "admin.sign-in-failed"]
    assert [f["failures"] for f in reversed(failed)] == [*range(1, settings.max_failures), 0]


def test_an_unknown_address_and_a_wrong_password_get_the_same_answer(gw):
    admins.add_admin(gw, "ann@example.com", PASSWORD)
    with pytest.raises(admins.SignInRefused) as unknown:
        admins.sign_in(gw, "nobody@example.com", PASSWORD)
    with pytest.raises(admins.SignInRefused) as wrong:
        admins.sign_in(gw, "ann@example.com", "not the password")
    assert str(unknown.value) == str(wrong.value) and not unknown.value.locked


def test_a_new_password_ends_the_admins_sessions_and_short_passwords_are_refused(gw):
    admins.add_admin(gw, "ann@example.com", PASSWORD)
    signed = admins.sign_in(gw, "ann@example.com", PASSWORD)
    admins.add_admin(gw, "ann@example.com", PASSWORD + " again")
    assert admins.current(gw, signed.token) is None
    with pytest.raises(Refused, match="at least"):
        admins.add_admin(gw, "bob@example.com", "short")
    with pytest.raises(Refused, match="not an e-mail address"):
        admins.add_admin(gw, "bob at example", PASSWORD)


def test_sign_in_attempts_of_one_client_are_capped_per_minute():
    from gateway.http.admin.auth import Attempts

    attempts = Attempts()
    assert all(attempts.allow("192.0.2.1", 3, now=100.0 + i) for i in range(3))
    assert not attempts.allow("192.0.2.1", 3, now=103.0)
    assert attempts.allow("192.0.2.2", 3, now=103.0)  # another client is not held up
    assert attempts.allow("192.0.2.1", 3, now=160.5)  # the first attempt is a minute old
