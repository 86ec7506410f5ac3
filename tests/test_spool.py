"""Group commit at the door: mails sent at the same time share a commit, and each is
answered 250 only once it is durably stored (row committed, blob on disk)."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.policy import SMTP

from sqlalchemy import create_engine, text

from conftest import ROOT, free_port, wait_for_port, write_config
from gateway.ingest.journal import read_journal
from gateway.ingest.spool import Spool
from store.blobs import BlobStore


def _raw(i: int, body: str = "") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Hélène Côté <helene{i}@client.example>"
    msg["To"] = "helpdesk@localhost"
    msg["Subject"] = f"Imprimante {i} ##PO{i}##"
    msg["Message-ID"] = f"<spool-{i}@client.example>"
    msg.set_content(body or f"L'imprimante n°{i} ne répond plus.\n")
    return msg.as_bytes(policy=SMTP)  # CRLF: smtplib sends bytes as they are


def test_concurrent_submissions_share_commits_and_all_are_stored(gw):
    spool = Spool(gw.engine, gw.blobs)
    start = threading.Barrier(24)

    def one(i):
        start.wait()
        return spool.submit(_raw(i), source="smtp", rcpt_to=("helpdesk@localhost",)).result(timeout=60)

    with ThreadPoolExecutor(24) as pool:
        stored = list(pool.map(one, range(24)))
    spool.close()
    assert spool.largest_batch > 1, "concurrent mails were never committed together"
    assert len({s.id for s in stored}) == 24 and not any(s.duplicate for s in stored)
    with gw.engine.connect() as conn:
        rows = dict(conn.execute(text("select message_id, sha256 from inboundmessage")).all())
        by_id = dict(conn.execute(text("select id, message_id from inboundmessage")).all())
    assert {s.message_id for s in stored} == set(rows)
    assert all(gw.blobs.exists(sha) for sha in rows.values())
    # Each answer names its own row (a batch's ids come back in the order of its rows).
    assert all(by_id[s.id] == s.message_id for s in stored)


def test_a_duplicate_inside_a_batch_gets_the_first_row(gw):
    spool = Spool(gw.engine, gw.blobs)
    raw = _raw(1)
    futures = [spool.submit(raw, source="smtp") for _ in range(3)] + [spool.submit(_raw(2), source="smtp")]
    results = [f.result(timeout=60) for f in futures]
    spool.close()
    assert len({r.id for r in results[:3]}) == 1
    assert [r.duplicate for r in results[:3]].count(False) == 1
    assert results[3].id != results[0].id and not results[3].duplicate


def test_every_mail_answered_250_by_the_real_door_is_durable(tmp_path):
    """16 smtplib clients at once against ``gateway serve``; the server is killed (SIGKILL,
    no shutdown) right after the last answer: every mail that got 250 has its raw bytes
    on disk and a line in the door's journal or a row in the database, and is in the
    database once the next start has read the journal."""
    port = free_port()
    cfg = write_config(tmp_path, f"[smtp]\nport = {port}\n")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "GATEWAY_HTTP_PORT": os.environ["GATEWAY_HTTP_PORT"]}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(cfg), "serve", "--accept-only"],
                            cwd=tmp_path, env=env, stdout=(tmp_path / "serve.log").open("wb"), stderr=subprocess.STDOUT)
    answered: dict[str, bytes] = {}
    lock = threading.Lock()
    try:
        wait_for_port(port)
        def client(c):
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                for k in range(6):
                    i = c * 100 + k
                    raw = _raw(i, "Écran noir au démarrage.\n" * (50 * (k + 1)))
                    smtp.sendmail(f"helene{i}@client.example", ["helpdesk@localhost"], raw)  # raises unless 250
                    with lock:
                        answered[f"spool-{i}@client.example"] = raw

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(client, range(16)))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert len(answered) == 96
    blobs = BlobStore(tmp_path / "var" / "blobs")
    journaled = {e["message_id"] for p in (tmp_path / "var" / "spool").glob("journal-*") for e in read_journal(p)}
    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'gateway.db'}")
    with engine.connect() as conn:
        recorded = {m for (m,) in conn.execute(text("select message_id from inboundmessage")).all()}
    engine.dispose()
    assert not [m for m in answered if m not in journaled | recorded], "answered 250 but neither journaled nor stored"
    # The next start records what the journal holds.
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(cfg), "serve", "--accept-only"],
                            cwd=tmp_path, env=env, stdout=(tmp_path / "serve2.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'gateway.db'}")
    with engine.connect() as conn:
        rows = dict(conn.execute(text("select message_id, sha256 from inboundmessage")).all())
    engine.dispose()
    missing = [m for m in answered if m not in rows]
    assert not missing, f"answered 250 but not stored: {missing[:5]}"
    for mid, raw in answered.items():
        assert blobs.get(rows[mid]) == raw
