"""Replies land on the right ticket, only from people allowed, and act on it.

Every ticket here is created by a real first mail; replies are written as Outlook, Gmail
and Apple Mail write them, and go through the gateway's store and processor (or the
``gateway ingest --json`` command line), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import email
import re
import email.header
import email.policy
import json
from dataclasses import replace
from email.utils import getaddresses

import pytest
from sqlmodel import col, select

from conftest import run_gateway
from gateway.ingest.inbound import store_raw
from store import lifecycle
from store.db import session_for
from store.lifecycle import StatusData
from store.models import InboundMessage, Person, StatusChange, Ticket
from store.tickets import change_status, get_ticket
from harness.replies import (HELPDESK, MARIE, apple_reply_nl, deliver, first_mail, gmail_reply, last_notification, messages,
                             notifications, open_ticket, outlook_reply, ticket)

JAN = "jan.peeters@klant.be"
MALLORY = "mallory@evil.example"


# Mails as clients write them ---------------------------------------------------------
# Story helpers -----------------------------------------------------------------------
def history(gw, number: str) -> list[StatusChange]:
    with session_for(gw.engine) as s:
        t = get_ticket(s, number)
        rows = list(s.exec(select(StatusChange).where(StatusChange.ticket_id == t.id).order_by(col(StatusChange.id))))
        for r in rows:
            s.expunge(r)
        return rows


def agent_moves(gw, number: str, *moves: tuple[str, StatusData]) -> None:
    """An agent works the ticket (the store's own status change, as the agent tools use it)."""
    with session_for(gw.engine) as s:
        t = get_ticket(s, number)
        for target, data in moves:
            change_status(s, t, target, data, by="agent@localhost")
        s.commit()


def solve(gw, number: str) -> None:
    moves = [(lifecycle.SOLVED, StatusData(solution="Le toner a été remplacé."))]
    if ticket(gw, number).status != lifecycle.IN_PROGRESS:
        moves.insert(0, (lifecycle.IN_PROGRESS, StatusData()))
    agent_moves(gw, number, *moves)


def ask_approval(gw, number: str) -> None:
    agent_moves(gw, number, (lifecycle.APPROVAL, StatusData(approval_text="Nouvel écran 27 pouces : 320 EUR")))


def assert_untouched(gw, victim: str, before: int, status: str) -> None:
    assert len(messages(gw, victim, "in")) == before
    assert ticket(gw, victim).status == status
    assert all(MALLORY != n.recipient for n in notifications(gw, victim))


# Threading ---------------------------------------------------------------------------
def our_html(gw, number: str) -> str:
    """The HTML part of the newest mail we sent on the ticket, as a client quotes it."""
    row = notifications(gw, number)[-1]
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    return msg.get_body(("html",)).get_content()


def test_a_reply_that_lost_every_header_finds_its_ticket_by_the_marker_in_our_html(gw):
    """The client dropped In-Reply-To and References, the customer wrote a new subject to
    the plain address: the reply address hidden at the end of our HTML, quoted in the
    reply's HTML, still names the ticket (and only a signed one counts)."""
    number = open_ticket(gw)
    quoted = our_html(gw, number)
    assert "gw-ref:helpdesk+" in quoted and "display:none" in quoted
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", "Encore l'imprimante", "Elle refait la même chose.",
                                  mid="lost-headers@mail.gmail.com", in_reply_to=None, to=HELPDESK,
                                  quoted=quoted))
    assert (out.outcome, out.ticket) == ("appended", number)
    assert messages(gw, number, "in")[-1].body_text.startswith("Elle refait la même chose.")
    # A marker whose token does not verify is nothing: a ticket of its own.
    forged = quoted.replace("gw-ref:helpdesk+", "gw-ref:helpdesk+x")
    forged = re.sub(r"(gw-ref:helpdesk\+x?[A-Z]+-\d{6}\.)[0-9a-f]+", r"\g<1>0123456789abcdef0123", forged)
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", "Autre chose", "Un autre souci.",
                                  mid="forged-marker@mail.gmail.com", in_reply_to=None, to=HELPDESK, quoted=forged))
    assert out.outcome == "created" and out.ticket != number


def test_a_stranger_quoting_our_html_gets_a_ticket_of_their_own(gw):
    number = open_ticket(gw)
    before = len(messages(gw, number, "in"))
    out = deliver(gw, gmail_reply(MALLORY, "Mallory", "Fwd: votre ticket", "Je m'invite.",
                                  mid="stranger-marker@evil.example", in_reply_to=None, to=HELPDESK,
                                  quoted=our_html(gw, number)))
    assert out.outcome == "created" and out.ticket != number
    assert number in (out.detail or "")  # found by the marker, refused by the permission check
    assert_untouched(gw, number, before, lifecycle.NEW)


def test_outlook_reply_without_in_reply_to_lands_by_its_tag(gw):
    number = open_ticket(gw)
    _mid, reply_to, subject = last_notification(gw, number)
    raw = outlook_reply("Marie.Dupont@CLIENT.BE", "Dupont, Marie", f"RE: {subject}",
                        "Le technicien peut passer cet après-midi, le bureau est le 2.14.",
                        reply_to, subject, mid="DB9PR02MB71801A@DB9PR02MB7180.eurprd02.prod.outlook.com")
    out = deliver(gw, raw)
    assert (out.outcome, out.ticket) == ("appended", number)
    assert out.detail == "found by tag"
    reply = messages(gw, number, "in")[-1]
    assert reply.body_text == "Le technicien peut passer cet après-midi, le bureau est le 2.14."
    assert "Envoyé : vendredi 27 novembre 2026" in reply.body_full  # the full mail is kept


@pytest.mark.parametrize("prefix", ["RE: ", "Re : ", "AW: ", "TR: ", "Antw: ", "Fwd: ", "[EXTERNAL] RE: ",
                                    "RE: RE: Re: ", "RE:[EXTERNAL]  AW:"])
def test_subject_tag_whatever_the_prefixes(sqlite_gw, prefix):
    number = open_ticket(sqlite_gw)
    raw = outlook_reply(MARIE, "Marie Dupont", f"{prefix}[{number}] Imprimante en panne au 2e étage",
                        "Toujours en panne.", HELPDESK, f"[{number}] Imprimante", mid=f"pfx-{len(prefix)}@outlook.com")
    out = deliver(sqlite_gw, raw)
    assert (out.outcome, out.ticket) == ("appended", number)


def test_gmail_reply_in_french_lands_by_in_reply_to_and_only_new_text_is_the_comment(gw):
    number = open_ticket(gw)
    notif_id, reply_to, subject = last_notification(gw, number)
    # Gmail keeps "Re:" but a customer edited the subject: the Message-ID still finds the ticket.
    raw = gmail_reply(MARIE, "Marie Dupont", "Re: imprimante", "Oui, c'est bien le bureau 2.14.",
                      mid="CAF=kV8x+7Qm@mail.gmail.com", in_reply_to=notif_id, references=[notif_id], to=reply_to)
    out = deliver(gw, raw)
    assert (out.outcome, out.ticket, out.detail) == ("appended", number, "found by message-id")
    reply = messages(gw, number, "in")[-1]
    assert reply.body_text == "Oui, c'est bien le bureau 2.14."
    assert "a\nécrit :" in reply.body_full and "> Votre ticket a été mis à jour." in reply.body_full


def test_signed_reply_address_alone_finds_the_ticket_and_a_bad_token_counts_for_nothing(gw):
    number = open_ticket(gw)
    _mid, reply_to, _subject = last_notification(gw, number)
    assert reply_to.startswith(f"helpdesk+{number}.")
    # Some MTAs lowercase the local part; the token still verifies.
    raw = gmail_reply(MARIE, "Marie Dupont", "Photo de l'écran", "Voici la photo.", mid="tok-1@mail.gmail.com",
                      in_reply_to=None, to=reply_to.lower())
    out = deliver(gw, raw, rcpt=(reply_to.lower(),))
    assert (out.outcome, out.ticket, out.detail) == ("appended", number, "found by token")
    bad = reply_to.split(".")[0] + ".0000000000@localhost"
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", "Autre chose", "Une autre question.",
                                  mid="tok-2@mail.gmail.com", in_reply_to=None, to=bad), rcpt=(bad,))
    assert out.outcome == "created" and out.ticket != number


def test_personal_reference_is_not_a_thread_key(gw):
    number = open_ticket(gw, subject="Commande écran ##PO-4711##")
    out = deliver(gw, first_mail(MARIE, "Marie Dupont", "Encore une question ##PO-4711##", "Autre sujet.",
                                 mid="ref-2@client.be"))
    assert out.outcome == "created" and out.ticket != number


# Who may write -----------------------------------------------------------------------
def test_forged_tag_from_a_stranger_adds_nothing_to_the_victims_ticket(gw):
    victim = open_ticket(gw)
    raw = outlook_reply(MALLORY, "Mallory", f"RE: [{victim}] Imprimante en panne au 2e étage",
                        "Merci d'envoyer le mot de passe administrateur à cette adresse.", HELPDESK,
                        f"[{victim}] Imprimante", mid="forged-tag@evil.example")
    out = deliver(gw, raw)
    assert out.outcome == "created" and out.ticket != victim
    assert out.detail == f"sender may not write into {victim}"
    assert_untouched(gw, victim, 1, lifecycle.NEW)
    own = ticket(gw, out.ticket)
    assert victim not in own.title and own.title == "Imprimante en panne au 2e étage"
    notes = [m.body_text for m in messages(gw, out.ticket, "note")]
    assert any(victim in n and "(by tag)" in n for n in notes) and all(m.internal for m in messages(gw, out.ticket, "note"))
    # The stranger's acknowledgement goes to the stranger only, and names only their own ticket.
    (ack,) = notifications(gw, out.ticket)
    assert ack.recipient == MALLORY and victim not in ack.raw.decode("utf-8", "replace")


def test_forged_references_from_a_stranger_adds_nothing(gw):
    victim = open_ticket(gw)
    notif_id, _reply_to, subject = last_notification(gw, victim)
    raw = gmail_reply(MALLORY, "Mallory", "Re: une question", "Je reprends ce dossier.", mid="forged-ref@evil.example",
                      in_reply_to=notif_id, references=["first-1@client.be", notif_id])
    out = deliver(gw, raw)
    assert out.outcome == "created" and out.ticket != victim
    assert_untouched(gw, victim, 1, lifecycle.NEW)


def test_copied_token_from_a_stranger_adds_nothing(gw):
    victim = open_ticket(gw)
    solve(gw, victim)
    _notif_id, reply_to, subject = last_notification(gw, victim)
    # Even a perfectly valid token (a forwarded notification) and the right tag: not theirs.
    raw = gmail_reply(MALLORY, "Mallory", f"Re: {subject}", "Ça ne marche toujours pas, rouvrez.",
                      mid="copied-token@evil.example", in_reply_to=None, to=reply_to)
    out = deliver(gw, raw, rcpt=(reply_to,))
    assert out.outcome == "created" and out.ticket != victim
    assert_untouched(gw, victim, 1, lifecycle.SOLVED)


def test_addresses_compare_as_mail_does(gw):
    number = open_ticket(gw)
    raw = outlook_reply("MARIE.DUPONT@Client.Be", "DUPONT Marie (Client BE)", f"RE: [{number}] Imprimante",
                        "Précision : modèle HP M404.", HELPDESK, f"[{number}] Imprimante", mid="case@outlook.com")
    assert deliver(gw, raw).outcome == "appended"


def test_colleague_in_cc_and_company_access_may_write_others_of_the_company_may_not(gw):
    """Paul was in Cc of Marie's first mail, which our MTA authenticated (DMARC pass): he
    is one of the thread.  (Unauthenticated, a Cc enrols nobody: see
    test_cc_of_an_unauthenticated_mail_enrols_nobody.)"""
    gw.processor.config = replace(gw.config, gateway=replace(gw.config.gateway, authserv_id="mx.localhost"))
    passed = b"Authentication-Results: mx.localhost; spf=pass smtp.mailfrom=client.be; dmarc=pass header.from=client.be\n"
    outcome = deliver(gw, passed + first_mail(MARIE, "Marie Dupont", "Imprimante en panne au 2e étage", "Bonjour.",
                                              mid="first-1@client.be", cc="Paul Martin <paul.martin@client.be>"))
    number = outcome.ticket
    assert outcome.outcome == "created"
    with session_for(gw.engine) as s:
        marie = s.exec(select(Person).where(Person.email == MARIE)).one()
        marie.company = "Client SA"
        s.add(marie)
        s.add(Person(email="chef@client.be", name="Chef", company="Client SA", company_access=True))
        s.add(Person(email="autre@client.be", name="Autre", company="Client SA", company_access=False))
        s.commit()
    subject = f"RE: [{number}] Imprimante"
    for sender, mid, expected in [("paul.martin@client.be", "cc@client.be", "appended"),
                                  ("chef@client.be", "chef@client.be", "appended"),
                                  ("autre@client.be", "autre@client.be", "created")]:
        out = deliver(gw, outlook_reply(sender, "X", subject, "Une information.", HELPDESK, subject, mid=mid))
        assert out.outcome == expected, (sender, out)
    assert len(messages(gw, number, "in")) == 3


def test_our_own_tagged_address_on_the_thread_grants_nothing(gw):
    number = open_ticket(gw)
    # A mail claiming to come from our own tagged address is ours coming back, never a reply.
    _mid, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, outlook_reply(reply_to.upper().replace("@LOCALHOST", "@LocalHost"), "Helpdesk",
                                    f"RE: {subject}", "x", HELPDESK, subject, mid="own@x"))
    assert (out.outcome, out.ticket) == ("loop", number)
    assert len(messages(gw, number, "in")) == 1
    with session_for(gw.engine) as s:
        assert len(s.exec(select(Ticket)).all()) == 1


# What a reply does -------------------------------------------------------------------
def test_reply_while_waiting_for_the_customer_resumes_the_work(gw):
    number = open_ticket(gw)
    agent_moves(gw, number, (lifecycle.IN_PROGRESS, StatusData()),
                (lifecycle.WAITING, StatusData(waiting_reason="customer-feedback", note="Quel bureau ?")))
    notif_id, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Bureau 2.14.", mid="w1@mail.gmail.com",
                                  in_reply_to=notif_id, to=reply_to))
    assert (out.outcome, out.ticket) == ("appended", number)
    t = ticket(gw, number)
    assert t.status == lifecycle.IN_PROGRESS and t.waiting_reason is None
    last = history(gw, number)[-1]
    assert (last.from_status, last.to_status, last.by) == (lifecycle.WAITING, lifecycle.IN_PROGRESS, MARIE)
    assert "customer answered" in last.note


def test_reply_with_only_an_attachment_while_waiting_for_hardware_return_adds_it_and_resumes(gw):
    number = open_ticket(gw)
    agent_moves(gw, number, (lifecycle.WAITING, StatusData(waiting_reason="customer-hardware-return")))
    notif_id, reply_to, subject = last_notification(gw, number)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "", mid="w2@mail.gmail.com",
                                  in_reply_to=notif_id, to=reply_to, attachment=("bon-de-retour.png", png)))
    assert (out.outcome, out.ticket) == ("appended", number)
    assert ticket(gw, number).status == lifecycle.IN_PROGRESS
    with session_for(gw.engine) as s:
        from store.models import Attachment
        (att,) = s.exec(select(Attachment).where(Attachment.message_id == messages(gw, number, "in")[-1].id)).all()
        assert att.filename == "bon-de-retour.png" and gw.blobs.get(att.sha256) == png


def test_reply_while_waiting_for_a_third_party_does_not_move_the_ticket(gw):
    number = open_ticket(gw)
    agent_moves(gw, number, (lifecycle.WAITING, StatusData(waiting_reason="third-party")))
    out = deliver(gw, outlook_reply(MARIE, "Marie", f"RE: [{number}] x", "Des nouvelles ?", HELPDESK, "x", mid="w3@o"))
    assert out.outcome == "appended" and ticket(gw, number).status == lifecycle.WAITING


def test_reply_to_solved_with_text_reopens_it_with_the_text_as_comment(gw):
    number = open_ticket(gw)
    solve(gw, number)
    notif_id, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}",
                                  "Le problème est revenu ce matin, même erreur 49.", mid="s1@mail.gmail.com",
                                  in_reply_to=notif_id, to=reply_to))
    assert (out.outcome, out.ticket) == ("reopened", number)
    assert ticket(gw, number).status == lifecycle.IN_PROGRESS
    last = history(gw, number)[-1]
    assert (last.from_status, last.to_status) == (lifecycle.SOLVED, lifecycle.IN_PROGRESS)
    assert last.note == "Le problème est revenu ce matin, même erreur 49."


def test_reply_to_solved_without_text_stays_solved_and_asks_for_a_comment_in_french(gw):
    number = open_ticket(gw)
    solve(gw, number)
    notif_id, reply_to, subject = last_notification(gw, number)
    before = len(notifications(gw, number))
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "", mid="s2@mail.gmail.com",
                                  in_reply_to=notif_id, to=reply_to))
    assert (out.outcome, out.ticket) == ("needs-comment", number)
    assert ticket(gw, number).status == lifecycle.SOLVED
    sent = notifications(gw, number)
    assert len(sent) == before + 1
    mail = sent[-1]
    assert (mail.event, mail.language, mail.recipient) == ("reopen-needs-comment", "fr", MARIE)
    body = email.message_from_bytes(mail.raw, policy=email.policy.default).get_body(("plain",)).get_content()
    assert "votre commentaire rouvrira le ticket" in body
    assert body.startswith("Un commentaire est nécessaire pour rouvrir votre ticket")  # the headline
    # The mail is kept for the agents, not shown as a public comment.
    assert messages(gw, number, "in")[-1].internal


def test_thanks_to_a_solved_ticket_does_not_reopen_it_nor_nag(gw):
    number = open_ticket(gw)
    solve(gw, number)
    notif_id, reply_to, subject = last_notification(gw, number)
    before = len(notifications(gw, number))
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Merci beaucoup !",
                                  mid="s3@mail.gmail.com", in_reply_to=notif_id, to=reply_to))
    assert out.outcome == "appended" and ticket(gw, number).status == lifecycle.SOLVED
    assert len(notifications(gw, number)) == before


def test_reply_to_closed_opens_a_new_linked_ticket_and_says_why(gw):
    number = open_ticket(gw)
    solve(gw, number)
    agent_moves(gw, number, (lifecycle.CLOSED, StatusData()))
    notif_id, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, outlook_reply(MARIE, "Marie Dupont", f"RE: {subject}",
                                    "L'imprimante refait la même erreur.", reply_to, subject, mid="c1@outlook.com"))
    assert out.outcome == "new-from-closed" and out.ticket != number
    assert ticket(gw, number).status == lifecycle.CLOSED
    assert len(messages(gw, number, "in")) == 1
    new = ticket(gw, out.ticket)
    assert new.linked_ticket_id == ticket(gw, number).id
    assert number not in new.title and new.title == "Imprimante en panne au 2e étage"
    assert new.description.startswith("L'imprimante refait la même erreur.")
    (told,) = notifications(gw, out.ticket)
    assert (told.event, told.language) == ("closed-new-ticket", "fr")
    body = email.message_from_bytes(told.raw, policy=email.policy.default).get_body(("plain",)).get_content()
    assert f"le ticket {number}, qui est clôturé" in body and out.ticket in body


def _service_request(gw, sender=MARIE, name="Marie Dupont", lang="fr-BE", mid="sr-1@client.be"):
    # Service requests arrive on their own address in production (routing); here the
    # first mail is routed by the door's process setting, as a mailbox would.
    raw = first_mail(sender, name, "Nouvel écran 27 pouces", "Bonjour, il me faudrait un écran.", lang=lang, mid=mid)
    stored = store_raw(gw.engine, gw.blobs, raw, source="test")
    with session_for(gw.engine) as s:
        row = s.get(InboundMessage, stored.id)
        row.process = "service-request"
        s.add(row)
        s.commit()
    out = gw.processor.process(stored.id)
    assert out.outcome == "created" and out.ticket.startswith("SR-")
    return out.ticket


def test_thanks_to_a_closed_ticket_opens_nothing(gw):
    number = open_ticket(gw)
    solve(gw, number)
    agent_moves(gw, number, (lifecycle.CLOSED, StatusData()))
    notif_id, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Merci !", mid="c2@mail.gmail.com",
                                  in_reply_to=notif_id, to=reply_to))
    assert (out.outcome, out.ticket) == ("ignored", number)
    with session_for(gw.engine) as s:
        assert len(s.exec(select(Ticket)).all()) == 1
        assert s.exec(select(InboundMessage).where(InboundMessage.message_id == "c2@mail.gmail.com")).one().state \
            == "processed"


def test_approval_by_reply_in_french(gw):
    number = _service_request(gw)
    ask_approval(gw, number)
    notif_id, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, outlook_reply(MARIE, "Marie Dupont", f"RE: {subject}", "Approuvé, vous pouvez commander.",
                                    reply_to, subject, mid="ap-fr@outlook.com"))
    assert (out.outcome, out.ticket) == ("approval", number)
    assert ticket(gw, number).status == lifecycle.IN_PROGRESS
    last = history(gw, number)[-1]
    assert (last.from_status, last.to_status, last.by) == (lifecycle.APPROVAL, lifecycle.IN_PROGRESS, MARIE)
    assert "Approuvé, vous pouvez commander." in last.note
    told = notifications(gw, number)[-1]
    assert (told.event, told.language) == ("approval-recorded", "fr")
    # To its author, in the second person.
    assert "votre approbation a bien été enregistrée" in plain_body(told)


def test_the_same_approval_sent_again_does_not_act_twice(gw):
    number = _service_request(gw)
    ask_approval(gw, number)
    notif_id, reply_to, subject = last_notification(gw, number)
    first = outlook_reply(MARIE, "Marie Dupont", f"RE: {subject}", "Approuvé.", reply_to, subject, mid="ap-1@o")
    assert deliver(gw, first).outcome == "approval"
    moves = len(history(gw, number))
    # Sent again (a new Message-ID): the ticket no longer waits for approval; it is a comment.
    again = outlook_reply(MARIE, "Marie Dupont", f"RE: {subject}", "Approuvé.", reply_to, subject, mid="ap-2@o")
    assert deliver(gw, again).outcome == "appended"
    assert len(history(gw, number)) == moves and ticket(gw, number).status == lifecycle.IN_PROGRESS


def test_an_answer_to_an_earlier_approval_request_does_not_decide_the_current_one(gw):
    """Asked twice (a first quote approved, then a new one): a "yes" that answers the
    first request, arriving late or sent again from an old mail, is a comment; the
    answer to the current request decides."""
    from gateway import actions

    def request(quote: str) -> str:  # as an agent asks: the status and its mail together
        actions.set_status(gw, number, lifecycle.APPROVAL, StatusData(approval_text=quote), by="agent@localhost")
        row = notifications(gw, number)[-1]
        assert row.event == "approval"
        return row.message_id

    number = _service_request(gw)
    first_id = request("Écran 27 pouces : 320 EUR")
    _mid, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Approuvé.",
                                  mid="round1@mail.gmail.com", in_reply_to=first_id, to=reply_to))
    assert out.outcome == "approval" and ticket(gw, number).status == lifecycle.IN_PROGRESS
    second_id = request("Écran 32 pouces : 480 EUR")  # a second quote
    assert second_id != first_id
    moves = len(history(gw, number))
    late = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Approuvé, vous pouvez commander.",
                                   mid="round1-again@mail.gmail.com", in_reply_to=first_id, to=reply_to))
    assert (late.outcome, late.ticket) == ("appended", number)
    assert "earlier approval request" in late.detail
    assert ticket(gw, number).status == lifecycle.APPROVAL and len(history(gw, number)) == moves
    now = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Refusé, trop cher.",
                                  mid="round2@mail.gmail.com", in_reply_to=second_id, to=reply_to))
    assert now.outcome == "approval" and ticket(gw, number).status == lifecycle.REJECTED


def _request(gw, number: str, quote: str) -> tuple[str, str]:
    """An agent asks for approval (the status and its mail together): (Message-ID, Reply-To)."""
    from gateway import actions

    actions.set_status(gw, number, lifecycle.APPROVAL, StatusData(approval_text=quote), by="agent@localhost")
    row = notifications(gw, number)[-1]
    assert row.event == "approval"
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    return row.message_id, getaddresses([str(msg["Reply-To"])])[0][1]


def test_each_approval_request_has_its_own_reply_address_and_an_old_one_decides_nothing(gw):
    """Outlook sends no In-Reply-To: the answer says which request it decides by the
    address it was sent to.  "Approuvé" sent to the first request's address while a
    second one waits is a comment; sent to the second's, it decides."""
    from gateway.tokens import verified_reply, verify_reply_address

    number = _service_request(gw)
    _first_id, first_to = _request(gw, number, "Écran 27 pouces : 320 EUR")
    assert verified_reply(gw.config.gateway.secret, first_to) == (number, 1)
    assert verify_reply_address(gw.config.gateway.secret, first_to) == number  # still the ticket's address
    _mid, _plain, subject = last_notification(gw, number)
    out = deliver(gw, outlook_reply(MARIE, "Marie Dupont", f"RE: {subject}", "Approuvé.", first_to, subject,
                                    mid="o-round1@o", to=first_to))
    assert (out.outcome, out.ticket) == ("approval", number)
    _second_id, second_to = _request(gw, number, "Écran 32 pouces : 480 EUR")
    assert verified_reply(gw.config.gateway.secret, second_to) == (number, 2) and second_to != first_to
    moves = len(history(gw, number))
    old = deliver(gw, outlook_reply(MARIE, "Marie Dupont", f"RE: {subject}", "Approuvé, vous pouvez commander.",
                                    first_to, subject, mid="o-round1-again@o", to=first_to))
    assert (old.outcome, old.ticket) == ("appended", number)
    assert "earlier approval request" in old.detail
    assert ticket(gw, number).status == lifecycle.APPROVAL and len(history(gw, number)) == moves
    # The same old answer quoted by a client that writes to the plain address: the
    # request address hidden in our HTML says which request it was.
    quoted = gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Approuvé !", mid="g-old@mail.gmail.com",
                         in_reply_to=None, to=HELPDESK, quoted=f"gw-ref:{first_to}")
    assert deliver(gw, quoted).outcome == "appended" and ticket(gw, number).status == lifecycle.APPROVAL
    now = deliver(gw, outlook_reply(MARIE, "Marie Dupont", f"RE: {subject}", "Refusé, trop cher.", second_to,
                                    subject, mid="o-round2@o", to=second_to))
    assert now.outcome == "approval" and ticket(gw, number).status == lifecycle.REJECTED


def test_an_answer_once_used_does_not_decide_again(gw):
    """A request approved, then the ticket back in Approval without a new request (the
    customer's address bounced meanwhile): the first answer, sent again, must not approve
    what nobody was asked."""
    from gateway import actions

    number = _service_request(gw)
    first_id, first_to = _request(gw, number, "Écran 27 pouces : 320 EUR")
    _mid, _plain, subject = last_notification(gw, number)
    answer = gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Approuvé.", mid="once@mail.gmail.com",
                         in_reply_to=first_id, to=first_to)
    assert deliver(gw, answer).outcome == "approval"
    with session_for(gw.engine) as s:
        marie = s.exec(select(Person).where(Person.email == MARIE)).one()
        marie.undeliverable = True
        s.add(marie)
        s.commit()
    sent = len(notifications(gw, number))
    actions.set_status(gw, number, lifecycle.APPROVAL, StatusData(approval_text="Écran 32 pouces : 480 EUR"),
                       by="agent@localhost")
    assert len(notifications(gw, number)) == sent  # nobody could be asked
    moves = len(history(gw, number))
    replay = gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Approuvé.", mid="once-again@mail.gmail.com",
                         in_reply_to=first_id, to=first_to)
    out = deliver(gw, replay)
    assert (out.outcome, out.ticket) == ("appended", number)
    assert "already decided" in out.detail
    assert ticket(gw, number).status == lifecycle.APPROVAL and len(history(gw, number)) == moves
    # A new mail that names no request answers the open question.
    fresh = gmail_reply(MARIE, "Marie Dupont", f"[{number}] écran 32 pouces", "Approuvé.",
                        mid="fresh@mail.gmail.com", in_reply_to=None, to=HELPDESK)
    assert deliver(gw, fresh).outcome == "approval" and ticket(gw, number).status == lifecycle.IN_PROGRESS


def test_an_autoresponder_saying_approve_decides_nothing(gw):
    """Item 36 of the reliability bar: an out-of-office that quotes "Approuvé" (or whose
    rule answers with it) is a machine: never a decision, no answer, the ticket waits."""
    number = _service_request(gw)
    _mid, request_to = _request(gw, number, "Écran 27 pouces : 320 EUR")
    _m, _plain, subject = last_notification(gw, number)
    sent = len(notifications(gw, number))
    moves = len(history(gw, number))
    auto = b"Auto-Submitted: auto-replied\r\n" + outlook_reply(
        MARIE, "Marie Dupont", f"Réponse automatique : {subject}", "Approuvé. Je suis absente jusqu'au 4 décembre.",
        request_to, subject, mid="ooo-1@o", to=request_to)
    out = deliver(gw, auto)
    assert out.outcome == "auto-reply"
    assert ticket(gw, number).status == lifecycle.APPROVAL and len(history(gw, number)) == moves
    assert len(notifications(gw, number)) == sent


def test_an_approval_word_only_in_an_attachment_decides_nothing(gw):
    """Reliability bar item 38: a command is read from the new text of the reply only;
    an attachment named approve.txt, or holding "Approuvé", is no answer."""
    number = _service_request(gw)
    request_id, request_to = _request(gw, number, "Écran 27 pouces : 320 EUR")
    _m, _plain, subject = last_notification(gw, number)
    moves = len(history(gw, number))
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Voir pièce jointe.",
                                  mid="att-1@mail.gmail.com", in_reply_to=request_id, to=request_to,
                                  attachment=("approve.txt", "Approuvé.\r\nAPPROVE\r\n".encode())))
    assert (out.outcome, out.ticket) == ("appended", number)
    assert ticket(gw, number).status == lifecycle.APPROVAL and len(history(gw, number)) == moves
    from store.models import Attachment

    with session_for(gw.engine) as s:  # the attachment came, and is kept on the comment
        kept = s.exec(select(Attachment.filename).where(
            Attachment.message_id == messages(gw, number, "in")[-1].id)).all()
    assert kept == ["approve.txt"]


def test_a_request_address_is_signed_for_its_request_only(gw):
    """The ticket's token does not sign a request number, nor one request's token another."""
    from gateway.tokens import reply_address, token_for, verified_reply

    secret = gw.config.gateway.secret
    plain = reply_address(secret, HELPDESK, "SR-000001")
    local, _, domain = HELPDESK.rpartition("@")
    assert verified_reply(secret, plain) == ("SR-000001", None)
    assert verified_reply(secret, f"{local}+SR-000001.a1.{token_for(secret, 'SR-000001')}@{domain}") is None
    assert verified_reply(secret, f"{local}+SR-000001.a2.{token_for(secret, 'SR-000001', 1)}@{domain}") is None
    assert verified_reply(secret, reply_address(secret, HELPDESK, "SR-000001", 3)) == ("SR-000001", 3)
    assert len(reply_address(secret, HELPDESK, "CHG-000001", 9999).split("@")[0]) <= 64


def test_refusal_by_reply_in_dutch_from_an_iphone(gw):
    number = _service_request(gw, JAN, "Jan Peeters", "nl-BE", "sr-nl@klant.be")
    ask_approval(gw, number)
    notif_id, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, apple_reply_nl(JAN, "Jan Peeters", f"Re: {subject}", "Geweigerd: te duur voor dit jaar.",
                                     mid="B1C2D3E4-F5A6@klant.be", in_reply_to=notif_id, to=reply_to))
    assert (out.outcome, out.ticket) == ("approval", number)
    t = ticket(gw, number)
    assert t.status == lifecycle.REJECTED and t.status_reason == "Geweigerd: te duur voor dit jaar."
    told = notifications(gw, number)[-1]
    assert (told.event, told.language) == ("approval-recorded", "nl")
    assert "Uw weigering is geregistreerd" in plain_body(told)


def test_approval_in_dutch_and_refusal_in_french(gw):
    nl = _service_request(gw, JAN, "Jan Peeters", "nl-BE", "sr-nl2@klant.be")
    ask_approval(gw, nl)
    notif_id, reply_to, subject = last_notification(gw, nl)
    out = deliver(gw, apple_reply_nl(JAN, "Jan Peeters", f"Re: {subject}", "Akkoord, ga je gang.",
                                     mid="nl-ok@klant.be", in_reply_to=notif_id, to=reply_to))
    assert out.outcome == "approval" and ticket(gw, nl).status == lifecycle.IN_PROGRESS
    fr = _service_request(gw, mid="sr-fr2@client.be")
    ask_approval(gw, fr)
    notif_id, reply_to, subject = last_notification(gw, fr)
    out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", "Refusé. Nous attendrons le budget 2027.",
                                  mid="fr-no@mail.gmail.com", in_reply_to=notif_id, to=reply_to))
    assert out.outcome == "approval" and ticket(gw, fr).status == lifecycle.REJECTED


def test_unclear_answer_or_word_only_in_the_quote_leaves_the_approval_pending(gw):
    number = _service_request(gw)
    ask_approval(gw, number)
    notif_id, reply_to, subject = last_notification(gw, number)
    for i, (new, quoted) in enumerate([("Combien coûte la livraison ?", "Approuvé"),
                                       ("", "Approuvé, vous pouvez commander.")]):
        out = deliver(gw, gmail_reply(MARIE, "Marie Dupont", f"Re: {subject}", new, quoted=quoted,
                                      mid=f"unclear-{i}@mail.gmail.com", in_reply_to=notif_id, to=reply_to))
        assert (out.outcome, out.ticket) == ("appended", number)
        assert ticket(gw, number).status == lifecycle.APPROVAL


def test_approval_word_from_someone_who_is_not_an_approver_is_only_a_comment(gw):
    number = _service_request(gw)
    with session_for(gw.engine) as s:
        marie = s.exec(select(Person).where(Person.email == MARIE)).one()
        marie.company = "Client SA"
        s.add(marie)
        s.add(Person(email="chef@client.be", name="Chef", company="Client SA", company_access=True))
        s.commit()
    ask_approval(gw, number)
    out = deliver(gw, outlook_reply("chef@client.be", "Chef", f"RE: [{number}] Nouvel écran", "Approuvé.",
                                    HELPDESK, "x", mid="chef-ok@outlook.com"))
    assert out.outcome == "appended" and "not an approver" in out.detail
    assert ticket(gw, number).status == lifecycle.APPROVAL


def test_reply_failing_dmarc_at_our_mta_changes_nothing(gw):
    number = open_ticket(gw)
    solve(gw, number)
    gw.processor.config = replace(gw.config, gateway=replace(gw.config.gateway, authserv_id="mx.localhost"))
    subject = f"[{number}] Imprimante"

    def reply(mid: str, results: str) -> bytes:
        return results.encode() + outlook_reply(MARIE, "Marie", f"RE: {subject}", "Rouvrez, svp.", HELPDESK,
                                                subject, mid=mid)

    # Another server's verdict, whatever it says, is not ours to trust.
    forged = "Authentication-Results: mx.evil.example; dmarc=pass header.from=client.be\n"
    failed = ("Authentication-Results: mx.localhost; spf=fail smtp.mailfrom=client.be;\n"
              " dkim=none; dmarc=fail (p=QUARANTINE) header.from=client.be\n")
    out = deliver(gw, reply("dmarc-1@o", forged + failed))
    assert (out.outcome, out.ticket) == ("held", number)
    assert ticket(gw, number).status == lifecycle.SOLVED
    assert messages(gw, number, "in")[-1].internal
    out = deliver(gw, reply("dmarc-2@o", "Authentication-Results: mx.localhost; dmarc=pass header.from=client.be\n"))
    assert out.outcome == "reopened"


def test_same_mail_delivered_twice_is_added_once(gw):
    number = open_ticket(gw)
    raw = outlook_reply(MARIE, "Marie Dupont", f"RE: [{number}] Imprimante", "Toujours en panne.", HELPDESK,
                        f"[{number}] Imprimante", mid="dup@outlook.com")
    assert deliver(gw, raw).outcome == "appended"
    # The second copy came by another route: one more Received line, other bytes.
    again = b"Received: from backup-mx.localhost by mx.localhost; Fri, 27 Nov 2026 11:05:00 +0000\n" + raw
    out = deliver(gw, again)
    assert (out.outcome, out.ticket) == ("duplicate", number)
    assert len(messages(gw, number, "in")) == 2
    # A stranger reusing that Message-ID is not a copy: it is looked at (and is not theirs).
    forged = outlook_reply(MALLORY, "M", f"RE: [{number}] Imprimante", "x", HELPDESK, "x", mid="dup@outlook.com")
    assert deliver(gw, forged).outcome == "created"
    assert len(messages(gw, number, "in")) == 2


# Through the command line ------------------------------------------------------------
def test_ingest_json_reports_each_outcome(gw, tmp_path):
    config = tmp_path / "config.toml"
    mails = tmp_path / "mails"
    mails.mkdir()

    def ingest(name: str, raw: bytes) -> dict:
        (mails / name).write_bytes(raw)
        proc = run_gateway("--config", str(config), "ingest", "--json", str(mails / name), cwd=tmp_path)
        return json.loads(proc.stdout.decode().strip().splitlines()[-1])

    first = ingest("1.eml", first_mail(MARIE, "Marie Dupont", "Imprimante en panne", "Erreur 49.", mid="cli-1@x"))
    number = first["ticket"]
    assert first["outcome"] == "created"
    subject = f"[{number}] Imprimante en panne"
    reply = outlook_reply(MARIE, "Marie", f"RE: {subject}", "Bureau 2.14.", HELPDESK, subject, mid="cli-2@o")
    assert ingest("2.eml", reply)["outcome"] == "appended"
    assert ingest("2.eml", reply)["outcome"] == "duplicate"
    solve(gw, number)
    got = ingest("3.eml", outlook_reply(MARIE, "Marie", f"RE: {subject}", "Erreur revenue.", HELPDESK, subject,
                                        mid="cli-3@o"))
    assert (got["outcome"], got["ticket"]) == ("reopened", number)
    solve(gw, number)
    agent_moves(gw, number, (lifecycle.CLOSED, StatusData()))
    got = ingest("4.eml", outlook_reply(MARIE, "Marie", f"RE: {subject}", "Encore !", HELPDESK, subject,
                                        mid="cli-4@o"))
    assert got["outcome"] == "new-from-closed" and got["ticket"] != number
    sr = _service_request(gw, mid="cli-sr@x")
    ask_approval(gw, sr)
    got = ingest("5.eml", outlook_reply(MARIE, "Marie", f"RE: [{sr}] Nouvel écran", "Akkoord.", HELPDESK, "x",
                                        mid="cli-5@o"))
    assert (got["outcome"], got["ticket"]) == ("approval", sr)


# Over real SMTP ----------------------------------------------------------------------
def test_reply_over_smtp_to_the_signed_reply_address(tmp_path, postgres_url):
    """The whole path: the customer's mail and their reply to the notification's Reply-To
    go through the gateway's own SMTP listener, on PostgreSQL; the reply lands by token."""
    import signal
    import smtplib
    import subprocess
    import sys
    import time

    from conftest import ROOT, free_port, wait_for_port

    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{postgres_url}"\n[smtp]\nport = {port}\n')
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT))
    env.pop("GATEWAY_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config), "serve"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc=proc)
        outbox = tmp_path / "var" / "outbox"

        def wait_for_mails(n: int) -> list:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                files = sorted(outbox.glob("*.eml")) if outbox.is_dir() else []
                if len(files) >= n:
                    return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]
                time.sleep(0.2)
            raise AssertionError(f"{n} notifications expected in {outbox}")

        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail(MARIE, [HELPDESK], first_mail(MARIE, "Marie Dupont", "Imprimante en panne", "Erreur 49.",
                                                        mid="smtp-1@client.be"))
        (ack,) = wait_for_mails(1)
        reply_to = getaddresses([str(ack["Reply-To"])])[0][1]
        number = str(ack["Subject"]).split("]")[0].lstrip("[")
        # The customer's mail program answers to Reply-To, with a subject it rewrote.
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail(MARIE, [reply_to], gmail_reply(MARIE, "Marie Dupont", "Re: imprimante", "Bureau 2.14.",
                                                         mid="smtp-2@mail.gmail.com", in_reply_to=None, to=reply_to))
        from gateway.app import App
        from gateway.config import load_config

        app = App(load_config(config, env={}))
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(messages(app, number, "in")) < 2:
                time.sleep(0.2)
            reply = messages(app, number, "in")[-1]
            assert (reply.body_text, reply.message_id) == ("Bureau 2.14.", "smtp-2@mail.gmail.com")
            with session_for(app.engine) as s:
                inbound = s.get(InboundMessage, reply.inbound_id)
                assert (inbound.outcome, inbound.detail, inbound.rcpt_to) == ("appended", "found by token", reply_to)
        finally:
            app.engine.dispose()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def plain_body(row) -> str:
    """The text part of an outbox mail."""
    return email.message_from_bytes(row.raw, policy=email.policy.default).get_body(("plain",)).get_content()
