"""The customers' pages over real HTTP against a real `gateway serve` (issue 24, isolation):
customers A and B of one company (no grant) and C (granted A's company): B gets 404 on
A's ticket, its files and its comment form, as for a ticket that does not exist; C sees
them; an expired or altered link, a used sign-in link, a GET on every action and a POST
without CSRF token are refused; a link scanner's HEAD or GET spends no sign-in link."""

from __future__ import annotations

import time
from email.message import EmailMessage

import pytest

from harness.portal import SECRET, Customer, Desk, link_in
from gateway.tokens import ticket_link_token

pytestmark = pytest.mark.slow

A, B, C = "anna@acme.example", "ben@acme.example", "carla@partner.example"


@pytest.fixture(scope="module")
def desk(tmp_path_factory):
    running = Desk(tmp_path_factory.mktemp("portal-http"), extra="[portal]\nsign_ins_per_address = 50\n"
                                                                  "sign_ins_per_client = 500\n")
    try:
        running.gateway("persons", "add", A, "--name", "Anna Peeters", "--company", "Acme", "--language", "en")
        running.gateway("persons", "add", B, "--name", "Ben Janssens", "--company", "Acme", "--language", "en")
        running.gateway("persons", "add", C, "--name", "Carla Dubois", "--company", "Partner", "--language", "en")
        running.gateway("persons", "grant", C, "--company", "Acme")
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = f"Anna Peeters <{A}>", "helpdesk@desk.example.com", "Printer jammed"
        msg.set_content("The printer on floor 3 shows E52.")
        msg.add_attachment(b"error log E52\n", maintype="text", subtype="plain", filename="printer.log")
        import smtplib

        with smtplib.SMTP("127.0.0.1", running.service.smtp_port, timeout=30) as smtp:
            smtp.send_message(msg)
        running.new_mail = running.delivered(A, "/portal/t/")
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def ticket(desk) -> dict:
    number = desk.new_mail["Subject"].split("]")[0].lstrip("[")
    return desk.ticket(number)


def signed_in(desk, address: str) -> Customer:
    customer = Customer(desk)
    count = sum(1 for m in desk.mails() if address in str(m["To"]) and "/portal/sign-in/" in m.get_body(("plain",))
                .get_content())
    customer.sign_in(address, count=count + 1)
    return customer


def attachment_path(customer: Customer, number: str) -> str:
    import re

    page = customer.get(f"/portal/tickets/{number}")
    found = re.search(rf'href="(/portal/tickets/{number}/files/\d+)"', page.text)
    assert found, page.text
    return found.group(1)


def test_the_link_of_the_new_mail_opens_the_ticket_after_its_button_only(desk, ticket):
    link = link_in(desk.new_mail)
    anna = Customer(desk)
    for method in ("HEAD", "GET"):
        assert anna.get(link, method).status == 200
    assert not [c for c in anna.jar if c.name == "gw_portal"]  # no session from a GET
    assert anna.get(f"/portal/tickets/{ticket['number']}").status == 404
    assert anna.post(link, {}).status == 403  # no CSRF token
    opened = anna.follow(link)
    assert opened.status == 303 and opened.location.endswith(f"/portal/tickets/{ticket['number']}")
    page = anna.get(opened.location)
    assert page.status == 200 and "Printer jammed" in page.text and "printer.log" in page.text
    for header, value in (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")):
        assert page.headers[header] == value
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none' covers scripts
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    # The link opens that ticket only: the list needs a sign-in.
    assert anna.get("/portal/tickets").status == 303


def test_an_altered_or_expired_link_opens_nothing(desk, ticket):
    link = link_in(desk.new_mail)
    base, token = link.rsplit("/", 1)
    number, person, until, sig = token.split(".")
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    expired = ticket_link_token(SECRET, number, int(person), int(time.time()) - 60)
    other = ticket_link_token(SECRET, number, int(person) + 1, int(until))[:-1] + "0"
    for bad in (f"{number}.{person}.{until}.{flipped}", f"{number}.{int(person) + 1}.{until}.{sig}",
                f"{number}.{person}.{int(until) + 1}.{sig}", expired, other, "INC-000001"):
        customer = Customer(desk)
        assert customer.get(f"{base}/{bad}").status == 404, bad
        page = customer.get("/portal")
        assert customer.post(f"{base}/{bad}", {"csrf": page.csrf()}).status == 404, bad
        assert customer.get(f"/portal/tickets/{number}").status == 404


def test_b_of_the_same_company_gets_404_c_granted_sees_it(desk, ticket):
    number = ticket["number"]
    anna = signed_in(desk, A)
    files = attachment_path(anna, number)
    ben = signed_in(desk, B)
    missing = ben.get("/portal/tickets/INC-999999")
    assert missing.status == 404
    refused = ben.get(f"/portal/tickets/{number}")
    # The same answer as for no ticket at all (but for the address, in the language form).
    assert refused.status == 404 and refused.text.replace(number, "N") == missing.text.replace("INC-999999", "N")
    assert ben.get(files).status == 404
    assert ben.get(files.replace(number, "INC-999999")).status == 404
    assert number not in ben.get("/portal/tickets").text
    before = len(desk.ticket(number)["messages"])
    csrf = ben.csrf("/portal/tickets")
    assert ben.post(f"/portal/tickets/{number}/comment", {"text": "mine now", "csrf": csrf}).status == 404
    assert ben.post(f"/portal/tickets/{number}/assessment", {"answer": "not-solved", "text": "x",
                                                               "csrf": csrf}).status == 404
    assert len(desk.ticket(number)["messages"]) == before

    carla = signed_in(desk, C)
    assert number in carla.get("/portal/tickets").text
    assert carla.get(f"/portal/tickets/{number}").status == 200
    download = carla.get(files)
    assert download.status == 200 and download.body == b"error log E52\n"
    assert download.headers["Content-Disposition"].startswith('attachment; filename="printer.log"')
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    desk.gateway("persons", "revoke", C, "--company", "Acme")
    try:
        assert carla.get(f"/portal/tickets/{number}").status == 404
        assert carla.get(files).status == 404
    finally:
        desk.gateway("persons", "grant", C, "--company", "Acme")


def test_a_sign_in_link_survives_a_scanner_and_works_once(desk):
    customer = Customer(desk)
    count = sum(1 for m in desk.mails() if B in str(m["To"]) and "/portal/sign-in/" in m.get_body(("plain",))
                .get_content())
    assert customer.post("/portal/sign-in", {"email": B, "csrf": customer.csrf()}).status == 200
    link = link_in(desk.delivered(B, "/portal/sign-in/", count=count + 1), "sign-in")
    scanner = Customer(desk)
    for method in ("HEAD", "GET", "GET", "HEAD"):
        assert scanner.get(link, method).status == 200
    assert scanner.post(link, {}).status == 403  # a scanner that even posts, without the page's token
    assert customer.follow(link).status == 303  # still good for the person
    assert customer.get("/portal/tickets").status == 200
    again = Customer(desk)
    page = again.get(link)
    assert "not valid any more" in page.text
    assert again.post(link, {"csrf": page.csrf()}).status == 400
    assert again.get("/portal/tickets").status == 303


def test_the_same_answer_for_an_unknown_address(desk):
    customer = Customer(desk)
    known = customer.post("/portal/sign-in", {"email": B, "csrf": customer.csrf()})
    unknown = customer.post("/portal/sign-in", {"email": "nobody@acme.example", "csrf": customer.csrf()})
    assert known.status == unknown.status == 200
    assert known.text.replace(B, "X") == unknown.text.replace("nobody@acme.example", "X")
    assert customer.post("/portal/sign-in", {"email": B}).status == 403


def test_no_get_acts_and_no_post_without_its_csrf_token(desk, ticket):
    number = ticket["number"]
    anna = signed_in(desk, A)
    before = desk.ticket(number)
    for path in (f"/portal/tickets/{number}/comment", f"/portal/tickets/{number}/assessment", "/portal/sign-out",
                 "/portal/language", "/portal/sign-in"):
        for method in ("GET", "HEAD"):
            assert anna.get(path, method).status == 405, (method, path)
    for path, fields in ((f"/portal/tickets/{number}/comment", {"text": "forged"}),
                         (f"/portal/tickets/{number}/assessment", {"answer": "not-solved", "text": "forged"}),
                         ("/portal/new", {"process": "incident", "title": "forged", "description": "forged"}),
                         ("/portal/sign-out", {}), ("/portal/language", {"lang": "nl"})):
        assert anna.post(path, fields).status == 403, path
        assert anna.post(path, {**fields, "csrf": "0" * 32}).status == 403, path
    after = desk.ticket(number)
    assert after["messages"] == before["messages"] and after["history"] == before["history"]
    assert "forged" not in desk.gateway("ticket", "list", "--all")
    assert anna.get("/portal/tickets").status == 200  # still signed in, still in English
    assert "My tickets" in anna.get("/portal/tickets").text


def test_nobody_reads_another_person_s_link_in_the_ticket(desk, ticket):
    """A granted person sees the ticket, never the notifications that carry its people's
    own links."""
    number = ticket["number"]
    carla = signed_in(desk, C)
    page = carla.get(f"/portal/tickets/{number}")
    assert page.status == 200 and "/portal/t/" not in page.text
    assert "The printer on floor 3 shows E52." in page.text
