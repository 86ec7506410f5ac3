"""The customers' pages' rules (gateway.actions.portal), on SQLite and PostgreSQL: who sees
which ticket (own, granted company, nobody else), search, sign-in links (single use,
out of date, the same answer for an unknown address, the limits per address and per
client), a comment that resumes a ticket Waiting for the customer, the assessment of a
Solved ticket and "not solved" without and with its comment, a ticket created on the
web with its confirmation; and the signed links every notification carries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from gateway.actions import portal
from gateway.actions.tickets import create_ticket, set_status
from gateway.errors import NotFound, Refused
from gateway.tokens import ticket_link_token, verified_ticket_link
from store.db import session_for
from store.lifecycle import StatusData
from store.models import Company, Outbox, Person, SignInToken, utcnow
from store.notifications import load_context

SECRET = "portal-test-secret-of-at-least-32-bytes-0123"


@pytest.fixture
def desk(tmp_path, database_url):
    from gateway.app import App
    from gateway.config import load_config

    (tmp_path / "config.toml").write_text(f'[gateway]\nsecret = "{SECRET}"\n[database]\nurl = "{database_url}"\n'
                                          "[portal]\nsign_ins_per_address = 2\nsign_ins_per_client = 4\n")
    app = App(load_config(tmp_path / "config.toml", env={}))
    with session_for(app.engine) as session:
        for email, name, company in (("anna@acme.example", "Anna Peeters", "Acme"),
                                     ("ben@acme.example", "Ben Janssens", "Acme"),
                                     ("carla@partner.example", "Carla Dubois", "Partner")):
            session.add(Person(email=email, name=name, company=company, language="nl"))
        session.add(Company(name="Acme"))
        session.commit()
    yield app
    app.engine.dispose()


def person(app, email: str) -> Person:
    with session_for(app.engine) as session:
        return session.exec(select(Person).where(Person.email == email)).one()


def sees(app, email: str, number: str) -> bool:
    with session_for(app.engine) as session:
        try:
            portal.visible_ticket(session, person(app, email), number)
            return True
        except NotFound:
            return False


def test_a_person_sees_their_tickets_and_a_granted_company_s_nobody_else(desk):
    number = create_ticket(desk, process="incident", reporter="anna@acme.example", title="Printer jammed",
                           description="Tray 2", reference="PO1234").number
    assert sees(desk, "anna@acme.example", number)
    assert not sees(desk, "ben@acme.example", number)  # same company, no grant
    assert not sees(desk, "carla@partner.example", number)
    assert portal.grant(desk, "carla@partner.example", "Acme") is True
    assert portal.grant(desk, "carla@partner.example", "Acme") is False
    assert sees(desk, "carla@partner.example", number)
    with session_for(desk.engine) as session:
        carla = person(desk, "carla@partner.example")
        for text in ("po1234", "printer", number.lower(), "anna", "Nieuw", "New"):
            assert [t.number for t in portal.my_tickets(session, carla, text=text,
                                                        statuses=("New",) if text in ("Nieuw", "New") else ())] \
                == [number], text
        assert portal.my_tickets(session, carla, text="nothing like it") == []
    assert portal.revoke(desk, "carla@partner.example", "Acme") is True
    assert not sees(desk, "carla@partner.example", number)
    with pytest.raises(NotFound):
        portal.grant(desk, "nobody@acme.example", "Acme")


def test_closed_tickets_are_listed_only_when_asked(desk):
    number = create_ticket(desk, process="incident", reporter="anna@acme.example", title="Old", description="x").number
    set_status(desk, number, "Solved", StatusData(solution="done"))
    set_status(desk, number, "Closed", StatusData())
    with session_for(desk.engine) as session:
        anna = person(desk, "anna@acme.example")
        assert portal.my_tickets(session, anna) == []
        assert [t.number for t in portal.my_tickets(session, anna, include_closed=True)] == [number]


def test_every_notification_carries_its_recipient_s_signed_link(desk):
    number = create_ticket(desk, process="incident", reporter="anna@acme.example", affected="ben@acme.example",
                           title="Screen", description="Flickers").number
    with session_for(desk.engine) as session:
        rows = list(session.exec(select(Outbox).where(Outbox.event == "new")))
    links = {row.recipient: load_context(row.context)["link"] for row in rows}
    assert set(links) == {"anna@acme.example", "ben@acme.example"}
    for address, link in links.items():
        assert link.startswith("http://127.0.0.1:8025/portal/t/")
        found = verified_ticket_link((SECRET,), link.rsplit("/", 1)[1], utcnow())
        assert found == (number, person(desk, address).id)
        assert f"\n{link}\n" in desk.notifier.compose(rows[0] if rows[0].recipient == address else rows[1]).mail.text
    # 30 days by default: tomorrow yes, in 31 days no; altered in any part, never.
    token = links["anna@acme.example"].rsplit("/", 1)[1]
    assert verified_ticket_link((SECRET,), token, utcnow() + timedelta(days=29)) is not None
    assert verified_ticket_link((SECRET,), token, utcnow() + timedelta(days=31)) is None
    n, pid, until, sig = token.split(".")
    assert verified_ticket_link((SECRET,), f"{n}.{int(pid) + 1}.{until}.{sig}", utcnow()) is None
    assert verified_ticket_link((SECRET,), f"{n}.{pid}.{int(until) + 86400}.{sig}", utcnow()) is None
    assert verified_ticket_link(("another-secret-of-at-least-32-bytes-000000",), token, utcnow()) is None
    assert verified_ticket_link((SECRET,), ticket_link_token(SECRET, n, int(pid), int(until)), utcnow())


def kept(links: list):
    """A ``link_for`` that keeps each token and makes the link of it."""
    def link_for(token: str) -> str:
        links.append(token)
        return f"http://desk.example/portal/sign-in/{token}"
    return link_for


def test_a_sign_in_link_is_mailed_to_a_known_address_only_and_works_once(desk):
    links = []
    assert portal.request_sign_in(desk, "Anna@Acme.example", client="192.0.2.1", link_for=kept(links)) is True
    assert portal.request_sign_in(desk, "stranger@acme.example", client="192.0.2.1", link_for=kept(links)) is False
    assert len(links) == 1
    with session_for(desk.engine) as session:
        mail = session.exec(select(Outbox).where(Outbox.event == "sign-in")).one()
    assert mail.recipient == "anna@acme.example" and mail.language == "nl"
    token = links[0]
    assert load_context(mail.context)["extra"]["sign_in_link"] == f"http://desk.example/portal/sign-in/{token}"
    assert f"http://desk.example/portal/sign-in/{token}\n" in desk.notifier.compose(mail).mail.text
    assert portal.sign_in_state(desk, token)  # reading does not spend it
    assert portal.sign_in_state(desk, token)
    assert portal.use_sign_in(desk, token) == person(desk, "anna@acme.example").id
    with pytest.raises(Refused):
        portal.use_sign_in(desk, token)
    with pytest.raises(Refused):
        portal.use_sign_in(desk, "not-a-token")


def test_a_sign_in_link_expires_after_its_minutes(desk):
    links = []
    asked = utcnow() - timedelta(minutes=16)
    portal.request_sign_in(desk, "anna@acme.example", client="192.0.2.1", link_for=kept(links), now=asked)
    assert not portal.sign_in_state(desk, links[0])
    with pytest.raises(Refused):
        portal.use_sign_in(desk, links[0])


def test_sign_in_requests_are_limited_per_address_and_per_client(desk):
    sent = [portal.request_sign_in(desk, "anna@acme.example", client=f"192.0.2.{i}", link_for=lambda t: t)
            for i in range(3)]
    assert sent == [True, True, False]  # the third for this address is not mailed; the page says the same
    portal.request_sign_in(desk, "ben@acme.example", client="198.51.100.7", link_for=lambda t: t)
    for _ in range(3):
        portal.request_sign_in(desk, "unknown@acme.example", client="198.51.100.7", link_for=lambda t: t)
    with pytest.raises(portal.RateLimited):
        portal.request_sign_in(desk, "ben@acme.example", client="198.51.100.7", link_for=lambda t: t)
    with session_for(desk.engine) as session:
        assert len(list(session.exec(select(SignInToken)))) == 7  # the refused one left nothing


def test_a_comment_resumes_a_ticket_waiting_for_the_customer_and_keeps_its_files(desk):
    number = create_ticket(desk, process="incident", reporter="anna@acme.example", title="VPN", description="x").number
    set_status(desk, number, "Waiting", StatusData(waiting_reason="customer-feedback", note="Which client?"))
    anna = person(desk, "anna@acme.example")
    status = portal.comment(desk, anna.id, number, "FortiClient 7.2",
                            [portal.Upload("..\\screen<1>.png", "image/png", b"\x89PNG data")])
    assert status == "In progress"
    from gateway.commands.tickets import ticket_json

    with session_for(desk.engine) as session:
        from store.tickets import get_ticket

        shown = ticket_json(session, get_ticket(session, number))
    last = [m for m in shown["messages"] if m["direction"] == "in"][-1]
    assert last["body_text"] == "FortiClient 7.2" and not last["internal"]
    assert [a["filename"] for a in last["attachments"]] == ["screen1.png"]
    with pytest.raises(NotFound):
        portal.comment(desk, person(desk, "ben@acme.example").id, number, "me too")


def test_not_solved_needs_a_comment_and_an_assessment_is_kept(desk):
    number = create_ticket(desk, process="incident", reporter="anna@acme.example", title="Mail", description="x").number
    set_status(desk, number, "Solved", StatusData(solution="Mailbox enlarged"))
    anna = person(desk, "anna@acme.example").id
    with pytest.raises(Refused, match="comment"):
        portal.assess(desk, anna, number, solved=False, level=None, text="  ")
    with pytest.raises(Refused, match="1 to 5"):
        portal.assess(desk, anna, number, solved=True, level=7, text="")
    assert portal.assess(desk, anna, number, solved=True, level=4, text="Quick, thanks") == "Solved"
    assert portal.assess(desk, anna, number, solved=False, level=None, text="Full again") == "In progress"
    with pytest.raises(Refused):
        portal.assess(desk, anna, number, solved=True, level=5, text="")  # not Solved any more
    from gateway.commands.tickets import ticket_json
    from store.tickets import get_ticket

    with session_for(desk.engine) as session:
        shown = ticket_json(session, get_ticket(session, number))
    assert [(a["solved"], a["level"], a["comment"]) for a in shown["assessments"]] == [
        (True, 4, "Quick, thanks"), (False, None, "Full again")]
    assert shown["history"][-1]["note"] == "Full again"


def test_a_ticket_created_on_the_web_gets_the_confirmation(desk):
    anna = person(desk, "anna@acme.example").id
    with pytest.raises(Refused, match="title"):
        portal.create(desk, anna, process="service-request", title=" ", description="x")
    with pytest.raises(Refused, match="description"):
        portal.create(desk, anna, process="service-request", title="New phone", description="")
    with pytest.raises(Refused):
        portal.create(desk, anna, process="change", title="t", description="d")
    number = portal.create(desk, anna, process="service-request", title="New phone", description="For the intern",
                           reference="##PO77##", uploads=[portal.Upload("quote.pdf", "application/pdf", b"%PDF")])
    assert number.startswith("SR-")
    with session_for(desk.engine) as session:
        mails = list(session.exec(select(Outbox).where(Outbox.event == "new")))
        assert [m.recipient for m in mails] == ["anna@acme.example"]
        from store.tickets import get_ticket

        assert get_ticket(session, number).personal_reference == "PO77"
    assert sees(desk, "anna@acme.example", number)
