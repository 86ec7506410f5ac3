"""Issue 2: mail in over SMTP becomes a ticket, and the customer gets a confirmation.

The service runs as a real process (`python -m gateway serve`) on a free loopback port,
with its config and data in a temporary folder; mails go in with smtplib.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import os
import smtplib
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel.dates import format_date

from conftest import free_port, run_gateway
from harness.service import Service, children, french_mail, service_config, wait_until


def ticket_json(folder: Path, number: str) -> dict:
    out = run_gateway("--config", str(folder / "config.toml"), "ticket", "show", number, "--json", cwd=folder)
    return json.loads(out.stdout)


def outbox_json(folder: Path) -> list[dict]:
    out = run_gateway("--config", str(folder / "config.toml"), "outbox", "list", "--json", cwd=folder)
    return json.loads(out.stdout)


def test_smtp_mail_becomes_ticket_with_french_confirmation(tmp_path):
    port = free_port()
    service_config(tmp_path, port)
    pdf = b"%PDF-1.4\n" + os.urandom(50_000) + b"\n%%EOF\n"
    service = Service(tmp_path, port)
    try:
        mail = french_mail(attachment=pdf)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            refused = client.send_message(mail)
        assert refused == {}
        outbox_dir = tmp_path / "var" / "outbox"
        files = wait_until(lambda: list(outbox_dir.glob("*.eml")))
    finally:
        assert service.stop() == 0

    ticket = ticket_json(tmp_path, "INC-000001")
    assert ticket["process"] == "incident"
    assert ticket["status"] == "New"
    assert ticket["title"] == "Nouvel utilisateur"
    assert ticket["personal_reference"] == "PO1234"
    assert "Marc Janssens" in ticket["description"]
    assert ticket["reporting_person"] == ticket["affected_person"]
    assert ticket["reporting_person"]["email"] == "jeanne.dupont@example.be"
    assert ticket["reporting_person"]["language"] == "fr"
    incoming = [m for m in ticket["messages"] if m["direction"] == "in"]
    assert len(incoming) == 1
    (att,) = incoming[0]["attachments"]
    assert att["filename"] == "formulaire d'accès.pdf"
    assert att["content_type"] == "application/pdf"
    assert att["size"] == len(pdf)
    assert att["sha256"] == hashlib.sha256(pdf).hexdigest()
    # The stored attachment is the customer's file, byte for byte.
    blob = tmp_path / "var" / "blobs" / att["sha256"][:2] / att["sha256"]
    assert blob.read_bytes() == pdf
    assert [h["to_status"] for h in ticket["history"]] == ["New"]

    (eml,) = files
    sent = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert sent["To"].addresses[0].addr_spec == "jeanne.dupont@example.be"
    # One subject per ticket, so that Gmail keeps the conversation together.
    assert sent["Subject"] == "[INC-000001] Nouvel utilisateur"
    assert sent["Content-Language"] == "fr"
    assert sent["Auto-Submitted"] == "auto-replied"
    assert sent["In-Reply-To"] == mail["Message-ID"]
    assert mail["Message-ID"] in sent["References"]
    assert sent["Message-ID"] and sent["Message-ID"] != mail["Message-ID"]
    text = sent.get_body(("plain",)).get_content()
    assert "INC-000001" in text and "PO1234" in text
    # The date of the ticket, written as French writes it in the person's time zone
    # (read from the ticket, never a month written into the test): «le 27 novembre 2026
    # à 10 h 30», «le 1er décembre…».
    created = datetime.fromisoformat(ticket["created_at"]).astimezone(ZoneInfo("Europe/Brussels"))
    day = "1er" if created.day == 1 else str(created.day)
    written = f"le {day} {format_date(created, 'MMMM y', locale='fr')} à {created.hour}\u00a0h\u00a0{created.minute:02d}"
    assert f"Nous avons enregistré votre ticket INC-000001 {written}." in text
    html = sent.get_body(("html",)).get_content()
    assert "PO1234" in html and 'lang="fr"' in html

    out = outbox_json(tmp_path)
    assert [(o["ticket"], o["event"], o["state"], o["language"]) for o in out] == [("INC-000001", "new", "sent", "fr")]
    listing = run_gateway("--config", str(tmp_path / "config.toml"), "ticket", "list", cwd=tmp_path).stdout.decode()
    assert "INC-000001" in listing and "Nouvel utilisateur" in listing
    log = (tmp_path / "service.log").read_text()
    assert "received <" in log and "created INC-000001" in log


def test_kill_after_250_loses_nothing_and_does_nothing_twice(tmp_path):
    """Mails answered 250 by a listener-only service, which is then SIGKILLed, are all
    processed exactly once by the next start."""
    port = free_port()
    service_config(tmp_path, port)
    service = Service(tmp_path, port, "--accept-only")
    sent_ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for n in range(1, 11):
            mail = french_mail(n)
            client.send_message(mail)
            sent_ids.append(mail["Message-ID"].strip("<>"))
    service.kill()

    service = Service(tmp_path, port)
    try:
        wait_until(lambda: len(list((tmp_path / "var" / "outbox").glob("*.eml"))) >= 10)
        time.sleep(0.5)  # would a second round of processing send more?
    finally:
        service.stop()
    tickets = json.loads(run_gateway("--config", str(tmp_path / "config.toml"), "ticket", "list", "--json",
                                     cwd=tmp_path).stdout)
    assert len(tickets) == 10
    assert sorted(t["personal_reference"] for t in tickets) == sorted(["PO1234"] + [f"PO{n}" for n in range(2, 11)])
    assert len(list((tmp_path / "var" / "outbox").glob("*.eml"))) == 10
    seen = []
    for t in tickets:
        seen += [m["message_id"] for m in ticket_json(tmp_path, t["number"])["messages"] if m["direction"] == "in"]
    assert sorted(seen) == sorted(sent_ids)


def test_kill_while_processing_then_restart(tmp_path):
    """SIGKILL at an arbitrary moment of a full service: every mail answered 250 ends as
    exactly one ticket after the restart."""
    port = free_port()
    service_config(tmp_path, port)
    service = Service(tmp_path, port)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for n in range(1, 21):
            client.send_message(french_mail(n))
    service.kill()
    service = Service(tmp_path, port)
    try:
        wait_until(lambda: len(list((tmp_path / "var" / "outbox").glob("*.eml"))) >= 20)
    finally:
        service.stop()
    tickets = json.loads(run_gateway("--config", str(tmp_path / "config.toml"), "ticket", "list", "--json",
                                     cwd=tmp_path).stdout)
    assert len(tickets) == 20
    assert len({t["personal_reference"] for t in tickets}) == 20


def test_message_over_size_limit_gets_552_and_nothing_is_stored(tmp_path):
    port = free_port()
    (tmp_path / "config.toml").write_text(f"[smtp]\nport = {port}\nmax_message_size = 100000\n")
    service = Service(tmp_path, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPResponseException) as exc:
                client.send_message(french_mail(attachment=b"x" * 200_000))
        assert exc.value.smtp_code == 552
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("a@example.be", ["nobody@elsewhere.example"], b"Subject: x\r\n\r\nx\r\n")
    finally:
        service.stop()
    assert [p for p in (tmp_path / "var" / "blobs").rglob("*") if p.is_file()] == []
    out = run_gateway("--config", str(tmp_path / "config.toml"), "ticket", "list", "--json", cwd=tmp_path)
    assert json.loads(out.stdout) == []


def test_sigterm_stops_cleanly(tmp_path):
    port = free_port()
    service_config(tmp_path, port)
    service = Service(tmp_path, port)
    assert service.stop() == 0
    assert "stopped" in (tmp_path / "service.log").read_text()


@pytest.mark.parametrize("extra, lower", [("", 5), ("[service]\nworker_nice = 0\n", 0)])
def test_workers_run_below_the_listeners_priority(tmp_path, extra, lower):
    """The listener answers senders; the workers and the deliverer yield the CPU to it
    (``[service] worker_nice``, 5 by default, 0: the same priority)."""
    port = free_port()
    service_config(tmp_path, port, extra=extra)
    service = Service(tmp_path, port)
    try:
        own = int((Path("/proc") / str(service.proc.pid) / "stat").read_text().rsplit(")", 1)[1].split()[16])
        wanted = {"gw-worker-0": own + lower, "gw-deliverer": own + lower}

        def settled():  # each child lowers its own priority as it starts
            found = children(service.proc.pid)
            return {name: found.get(name) for name in wanted} == wanted

        wait_until(settled)
    finally:
        assert service.stop() == 0


def test_a_priority_out_of_range_is_refused(tmp_path):
    service_config(tmp_path, free_port(), extra="[service]\nworker_nice = 25\n")
    result = run_gateway("serve", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert b"service.worker_nice: 25 is not between 0 and 19" in result.stderr + result.stdout
