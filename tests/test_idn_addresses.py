"""Internationalised domains (reliability bar item 24): ``jan@müller.de`` and
``jan@xn--mller-kva.de`` are one address, so one person, whichever form the customer
list and the mail program used; store revision 0004 joins persons stored in both forms."""

from __future__ import annotations

from harness.ingest import make_app, outbox_rows, receive
from sqlalchemy import text
from sqlmodel import Session, select

from store import schema
from store.addresses import key, normalize
from store.db import make_engine, session_for
from store.models import Person, Ticket
from store.tickets import add_person


def test_one_form_whatever_the_writing():
    forms = ["jan@xn--mller-kva.de", "Jan <JAN@XN--MLLER-KVA.DE>", "jan@Müller.de", "jan@MÜLLER.DE",
             "jan@ｍüller.de"]  # the last with a full-width m, which UTS 46 maps
    assert {key(f) for f in forms} == {"jan@müller.de"}
    assert normalize("Jan@xn--mller-kva.de") == "Jan@müller.de"  # the local part keeps its case
    assert key("eva@straße.de") == key("eva@xn--strae-oqa.de") == "eva@straße.de"  # IDNA 2008 keeps ß
    assert key("Marie@Example.COM") == "marie@example.com"
    assert key("x@xn--invalid--.de") == "x@xn--invalid--.de"  # refused by IDNA: as written, lowered


def mail(sender: str, subject: str, mid: str, extra: str = "") -> bytes:
    return (f"From: Jan Müller <{sender}>\r\nTo: helpdesk@localhost\r\nSubject: {subject}\r\n"
            f"Message-ID: <{mid}>\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n\r\n"
            "Der Drucker im zweiten Stock druckt nicht mehr.\r\n").encode()


def test_a_person_listed_in_unicode_writes_in_punycode(tmp_path, database_url):
    """Imported as jan@müller.de with German; their mail program sends
    jan@xn--mller-kva.de: the same person reports the ticket, the confirmation is German,
    and their reply in the other form is theirs to make."""
    app = make_app(tmp_path, database_url=database_url)
    with session_for(app.engine) as session:
        add_person(session, "jan@müller.de", "Jan Müller", language="de")
        session.commit()
    created = receive(app, mail("jan@xn--mller-kva.de", "Drucker defekt", "idn-1@xn--mller-kva.de"))
    assert created.outcome == "created"
    reply = receive(app, mail("JAN@MÜLLER.DE", f"Re: Drucker defekt [{created.ticket}]", "idn-2@müller.de",
                              f"In-Reply-To: <idn-1@xn--mller-kva.de>\r\n"))
    assert (reply.outcome, reply.ticket) == ("appended", created.ticket)
    with session_for(app.engine) as session:
        people = session.exec(select(Person)).all()
        assert [p.email for p in people] == ["jan@müller.de"]
        ticket = session.exec(select(Ticket)).one()
        assert ticket.reporting_person_id == people[0].id
    [confirmation] = outbox_rows(app)
    assert confirmation.language == "de" and confirmation.recipient == "jan@müller.de"
    app.engine.dispose()


def test_revision_0004_joins_persons_stored_in_both_forms(tmp_path, database_url):
    engine = make_engine(database_url)
    try:
        schema.upgrade(engine, "0003")
        with engine.begin() as conn:
            def person(email, name="", language="en", bounces=0):
                return conn.execute(text("INSERT INTO person (email, name, language, company, company_access, "
                                         "timezone, hard_bounces, undeliverable, created_at) VALUES (:e, :n, :l, '', "
                                         "false, 'Europe/Brussels', :b, false, CURRENT_TIMESTAMP) RETURNING id"),
                                    {"e": email, "n": name, "l": language, "b": bounces}).scalar()

            def ticket(number, reporter, affected):
                conn.execute(text("INSERT INTO ticket (number, process, status, title, description, "
                                  "reporting_person_id, affected_person_id, created_at, updated_at) VALUES "
                                  "(:n, 'incident', 'New', 't', '', :r, :a, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                             {"n": number, "r": reporter, "a": affected})

            listed = person("jan@müller.de", "Jan Müller", "de")  # from the customer list
            from_mail = person("jan@xn--mller-kva.de", "", "en", bounces=1)  # as a mail made it before
            alone = person("eva@xn--strae-oqa.de", "Eva")
            other = person("marie@example.be", "Marie", "fr")
            ticket("INC-000001", listed, listed)
            ticket("INC-000002", from_mail, other)
            ticket("INC-000003", other, from_mail)
            ticket("INC-000004", alone, alone)
        schema.upgrade(engine)
        with Session(engine) as session:
            people = {p.email: p for p in session.exec(select(Person))}
            assert sorted(people) == ["eva@straße.de", "jan@müller.de", "marie@example.be"]
            jan = people["jan@müller.de"]
            assert (jan.id, jan.name, jan.language, jan.hard_bounces) == (listed, "Jan Müller", "de", 1)
            assert people["eva@straße.de"].id == alone
            tickets = {t.number: (t.reporting_person_id, t.affected_person_id) for t in session.exec(select(Ticket))}
            assert tickets == {"INC-000001": (listed, listed), "INC-000002": (listed, other),
                               "INC-000003": (other, listed), "INC-000004": (alone, alone)}
        assert schema.stored_revision(engine) == schema.HEAD
    finally:
        engine.dispose()


def test_an_address_in_raw_utf8_is_one_reading_not_an_ambiguous_sender(tmp_path, database_url):
    """An internationalised mail (SMTPUTF8, RFC 6532) writes its From in raw UTF-8. The
    two readings of the sender used to disagree on it (one repaired the 8-bit bytes, the
    other kept them as surrogates): it was quarantined as an ambiguous sender, and the
    reason, surrogates and all, could not even be stored (the mail was retried until it
    was quarantined for the storing error).  Now it is its sender's."""
    app = make_app(tmp_path, database_url=database_url)
    raw = ("From: José Pérez <josé@müller.de>\r\nTo: helpdesk@localhost\r\nSubject: Écran noir\r\n"
           "Message-ID: <eai-1@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           "L'écran reste noir.\r\n").encode()
    assert receive(app, raw).outcome == "created"
    with session_for(app.engine) as session:
        assert [p.email for p in session.exec(select(Person))] == ["josé@müller.de"]
    # A reason that quotes raw 8-bit bytes (surrogates) is made storable: UTF-8 where
    # the bytes are, a replacement character where they are not.
    from gateway.errors import Quarantine

    assert Quarantine("read as jos\udcc3\udca9@example.org or \udcff").reason == "read as josé@example.org or \ufffd"
    app.engine.dispose()
