"""Automatic mail makes no ticket and no notification: each auto-reply, bounce, report
and loop rule with a real mail from the corpus (where the corpus has no mail with a
given header, a real person's mail with that header added), bounces linked to the
outbox mail that bounced, the unknown-sender policy, and a storm of 200 mails."""

from __future__ import annotations

import re

import pytest
from sqlmodel import col
from harness.ingest import customer_mail, inbound_rows, make_app, outbox_rows, person, receive, tickets

from gateway.ingest.automatic import classify
from gateway.ingest.parse import parse

OWN = ("helpdesk@localhost",)


def corpus_mail(corpus, rel: str) -> bytes:
    return (corpus / rel).read_bytes()


def with_header(raw: bytes, name: str, value: str) -> bytes:
    return f"{name}: {value}\n".encode() + raw


def with_subject(raw: bytes, subject: str) -> bytes:
    return re.sub(rb"(?im)^Subject:[^\n]*(\n[ \t][^\n]*)*", b"Subject: " + subject.encode(), raw, count=1)


# A real person's mail (Gmail, plain reply) that no rule flags on its own.
PERSON = "talon/standard_replies/gmail.eml"


def test_a_real_person_mail_is_not_automatic(corpus):
    assert classify(parse(corpus_mail(corpus, PERSON)), OWN) is None


@pytest.mark.parametrize("rel, kind, detail", [
    ("sisimai/bsd/rfc3834-01.eml", "auto-reply", "Auto-Submitted: auto-replied"),
    ("zammad/mail089.box", "auto-reply", "Auto-Submitted: auto-generated"),
    ("sisimai/bsd/rfc3834-02.eml", "auto-reply", "x-auto-response-suppress: All"),
    ("sisimai/bsd/rfc3834-03.eml", "auto-reply", "out-of-office subject: Auto reply: Nyaan"),
    ("spamscope-mail-parser/mail_test_5", "auto-reply", "Precedence: bulk"),
    ("spamscope-mail-parser/mail_test_16", "auto-reply", "Precedence: junk"),
    ("otobo/EmailParser/UTF8Filename.box", "auto-reply", "Precedence: list"),
    ("zammad/mail033-undelivered-mail-returned-to-sender.box", "bounce", "delivery status notification"),
    ("flanker/bounce/gmail-invalid-address.eml", "bounce", "X-Failed-Recipients"),
    ("sisimai/bsd/lhost-qmail-01.eml", "bounce", "non-standard bounce"),
    ("sisimai/bsd/lhost-exchange2003-01.eml", "bounce", "non-standard bounce"),
    ("flanker/bounce/no-mx.eml", "bounce", "temporary"),
    ("flanker/complaints/aol.eml", "feedback", "ARF"),
    ("sisimai/bsd/arf-22.eml", "feedback", "complaint report"),
    ("sisimai/bsd/lhost-amazonses-10.eml", "bounce", "Amazon SES bounce"),
    ("sisimai/bsd/lhost-amazonses-12.eml", "delivery", "Amazon SES delivery"),
])
def test_each_rule_with_a_real_mail(corpus, rel, kind, detail):
    auto = classify(parse(corpus_mail(corpus, rel)), OWN)
    assert auto is not None and auto.kind == kind
    assert detail in auto.detail


@pytest.mark.parametrize("name, value", [
    ("X-Autoreply", "yes"), ("X-Autorespond", "Out of office"), ("X-MS-Exchange-Generated-Message-Source",
                                                                  "Mailbox Rules Agent"),
    ("Auto-Submitted", "auto-replied (vacation)"), ("X-Auto-Response-Suppress", "DR, OOF, AutoReply"),
    ("List-Id", "IT news <it-news.corp.example>"),
])
def test_header_rules_on_a_real_person_mail(corpus, name, value):
    auto = classify(parse(with_header(corpus_mail(corpus, PERSON), name, value)), OWN)
    assert auto is not None and auto.kind == "auto-reply" and name.lower() in auto.detail.lower()


def test_our_own_message_id_with_precedence_bulk_is_a_loop(corpus):
    """Reliability bar item 50: a mail carrying a Message-ID at our domain and
    Precedence: bulk is our own mail coming back (a relay or list that kept our id)."""
    raw = re.sub(rb"(?im)^Message-ID:[^\n]*\n", b"", corpus_mail(corpus, PERSON))
    ours = with_header(with_header(raw, "Message-ID", "<gw.42.abc@helpdesk.example>"), "Precedence", "bulk")
    auto = classify(parse(ours), OWN, own_domain="helpdesk.example")
    assert auto is not None and auto.kind == "loop" and "our own Message-ID" in auto.detail
    # Another domain's id with Precedence: bulk is bulk mail, not our loop.
    theirs = with_header(with_header(raw, "Message-ID", "<x.1@news.example>"), "Precedence", "bulk")
    other = classify(parse(theirs), OWN, own_domain="helpdesk.example")
    assert other is not None and other.kind == "auto-reply"


def test_auto_submitted_no_is_a_person(corpus):
    assert classify(parse(with_header(corpus_mail(corpus, PERSON), "Auto-Submitted", "no")), OWN) is None


@pytest.mark.parametrize("subject", [
    "Out of Office: Printer broken", "Automatic reply: Printer broken", "Réponse automatique : imprimante",
    "Absence du bureau", "Automatisch antwoord: printer", "Afwezig: printer", "Abwesenheitsnotiz: Drucker",
    "Automatische Antwort: Drucker", "RE: Out of office", "AW: Abwesenheitsnotiz",
])
def test_out_of_office_subjects_in_four_languages(corpus, subject):
    auto = classify(parse(with_subject(corpus_mail(corpus, PERSON), subject)), OWN)
    assert auto is not None and auto.kind == "auto-reply"


@pytest.mark.parametrize("subject", ["Printer not delivered yet?", "Office move next week", "Réponse à votre question",
                                     "Antwoord op uw vraag"])
def test_ordinary_subjects_stay_mail(corpus, subject):
    assert classify(parse(with_subject(corpus_mail(corpus, PERSON), subject)), OWN) is None


def test_sisimai_non_bounce_stays_mail(corpus):
    assert classify(parse(corpus_mail(corpus, "sisimai/not/is-not-bounce-01.eml")), OWN) is None


# Through the Processor ------------------------------------------------------------------
def test_automatic_mail_makes_no_ticket_and_no_notification(tmp_path, corpus):
    app = make_app(tmp_path)
    for rel, outcome in [("sisimai/bsd/rfc3834-01.eml", "auto-reply"), ("flanker/complaints/aol.eml", "feedback"),
                         ("sisimai/bsd/lhost-qmail-01.eml", "bounce")]:
        assert receive(app, corpus_mail(corpus, rel)).outcome == outcome
    assert tickets(app) == [] and outbox_rows(app) == []
    assert {r.state for r in inbound_rows(app)} == {"processed"}


def test_our_own_mail_coming_back_is_a_loop(tmp_path):
    app = make_app(tmp_path)
    assert receive(app, customer_mail()).outcome == "created"
    ours = outbox_rows(app)[0].raw
    assert receive(app, ours).outcome == "loop"
    assert receive(app, customer_mail(sender="helpdesk@localhost", subject="hello")).outcome == "loop"
    assert len(tickets(app)) == 1 and len(outbox_rows(app)) == 1


def test_mail_from_a_routed_address_of_ours_is_a_loop(tmp_path):
    app = make_app(tmp_path, '[routing]\nroutes = { "requests@localhost" = "service-request" }\n')
    assert receive(app, customer_mail(sender="Requests@localhost")).outcome == "loop"
    assert tickets(app) == []


def _bounce_for(corpus, outbox_mid: str, n: int) -> bytes:
    """Postfix's real DSN of zammad/mail033, returning our outbox mail ``outbox_mid``."""
    raw = corpus_mail(corpus, "zammad/mail033-undelivered-mail-returned-to-sender.box")
    raw = raw.replace(b"20150830145601.30.608881@edenhofer.zammad.com", outbox_mid.encode())
    return raw.replace(b"20150830145606.9246B20C3E96@mx1.zammad.com", f"bounce-{n}@mx1.zammad.com".encode())


def test_bounce_marks_the_outbox_mail_failed_and_counts_hard_bounces(tmp_path, corpus, database_url):
    app = make_app(tmp_path, database_url=database_url)
    customer = "not_existing@znuny.com"  # the address Postfix's DSN reports as unknown
    for n in range(3):
        assert receive(app, customer_mail(sender=customer, subject=f"Problem {n}")).outcome == "created"
    rows = outbox_rows(app)
    assert len(rows) == 3
    for n, row in enumerate(rows):
        outcome = receive(app, _bounce_for(corpus, row.message_id, n))
        assert outcome.outcome == "bounce"
        assert outcome.ticket is not None  # linked to the ticket of the bounced mail
        assert "marked failed" in outcome.detail
        assert person(app, customer).hard_bounces == n + 1
    assert {r.state for r in outbox_rows(app)} == {"failed"}
    assert all("bounce <bounce-" in r.last_answer for r in outbox_rows(app))
    assert person(app, customer).undeliverable  # outbound.undeliverable_after = 3
    # Still a ticket for the next mail, but no notification to an undeliverable address.
    assert receive(app, customer_mail(sender=customer, subject="Problem 4")).outcome == "created"
    assert len(outbox_rows(app)) == 3
    assert len(tickets(app)) == 4


def test_a_bounce_of_someone_elses_mail_touches_nothing(tmp_path, corpus):
    app = make_app(tmp_path)
    outcome = receive(app, corpus_mail(corpus, "zammad/mail033-undelivered-mail-returned-to-sender.box"))
    assert outcome.outcome == "bounce" and outcome.ticket is None
    assert "no outbox mail of ours" in outcome.detail


@pytest.mark.parametrize("policy, outcome, state", [("reject", "rejected", "processed"),
                                                    ("quarantine", "quarantined", "quarantined"),
                                                    ("create", "created", "processed")])
def test_unknown_sender_policy(tmp_path, policy, outcome, state, database_url):
    app = make_app(tmp_path, f'[gateway]\nunknown_senders = "{policy}"\n', database_url)
    result = receive(app, customer_mail(sender="stranger@example.org"))
    assert result.outcome == outcome
    assert [r.state for r in inbound_rows(app)] == [state]  # stored either way, with the reason
    if policy != "create":
        assert tickets(app) == [] and outbox_rows(app) == []  # no ticket, no answer: no backscatter
        assert "unknown sender" in result.detail


def test_known_sender_gets_a_ticket_under_reject_policy(tmp_path):
    app = make_app(tmp_path, '[gateway]\nunknown_senders = "reject"\n')
    from store.db import session_for
    from store.tickets import get_or_create_person

    with session_for(app.engine) as session:
        get_or_create_person(session, "known@example.org", "Known", "en")
        session.commit()
    assert receive(app, customer_mail(sender="known@example.org")).outcome == "created"


def test_storm_of_200_mails_sends_at_most_the_rate_limit(tmp_path, database_url):
    app = make_app(tmp_path, database_url=database_url)
    limit = app.config.limits.rate_limit
    outcomes = [receive(app, customer_mail(sender="storm@example.org", subject=f"Alert {i}")).outcome
                for i in range(200)]
    assert outcomes == ["created"] * 200  # every mail still becomes a ticket
    assert len(tickets(app)) == 200
    assert len(outbox_rows(app)) == limit


def test_new_tickets_per_sender_past_the_limit_are_held_for_an_agent(tmp_path, database_url):
    """Reliability bar item 53, when the desk sets [limits] new_tickets_per_sender: a
    script opening ticket after ticket gets that many; its further new mails are
    quarantined with the reason (stored, visible, no answer), its replies still thread,
    other senders are not concerned, and once the window has passed a reprocess makes
    the held mails tickets."""
    from sqlmodel import select

    from gateway.cli import main
    from store.db import session_for
    from store.models import InboundMessage

    app = make_app(tmp_path, "[limits]\nnew_tickets_per_sender = 3\nnew_tickets_window = 2\n", database_url)
    outcomes = [receive(app, customer_mail(sender="script@example.org", subject=f"Alert {i}")) for i in range(5)]
    assert [o.outcome for o in outcomes] == ["created"] * 3 + ["quarantined"] * 2
    assert "flood: script@example.org opened 3 tickets" in outcomes[3].detail
    assert len(tickets(app)) == 3 and len(outbox_rows(app)) == 3  # the held ones are not answered
    reply = customer_mail(sender="script@example.org", subject=f"Re: [{outcomes[0].ticket}] Alert 0",
                          body="Still failing.")
    assert receive(app, reply).outcome == "appended"
    assert receive(app, customer_mail(sender="marie@example.be", subject="Printer")).outcome == "created"
    import time

    time.sleep(2.2)  # the window passes
    assert main(["--config", str(tmp_path / "config.toml"), "inbound", "reprocess", "--quarantined"]) == 0
    with session_for(app.engine) as session:
        held = session.exec(select(InboundMessage.outcome).where(
            col(InboundMessage.message_id).in_([o.message_id for o in outcomes[3:]]))).all()
    assert sorted(held) == ["created", "created"]
    app.engine.dispose()


def test_new_tickets_limit_must_be_sane(tmp_path):
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="new_tickets_per_sender"):
        make_app(tmp_path, "[limits]\nnew_tickets_per_sender = -1\n")


def test_rate_falls_and_notifications_resume(tmp_path, database_url):
    app = make_app(tmp_path, "[limits]\nrate_limit = 2\nrate_window = 1\n", database_url)
    for i in range(4):
        receive(app, customer_mail(sender="burst@example.org", subject=f"Burst {i}"))
    assert len(outbox_rows(app)) == 2
    import time

    time.sleep(1.2)
    receive(app, customer_mail(sender="burst@example.org", subject="Later"))
    assert len(outbox_rows(app)) == 3


def test_a_customer_writing_about_delivery_problems_gets_a_ticket(tmp_path):
    app = make_app(tmp_path)
    raw = customer_mail(sender="sysadmin@customer.example", subject="Our e-mails are not delivered",
                        body="Since this morning our mails are not delivered to our clients. Can you check the "
                             "relay? Thanks")
    assert receive(app, raw).outcome == "created"
