"""The secret that signs reply, bounce and approval addresses (issue 15, item 3): never a
well-known one; made at random and kept when none is set (a file of mode 0600 with
SQLite, the database with PostgreSQL, shared by every instance); a previous one still
accepted for a configured period after a rotation.  Through the real command line where
start-up is the point, on SQLite and PostgreSQL where the database matters."""

from __future__ import annotations

import email
import email.policy
import os
import stat
import threading
from datetime import datetime, timedelta, timezone
from email.utils import getaddresses

import pytest
from sqlmodel import select

from conftest import run_gateway
from gateway.app import App
from gateway.config import load_config
from gateway.tokens import bounce_address, reply_address, verified_reply
from gateway.outbound.outbox import render_pending
from store.db import session_for
from store.models import Outbox, Secret
from harness.replies import deliver, first_mail, gmail_reply

MARIE = "marie.dupont@client.be"


def app_in(folder, database_url: str, toml: str = "", env: dict | None = None) -> App:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(f'[database]\nurl = "{database_url}"\n' + toml)
    return App(load_config(folder / "config.toml", env=env or {}))


def reply_to_of(row: Outbox) -> str:
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    return getaddresses([str(msg["Reply-To"])])[0][1]


def outbox(app: App) -> list[Outbox]:
    render_pending(app.engine, app.notifier)
    with session_for(app.engine) as s:
        rows = list(s.exec(select(Outbox).order_by(Outbox.id)))
        for r in rows:
            s.expunge(r)
        return rows


# Made and kept ------------------------------------------------------------------------
def test_without_a_secret_one_is_made_once_and_kept_in_a_private_file(tmp_path):
    """SQLite: the first command makes <data_dir>/secret (mode 0600, 32 random bytes as
    hex); the next commands, and the processes of serve, sign with the same."""
    mail = tmp_path / "m.eml"
    mail.write_bytes(first_mail(MARIE, "Marie", "Imprimante", "En panne.", mid="s1@client.be"))
    run_gateway("ingest", "--no-deliver", str(mail), cwd=tmp_path)
    kept = tmp_path / "var" / "secret"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    value = kept.read_text().strip()
    assert len(value) == 64 and int(value, 16) >= 0
    # Another command, another process: the same secret, so the first mail's address verifies.
    second = tmp_path / "n.eml"
    second.write_bytes(first_mail(MARIE, "Marie", "Écran", "Noir.", mid="s2@client.be"))
    run_gateway("ingest", "--no-deliver", str(second), cwd=tmp_path)
    assert kept.read_text().strip() == value
    from gateway.config import Config

    app = App(Config(base_dir=str(tmp_path)))
    try:
        rows = outbox(app)
        assert len(rows) == 2
        for row, number in zip(rows, ("INC-000001", "INC-000002")):
            assert verified_reply(value, reply_to_of(row)) == (number, None)
        assert app.config.gateway.secret == value
    finally:
        app.engine.dispose()


def test_processes_starting_at_once_keep_one_secret(tmp_path, database_url):
    """Several instances starting at the same moment (threads here, each its own App and
    engine): one secret is kept and all use it; on PostgreSQL in the table, inserted once
    (several machines share the database, not a folder), on SQLite in the file."""
    apps = [app_in(tmp_path / f"node{i}" if database_url.startswith("postgresql") else tmp_path, database_url)
            for i in range(6)]
    barrier = threading.Barrier(len(apps))
    found: list[str] = []

    def start(app: App) -> None:
        barrier.wait()
        found.append(app.config.gateway.secret)

    threads = [threading.Thread(target=start, args=(a,)) for a in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(found) == len(apps) and len(set(found)) == 1 and len(found[0]) == 64
        with session_for(apps[0].engine) as s:
            rows = s.exec(select(Secret)).all()
        if database_url.startswith("postgresql"):
            assert [(r.name, r.value) for r in rows] == [("reply", found[0])]
            assert not any((tmp_path / f"node{i}" / "var" / "secret").exists() for i in range(6))
        else:
            assert rows == [] and (tmp_path / "var" / "secret").read_text().strip() == found[0]
        # A later start reads it back.
        assert app_in(tmp_path / "later", database_url).config.gateway.secret == found[0] \
            if database_url.startswith("postgresql") else True
    finally:
        for app in apps:
            app.engine.dispose()


def test_a_configured_secret_wins_and_nothing_is_made(tmp_path, database_url):
    value = "a1" * 24
    app = app_in(tmp_path, database_url, f'[gateway]\nsecret = "{value}"\n')
    try:
        assert app.config.gateway.secret == value
        with session_for(app.engine) as s:
            assert s.exec(select(Secret)).all() == []
        assert not (tmp_path / "var" / "secret").exists()
    finally:
        app.engine.dispose()


def test_a_kept_secret_readable_by_others_is_closed(tmp_path, caplog):
    kept = tmp_path / "var" / "secret"
    kept.parent.mkdir(parents=True)
    kept.write_text("b2" * 32 + "\n")
    os.chmod(kept, 0o644)
    app = app_in(tmp_path, f"sqlite:///{tmp_path / 'var' / 'gateway.db'}")
    try:
        assert app.config.gateway.secret == "b2" * 32
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        assert "readable by other users" in caplog.text
    finally:
        app.engine.dispose()


# Refused ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["file", "environment"])
@pytest.mark.parametrize("value, says", [
    ("change-me", "is the example of the documentation"),
    ("x" * 31, "31 bytes, at least 32 are needed"),
])
def test_a_well_known_or_short_secret_stops_start_up(tmp_path, how, value, says):
    env = {"GATEWAY_GATEWAY_SECRET": value} if how == "environment" else {}
    if how == "file":
        (tmp_path / "config.toml").write_text(f'[gateway]\nsecret = "{value}"\n')
    for command in (["serve"], ["process"]):
        proc = run_gateway(*command, cwd=tmp_path, env=env, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 2, err
        assert err.startswith("gateway: configuration error: gateway.secret: ") and says in err
        assert err.count("\n") == 1  # one clear line, no traceback
        assert value not in err or value == "change-me"  # a real secret is never printed
    assert not (tmp_path / "var").exists()  # nothing was started


def test_a_kept_secret_that_is_damaged_stops_start_up_naming_it(tmp_path):
    kept = tmp_path / "var" / "secret"
    kept.parent.mkdir(parents=True)
    kept.write_text("short\n")
    os.chmod(kept, 0o600)
    proc = run_gateway("process", cwd=tmp_path, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1, err
    assert "gateway.secret" in err and str(kept) in err
    assert kept.read_text() == "short\n"  # never replaced by a new one


def test_a_previous_secret_needs_its_end_and_must_be_strong(tmp_path):
    strong, other = "c3" * 20, "d4" * 20
    for toml, says in [(f'previous_secret = "{other}"\n', "previous_secret_until: needed"),
                       ('previous_secret = "change-me"\nprevious_secret_until = "2027-01-01"\n',
                        "gateway.previous_secret: 'change-me' is the example"),
                       (f'previous_secret = "{other}"\nprevious_secret_until = "next month"\n',
                        "is not an ISO 8601 date")]:
        (tmp_path / "config.toml").write_text(f'[gateway]\nsecret = "{strong}"\n{toml}')
        proc = run_gateway("process", cwd=tmp_path, check=False)
        assert proc.returncode == 2 and says in proc.stderr.decode(), proc.stderr


# Rotation ------------------------------------------------------------------------------
def test_after_a_rotation_the_previous_secret_is_accepted_until_its_end(tmp_path, database_url):
    """Marie's ticket was mailed under the old secret; the desk rotates: the new secret
    signs, the old one still verifies the addresses in the mails she has, until the end
    the desk set; after it, such an address is nothing (her reply opens a new ticket)."""
    old, new = "0f" * 32, "e1" * 32
    before = app_in(tmp_path, database_url, f'[gateway]\nsecret = "{old}"\n')
    out = deliver(before, first_mail(MARIE, "Marie", "Imprimante", "En panne.", mid="rot-1@client.be"))
    number = out.ticket
    old_reply_to = reply_to_of(outbox(before)[-1])
    before.engine.dispose()

    def reply_with_old_address(app: App, mid: str, text: str):
        return deliver(app, gmail_reply(MARIE, "Marie", "Photo", text, mid=mid, in_reply_to=None,
                                        to=old_reply_to), rcpt=(old_reply_to,))

    until = (datetime.now(timezone.utc) + timedelta(days=30)).date().isoformat()
    rotating = app_in(tmp_path, database_url, f'[gateway]\nsecret = "{new}"\nprevious_secret = "{old}"\n'
                                              f'previous_secret_until = "{until}"\n')
    try:
        out = reply_with_old_address(rotating, "rot-2@client.be", "Voici la photo de l'écran.")
        assert (out.outcome, out.ticket, out.detail) == ("appended", number, "found by token")
        # New mails are signed with the new secret only.
        deliver(rotating, first_mail(MARIE, "Marie", "Écran", "Noir.", mid="rot-3@client.be"))
        newest = reply_to_of(outbox(rotating)[-1])
        assert verified_reply(new, newest) and not verified_reply(old, newest)
        assert newest == reply_address(new, "helpdesk@localhost", "INC-000002")
        # A bounce address signed with the old secret is still ours for the period.
        assert rotating.config.gateway.verifying_secrets() == (new, old)
    finally:
        rotating.engine.dispose()

    ended = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    after = app_in(tmp_path, database_url, f'[gateway]\nsecret = "{new}"\nprevious_secret = "{old}"\n'
                                           f'previous_secret_until = "{ended}"\n')
    try:
        out = reply_with_old_address(after, "rot-4@client.be", "Et voici celle de l'imprimante.")
        assert out.outcome == "created" and out.ticket != number
        assert after.config.gateway.verifying_secrets() == (new,)
    finally:
        after.engine.dispose()


def test_a_bounce_address_of_the_previous_secret_is_recognised_during_the_rotation(tmp_path):
    """[outbound] verp: a bounce to the envelope sender of a mail sent before the rotation
    still names that mail."""
    from harness.ingest import dsn, receive_bounce

    old, new = "0f" * 32, "e1" * 32
    until = (datetime.now(timezone.utc) + timedelta(days=30)).isoformat()
    app = app_in(tmp_path, f"sqlite:///{tmp_path / 'var' / 'gateway.db'}",
                 f'[gateway]\nsecret = "{new}"\nprevious_secret = "{old}"\nprevious_secret_until = "{until}"\n')
    try:
        deliver(app, first_mail("jane@example.org", "Jane", "VPN", "VPN down.", mid="b1@example.org"))
        (row,) = outbox(app)
        out = receive_bounce(app, dsn(bounce_address(old, "helpdesk@localhost", row.id)),
                      bounce_address(old, "helpdesk@localhost", row.id))
        assert out.outcome == "bounce" and out.ticket == "INC-000001", out
        assert outbox(app)[0].state == "failed"
        # Signed with neither secret: names no mail of ours.
        forged = bounce_address("9a" * 32, "helpdesk@localhost", row.id)
        assert receive_bounce(app, dsn(forged, status="5.1.2"), forged).ticket is None
    finally:
        app.engine.dispose()
