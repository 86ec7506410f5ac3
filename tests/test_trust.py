"""Trust (issue 15): no forged mail earns a place on a ticket, no notification reaches a
stranger, no robot acts.

Mails are written as Outlook, Gmail and Apple Mail write them (test_replies' writers),
go through the gateway's store and processor, on SQLite and on PostgreSQL; every date
comes from the clock.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import quopri
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from babel.dates import format_datetime
from sqlmodel import col, select

from gateway.outbound.outbox import render_pending
from gateway import actions
from store import lifecycle
from store.db import session_for
from store.lifecycle import StatusData
from store.models import InboundMessage, Outbox
from harness.replies import (HELPDESK, deliver, first_mail, gmail_reply, last_notification, messages, notifications,
                          outlook_reply, ticket)

DANA = "dana.martin@acme.test"
EVE = "eve@evil.test"
ROBOT = "info@vendor.example"
MTA = "mx.localhost"  # our MTA's authserv-id in these tests
TITLE = "Salaire de mars non versé"


def with_mta(gw, authserv_id: str = MTA):
    """The gateway behind our MTA, whose Authentication-Results it reads."""
    gw.processor.config = replace(gw.config, gateway=replace(gw.config.gateway, authserv_id=authserv_id))
    return gw


def results(verdict: str, domain: str = "acme.test") -> bytes:
    """The Authentication-Results header our MTA (OpenDMARC behind Postfix) puts on top."""
    return (f"Authentication-Results: {MTA}; dkim=none; spf=softfail smtp.mailfrom={domain};\n"
            f" dmarc={verdict} (p=NONE dis=NONE) header.from={domain}\n").encode()


def open_dana_ticket(gw) -> str:
    out = deliver(gw, first_mail(DANA, "Dana Martin", f"{TITLE} ##DANA-PO-7781##",
                                 "Bonjour,\n\nMon salaire de mars n'a pas été versé.\n\nDana", mid="dana-1@acme.test"))
    assert out.outcome == "created"
    return out.ticket


def move(gw, number: str, *moves: tuple[str, StatusData]) -> None:
    """An agent works the ticket with the agent's actions: each move mails the customer
    as the manual says."""
    for status, data in moves:
        actions.set_status(gw, number, status, data, by="agent@localhost")


def wait_for_dana(gw, number: str) -> None:
    move(gw, number, (lifecycle.IN_PROGRESS, StatusData()),
         (lifecycle.WAITING, StatusData(waiting_reason="customer-feedback", note="Quel mois exactement ?")))


def solve(gw, number: str) -> None:
    move(gw, number, (lifecycle.SOLVED, StatusData(solution="Le virement a été refait.")))


def mails_to(gw, address: str) -> list[Outbox]:
    """Every mail queued for ``address``, rendered as the deliverer renders it."""
    render_pending(gw.engine, gw.notifier)
    with session_for(gw.engine) as s:
        rows = [r for r in s.exec(select(Outbox).order_by(col(Outbox.id))) if r.recipient == address]
        for r in rows:
            s.expunge(r)
        return rows


def ids_of(gw, number: str) -> set[str]:
    return {m.message_id for m in messages(gw, number) if m.message_id}


def assert_nothing_of(gw, number: str, rows: list[Outbox]) -> None:
    """None of ``rows`` names the ticket, its title, its reference or its Message-IDs."""
    secrets = [number, TITLE, "DANA-PO-7781", *ids_of(gw, number)]
    for row in rows:
        text = row.raw.decode("utf-8", "replace") + " " + str(email.message_from_bytes(row.raw, policy=email.policy.default))
        for secret in secrets:
            assert secret not in text, (row.event, secret)


def references(row: Outbox) -> list[str]:
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    return [m.strip("<>") for m in str(msg.get("References", "")).split()] + \
        [str(msg.get("In-Reply-To", "")).strip("<>")]


# Item 1: a held spoof grants nothing --------------------------------------------------
def test_a_held_spoof_enrols_nobody_and_its_stranger_learns_nothing(gw):
    """The red team's scenario: a mail spoofing Dana (our MTA: dmarc=fail) with eve in Cc,
    In-Reply-To a notification of Dana's ticket, is held; then eve writes from her own
    address to that notification: a ticket of her own, Dana's stays Waiting; once it is
    Solved, eve's empty reply gets her no reopen-needs-comment with Dana's title and
    thread.  And no mail of the ticket names the held mail in References."""
    with_mta(gw)
    number = open_dana_ticket(gw)
    wait_for_dana(gw, number)
    notif_id, reply_to, subject = last_notification(gw, number)
    spoof = results("fail") + gmail_reply(DANA, "Dana Martin", f"Re: {subject}", "Voir avec eve, merci.",
                                          mid="spoof-1@evil.test", in_reply_to=notif_id, references=[notif_id],
                                          to=reply_to).replace(b"MIME-Version: 1.0\n",
                                                               b"MIME-Version: 1.0\nCc: Eve <eve@evil.test>\n", 1)
    out = deliver(gw, spoof, rcpt=(reply_to,))
    assert (out.outcome, out.ticket) == ("held", number)
    held = messages(gw, number, "in")[-1]
    assert held.internal and EVE in held.cc_addrs

    # Eve answers the notification herself: no place on Dana's ticket.
    out = deliver(gw, gmail_reply(EVE, "Eve", f"Re: {subject}", "Le mois de mars, virement sur mon compte.",
                                  mid="eve-1@evil.test", in_reply_to=notif_id, references=[notif_id], to=reply_to),
                  rcpt=(reply_to,))
    assert out.outcome == "created" and out.ticket != number
    assert ticket(gw, number).status == lifecycle.WAITING
    assert [m.from_addr for m in messages(gw, number, "in")] == [DANA, DANA]

    # Solved; eve's empty reply: no needs-comment mail to her, no trace of Dana's ticket.
    solve(gw, number)
    notif_id, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, gmail_reply(EVE, "Eve", f"Re: {subject}", "", mid="eve-2@evil.test", in_reply_to=notif_id,
                                  references=[notif_id], to=reply_to), rcpt=(reply_to,))
    assert out.ticket != number and ticket(gw, number).status == lifecycle.SOLVED
    to_eve = mails_to(gw, EVE)
    assert to_eve and all(r.event != "reopen-needs-comment" for r in to_eve)
    assert_nothing_of(gw, number, to_eve)
    # Dana's own mails never name the held one.
    for row in notifications(gw, number):
        assert "spoof-1@evil.test" not in references(row), row.event


def test_cc_of_an_unauthenticated_mail_enrols_nobody(gw):
    """A mail that passes for Dana's (no DMARC verdict: her domain publishes none, or no
    MTA says) is accepted on her ticket, but its Cc joins nobody to the thread: the Cc's
    owner writing next gets a ticket of their own.  The same Cc on a mail our MTA
    authenticated (DMARC pass, topmost) joins them; a pass written lower down by the
    sender does not."""
    with_mta(gw)
    number = open_dana_ticket(gw)
    _notif_id, reply_to, subject = last_notification(gw, number)

    def from_dana(mid: str, cc: str, top: bytes = b"") -> bytes:
        raw = outlook_reply(DANA, "Dana Martin", f"RE: {subject}", "Je mets un collègue en copie.", reply_to,
                            subject, mid=mid)
        return top + raw.replace(b"To: Helpdesk", f"Cc: {cc}\nTo: Helpdesk".encode(), 1)

    forged_pass = f"Authentication-Results: {MTA}; dmarc=pass header.from=acme.test\n".encode()
    assert deliver(gw, from_dana("cc-1@acme.test", "Eve <eve@evil.test>")).outcome == "appended"
    assert deliver(gw, from_dana("cc-2@acme.test", "Eve <eve@evil.test>", results("none") + forged_pass)).outcome \
        == "appended"
    out = deliver(gw, outlook_reply(EVE, "Eve", f"RE: {subject}", "Merci Dana.", HELPDESK, subject, mid="eve@evil"))
    assert out.outcome == "created" and out.ticket != number

    colleague = "paul.durand@acme.test"
    assert deliver(gw, from_dana("cc-3@acme.test", f"Paul Durand <{colleague}>", results("pass"))).outcome == "appended"
    out = deliver(gw, outlook_reply(colleague, "Paul", f"RE: {subject}", "Je confirme.", HELPDESK, subject,
                                    mid="paul@acme.test"))
    assert (out.outcome, out.ticket) == ("appended", number)


# Item 4: a robot answering every mail alike ------------------------------------------
def robot_answer(n: int, our: Outbox, varying: bool) -> bytes:
    """What a badly configured mail robot sends back to our mail ``our``, as it sends it:
    a fixed subject, no Auto-Submitted, nothing quoted; ``varying``: it names the ticket
    and the time of the mail it answers."""
    now = datetime.now(timezone.utc)
    body = "Thank you for your message. It has been forwarded to the right department.\n"
    if varying:
        number = our.subject.split("]")[0].strip("[")
        body = (f"Thank you for your message about {number} of {now:%d/%m/%Y %H:%M}. It has been forwarded "
                f"to the right department.\n")
    return (f"From: Vendor Info <{ROBOT}>\nTo: {HELPDESK}\nSubject: Thank you for your message\n"
            f"Date: {email.utils.format_datetime(now)}\nMessage-ID: <robot-{n}@vendor.example>\n"
            f"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n{body}").encode()


def _robot_loop(gw, varying: bool, rounds: int = 20) -> list[str]:
    """An agent registers a ticket for the vendor (its confirmation goes to the robot),
    then the robot answers every mail we send it."""
    actions.create_ticket(gw, process="incident", reporter=ROBOT, title="Livraison des écrans",
                          description="Appel du fournisseur : livraison des écrans retardée.")
    outcomes = []
    for n in range(rounds):
        outcomes.append(deliver(gw, robot_answer(n, mails_to(gw, ROBOT)[-1], varying)).outcome)
    return outcomes


def test_a_robot_answering_every_mail_alike_gets_one_ticket_and_one_confirmation(gw):
    """The red team's robot: 20 answers made 20 tickets and 20 confirmations.  Now the
    first answer is a ticket and is confirmed; every repeat (the same text, whatever
    ticket number or time it names) is kept on that ticket for the agents, unanswered,
    and the loop ends there."""
    outcomes = _robot_loop(gw, varying=True)
    assert outcomes == ["created"] + ["loop"] * 19
    assert len(mails_to(gw, ROBOT)) == 2  # the agent's ticket's confirmation, and the loop's one
    with session_for(gw.engine) as s:
        rows = s.exec(select(InboundMessage).order_by(col(InboundMessage.id))).all()
        assert {r.ticket_number for r in rows} == {"INC-000002"}  # every repeat stored, on the first ticket
        assert all("a loop" in r.detail for r in rows[1:])
    kept = messages(gw, "INC-000002", "in")
    assert len(kept) == 20 and not kept[0].internal and all(m.internal for m in kept[1:])
    assert ticket(gw, "INC-000002").status == lifecycle.NEW


def test_a_robot_naming_our_message_id_is_a_loop_at_once(gw):
    """A robot that answers our confirmation by naming its Message-ID in its text ("your
    message <…> was received") rather than in In-Reply-To: already its first answer."""
    out = deliver(gw, first_mail(ROBOT, "Vendor", "Commande 4411", "Merci de livrer la commande 4411.",
                                 mid="order-4411@vendor.example"))
    (confirmation,) = mails_to(gw, ROBOT)
    raw = (f"From: Vendor Info <{ROBOT}>\nTo: {HELPDESK}\nSubject: Message received\n"
           f"Date: {email.utils.format_datetime(datetime.now(timezone.utc))}\nMessage-ID: <ack-1@vendor.example>\n"
           f"Content-Type: text/plain; charset=utf-8\n\nYour message <{confirmation.message_id}> has been received "
           f"and will be processed.\n").encode()
    again = deliver(gw, raw)
    assert (again.outcome, again.ticket) == ("loop", out.ticket)
    assert len(mails_to(gw, ROBOT)) == 1


def test_a_person_sending_two_different_mails_gets_two_tickets(gw):
    first = deliver(gw, first_mail(DANA, "Dana", "Imprimante du 2e étage", "Elle ne marche plus.", mid="a@acme.test"))
    second = deliver(gw, first_mail(DANA, "Dana", "Imprimante du 3e étage", "Elle ne marche plus.", mid="b@acme.test"))
    assert (first.outcome, second.outcome) == ("created", "created") and first.ticket != second.ticket
    # The same mail sent again (a resend, a second click) is kept on the first ticket.
    third = deliver(gw, first_mail(DANA, "Dana", "Imprimante du 2e étage", "Elle ne marche plus.", mid="c@acme.test"))
    assert (third.outcome, third.ticket) == ("loop", first.ticket)


def test_the_loop_rule_can_be_turned_off(tmp_path):
    from harness.ingest import make_app

    app = make_app(tmp_path, "[limits]\nloop_window = 0\n")
    try:
        assert _robot_loop(app, varying=False, rounds=3) == ["created"] * 3
        assert len(mails_to(app, ROBOT)) == 4
    finally:
        app.engine.dispose()


# Item 5: out-of-office text under a plain "Re:" ----------------------------------------
OUT_OF_OFFICE = {
    "fr": "Bonjour,\n\nJe suis absente du bureau jusqu'au {back}. Pour toute urgence, contactez le 02 555 12 12.\n\n"
          "Dana Martin",
    "nl": "Beste,\n\nIk ben afwezig tot en met {back}. Uw bericht wordt niet doorgestuurd.\n\nMet vriendelijke groeten,"
          "\nDana",
    "en": "Hello,\n\nI am out of the office until {back} with limited access to e-mail.\n\nBest regards,\nDana",
    "de": "Guten Tag,\n\nich bin bis zum {back} nicht im Büro. In dringenden Fällen wenden Sie sich bitte an die "
          "Zentrale.\n\nMit freundlichen Grüßen\nDana",
}


def test_an_out_of_office_text_resumes_nothing_in_four_languages(gw):
    number = open_dana_ticket(gw)
    wait_for_dana(gw, number)
    back = (datetime.now(timezone.utc) + timedelta(days=10)).date()
    for lang, text in OUT_OF_OFFICE.items():
        notif_id, reply_to, subject = last_notification(gw, number)
        # Outlook's plain-text automatic reply as a rule sends it: "RE:", no automatic header.
        raw = outlook_reply(DANA, "Dana Martin", f"RE: {subject}", text.format(back=back.strftime("%d/%m/%Y")),
                            reply_to, subject, mid=f"ooo-{lang}@acme.test")
        out = deliver(gw, raw)
        assert (out.outcome, out.ticket) == ("appended", number), lang
        assert "out-of-office" in out.detail, lang
        assert ticket(gw, number).status == lifecycle.WAITING, lang
    # Dana's real answer still resumes the work.
    notif_id, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, gmail_reply(DANA, "Dana", f"Re: {subject}", "Le mois de mars.", mid="real@acme.test",
                                  in_reply_to=notif_id, to=reply_to))
    assert out.outcome == "appended" and ticket(gw, number).status == lifecycle.IN_PROGRESS
    # Nor does one reopen a Solved ticket.
    solve(gw, number)
    _notif_id, reply_to, subject = last_notification(gw, number)
    out = deliver(gw, outlook_reply(DANA, "Dana", f"RE: {subject}", OUT_OF_OFFICE["en"].format(back=back),
                                    reply_to, subject, mid="ooo-solved@acme.test"))
    assert out.outcome == "appended" and ticket(gw, number).status == lifecycle.SOLVED


# Item 7: read receipts -----------------------------------------------------------------
def outlook_receipt(sender: str, name: str, number_subject: str, original_id: str, *, lang: str = "fr",
                    mid: str) -> bytes:
    """A read receipt as Exchange Online sends it for Outlook: multipart/report,
    report-type=disposition-notification, the sentence in the reader's language."""
    now = datetime.now(timezone.utc)
    sent, read = now - timedelta(minutes=7), now
    words = {"fr": ("Lu : ", "Votre message", "À", "Objet", "Envoyé", "a été lu le"),
             "nl": ("Gelezen: ", "Uw bericht", "Aan", "Onderwerp", "Verzonden", "is gelezen op"),
             "en": ("Read: ", "Your message", "To", "Subject", "Sent", "was read on"),
             "de": ("Gelesen: ", "Ihre Nachricht", "An", "Betreff", "Gesendet", "wurde gelesen am")}[lang]
    prefix, yours, to, subj, sent_word, read_words = words

    def when(t: datetime) -> str:
        return format_datetime(t, "EEEE d MMMM y HH:mm:ss", tzinfo="Europe/Brussels", locale=lang) + \
            " (UTC+01:00) Brussels, Copenhagen, Madrid, Paris"

    text = (f"{yours}\n\n  {to} : Helpdesk\n  {subj} : {number_subject}\n  {sent_word} : {when(sent)}\n\n"
            f"{read_words} {when(read)}.\n")
    qp = quopri.encodestring(text.replace("\n", "\r\n").encode("utf-8")).decode("ascii")
    return (
        f"Received: from EUR02-DB5-obe.outbound.protection.outlook.com (mail-db5eur02on2100.outbound.protection."
        f"outlook.com [40.107.249.100])\n\tby mx.localhost (Postfix) with ESMTPS; {email.utils.format_datetime(now)}\n"
        f"From: {name} <{sender}>\n"
        f"To: Helpdesk <{HELPDESK}>\n"
        f"Subject: {email.header.Header(prefix + number_subject, 'utf-8').encode()}\n"
        f"Thread-Topic: {email.header.Header(number_subject, 'utf-8').encode()}\n"
        f"Thread-Index: AQHZIKvQ1bW3ZkQ4S0yqUo1uV1ayxQ==\n"
        f"Date: {email.utils.format_datetime(now)}\n"
        f"Message-ID: <{mid}>\n"
        f"Content-Language: {lang}-BE\n"
        f"X-MS-Has-Attach:\nX-MS-TNEF-Correlator:\n"
        f"MIME-Version: 1.0\n"
        f"Content-Type: multipart/report; report-type=disposition-notification;\n"
        f"\tboundary=\"_000_DB9PR02MB7180MDN_\"\n\n"
        f"--_000_DB9PR02MB7180MDN_\n"
        f"Content-Type: text/plain; charset=\"utf-8\"\n"
        f"Content-Transfer-Encoding: quoted-printable\n\n{qp}\n"
        f"--_000_DB9PR02MB7180MDN_\n"
        f"Content-Type: message/disposition-notification\n\n"
        f"Reporting-UA: DB9PR02MB7180.eurprd02.prod.outlook.com; Microsoft Exchange Server 15.20\n"
        f"Final-Recipient: rfc822;{sender}\n"
        f"Original-Message-ID: <{original_id}>\n"
        f"Disposition: manual-action/MDN-sent-manually; displayed\n\n"
        f"--_000_DB9PR02MB7180MDN_--\n"
    ).encode()


def plain_receipt_nl(sender: str, number_subject: str, *, mid: str) -> bytes:
    """Outlook for Windows' older receipt, a plain mail: "Gelezen:" and its sentence."""
    now = datetime.now(timezone.utc)
    when = format_datetime(now, "EEEE d MMMM y HH:mm", tzinfo="Europe/Brussels", locale="nl")
    return (f"From: \"Peeters, Jan\" <{sender}>\nTo: Helpdesk <{HELPDESK}>\n"
            f"Subject: Gelezen: {number_subject}\nDate: {email.utils.format_datetime(now)}\n"
            f"Message-ID: <{mid}>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=\"utf-8\"\n"
            f"X-Mailer: Microsoft Outlook 16.0\n\n"
            f"Uw bericht\n\n  Aan: Helpdesk\n  Onderwerp: {number_subject}\n  Verzonden: {when}\n\n"
            f"is gelezen op {when}.\n").encode()


def test_a_read_receipt_is_noted_on_its_ticket_and_does_nothing_else(gw):
    number = open_dana_ticket(gw)
    wait_for_dana(gw, number)
    notif_id, _reply_to, subject = last_notification(gw, number)
    before = len(notifications(gw, number))
    for lang in ("fr", "nl", "en", "de"):
        out = deliver(gw, outlook_receipt(DANA, "Dana Martin", subject, notif_id, lang=lang, mid=f"mdn-{lang}@acme"))
        assert (out.outcome, out.ticket) == ("receipt", number), (lang, out)
        assert ticket(gw, number).status == lifecycle.WAITING
        assert messages(gw, number, "in")[-1].internal
    out = deliver(gw, plain_receipt_nl(DANA, subject, mid="plain-receipt@acme"))
    assert (out.outcome, out.ticket) == ("receipt", number)
    assert ticket(gw, number).status == lifecycle.WAITING and len(notifications(gw, number)) == before
    # Solved: a receipt of the solution reopens nothing, asks for nothing.
    solve(gw, number)
    notif_id, _reply_to, subject = last_notification(gw, number)
    out = deliver(gw, outlook_receipt(DANA, "Dana Martin", subject, notif_id, mid="mdn-solved@acme"))
    assert out.outcome == "receipt" and ticket(gw, number).status == lifecycle.SOLVED
    assert len(notifications(gw, number)) == before + 1  # the solution only
    # The receipts are nobody's References.
    move(gw, number, (lifecycle.IN_PROGRESS, StatusData(note="Rouvert")))
    assert not {f"mdn-{lang}@acme" for lang in ("fr", "nl", "en", "de")} & set(references(notifications(gw, number)[-1]))


def test_a_read_receipt_about_no_ticket_makes_none(gw):
    out = deliver(gw, outlook_receipt("jan.peeters@klant.be", "Jan", "Vergadering van dinsdag",
                                      "CAF=meeting@mail.gmail.com", lang="nl", mid="mdn-none@klant.be"))
    assert (out.outcome, out.ticket) == ("receipt", None)
    with session_for(gw.engine) as s:
        assert s.exec(select(Outbox)).all() == []


def test_a_strangers_receipt_is_noted_nowhere(gw):
    number = open_dana_ticket(gw)
    notif_id, _reply_to, subject = last_notification(gw, number)
    out = deliver(gw, outlook_receipt(EVE, "Eve", subject, notif_id, mid="mdn-eve@evil"))
    assert (out.outcome, out.ticket) == ("receipt", None)
    assert len(messages(gw, number, "in")) == 1


# Item 7: legacy charsets, file names, encoded words in addresses -----------------------
def test_a_raw_8bit_subject_is_read_in_a_charset_the_mail_declares_before_latin_1():
    """A Chinese webmail's mail: the Subject in raw GB2312 (no encoded word), a plain
    part labelled ISO-8859-1 (ASCII only), the HTML part GB2312; a Japanese mobile
    mailer's: raw Shift_JIS Subject, the text in ISO-2022-JP, the HTML in Shift_JIS.
    The subject is read in the mail's own multibyte charset, not as Latin-1 mojibake."""
    from gateway.ingest.parse import parse

    cases = [("gb2312", "iso-8859-1", "打印机不能打印了", "Printer does not print."),
             ("shift_jis", "iso-2022-jp", "プリンターが壊れました", "プリンターが壊れました")]
    for charset, plain_charset, subject, plain in cases:
        raw = (b"From: =?utf-8?b?5p2O5piO?= <li.ming@example.cn>\r\nTo: helpdesk@localhost\r\n"
               b"Subject: " + subject.encode(charset) + b"\r\n"
               b"Message-ID: <8bit-" + charset.encode() + b"@example.cn>\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/alternative; boundary=\"----=_Part_1\"\r\n\r\n"
               b"------=_Part_1\r\nContent-Type: text/plain; charset=\"" + plain_charset.encode() + b"\"\r\n"
               b"Content-Transfer-Encoding: 7bit\r\n\r\n" + plain.encode(plain_charset) + b"\r\n"
               b"------=_Part_1\r\nContent-Type: text/html; charset=\"" + charset.encode() + b"\"\r\n"
               b"Content-Transfer-Encoding: 8bit\r\n\r\n<p>" + subject.encode(charset) + b"</p>\r\n"
               b"------=_Part_1--\r\n")
        mail = parse(raw)
        assert mail.subject == subject, (charset, mail.subject)
    # A Latin-1 subject in a mail that declares only Latin-1 stays Latin-1.
    raw = (b"From: a@example.fr\r\nTo: helpdesk@localhost\r\nSubject: Probl\xe8me d'acc\xe8s\r\n"
           b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nL'acc\xe8s est refus\xe9.\r\n")
    assert parse(raw).subject == "Problème d'accès"


def test_image001_jpg_keeps_its_name():
    """Outlook's inline images: named in Content-Type and Content-Disposition, or in
    neither (the Content-ID then names the file: image001.jpg@01D9…); either way the
    file is image001.jpg, never image001.jpg.jpg."""
    import base64

    from gateway.ingest.parse import parse

    jpeg = base64.encodebytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(200)).decode()
    named = ('Content-Type: image/jpeg; name="image001.jpg"\r\nContent-Description: image001.jpg\r\n'
             'Content-Disposition: inline; filename="image001.jpg"; size=214;\r\n'
             '\tcreation-date="Wed, 02 Dec 2026 09:58:12 GMT";\r\n\tmodification-date="Wed, 02 Dec 2026 09:58:12 GMT"\r\n')
    for headers in (named, "Content-Type: image/jpeg\r\n"):
        raw = ("From: \"Dupont, Marie\" <marie.dupont@client.be>\r\nTo: Helpdesk <helpdesk@localhost>\r\n"
               "Subject: Capture\r\nMessage-ID: <DB9PR02MB71801B@outlook.com>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: multipart/related;\r\n\tboundary=\"_004_DB9PR02MB71801B_\";\r\n\ttype=\"text/html\"\r\n\r\n"
               "--_004_DB9PR02MB71801B_\r\nContent-Type: text/html; charset=\"us-ascii\"\r\n\r\n"
               "<html><body><p>Voir capture</p><img src=\"cid:image001.jpg@01D9C2A1.5E3F1B20\"></body></html>\r\n"
               "--_004_DB9PR02MB71801B_\r\n" + headers +
               "Content-ID: <image001.jpg@01D9C2A1.5E3F1B20>\r\nContent-Transfer-Encoding: base64\r\n\r\n" + jpeg +
               "\r\n--_004_DB9PR02MB71801B_--\r\n").encode()
        (att,) = parse(raw).attachments
        assert (att.filename, att.inline) == ("image001.jpg", True)


def test_an_encoded_word_inside_an_address_stays_literal(gw):
    """RFC 2047 forbids encoded words in an addr-spec; "=?utf-8?Q?attacker?Q?agent?=" is
    not even one (its text holds a "?").  It was read half decoded, as the address
    attacker?q?agent@victim.example; it stays as written.  A well-formed one that makes a
    plain address (Zammad's mail118: =?utf-8?Q?agent?=@example.com) is still read."""
    from gateway.ingest.parse import parse

    def mail(sender: str) -> bytes:
        return (f"From: {sender}\r\nTo: Helpdesk <helpdesk@localhost>\r\nSubject: Mot de passe\r\n"
                f"Message-ID: <ew-{len(sender)}@victim.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                f"Merci de réinitialiser mon mot de passe.\r\n").encode()

    literal = "=?utf-8?Q?attacker?Q?agent?=@victim.example"
    for sender in (literal, f"Agent <{literal}>"):
        assert parse(mail(sender)).from_addr == literal
    out = deliver(gw, mail(literal))
    assert out.outcome == "created"
    with session_for(gw.engine) as s:
        from store.models import Person
        assert [p.email for p in s.exec(select(Person))] == [literal.lower()]  # (stored as a key: lower case)
    assert parse(mail("=?utf-8?Q?agent?=@example.com")).from_addr == "agent@example.com"
