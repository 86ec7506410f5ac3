"""Issue 21: faults that are not the mail's wait, never quarantine.

A full disk is a real small file system (tmpfs, mounted by the test: it needs root; the
test is skipped, saying why, where mounting is not allowed); the gateway runs as
``gateway serve`` with its data folder on it, and mail arrives over SMTP while it fills.
"""

from __future__ import annotations

import errno
import json
import os
import smtplib
import socket
import sqlite3
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlmodel import Session, select

from conftest import free_port, run_gateway
from harness.service import Service, french_mail, wait_until


# -- what is the mail's, and what is not ------------------------------------------------
def test_faults_of_the_surroundings_are_told_from_the_mails():
    from gateway.errors import StoreFailed
    from gateway.ingest import faults

    full = sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
    assert "database or disk is full" in faults.surroundings(full)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise StoreFailed("could not store the message") from exc
    except StoreFailed as wrapped:
        assert "No space left" in faults.surroundings(wrapped)
    assert faults.surroundings(faults.Unavailable("the virus scanner did not answer in 30 s"))
    assert faults.surroundings(TimeoutError("timed out"))
    # The mail's own: quarantined after max_attempts, as before.
    assert faults.surroundings(ValueError("not a date")) is None
    assert faults.surroundings(sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("NOT NULL"))) is None
    assert faults.surroundings(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")) is None


# -- a small file system of the test's own ------------------------------------------------
@contextmanager
def small_disk(folder: Path, size_kb: int):
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file until the file system says it is full (ENOSPC)."""
    path = folder / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1 << 16, 1 << 12):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return path


def test_a_full_disk_under_sqlite_makes_mails_wait_not_quarantined(tmp_path):
    """The worker's own path, on a real full disk: the database says "database or disk is
    full"; the mails stay waiting, their attempts untouched, and are processed once space
    is back."""
    from gateway.app import App
    from gateway.config import load_config
    from gateway.ingest.inbound import store_raw
    from store.models import InboundMessage, Ticket

    data = tmp_path / "data"
    with small_disk(data, 6 * 1024):
        (tmp_path / "config.toml").write_text(f'[gateway]\ndata_dir = "{data}"\n[store]\nreserve_mb = 0\n'
                                              f'[limits]\nmax_attempts = 2\n')
        app = App(load_config(tmp_path / "config.toml", env={}))
        ids = [store_raw(app.engine, app.blobs, french_mail(n).as_bytes(), source="smtp",
                         rcpt_to=("helpdesk@localhost",)).id for n in range(1, 6)]
        assert app.config.gateway.secret  # made and kept before the disk is full
        filler = fill(data)
        for _ in range(3):  # more than max_attempts
            outcomes = app.processor.process_batch(ids)
            assert {o.outcome for o in outcomes} == {"retry"}
            assert all("not the mail's fault" in o.detail and "full" in o.detail for o in outcomes), outcomes
        filler.unlink()
        with Session(app.engine) as session:
            rows = session.exec(select(InboundMessage).where(InboundMessage.id.in_(ids))).all()
            assert {(r.state, r.attempts) for r in rows} == {("received", 0)}
        app.engine.dispose()
        app = App(load_config(tmp_path / "config.toml", env={}))
        outcomes = app.processor.process_batch(ids)
        assert [o.outcome for o in outcomes] == ["created"] * 5
        with Session(app.engine) as session:
            assert len(session.exec(select(Ticket)).all()) == 5
        app.engine.dispose()


class Sender(threading.Thread):
    """Mails over SMTP, one a connection, until told to stop: which got 250."""

    def __init__(self, port: int, every: float = 0.02):
        super().__init__(daemon=True)
        self.port = port
        self.every = every
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            mail = french_mail(n + 1)
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                    client.send_message(mail)
                self.accepted.append(mail["Message-ID"].strip("<>"))
            except smtplib.SMTPResponseException as exc:
                assert exc.smtp_code in (421, 451, 452), exc
                self.refused.append(f"{exc.smtp_code} {exc.smtp_error!r}")
            time.sleep(self.every)


def readiness_of(folder: Path):
    """/readyz's checks (gateway.health.readiness) for the gateway of ``folder``."""
    from gateway import health
    from gateway.app import App
    from gateway.config import load_config

    app = App(load_config(folder / "config.toml", env={}))
    try:
        return health.readiness(app.config, app.engine, instance="test", roles=[], doors={})
    finally:
        app.engine.dispose()


def gateway_json(folder: Path, *args: str):
    return json.loads(run_gateway("--config", str(folder / "config.toml"), *args, "--json", cwd=folder).stdout)


def test_the_data_folder_fills_while_mail_arrives(tmp_path):
    """The data folder on an 8 MB file system, filled while mail arrives over SMTP: the
    door answers 452 below the reserve, gateway status fails; once it is freed, every
    mail that got 250 is a ticket with its confirmation and none is quarantined."""
    data = tmp_path / "data"
    port = free_port()
    with small_disk(data, 8 * 1024):
        (tmp_path / "config.toml").write_text(
            f'[gateway]\ndata_dir = "{data}"\n[smtp]\nport = {port}\n[store]\nreserve_mb = 2\n'
            # One sender writes every mail: past the rate limit it would get no confirmation.
            f'[limits]\nmax_wait_delay = 2\nrate_limit = 100000\n[http]\nenabled = false\n')
        service = Service(tmp_path, port)
        sender = Sender(port)
        try:
            sender.start()
            wait_until(lambda: len(sender.accepted) >= 10, timeout=60)
            filler = fill(data)
            refused_before = len(sender.refused)
            wait_until(lambda: len(sender.refused) >= refused_before + 5, timeout=60)
            status = run_gateway("--config", str(tmp_path / "config.toml"), "status", cwd=tmp_path, check=False)
            assert status.returncode == 1
            assert "disk:" in status.stdout.decode() and "below the reserve of 2 MB" in status.stdout.decode()
            assert any(r.startswith("452") for r in sender.refused)
            checks = {c.name: c for c in readiness_of(tmp_path)}
            assert not checks["disk"].ok and "below the reserve of 2 MB" in checks["disk"].detail
            filler.unlink()
            accepted_before = len(sender.accepted)
            wait_until(lambda: len(sender.accepted) >= accepted_before + 10, timeout=60)
            sender.halt.set()
            sender.join(timeout=60)
            accepted = set(sender.accepted)

            def all_done():
                tickets = gateway_json(tmp_path, "ticket", "list")
                out = gateway_json(tmp_path, "outbox", "list")
                return len(tickets) >= len(accepted) and sum(o["state"] == "sent" for o in out) >= len(accepted)

            # A worker may have died of the full disk (SIGBUS: SQLite's shared memory file
            # cannot grow on a full tmpfs) and be started again after up to a minute.
            wait_until(all_done, timeout=240, interval=1.0)
        finally:
            sender.halt.set()
            assert service.stop() == 0
        quarantined = gateway_json(tmp_path, "inbound", "list", "--state", "quarantined")
        assert quarantined == []
        tickets = gateway_json(tmp_path, "ticket", "list")
        assert len(tickets) == len(accepted)
        out = gateway_json(tmp_path, "outbox", "list")
        assert sorted(o["ticket"] for o in out if o["state"] == "sent") == sorted(t["number"] for t in tickets)
        received = gateway_json(tmp_path, "inbound", "list", "--limit", "10000")
        assert {r["message_id"] for r in received} == accepted
        assert {r["state"] for r in received} == {"processed"}
        status = run_gateway("--config", str(tmp_path / "config.toml"), "status", cwd=tmp_path, check=False)
        assert "disk:" not in status.stdout.decode()


# -- a PostgreSQL of the test's own, restarted and stopped -------------------------------
@pytest.mark.slow
def test_postgresql_restarts_and_stops_for_a_minute_while_mail_arrives(tmp_path):
    """The gateway's database server restarts, then is away for a minute, while mail
    arrives: the door keeps answering 250 (its journal), and every mail so answered is
    processed exactly once, none quarantined."""
    from sqlalchemy import create_engine, text

    from harness.pgserver import PgServer, binaries

    if binaries() is None:
        pytest.skip("no PostgreSQL binaries (initdb) installed")
    server = PgServer()
    port = free_port()
    try:
        server.start()
        (tmp_path / "config.toml").write_text(
            f'[database]\nurl = "{server.url}"\n[smtp]\nport = {port}\n[limits]\nmax_wait_delay = 5\n'
            f'[http]\nenabled = false\n')
        run_gateway("--config", str(tmp_path / "config.toml"), "db", "upgrade", cwd=tmp_path, check=False)
        service = Service(tmp_path, port)
        sender = Sender(port, every=0.2)
        try:
            sender.start()
            wait_until(lambda: len(sender.accepted) >= 10, timeout=60)
            server.restart()
            mark = len(sender.accepted)
            wait_until(lambda: len(sender.accepted) >= mark + 10, timeout=60)
            server.stop()
            mark = len(sender.accepted)
            time.sleep(60)
            assert len(sender.accepted) > mark + 20, "the door answered 250 while the database was away"
            server.start()
            mark = len(sender.accepted)
            wait_until(lambda: len(sender.accepted) >= mark + 10, timeout=60)
            sender.halt.set()
            sender.join(timeout=60)
            accepted = sender.accepted
            engine = create_engine(server.url.replace("postgresql://", "postgresql+psycopg://"))

            def processed() -> int:
                with engine.connect() as conn:
                    return conn.execute(text("select count(*) from inboundmessage where state = 'processed'")).scalar()

            wait_until(lambda: processed() >= len(accepted), timeout=180, interval=1.0)
            time.sleep(1)  # would anything be processed twice?
        finally:
            sender.halt.set()
            assert service.stop() == 0
        with engine.connect() as conn:
            states = dict(conn.execute(text("select state, count(*) from inboundmessage group by state")).all())
            received = conn.execute(text("select message_id, count(*) from ticketmessage where direction = 'in' "
                                         "group by message_id")).all()
            tickets = conn.execute(text("select count(*) from ticket")).scalar()
        engine.dispose()
        assert states == {"processed": len(accepted)}, states
        assert dict(received) == {mid: 1 for mid in accepted}
        assert tickets == len(accepted) == len(set(accepted))
    finally:
        server.close()


# -- a mail that kills its worker ----------------------------------------------------------
@pytest.mark.slow
def test_a_mail_that_kills_its_worker_is_quarantined_and_only_it(tmp_path):
    """Ten mails wait; the fifth kills the worker that parses it (the test hook, as a
    crash in a C extension would).  The worker is started again each time; the deaths
    are counted while it holds that mail alone, and after [limits] max_worker_deaths it
    is quarantined, "processing killed the worker"; the nine others, of its batch, are
    tickets, each once."""
    from gateway.ingest import faults

    port = free_port()
    (tmp_path / "config.toml").write_text(f"[smtp]\nport = {port}\n[limits]\nmax_worker_deaths = 2\n"
                                          f"[http]\nenabled = false\n")
    service = Service(tmp_path, port, "--accept-only")
    ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for n in range(2, 12):
            mail = french_mail(n)
            client.send_message(mail)
            ids.append(mail["Message-ID"].strip("<>"))
    assert service.stop() == 0
    killer = ids[4]
    service = Service(tmp_path, port, env={faults.KILL_HOOK: killer})
    try:
        def settled():
            rows = gateway_json(tmp_path, "inbound", "list")
            return rows if all(r["state"] != "received" for r in rows) else None

        rows = wait_until(settled, timeout=120, interval=1.0)
    finally:
        assert service.stop() == 0
    by_id = {r["message_id"]: r for r in rows}
    assert by_id[killer]["state"] == "quarantined"
    shown = gateway_json(tmp_path, "inbound", "show", str(by_id[killer]["id"]))
    assert shown["detail"] == f"{faults.KILLED} (2 times)"
    assert {mid: by_id[mid]["state"] for mid in ids if mid != killer} == {mid: "processed" for mid in ids
                                                                            if mid != killer}
    tickets = gateway_json(tmp_path, "ticket", "list")
    assert len(tickets) == 9
    log = (tmp_path / "service.log").read_text()
    # Three deaths: one in the batch (not counted: ten mails held), two holding it alone.
    assert log.count("worker-0") and "the worker died holding 10 mails" in log
    assert "the worker died processing it (1 of 2)" in log and "the worker died processing it (2 of 2)" in log
    assert "TEST HOOK ENABLED" in log


# -- a flood of connections ------------------------------------------------------------------
def rss_kb(pid: int) -> int:
    """The resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _open_many(port: int, count: int):
    """``count`` connections at once from 127.0.0.1: each one's first line, and the
    writers of those still open (idle, kept)."""
    import asyncio

    async def one():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            line = await asyncio.wait_for(reader.readline(), 30)
            return line, writer
        except (OSError, asyncio.TimeoutError) as exc:
            return repr(exc).encode(), None

    return await asyncio.gather(*(one() for _ in range(count)))


def test_a_thousand_connections_at_once_get_421_past_the_caps_and_others_are_served(tmp_path):
    """A thousand connections at once from one address, held open and idle, while the
    same address opens and closes connections in a loop: past the per-address cap each
    gets 421 at once; a mail from another address is accepted within a second; the
    door's memory stays bounded."""
    import asyncio

    port = free_port()
    (tmp_path / "config.toml").write_text(f"[smtp]\nport = {port}\nmax_connections = 300\n"
                                          f"max_connections_per_ip = 100\n[http]\nenabled = false\n")
    service = Service(tmp_path, port)
    try:
        door = service.proc.pid
        before = rss_kb(door)
        churn_stop = threading.Event()
        churned = []

        def churn():  # a client that opens and closes connections in a loop
            while not churn_stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                        churned.append(sock.recv(64)[:3])
                except OSError:
                    pass

        churner = threading.Thread(target=churn, daemon=True)
        churner.start()
        loop = asyncio.new_event_loop()
        try:
            start = time.monotonic()
            answers = loop.run_until_complete(_open_many(port, 1000))
            opened_in = time.monotonic() - start
            codes = [line[:3] for line, _w in answers]
            kept = [w for line, w in answers if line.startswith(b"220")]
            assert codes.count(b"421") >= 900 - 5, codes  # the churner holds a few of the 100 at times
            assert 95 <= len(kept) <= 100
            assert set(codes) <= {b"220", b"421"}, set(codes)
            assert opened_in < 30  # all answered, none left to a time-out
            during = rss_kb(door)
            # Another client, while the thousand are held and the churner loops.
            churned_before = len(churned)
            sent_at = time.monotonic()
            with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)) as client:
                assert client.send_message(french_mail(2)) == {}
            took = time.monotonic() - sent_at
            assert took < 1.0, f"a mail from another client took {took:.2f} s"
            wait_until(lambda: len(churned) > churned_before + 2, timeout=20)  # it loops all along
            churn_stop.set()
            churner.join(timeout=10)
            for writer in kept:
                writer.close()
            loop.run_until_complete(asyncio.sleep(0.5))
        finally:
            loop.close()
        time.sleep(1)
        after = rss_kb(door)
        assert len(churned) > 5 and set(churned) <= {b"220", b"421"}
        # Bounded: a hundred idle sessions and 900 refusals cost the door little memory.
        assert during - before < 64 * 1024, (before, during, after)
        assert after - before < 64 * 1024, (before, during, after)
        print(f"door RSS: {before} kB before, {during} kB with 1,000 connections, {after} kB after")
        tickets = wait_until(lambda: gateway_json(tmp_path, "ticket", "list"), timeout=30)
        assert len(tickets) == 1
    finally:
        assert service.stop() == 0


def test_holding_file_written_in_place_reads_back(tmp_path):
    """The held mails' file is written in place, padded: a shorter content after a longer
    one reads back as itself, and a new worker of the slot reads what the last left."""
    from gateway.ingest.faults import Holding

    holding = Holding(tmp_path / "holding", "host-worker-0")
    holding.hold(list(range(1000, 1016)))
    assert Holding(tmp_path / "holding", "host-worker-0").read() == (list(range(1000, 1016)), [])
    holding.suspects = [7]
    holding.hold([42])
    assert Holding(tmp_path / "holding", "host-worker-0").read() == ([42], [7])
    holding.suspects = []
    holding.release()
    assert Holding(tmp_path / "holding", "host-worker-0").read() == ([], [])
    later = Holding(tmp_path / "holding", "host-worker-0")  # the next worker, after a restart
    later.hold([5])
    assert later.read() == ([5], [])
    assert (tmp_path / "holding" / "host-worker-0").read_text().strip() == '{"holding": [5], "suspects": []}'
