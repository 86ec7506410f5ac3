"""Every notification of the manual, in French, Dutch, English and German: the mail in
the outbox after an agent's move, with its language, its recipients and its key facts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from email.policy import default as default_policy
from zoneinfo import ZoneInfo

import re

import pytest
from sqlmodel import col, select

from gateway import actions
from gateway.app import App
from gateway.config import load_config
from store.notifications import language_for
from gateway.outbound.outbox import render_pending
from store.db import session_for
from store.lifecycle import WAITING_REASONS, StatusData
from store.models import Company, Outbox, Person
from store.tickets import get_or_create_person

LANGS = ("fr", "nl", "en", "de")
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)
GREETING = {"fr": "Bonjour Bob Affected,", "nl": "Beste Bob Affected,", "en": "Dear Bob Affected,",
            "de": "Guten Tag Bob Affected,"}
REGARDS = {"fr": "Cordialement,", "nl": "Met vriendelijke groeten,", "en": "Kind regards,",
           "de": "Mit freundlichen Grüßen"}
APPROVE = {"fr": ("approuvé", "refusé"), "nl": ("goedgekeurd", "afgewezen"), "en": ("approved", "refused"),
           "de": ("genehmigt", "abgelehnt")}
# The appointment: 15:30 in Brussels, which is 09:30 in New York where the customer is,
# written as each language writes it in a sentence.
APPOINTMENT = datetime(2026, 12, 1, 15, 30, tzinfo=ZoneInfo("Europe/Brussels"))
APPOINTMENT_IN_NEW_YORK = {"fr": "mardi 1er décembre 2026 à 9\u00a0h\u00a030",
                           "nl": "dinsdag 1 december 2026 om 9.30 uur",
                           "en": "Tuesday 1 December 2026 at 09:30", "de": "Dienstag, 1. Dezember 2026 um 09:30 Uhr"}
APPOINTMENT_IN_BRUSSELS = {"fr": "mardi 1er décembre 2026 à 15\u00a0h\u00a030",
                           "nl": "dinsdag 1 december 2026 om 15.30 uur",
                           "en": "Tuesday 1 December 2026 at 15:30", "de": "Dienstag, 1. Dezember 2026 um 15:30 Uhr"}
# Solved on 2 November at 09:00 UTC: closed for good 14 days later, 16 November in New York.
CLOSE_ON = {"fr": "le 16 novembre 2026", "nl": "op 16 november 2026", "en": "on 16 November 2026",
            "de": "am 16. November 2026"}


def _english_sentences() -> list[str]:
    """Every English wording of the mails, cut at its placeholders, long enough to be
    unmistakable."""
    from babel.messages.pofile import read_po

    from gateway.outbound.render import SHIPPED_DIR

    with open(SHIPPED_DIR / "locale" / "mail.pot", "rb") as fh:
        ids = [m.id for m in read_po(fh) if m.id]
    pieces = [p.strip() for i in ids for p in re.split(r"%\(\w+\)s", i)]
    return [p for p in pieces if len(p) >= 12 and " " in p]


ENGLISH_SENTENCES = _english_sentences()


def add_person(app, email, name, language="", company="", tz="Europe/Brussels") -> None:
    with session_for(app.engine) as session:
        person, _ = get_or_create_person(session, email, name)
        person.language, person.company, person.timezone = language, company, tz
        session.add(person)
        session.commit()


def set_company(app, name, language) -> None:
    with session_for(app.engine) as session:
        session.add(Company(name=name, language=language))
        session.commit()


def people(app, lang) -> None:
    add_person(app, "anna.reporter@example.com", "Anna Reporter", "en", tz="Europe/Brussels")
    add_person(app, "bob.affected@example.com", "Bob Affected", lang, tz="America/New_York")


def create(app, process="incident", affected="bob.affected@example.com") -> str:
    return actions.create_ticket(app, process=process, reporter="anna.reporter@example.com", affected=affected,
                                 title="Cannot print", description="E52 on the floor 3 printer.",
                                 reference="PO1234", now=T0).number


def last_mail(app, event):
    """The newest copy of ``event`` (the Affected Person's: the copies are queued
    Reporting Person first), rendered as the deliverer renders it."""
    render_pending(app.engine, app.notifier)
    with session_for(app.engine) as session:
        row = session.exec(select(Outbox).where(Outbox.event == event).order_by(col(Outbox.id).desc())).first()
    assert row is not None, f"no {event} mail in the outbox"
    msg = message_from_bytes(row.raw, policy=default_policy)
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    return row, msg, text, html


def check_common(app, row, msg, text, html, lang, number):
    assert row.language == lang and msg["Content-Language"] == lang
    assert f'<html lang="{lang}">' in html
    # One copy each for the Reporting and the Affected Person, each addressed to them alone.
    assert [a.addr_spec for a in msg["To"].addresses] == ["bob.affected@example.com"] == [row.recipient]
    with session_for(app.engine) as session:
        copies = session.exec(select(Outbox.recipient).where(Outbox.event == row.event,
                                                             Outbox.created_at == row.created_at)).all()
    assert sorted(copies) == ["anna.reporter@example.com", "bob.affected@example.com"]
    # What the mail asks of the customer when it asks something, the event's headline,
    # then the greeting.
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    asks = msg["X-Message-Flag"] is not None
    assert not asks or paragraphs[0] == str(msg["X-Message-Flag"]).replace(" :", "\u00a0:")
    assert paragraphs[2 if asks else 1].startswith(GREETING[lang]) and REGARDS[lang] in text
    assert number in msg["Subject"] and "PO1234" in text
    if lang != "en":
        for english in ("Kind regards", "Dear ", "Your ticket", "Reason:", "reply to this e-mail"):
            assert english not in text, f"English left in the {lang} mail: {english!r}"
        for english in ENGLISH_SENTENCES:
            assert english not in text and english not in html, f"English left in the {lang} mail: {english!r}"
    assert msg.get_content_type() == "multipart/alternative"


def _(app, lang, msgid, **kw) -> str:
    return app.renderer.translations(lang).gettext(msgid) % kw if kw else app.renderer.translations(lang).gettext(msgid)


def bring_to(app, event, number) -> None:
    """Move a new ticket to the status of ``event`` with its data."""
    steps = {
        "rejected": [("Rejected", StatusData(reason="This printer is not covered by the contract."))],
        "postponed": [("Postponed", StatusData(reason="Please tell us the serial number of the printer."))],
        "planned": [("Planned", StatusData(at=APPOINTMENT, place="Room 301"))],
        "solved": [("Solved", StatusData(solution="The fuser unit was replaced."))],
        "approval": [("Approval", StatusData(approval_text="A new colour printer for EUR 450."))],
        "waiting": [("Waiting", StatusData(waiting_reason="customer-feedback", note="Which tray is jammed?"))],
    }
    for status, data in steps.get(event, []):
        actions.set_status(app, number, status, data, now=T0 + timedelta(hours=1))


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("event", ["new", "rejected", "waiting", "postponed", "planned", "solved", "approval"])
def test_each_event_in_each_language(sqlite_gw, event, lang):
    app = sqlite_gw
    people(app, lang)
    number = create(app, process="service-request" if event == "approval" else "incident")
    if event in ("waiting", "postponed"):
        actions.comment(app, number, "The technician found paper stuck in tray 2.", now=T0 + timedelta(minutes=30))
    bring_to(app, event, number)
    row, msg, text, html = last_mail(app, event)
    check_common(app, row, msg, text, html, lang, number)
    facts = {
        "new": [_(app, lang, "A specialist will handle it as soon as possible.")],
        "rejected": ["This printer is not covered by the contract.", _(app, lang, "Reason:")],
        "postponed": ["Please tell us the serial number of the printer.",
                      "The technician found paper stuck in tray 2.", _(app, lang, "Latest update on your ticket:")],
        "waiting": ["Which tray is jammed?", "The technician found paper stuck in tray 2.",
                    _(app, lang, "We need information from you before we can continue with your ticket. Please "
                                 "reply to this e-mail with your answer.")],
        "planned": [APPOINTMENT_IN_NEW_YORK[lang], "Room 301"],
        "solved": ["The fuser unit was replaced.", CLOSE_ON[lang]],
        "approval": ["A new colour printer for EUR 450.", f"{APPROVE[lang][0]}", f"{APPROVE[lang][1]}"],
    }[event]
    for fact in facts:
        assert fact in text, f"{fact!r} missing from the {event}/{lang} text mail:\n{text}"
        assert fact.replace("'", "&#39;") in html or fact in html
    if event == "planned":
        # The customer's time zone: 09:30 in New York, not the agent's 15:30.
        assert not re.search(r"15[:. h\u00a0]+30", text)
    if event == "solved":
        assert _(app, lang, "If the problem is not solved, reply to this e-mail and explain what is still wrong: we "
                            "will reopen the ticket. A reply without an explanation cannot reopen it.") in text


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("reason", WAITING_REASONS)
def test_waiting_has_one_wording_per_reason(sqlite_gw, reason, lang):
    app = sqlite_gw
    people(app, lang)
    number = create(app)
    actions.set_status(app, number, "Waiting", StatusData(waiting_reason=reason), now=T0 + timedelta(hours=1))
    row, msg, text, html = last_mail(app, "waiting")
    check_common(app, row, msg, text, html, lang, number)
    wordings = {
        "third-party": "We are waiting for a third party (for example a supplier or a manufacturer) before we can "
                       "continue with your ticket. We will keep you informed.",
        "customer-feedback": "We need information from you before we can continue with your ticket. Please reply "
                             "to this e-mail with your answer.",
        "customer-financial-approval": "We are waiting for your financial approval (for example of a quote) before "
                                       "we can continue. Please reply to this e-mail to give it.",
        "customer-hardware-arrival": "We are waiting for your hardware to arrive before we can continue. Please "
                                     "reply to this e-mail as soon as it has arrived.",
        "customer-hardware-return": "We are waiting for you to return the hardware before we can continue. Please "
                                    "reply to this e-mail once you have sent it back.",
        "final-solution": "Your problem has been solved temporarily. We are waiting for the final solution and "
                          "will let you know when it is in place.",
        "rfc": "Your ticket requires a non-standard change, which is being carried out. We will continue as soon as "
               "it has been completed.",
    }
    expected = _(app, lang, wordings[reason])
    assert expected in text
    if lang != "en":
        assert expected != wordings[reason]
    others = [_(app, lang, w) for r, w in wordings.items() if r != reason]
    assert not any(o in text for o in others)


def test_reporter_who_is_also_affected_gets_one_mail_and_undeliverable_is_skipped(gw):
    add_person(gw, "anna.reporter@example.com", "Anna Reporter", "nl")
    number = create(gw, affected=None)
    row, msg, _text, _html = last_mail(gw, "new")
    assert [a.addr_spec for a in msg["To"].addresses] == ["anna.reporter@example.com"]
    assert row.language == "nl"
    add_person(gw, "bob.affected@example.com", "Bob Affected", "de")
    with session_for(gw.engine) as session:
        bob = session.exec(select(Person).where(Person.email == "bob.affected@example.com")).one()
        bob.undeliverable, bob.hard_bounces = True, 3
        session.add(bob)
        session.commit()
    other = create(gw)
    row, msg, _text, _html = last_mail(gw, "new")
    assert [a.addr_spec for a in msg["To"].addresses] == ["anna.reporter@example.com"]
    # Still the affected person's language, though they are not mailed.
    assert row.language == "de" and other in msg["Subject"]


def test_language_falls_back_to_the_company_then_the_default(gw, tmp_path):
    add_person(gw, "anna.reporter@example.com", "Anna Reporter", "fr")
    add_person(gw, "bob.affected@example.com", "Bob Affected", "", company="Acme NV")
    set_company(gw, "Acme NV", "nl")
    create(gw)
    assert last_mail(gw, "new")[0].language == "nl"  # not the reporter's French
    add_person(gw, "carl@example.com", "Carl", "", company="Nowhere Ltd")
    actions.create_ticket(gw, process="incident", reporter="anna.reporter@example.com", affected="carl@example.com",
                          title="t", description="d")
    assert last_mail(gw, "new")[0].language == "en"  # the config's default
    config = load_config(tmp_path / "config.toml", env={"GATEWAY_GATEWAY_DEFAULT_LANGUAGE": "de"})
    german = App(config)
    try:
        with session_for(german.engine) as session:
            carl = session.exec(select(Person).where(Person.email == "carl@example.com")).one()
            assert language_for(session, carl, german.config.gateway.default_language) == "de"
            carl.language = "es"  # a language we do not write: the fallbacks apply
            assert language_for(session, carl, german.config.gateway.default_language) == "de"
            carl.company = "Acme NV"
            assert language_for(session, carl, german.config.gateway.default_language) == "nl"
    finally:
        german.engine.dispose()


def test_customer_text_cannot_add_markup_or_headers(sqlite_gw):
    app = sqlite_gw
    people(app, "fr")
    number = actions.create_ticket(app, process="incident", reporter="anna.reporter@example.com",
                                   affected="bob.affected@example.com",
                                   title="Broken\r\nBcc: victim@example.org <b>now</b>",
                                   description="x", now=T0).number
    actions.set_status(app, number, "Rejected", StatusData(reason="<script>alert(1)</script> not ours"))
    row, msg, text, html = last_mail(app, "rejected")
    assert msg["Bcc"] is None and "victim@example.org" not in str(msg["To"])
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>now</b>" not in html and "&lt;b&gt;now&lt;/b&gt;" in html
    assert "<script>alert(1)</script> not ours" in text


@pytest.mark.parametrize("lang", LANGS)
def test_each_recipient_gets_a_copy_greeting_them_with_times_in_their_zone(gw, lang):
    """The Reporting and the Affected Person each get their own copy: greeted by their own
    name, the appointment in their own time zone (Anna in Brussels, Bob in New York), in
    the Affected Person's language, each addressed to them alone and threaded alike."""
    people(gw, lang)
    number = create(gw)
    bring_to(gw, "planned", number)
    render_pending(gw.engine, gw.notifier)
    with session_for(gw.engine) as session:
        copies = list(session.exec(select(Outbox).where(Outbox.event == "planned").order_by(col(Outbox.id))))
    assert [c.recipient for c in copies] == ["anna.reporter@example.com", "bob.affected@example.com"]
    assert {c.language for c in copies} == {lang}  # the Affected Person's, for both
    anna, bob = (message_from_bytes(c.raw, policy=default_policy) for c in copies)
    anna_text, bob_text = (m.get_body(("plain",)).get_content() for m in (anna, bob))
    assert GREETING[lang] in bob_text and "Bob Affected" not in anna_text
    assert GREETING[lang].replace("Bob Affected", "Anna Reporter") in anna_text
    assert APPOINTMENT_IN_NEW_YORK[lang] in bob_text
    assert APPOINTMENT_IN_NEW_YORK[lang] not in anna_text and APPOINTMENT_IN_BRUSSELS[lang] in anna_text
    assert [a.addr_spec for a in anna["To"].addresses] == ["anna.reporter@example.com"]
    assert [a.addr_spec for a in bob["To"].addresses] == ["bob.affected@example.com"]
    assert anna["Message-ID"] != bob["Message-ID"] and anna["Subject"] == bob["Subject"]
    assert anna["References"] == bob["References"] and anna["Thread-Index"][:30] == bob["Thread-Index"][:30]
