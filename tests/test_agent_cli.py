"""The agent's command line, as an operator runs it: persons, tickets by phone, every move,
comments, conversion to a Change and closing, with --json for scripts."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from sqlmodel import select

from conftest import run_gateway
from gateway.app import App
from gateway.config import Config
from store.db import session_for
from store.models import Person


def gw(tmp_path, *args, check=True, env=None):
    return run_gateway(*args, cwd=tmp_path, check=check, env=env)


def js(tmp_path, *args, env=None):
    return json.loads(gw(tmp_path, *args, "--json", env=env).stdout)


def test_persons_add_import_and_list(tmp_path):
    assert js(tmp_path, "persons", "add", "Marie@Example.com", "--name", "Marie Dupont", "--language", "fr",
              "--company", "Exemple SA", "--timezone", "Europe/Brussels")["created"] is True
    (tmp_path / "people.csv").write_text(
        "email,name,language,company,timezone\n"
        "jan@example.be,Jan Peeters,nl,Voorbeeld NV,Europe/Brussels\n"
        "marie@example.com,,,,Europe/Paris\n"
        "not-an-address,X,fr,,\n"
        "klaus@example.de,Klaus,xx,,\n"
        "sam@example.com,Sam,,Voorbeeld NV,\n", encoding="utf-8")
    proc = gw(tmp_path, "persons", "import", "people.csv", "--json", check=False)
    assert proc.returncode == 1  # some rows refused, and said which
    result = json.loads(proc.stdout)
    assert (result["added"], result["updated"]) == (2, 1)
    assert [e["line"] for e in result["errors"]] == [4, 5]
    assert "not an e-mail address" in result["errors"][0]["error"] and "'xx'" in result["errors"][1]["error"]
    people = {p["email"]: p for p in js(tmp_path, "persons", "list")}
    assert sorted(people) == ["jan@example.be", "marie@example.com", "sam@example.com"]
    # An empty cell keeps what was there; the time zone was updated.
    assert people["marie@example.com"]["name"] == "Marie Dupont"
    assert people["marie@example.com"]["timezone"] == "Europe/Paris"
    assert people["sam@example.com"]["language"] == ""
    assert people["jan@example.be"]["undeliverable"] is False and people["jan@example.be"]["hard_bounces"] == 0
    text = gw(tmp_path, "persons", "list").stdout.decode()
    assert "jan@example.be" in text and "Voorbeeld NV" in text and "UNDELIVERABLE" not in text
    # What the bounce handling records is shown to the operator.
    app = App(Config(base_dir=str(tmp_path)))  # the database the commands above used
    try:
        with session_for(app.engine) as session:
            jan = session.exec(select(Person).where(Person.email == "jan@example.be")).one()
            jan.hard_bounces, jan.undeliverable = 3, True
            session.add(jan)
            session.commit()
    finally:
        app.engine.dispose()
    jan = next(p for p in js(tmp_path, "persons", "list") if p["email"] == "jan@example.be")
    assert (jan["undeliverable"], jan["hard_bounces"]) == (True, 3)
    assert "UNDELIVERABLE (3 hard bounces)" in gw(tmp_path, "persons", "list").stdout.decode()
    # Sam has no language: his company's applies once it is set.
    gw(tmp_path, "persons", "company", "Voorbeeld NV", "--language", "nl")
    done = js(tmp_path, "ticket", "create", "--process", "incident", "--reporter", "sam@example.com",
              "--title", "VPN", "--description", "VPN drops every hour.")
    outbox = js(tmp_path, "outbox", "list")
    assert outbox[-1]["ticket"] == done["number"] and outbox[-1]["language"] == "nl"
    bad = gw(tmp_path, "persons", "add", "x@example.com", "--timezone", "Mars/Olympus", check=False)
    assert bad.returncode == 1 and "unknown time zone 'Mars/Olympus'" in bad.stderr.decode()


def test_an_agent_works_a_ticket_from_phone_call_to_closing(tmp_path):
    gw(tmp_path, "persons", "add", "marie@example.com", "--name", "Marie Dupont", "--language", "fr",
       "--timezone", "Europe/Brussels")
    created = js(tmp_path, "ticket", "create", "--process", "service-request", "--reporter", "boss@example.com",
                 "--affected", "marie@example.com", "--title", "Nouvel utilisateur",
                 "--description", "Créer un compte pour Paul.", "--reference", "##PO1234##")
    number = created["number"]
    assert number == "SR-000001" and created["status"] == "New" and created["mails"] == ["new"]
    assert sorted(created["recipients"]) == ["boss@example.com", "marie@example.com"]

    def status(*args):
        return js(tmp_path, "ticket", "set-status", number, *args)

    assert status("classification")["mails"] == []
    assert status("Approval", "--approval-text", "Licence Office 365 (EUR 12/mois).")["mails"] == ["approval"]
    assert status("in-progress")["status"] == "In progress"
    # An appointment a few days ahead of today (the commands read the real clock): a date
    # written into the test would one day be in the past.
    brussels = ZoneInfo("Europe/Brussels")
    appointment = (datetime.now(brussels) + timedelta(days=3)).replace(hour=10, minute=0, second=0, microsecond=0)
    planned = status("Planned", "--at", appointment.strftime("%Y-%m-%dT%H:%M"), "--tz", "Europe/Brussels",
                     "--place", "Bureau 12")
    assert planned["mails"] == ["planned"]
    assert status("Waiting", "--waiting-reason", "customer-feedback", "--note", "Quel prénom ?")["mails"] == ["waiting"]
    comment = js(tmp_path, "ticket", "comment", number, "--text", "Compte créé, en attente du mot de passe.")
    assert comment["internal"] is False
    js(tmp_path, "ticket", "comment", number, "--text", "Appeler Paul avant 9h.", "--internal")
    assert status("Solved", "--solution", "Compte créé et licence attribuée.")["mails"] == ["solved"]

    # Refusals: clear, naming both statuses, exit 1, nothing changed.
    bad = gw(tmp_path, "ticket", "set-status", number, "In progress", check=False)
    assert bad.returncode == 1
    assert "cannot move from Solved to In progress" in bad.stderr.decode() and "comment" in bad.stderr.decode()
    bad = gw(tmp_path, "ticket", "set-status", number, "Waiting", "--waiting-reason", "rfc", check=False)
    assert bad.returncode == 1 and "cannot move from Solved to Waiting" in bad.stderr.decode()
    bad = gw(tmp_path, "ticket", "set-status", number, "Planned", "--at", "tomorrow", check=False)
    assert bad.returncode == 1 and "--at" in bad.stderr.decode()
    bad = gw(tmp_path, "ticket", "set-status", "SR-999999", "Solved", "--solution", "x", check=False)
    assert bad.returncode == 1 and "no ticket SR-999999" in bad.stderr.decode()

    shown = js(tmp_path, "ticket", "show", number)
    assert shown["status"] == "Solved" and shown["personal_reference"] == "PO1234"
    assert shown["reference_source"] == "agent"
    assert [h["to_status"] for h in shown["history"]] == ["New", "Classification", "Approval", "In progress",
                                                          "Planned", "Waiting", "Solved"]
    assert shown["history"][5]["note"] == "Quel prénom ?"
    notes = [(m["body_text"], m["internal"]) for m in shown["messages"] if m["direction"] == "note"]
    assert notes == [("Compte créé, en attente du mot de passe.", False), ("Appeler Paul avant 9h.", True)]

    # The planned mail: French, the appointment at 10:00 Brussels time.
    outbox = js(tmp_path, "outbox", "list")
    # One copy each for the Reporting and the Affected Person, in the Affected Person's language.
    assert [(r["event"], r["to"]) for r in outbox] == [
        (event, [person]) for event in ("new", "approval", "planned", "waiting", "solved")
        for person in ("boss@example.com", "marie@example.com")]
    assert all(r["language"] == "fr" for r in outbox)
    eml = sorted((tmp_path / "var" / "outbox").glob("*.eml")) if (tmp_path / "var" / "outbox").exists() else []
    assert eml == []  # agent actions queue; delivery is the worker's (or outbox flush)
    gw(tmp_path, "outbox", "flush")
    mails = [message_from_bytes(p.read_bytes(), policy=default_policy)
             for p in sorted((tmp_path / "var" / "outbox").glob("*.eml"))]
    planned_mail = next(m for m in mails if "Rendez-vous" in m.get_body(("plain",)).get_content())
    # ("mardi 1er décembre 2026 à 10 h 00", as French writes it), read from the clock.
    day = "1er" if appointment.day == 1 else str(appointment.day)
    when = (f"{format_date(appointment, 'EEEE', locale='fr')} {day} {format_date(appointment, 'MMMM y', locale='fr')}"
            f" à 10\u00a0h\u00a000")
    assert when in planned_mail.get_body(("plain",)).get_content()

    # Reopen with a comment, solve again, and close now (close_after_days = 0).
    assert status("In progress", "--note", "Paul ne peut toujours pas se connecter.")["status"] == "In progress"
    status("Solved", "--solution", "Mot de passe réinitialisé.")
    closed = js(tmp_path, "close-solved", env={"GATEWAY_LIFECYCLE_CLOSE_AFTER_DAYS": "0"})
    assert closed == {"closed": [number]}
    assert js(tmp_path, "ticket", "list") == []  # Closed tickets are not in the default list
    assert [t["number"] for t in js(tmp_path, "ticket", "list", "--search", "PO1234", "--all")] == [number]
    bad = gw(tmp_path, "ticket", "set-status", number, "In progress", "--note", "encore", check=False)
    assert bad.returncode == 1 and "a Closed ticket is final" in bad.stderr.decode()


def test_convert_an_incident_to_a_change(tmp_path):
    number = js(tmp_path, "ticket", "create", "--process", "incident", "--reporter", "anna@example.com",
                "--title", "Invoices button fails", "--description", "Error 500 on Invoices.")["number"]
    js(tmp_path, "ticket", "set-status", number, "In progress")
    done = js(tmp_path, "ticket", "convert-to-change", number)
    assert done["status"] == "Waiting" and done["linked"] == "CHG-000001"
    assert sorted(done["mails"]) == ["new", "waiting"]
    change = js(tmp_path, "ticket", "show", "CHG-000001")
    assert change["process"] == "change" and change["linked_ticket"] == number
    original = js(tmp_path, "ticket", "show", number)
    assert original["waiting_reason"] == "rfc"
    listed = {t["number"]: t["status"] for t in js(tmp_path, "ticket", "list")}
    assert listed == {number: "Waiting", "CHG-000001": "New"}
    bad = gw(tmp_path, "ticket", "convert-to-change", "CHG-000001", check=False)
    assert bad.returncode == 1 and "only an Incident or a Service Request" in bad.stderr.decode()
    again = gw(tmp_path, "ticket", "convert-to-change", number, check=False)
    assert again.returncode == 1 and f"{number} was already converted to CHG-000001" in again.stderr.decode()


def test_create_refuses_what_a_ticket_cannot_be(tmp_path):
    bad = gw(tmp_path, "ticket", "create", "--process", "incident", "--reporter", "nobody", "--title", "x",
             "--description", "y", check=False)
    assert bad.returncode == 1 and "'nobody' is not an e-mail address" in bad.stderr.decode()
    bad = gw(tmp_path, "ticket", "create", "--process", "incident", "--reporter", "a@example.com", "--title", " ",
             "--description", "y", check=False)
    assert bad.returncode == 1 and "needs a title" in bad.stderr.decode()
    assert js(tmp_path, "ticket", "list") == []
