"""The recipient picks the process, and the SMTP door refuses unknown local parts (550)
and over-limit mail (5xx) while the sender can still be told: real smtplib against the
real Door on a free port."""

from __future__ import annotations

import smtplib

import pytest
from conftest import free_port
from harness.ingest import customer_mail, make_app, tickets

from gateway.ingest.smtp import Door, make_server_factory
from harness.door import DoorController

ROUTES = '''
[gateway]
addresses = ["helpdesk@example.com"]
catch_all = {catch_all}
[routing]
routes = {{ "requests@example.com" = "service-request", "changes@example.com" = "change" }}
'''


@pytest.fixture
def door(tmp_path, request):
    catch_all = getattr(request, "param", False)
    app = make_app(tmp_path, ROUTES.format(catch_all=str(catch_all).lower()))
    stored = []
    door = Door(app.config, app.engine, app.blobs, on_stored=stored.append)
    controller = DoorController(make_server_factory(app.config, door), free_port())
    controller.start()
    yield app, controller.port, stored
    controller.stop()
    app.engine.dispose()


def rcpt(port: int, address: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("customer@example.org")
        return client.rcpt(address)


def test_unknown_local_part_gets_550(door):
    _app, port, _stored = door
    assert rcpt(port, "nobody@example.com")[0] == 550
    assert rcpt(port, "helpdesk@elsewhere.org")[0] == 550
    assert rcpt(port, "requests@example.com")[0] == 250
    assert rcpt(port, "Helpdesk@Example.com")[0] == 250


@pytest.mark.parametrize("door", [True], indirect=True)
def test_catch_all_accepts_any_local_part_of_our_domains(door):
    _app, port, _stored = door
    assert rcpt(port, "nobody@example.com")[0] == 250
    assert rcpt(port, "helpdesk@elsewhere.org")[0] == 550


@pytest.mark.parametrize("address, process", [("requests@example.com", "service-request"),
                                              ("changes@example.com", "change"),
                                              ("helpdesk@example.com", "incident")])
def test_the_address_picks_the_process(door, address, process):
    app, port, stored = door
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("marie@example.be", [address], customer_mail("marie@example.be"))
    assert len(stored) == 1
    outcome = app.processor.process(stored[0].id)
    assert outcome.outcome == "created"
    assert [t.process for t in tickets(app)] == [process]


def test_over_a_limit_at_smtp_is_a_5xx_and_nothing_is_stored(door):
    app, port, stored = door
    # SMTP lines are at most 1,000 bytes: a long header comes folded.
    header = b"X-Junk: start" + b"\r\n " + b"\r\n ".join([b"a" * 900] * (app.config.limits.max_header_length // 900 + 2)) \
        + b"\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("marie@example.be", ["helpdesk@example.com"], header + customer_mail())
    assert info.value.smtp_code == 552
    assert b"header longer" in info.value.smtp_error
    nested = _nested(app.config.limits.max_depth + 5)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("marie@example.be", ["helpdesk@example.com"], nested)
    assert info.value.smtp_code == 552 and b"nesting" in info.value.smtp_error
    looping = b"".join(b"Received: from relay%d.example.net by relay.example.net\r\n" % i for i in range(60))
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("marie@example.be", ["helpdesk@example.com"], looping + customer_mail())
    assert info.value.smtp_code == 554 and info.value.smtp_error.startswith(b"5.4.6 Routing loop detected: mail loop")
    # A mail over 1 MB is checked from its spool file (smtp.SpoolingSMTP): the same answer.
    large = looping + customer_mail() + b"\r\n".join([b"x" * 76] * 20_000) + b"\r\n"
    assert len(large) > 1 << 20
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("marie@example.be", ["helpdesk@example.com"], large)
    assert info.value.smtp_code == 554 and b"5.4.6" in info.value.smtp_error
    assert stored == []


def test_over_a_limit_from_another_path_is_quarantined_with_the_reason(tmp_path):
    from harness.ingest import inbound_rows, receive

    app = make_app(tmp_path)
    outcome = receive(app, _nested(app.config.limits.max_depth + 5), source="imap:test")
    assert outcome.outcome == "quarantined" and "nesting deeper than 20" in outcome.detail
    [row] = inbound_rows(app)
    assert row.state == "quarantined" and app.blobs.get(row.sha256)  # kept, with the reason


def _nested(depth: int) -> bytes:
    head = b"From: marie@example.be\r\nTo: helpdesk@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    body = b"hello\r\n"
    for i in reversed(range(depth)):
        b = f"b{i}".encode()
        body = (b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b + b"\r\n" + body +
                b"\r\n--" + b + b"--\r\n")
    return head + body
