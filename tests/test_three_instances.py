"""Three gateways on one PostgreSQL, as three hosts would run them (issue 19, "Done when").

Three ``gateway serve``, each with its own data folder and ports and nothing shared but
the database; 8 clients spread 2,000 mails (new tickets and replies to them) over the
three SMTP ports, as a sending MTA spreads over MX hosts: a mail not answered 250 (its
host gone) is sent again to another.  One instance is SIGKILLed whole halfway and started
again a minute later; another is SIGKILLed and brought back only after the other two
have drained (its journal still holds mails it answered 250 for).  Then every mail
answered 250 is in exactly one ticket or comment, none is quarantined, and every
notification reached the real SMTP sink exactly once, counted by Message-ID there.
"""

from __future__ import annotations

import random
import smtplib
import threading
import time
from collections import Counter
from email.parser import BytesHeaderParser

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from harness.instances import Instance, free_port

MAILS = 2000
CLIENTS = 8
REPLY_EVERY = 4  # one mail in four answers an earlier one of its client


class Sink:
    """A real SMTP server counting the Message-IDs it was given."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):
        headers = BytesHeaderParser().parsebytes(envelope.original_content or envelope.content)
        with self.lock:
            self.counts[str(headers["Message-ID"]).strip().strip("<>")] += 1
        return "250 OK"


def _mails(client: int) -> list[tuple[str, bytes]]:
    """The client's mails: new tickets from senders of its own, and replies (one in
    REPLY_EVERY) to its earlier new mails, as a customer answers in the thread."""
    rng = random.Random(client)
    out: list[tuple[str, bytes]] = []
    originals: list[tuple[str, str, str]] = []
    for i in range(MAILS // CLIENTS):
        if i % REPLY_EVERY == REPLY_EVERY - 1 and len(originals) > 10:
            sender, mid, subject = originals.pop(rng.randrange(len(originals) - 10))
            new_mid = f"reply-{client}-{i}@client{client}.example"
            raw = (f"From: {sender}\r\nTo: helpdesk@localhost\r\nSubject: Re: {subject}\r\n"
                   f"Message-ID: <{new_mid}>\r\nIn-Reply-To: <{mid}>\r\nReferences: <{mid}>\r\n"
                   f"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                   f"It still does not work after the restart, see the error code E-{i}.\r\n\r\n"
                   f"> {subject}\r\n").encode()
            out.append((new_mid, raw))
            continue
        sender = f"user{client}-{i}@client{client}.example"
        mid = f"new-{client}-{i}@client{client}.example"
        subject = f"Printer {client}-{i} on floor {i % 7} shows paper jam"
        raw = (f"From: User {client}-{i} <{sender}>\r\nTo: helpdesk@localhost\r\nSubject: {subject}\r\n"
               f"Message-ID: <{mid}>\r\nDate: Wed, 02 Dec 2026 09:00:00 +0000\r\n"
               f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
               f"Hello, the printer {client}-{i} does not print since this morning.\r\n").encode()
        out.append((mid, raw))
        originals.append((sender, mid, subject))
    return out


class Client(threading.Thread):
    """Sends its mails over the three ports in turn; a port that fails (its instance
    killed) is left for a few seconds and the mail sent to the next."""

    def __init__(self, number: int, ports: list[int], accepted: list[str], lock: threading.Lock):
        super().__init__(daemon=True)
        self.number, self.ports, self.accepted, self.lock = number, ports, accepted, lock
        self.mails = _mails(number)
        self.down: dict[int, float] = {}
        self.conns: dict[int, smtplib.SMTP] = {}
        self.errors: list[str] = []

    def _send(self, port: int, raw: bytes) -> bool:
        try:
            conn = self.conns.get(port)
            if conn is None:
                conn = self.conns[port] = smtplib.SMTP("127.0.0.1", port, timeout=60)
            refused = conn.sendmail("user@client.example", ["helpdesk@localhost"], raw)
            return not refused
        except (smtplib.SMTPException, OSError) as exc:
            self.conns.pop(port, None)
            self.down[port] = time.monotonic() + 3
            self.errors.append(f"{port}: {type(exc).__name__}: {exc}")
            return False

    def run(self) -> None:
        turn = self.number
        for mid, raw in self.mails:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                port = self.ports[turn % len(self.ports)]
                turn += 1
                if self.down.get(port, 0) > time.monotonic():
                    time.sleep(0.01)
                    continue
                if self._send(port, raw):
                    with self.lock:
                        self.accepted.append(mid)
                    break
            else:
                self.errors.append(f"{mid}: no instance took it")
        for conn in self.conns.values():
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                pass


def _engine(url: str):
    parsed = make_url(url)
    return create_engine(parsed.set(drivername="postgresql+psycopg"))


def _figures(engine) -> dict:
    with engine.connect() as conn:
        q = lambda sql: conn.execute(text(sql)).scalar()  # noqa: E731
        return {"inbound": q("select count(*) from inboundmessage"),
                "waiting": q("select count(*) from inboundmessage where state = 'received'"),
                "quarantined": q("select count(*) from inboundmessage where state = 'quarantined'"),
                "pending": q("select count(*) from outbox where state = 'pending'"),
                "outbox": q("select count(*) from outbox")}


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


@pytest.mark.slow
@pytest.mark.postgres
def test_three_instances_two_killed_every_mail_once_every_notification_once(tmp_path, postgres_url):
    sink = Sink()
    sink.controller.start()
    extra = (f'[outbound]\ntransport = "smtp"\nretry_schedule = [2]\n'
             f'[outbound.smtp]\nhost = "127.0.0.1"\nport = {sink.port}\ntimeout = 10\n'
             f'[limits]\nnew_tickets_per_sender = 0\n')
    instances = [Instance(tmp_path / name, postgres_url, extra, http=False) for name in ("a", "b", "c")]
    engine = _engine(postgres_url)
    accepted: list[str] = []
    lock = threading.Lock()
    try:
        instances[0].start()  # the first upgrades the empty database; the others find it done
        for inst in instances[1:]:
            inst.start(wait=False)
        for inst in instances[1:]:
            inst.wait_ready()
        a, b, c = instances
        clients = [Client(k, [i.smtp_port for i in instances], accepted, lock) for k in range(CLIENTS)]
        for cl in clients:
            cl.start()
        # Halfway: a fails; a minute later it is started again.
        _wait(lambda: len(accepted) >= MAILS // 2, 300, "half the mails accepted")
        a.kill()
        a_killed = time.monotonic()
        # Three quarters (or the end, on a fast machine): b fails too, and stays down.
        _wait(lambda: len(accepted) >= MAILS * 3 // 4, 300, "three quarters accepted")
        b.kill()
        for cl in clients:
            cl.join(timeout=300)
        assert not any(cl.is_alive() for cl in clients), "the clients did not finish"
        assert [e for cl in clients for e in cl.errors if "no instance took it" in e] == []
        assert len(accepted) == MAILS == len(set(accepted))
        time.sleep(max(0.0, 60 - (time.monotonic() - a_killed)))
        a.start()
        # a and c drain: nothing waits to be processed, nothing to be sent (b's journal
        # still holds what b answered and did not record).
        _wait(lambda: (lambda f: f["waiting"] == 0 and f["pending"] == 0)(_figures(engine)), 300,
              f"a and c drain: {_figures(engine)}")
        b.start()
        _wait(lambda: (lambda f: f["waiting"] == 0 and f["pending"] == 0)(_figures(engine)), 300,
              f"b's mails processed and sent: {_figures(engine)}")
        figures = _figures(engine)
        time.sleep(3)  # would anything be sent again a moment later?
        for inst in instances:
            assert inst.stop() == 0, inst.log_text()[-3000:]

        # Every mail answered 250 is in exactly one ticket or comment; none quarantined.
        with engine.connect() as conn:
            rows = conn.execute(text("select message_id, count(*) from ticketmessage where direction = 'in' "
                                     "group by message_id")).all()
            outbox = conn.execute(text("select message_id, state from outbox")).all()
        per_mail = dict(rows)
        assert sorted(per_mail) == sorted(accepted), (
            f"missing {sorted(set(accepted) - set(per_mail))[:5]}, extra {sorted(set(per_mail) - set(accepted))[:5]}")
        assert {n for n in per_mail.values()} == {1}
        assert figures["quarantined"] == 0
        assert figures["inbound"] >= MAILS
        # Every notification delivered once to the sink, and nothing else.
        assert {state for _mid, state in outbox} == {"sent"}
        assert len(outbox) >= MAILS * (REPLY_EVERY - 1) // REPLY_EVERY  # a confirmation a new ticket at least
        sent = Counter(mid for mid, _state in outbox)
        assert set(sent.values()) == {1}
        with sink.lock:
            counts = dict(sink.counts)
        twice = {mid: n for mid, n in counts.items() if n != 1}
        assert twice == {}, f"delivered more than once: {list(twice.items())[:5]}"
        assert set(counts) == set(sent), (sorted(set(sent) - set(counts))[:5], sorted(set(counts) - set(sent))[:5])
    finally:
        for inst in instances:
            inst.kill()
        sink.controller.stop()
        engine.dispose()
