"""IMAP ingestion against a real Dovecot (tests/harness/dovecot.py): mail appended over IMAP
becomes tickets and is moved out, a restart mid-batch loses and doubles nothing, a
UIDVALIDITY reset makes no second ticket, failures end in the failed folder, IDLE is
fast, backfill reports progress and outcomes, and `imap check` names the failing step."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from conftest import free_port, run_gateway, write_config
from harness.dovecot import USER

from gateway.app import App
from gateway.ingest import imap
from gateway.config import load_config
from harness.dovecot import dovecot, dovecot_ok, make_dovecot  # noqa: F401 (fixtures)
from harness.imap import ENV, Running, config_text, ids, inbound, mail, make_app, tickets, wait_until

# Fixtures -----------------------------------------------------------------------------------
# Tests ---------------------------------------------------------------------------------------
def test_appended_mails_become_tickets_and_end_in_processed(tmp_path, dovecot, database_url):
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot, database_url=database_url, process="service-request")
    dovecot.append("INBOX", [mail(i, tag) for i in range(3)])
    with Running(app):
        wait_until(lambda: len(dovecot.message_ids("processed")) == 3)
    assert dovecot.message_ids("INBOX") == []
    assert dovecot.message_ids("processed") == ids(tag, 3)
    assert dovecot.message_ids("failed") == []
    made = tickets(app)
    assert len(made) == 3
    # The mailbox's process wins over address routing.
    assert all(t.process == "service-request" and t.number.startswith("SR-") for t in made)
    rows = inbound(app)
    assert {r.source for r in rows} == {"imap:desk"} and {r.process for r in rows} == {"service-request"}
    assert sorted(r.message_id for r in rows) == [m.strip("<>") for m in ids(tag, 3)]  # normalised
    # Fetched with BODY.PEEK: the moved messages were not marked read by us.
    with dovecot.client() as c:
        c.select_folder("processed", readonly=True)
        flags = c.get_flags(c.search(["ALL"]))
    assert all(b"\\Seen" not in f for f in flags.values())
    app.engine.dispose()


@pytest.mark.parametrize("reset_uidvalidity", [False, True], ids=["restart", "restart+new-uidvalidity"])
def test_server_restart_mid_batch_loses_and_doubles_nothing(tmp_path, dovecot, caplog, reset_uidvalidity):
    """Dovecot is stopped after the 5th mail is stored and processed but before it is
    moved (the worst moment), kept down through several retries, and started again."""
    caplog.set_level(logging.DEBUG, logger="gateway.imap")
    tag = uuid.uuid4().hex[:8]
    n = 20
    app = make_app(tmp_path, dovecot)
    dovecot.append("INBOX", [mail(i, tag) for i in range(n)])
    with dovecot.client() as c:
        before = c.select_folder("INBOX")[b"UIDVALIDITY"]
    calls = []
    restarted = threading.Event()

    def bring_back():
        time.sleep(2.0)  # several reconnect attempts fail meanwhile (backoff 0.2, 0.4, 0.8 s)
        if reset_uidvalidity:
            maildir = dovecot.home / "Maildir"
            for f in maildir.iterdir():
                if f.name.startswith(("dovecot-uidlist", "dovecot.index", "dovecot-uidvalidity")):
                    f.unlink()
        dovecot.start()
        restarted.set()

    def wrap(process):
        def fn(inbound_id):
            outcome = process(inbound_id)
            calls.append(inbound_id)
            if len(calls) == 5:
                dovecot.stop()  # committed, processed, not moved yet
                threading.Thread(target=bring_back, daemon=True).start()
            return outcome
        return fn

    with Running(app, wrap=wrap):
        wait_until(lambda: restarted.is_set(), timeout=30)
        wait_until(lambda: len(dovecot.message_ids("processed")) >= n, timeout=60)
    assert dovecot.message_ids("INBOX") == []
    assert dovecot.message_ids("processed") == ids(tag, n)
    assert len(tickets(app)) == n
    assert len({t.number for t in tickets(app)}) == n
    rows = inbound(app)
    assert len(rows) == n and all(r.state == "processed" for r in rows)
    # The 5th mail was fetched twice; the second time the store recognised it.
    assert len(calls) == n + 1
    lost = [r for r in caplog.records if "connection failed or lost" in r.getMessage()]
    back = [r for r in caplog.records if "connected again" in r.getMessage()]
    retries = [r for r in caplog.records if "still unreachable" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(retries) >= 2  # retried several times, logged at WARNING only once
    if reset_uidvalidity:
        with dovecot.client() as c:
            after = c.select_folder("INBOX")[b"UIDVALIDITY"]
        assert after != before
        assert any("UIDVALIDITY" in r.getMessage() for r in caplog.records)
    app.engine.dispose()


def test_parse_failure_ends_in_failed_and_is_quarantined(tmp_path, dovecot):
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot)
    bad = mail(0, tag, extra_headers="X-Junk: " + "a" * 70_000 + "\r\n")  # header above max_header_length
    dovecot.append("INBOX", [bad, mail(1, tag)])
    with Running(app):
        wait_until(lambda: len(dovecot.message_ids("failed")) + len(dovecot.message_ids("processed")) == 2)
    assert dovecot.message_ids("failed") == [f"<{tag}-0@example.org>"]
    assert dovecot.message_ids("processed") == [f"<{tag}-1@example.org>"]
    assert dovecot.message_ids("INBOX") == []
    states = {r.message_id.strip("<>").split("@")[0]: (r.state, r.detail) for r in inbound(app)}
    assert states[f"{tag}-0"][0] == "quarantined" and "header longer" in states[f"{tag}-0"][1]
    assert states[f"{tag}-1"][0] == "processed"
    assert len(tickets(app)) == 1
    app.engine.dispose()


def test_store_failure_ends_in_failed_never_deleted(tmp_path, dovecot):
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot)
    app.blobs  # created; now make its folder unusable: a file where the folder was
    blob_dir = app.config.blob_dir
    shutil.rmtree(blob_dir)
    blob_dir.write_text("not a folder")
    dovecot.append("INBOX", [mail(0, tag)])
    with Running(app):
        wait_until(lambda: len(dovecot.message_ids("failed")) == 1)
    assert dovecot.message_ids("failed") == [f"<{tag}-0@example.org>"]
    assert dovecot.message_ids("INBOX") == [] and dovecot.message_ids("processed") == []
    assert inbound(app) == []
    app.engine.dispose()


def test_retry_failed_moves_back_what_could_not_be_stored(tmp_path, dovecot):
    """After an outage: `gateway imap retry-failed` moves back to the inbox what the
    failed folder holds that is not in the gateway; the poller takes it again.  A mail
    the gateway quarantined (it knows why) stays in the failed folder."""
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot)
    no_sender = mail(1, tag).replace(b"From: User 1 <user1@example.org>\r\n", b"")
    dovecot.append("INBOX", [no_sender])
    with Running(app):  # quarantined: no sender to answer
        wait_until(lambda: len(dovecot.message_ids("failed")) == 1)
    blob_dir = app.config.blob_dir
    shutil.rmtree(blob_dir)
    blob_dir.write_text("not a folder")  # the disk "fails"
    dovecot.append("INBOX", [mail(0, tag)])
    with Running(app):
        wait_until(lambda: len(dovecot.message_ids("failed")) == 2)
    blob_dir.unlink()  # the outage is over

    out = run_gateway("--config", str(tmp_path / "config.toml"), "imap", "retry-failed", "desk", "--json",
                      cwd=tmp_path, env=ENV)
    results = {r["message_id"]: r for r in json.loads(out.stdout)}
    assert results[f"{tag}-0@example.org"]["moved_to"] == "INBOX"
    assert results[f"{tag}-1@example.org"]["moved_to"] is None
    assert "quarantined" in results[f"{tag}-1@example.org"]["detail"]
    assert dovecot.message_ids("INBOX") == [f"<{tag}-0@example.org>"]
    with Running(app):
        wait_until(lambda: len(tickets(app)) == 1)
        wait_until(lambda: dovecot.message_ids("processed") == [f"<{tag}-0@example.org>"])
    assert dovecot.message_ids("failed") == [f"<{tag}-1@example.org>"]
    app.engine.dispose()


def test_idle_picks_up_a_new_mail_in_under_two_seconds(tmp_path, dovecot, caplog):
    caplog.set_level(logging.INFO, logger="gateway.imap")
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot, poll_interval=600)  # polling cannot be what finds it
    with Running(app) as running:
        wait_until(running.poller.connected.is_set)
        time.sleep(0.5)  # the first (empty) pass is over; the poller is in IDLE
        dovecot.append("INBOX", [mail(0, tag)])
        elapsed = wait_until(lambda: len(tickets(app)) == 1, timeout=10, step=0.02)
    print(f"IDLE: new mail became a ticket in {elapsed:.2f} s")
    assert elapsed < 2.0, f"IDLE took {elapsed:.2f} s"
    assert dovecot.message_ids("processed") == [f"<{tag}-0@example.org>"]
    app.engine.dispose()


def test_idle_is_renewed_and_still_works(tmp_path, dovecot, caplog, monkeypatch):
    """IDLE is left and re-issued on a timer (RFC 2177's 29 minutes, 20 here; 0.3 s in
    the test), and mail still arrives promptly afterwards."""
    caplog.set_level(logging.DEBUG, logger="gateway.imap")
    monkeypatch.setattr(imap.poller, "IDLE_RENEW_SECONDS", 0.3)
    monkeypatch.setattr(imap.poller, "STOP_CHECK_SECONDS", 0.1)
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot, poll_interval=600)
    with Running(app) as running:
        wait_until(running.poller.connected.is_set)
        wait_until(lambda: sum("renewing IDLE" in r.getMessage() for r in caplog.records) >= 3, timeout=10)
        dovecot.append("INBOX", [mail(0, tag)])
        elapsed = wait_until(lambda: len(tickets(app)) == 1, timeout=10, step=0.02)
    assert elapsed < 2.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    app.engine.dispose()


def test_same_message_twice_in_the_folder_is_one_ticket(tmp_path, dovecot):
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot)
    dovecot.append("INBOX", [mail(0, tag), mail(0, tag)])
    with Running(app):
        wait_until(lambda: len(dovecot.message_ids("processed")) == 2)
    assert len(tickets(app)) == 1 and len(inbound(app)) == 1
    assert dovecot.message_ids("INBOX") == []
    app.engine.dispose()


@pytest.mark.parametrize("caps", ["IMAP4rev1 LITERAL+ UIDPLUS", "IMAP4rev1 LITERAL+"], ids=["uidplus", "plain"])
def test_without_move_and_idle_it_polls_and_copies_then_expunges(tmp_path, make_dovecot, caps):
    """Dovecot told to advertise neither MOVE nor IDLE: polling, COPY + \\Deleted, then
    UID EXPUNGE of that message (UIDPLUS) or EXPUNGE (without)."""
    server = make_dovecot(f"protocol imap {{\n  imap_capability = {caps}\n}}\n")
    with server.client() as c:
        assert not c.has_capability("MOVE") and not c.has_capability("IDLE")
        assert c.has_capability("UIDPLUS") == ("UIDPLUS" in caps)
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, server, poll_interval=1)
    with Running(app) as running:
        wait_until(running.poller.connected.is_set)
        server.append("INBOX", [mail(i, tag) for i in range(3)])
        wait_until(lambda: len(server.message_ids("processed")) == 3, timeout=15)
    with server.client() as c:
        c.select_folder("INBOX", readonly=True)
        assert c.search(["ALL"]) == []  # expunged, not just flagged
    assert server.message_ids("processed") == ids(tag, 3)
    assert len(tickets(app)) == 3
    app.engine.dispose()


@pytest.mark.slow
def test_backfill_of_500_mails_shows_progress_and_summary(tmp_path, dovecot):
    tag = uuid.uuid4().hex[:8]
    write_config(tmp_path, config_text(dovecot))
    good = [mail(i, tag) for i in range(499)]
    bad = mail(499, tag, extra_headers="X-Junk: " + "a" * 70_000 + "\r\n")
    dovecot.append("INBOX", [*good, bad])
    proc = run_gateway("--config", str(tmp_path / "config.toml"), "imap", "backfill", "desk", cwd=tmp_path, env=ENV)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert "500/500" in err and "desk" in err  # tqdm's bar on stderr
    assert "500 message(s) read from 'INBOX'" in out
    assert "created          499" in out and "quarantined      1" in out
    assert "moved to 'processed': 499" in out and "moved to 'failed': 1" in out
    assert "tickets touched: 499" in out
    assert len(dovecot.message_ids("processed")) == 499 and dovecot.message_ids("INBOX") == []
    # Run again: nothing left, nothing doubled.
    again = run_gateway("--config", str(tmp_path / "config.toml"), "imap", "backfill", "desk", "--json",
                        "--no-progress", cwd=tmp_path, env=ENV)
    assert json.loads(again.stdout)["messages"] == 0


def test_backfill_since_takes_only_newer_mail(tmp_path, dovecot):
    tag = uuid.uuid4().hex[:8]
    write_config(tmp_path, config_text(dovecot))
    # Every date from the clock: a month ago is the limit, a year before it the old mail.
    now = datetime.now(timezone.utc)
    since = (now - timedelta(days=30)).date().isoformat()
    dovecot.append("INBOX", [mail(0, tag), mail(1, tag)], msg_time=now - timedelta(days=400))
    dovecot.append("INBOX", [mail(2, tag)], msg_time=now - timedelta(days=1))
    proc = run_gateway("--config", str(tmp_path / "config.toml"), "imap", "backfill", "desk", "--since", since,
                       "--json", cwd=tmp_path, env=ENV)
    summary = json.loads(proc.stdout)
    assert summary["messages"] == 1 and summary["outcomes"] == {"created": 1}
    assert dovecot.message_ids("INBOX") == ids(tag, 2)


def _check(tmp_path, server, env=ENV, **kw):
    write_config(tmp_path, config_text(server, **kw))
    proc = run_gateway("--config", str(tmp_path / "config.toml"), "imap", "check", "desk", cwd=tmp_path, env=env,
                       check=False)
    return proc.returncode, proc.stdout.decode()


def test_imap_check_passes_on_a_working_mailbox(tmp_path, dovecot):
    code, out = _check(tmp_path, dovecot)
    assert code == 0, out
    for step in ("credentials", "dns", "tcp", "greeting", "login", "folder"):
        assert step in out
    assert "all checks passed" in out and "'processed' missing: it will be created" in out


@pytest.mark.parametrize("case, step", [
    ("wrong password", "login"),
    ("missing folder", "folder"),
    ("closed port", "tcp"),
    ("tls on a plain port", "tls"),
    ("no password", "credentials"),
    ("unknown host", "dns"),
    ("token command fails", "credentials"),
])
def test_imap_check_names_the_failing_step(tmp_path, dovecot, case, step):
    kw, env = {}, ENV
    if case == "wrong password":
        env = {"TEST_IMAP_PASSWORD": "not-the-password"}
    elif case == "missing folder":
        kw["folder"] = "NoSuchFolder"
    elif case == "closed port":
        kw["port"] = free_port()
    elif case == "tls on a plain port":
        kw["security"] = "tls"
    elif case == "no password":
        kw["password_env"] = "TEST_IMAP_UNSET_VARIABLE"
    elif case == "unknown host":
        kw["host"] = "no-such-host.invalid"
    elif case == "token command fails":
        kw["password_env"] = ""
        kw["box_extra"] = 'oauth2_token_command = "sh -c \'echo token service down >&2; exit 3\'"\n'
    code, out = _check(tmp_path, dovecot, env=env, **kw)
    assert code == 1, out
    assert f"FAILED at step {step}:" in out, out
    # The steps before it are shown as passed, none after it is tried.
    rows = [line.split(None, 2) for line in out.splitlines() if not line.startswith("mailbox ")]
    assert [r[1] for r in rows] == ["ok"] * (len(rows) - 1) + ["FAILED"] and rows[-1][0] == step, out


def test_serve_runs_a_poller_per_mailbox(tmp_path, dovecot):
    """The real `gateway serve`: its worker reads the mailbox, makes the ticket, moves the
    mail; SIGTERM stops door, worker and poller cleanly."""
    import signal
    import subprocess
    import sys

    from conftest import ROOT, wait_for_port

    tag = uuid.uuid4().hex[:8]
    smtp_port = free_port()
    path = write_config(tmp_path, f"[smtp]\nport = {smtp_port}\n" + config_text(dovecot))
    env = dict(os.environ, **ENV)
    env.pop("GATEWAY_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(path), "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(smtp_port, proc=proc)
        dovecot.append("INBOX", [mail(0, tag)])
        wait_until(lambda: dovecot.message_ids("processed") == [f"<{tag}-0@example.org>"], timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    assert "mailbox desk: reading" in out and "poller stopped" in out, out
    app = App(load_config(path, env={}))
    assert [t.number for t in tickets(app)] == ["INC-000001"]
    app.engine.dispose()


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_imap_check_over_tls_names_an_untrusted_certificate(tmp_path, make_dovecot, security):
    server = make_dovecot(tls=True)
    port = server.tls_port if security == "tls" else server.port
    code, out = _check(tmp_path, server, security=security, port=port)
    assert code == 1 and f"FAILED at step {security}:" in out and "CERTIFICATE_VERIFY_FAILED" in out.upper(), out
    # Trusted through OpenSSL's own SSL_CERT_FILE (an internal CA): every step passes.
    code, out = _check(tmp_path, server, env={**ENV, "SSL_CERT_FILE": str(server.cert)}, security=security, port=port)
    assert code == 0, out
    assert ("TLS established" if security == "tls" else "STARTTLS established") in out


def test_too_large_mail_is_moved_to_failed_unread(tmp_path, dovecot):
    tag = uuid.uuid4().hex[:8]
    app = make_app(tmp_path, dovecot, top="[smtp]\nmax_message_size = 4000\n")
    big = mail(0, tag, extra_headers="X-Padding: " + "b" * 5000 + "\r\n")
    dovecot.append("INBOX", [big, mail(1, tag)])
    with Running(app):
        wait_until(lambda: len(dovecot.message_ids("failed")) + len(dovecot.message_ids("processed")) == 2)
    assert dovecot.message_ids("failed") == [f"<{tag}-0@example.org>"]
    # The too-large one is a header-only record (tests/test_imap_hostile.py), not a mail.
    assert sorted((r.message_id, r.outcome) for r in inbound(app)) == [
        (f"{tag}-0@example.org", "too-large"), (f"{tag}-1@example.org", "created")]
    app.engine.dispose()


def test_reading_the_processed_folder_is_refused_at_start(tmp_path):
    from gateway.config import ConfigError

    path = write_config(tmp_path, '[[mailboxes]]\nname = "desk"\nfolder = "processed"\n')
    with pytest.raises(ConfigError, match="cannot also be the processed"):
        load_config(path, env={})


@pytest.fixture
def token_service():
    """A token-info endpoint, as an OAuth2 provider has: "good-token" is valid for the
    test user, anything else is refused.  Dovecot asks it for every XOAUTH2 login."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path.rpartition("=")[2])
            ok = self.path.endswith("=good-token")
            body = json.dumps({"email": USER} if ok else {"error": "invalid_token"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.asked = asked
    server.url = f"http://127.0.0.1:{server.server_port}/tokeninfo?access_token="
    yield server
    server.shutdown()
    server.server_close()


def test_xoauth2_token_from_a_command(tmp_path, make_dovecot, token_service):
    server = make_dovecot(oauth2_tokeninfo_url=token_service.url)
    tag = uuid.uuid4().hex[:8]
    box = 'oauth2_token_command = "printf good-token"\n'
    app = make_app(tmp_path, server, password_env="", box_extra=box)
    server.append("INBOX", [mail(0, tag)])
    with Running(app):
        wait_until(lambda: server.message_ids("processed") == [f"<{tag}-0@example.org>"])
    assert "good-token" in token_service.asked and len(tickets(app)) == 1
    app.engine.dispose()
    code, out = _check(tmp_path / "check-good", server, password_env="", box_extra=box)
    assert code == 0 and "OAuth2 token obtained" in out, out
    code, out = _check(tmp_path / "check-bad", server, password_env="",
                       box_extra='oauth2_token_command = "printf expired-token"\n')
    assert code == 1 and "FAILED at step login:" in out, out
