"""A stranger tries every way into a customer's ticket, against a real `gateway serve`
over SMTP, then we read every mail the gateway ever sent the stranger (issue 15, "Done
when": the isolation test).

The seven ways, in a row: the subject tag, References, the personal reference
(``##…##``), the signed reply address, a spoofed From with and without ``dmarc=fail``
from our MTA, a forged Authentication-Results, and the Cc, on a mail that was held and
on one that was accepted.  Between them and after them the stranger writes from her own
address, to the notifications she saw, while the ticket waits for its customer and once
it is Solved.  None of the mails she got names the victim's ticket, its title, its
personal reference or one of its Message-IDs, and nothing she sent acted on the ticket.

Our MTA (Postfix with OpenDMARC, authserv-id mx.localhost) is played by the test: each
mail arrives with the Authentication-Results header it would have put on top.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import smtplib
from datetime import datetime, timezone
from email.utils import getaddresses, make_msgid

from sqlmodel import col, select

from conftest import free_port, run_gateway
from gateway.app import App
from gateway.config import load_config
from store.db import session_for
from store.models import InboundMessage, Outbox, StatusChange, Ticket, TicketMessage
from harness.service import Service, service_config, wait_until

DANA = "dana.martin@acme.test"
EVE = "eve@evil.test"
TITLE = "Salaire de mars non versé"
REFERENCE = "DANA-PO-7781"
MTA = "mx.localhost"


def verdict(result: str, domain: str) -> str:
    """The header our MTA puts on top of every mail it accepts."""
    return (f"Authentication-Results: {MTA}; spf=pass smtp.mailfrom={domain}; dkim=none;\r\n"
            f" dmarc={result} (p=NONE dis=NONE) header.from={domain}\r\n")


def mail(sender: str, subject: str, body: str, *, top: str, headers: str = "", to: str = "Helpdesk <helpdesk@localhost>",
         name: str = "") -> bytes:
    """A mail as Thunderbird writes it, with our MTA's verdict on top."""
    now = datetime.now(timezone.utc)
    return (f"{top}Message-ID: {make_msgid(domain=sender.rpartition('@')[2])}\r\n"
            f"Date: {email.utils.format_datetime(now)}\r\nMIME-Version: 1.0\r\nUser-Agent: Mozilla Thunderbird\r\n"
            f"Content-Language: fr-BE\r\nFrom: {name or sender.split('@')[0].title()} <{sender}>\r\nTo: {to}\r\n"
            f"{headers}Subject: {email.header.Header(subject, 'utf-8').encode()}\r\n"
            f"Content-Type: text/plain; charset=UTF-8; format=flowed\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            f"{body}\r\n").encode()


class Desk:
    """The running gateway, reached as the world reaches it: SMTP in, the outbox's .eml
    files out, the agent's command line; and its database read directly to know when
    it is done."""

    def __init__(self, folder, port: int):
        self.folder, self.port = folder, port
        self.app = App(load_config(folder / "config.toml", env={}))
        self.sent = 0

    def send(self, raw: bytes, mail_from: str, rcpt: str = "helpdesk@localhost") -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            assert client.sendmail(mail_from, [rcpt], raw) == {}
        self.sent += 1
        wait_until(self.settled, timeout=60)

    def settled(self) -> bool:
        """Every mail sent is processed and every notification delivered."""
        with session_for(self.app.engine) as s:
            states = s.exec(select(InboundMessage.state)).all()
            pending = s.exec(select(Outbox.id).where(Outbox.state == "pending")).all()
        return len(states) == self.sent and "received" not in states and not pending

    def status(self, number: str) -> str:
        with session_for(self.app.engine) as s:
            return s.exec(select(Ticket.status).where(Ticket.number == number)).one()

    def agent(self, *args: str) -> None:
        run_gateway("--config", str(self.folder / "config.toml"), "ticket", "set-status", *args, cwd=self.folder)
        wait_until(self.settled, timeout=60)

    def mails(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                for p in sorted((self.folder / "var" / "outbox").glob("*.eml"))]

    def mails_to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m in self.mails() if address in [a.addr_spec for a in m["To"].addresses]]

    def latest_to(self, address: str) -> tuple[str, str]:
        """(Message-ID, signed Reply-To) of the newest mail sent to ``address``, as its
        .eml file holds it."""
        with session_for(self.app.engine) as s:
            newest = max((r for r in s.exec(select(Outbox)) if r.recipient == address),
                         key=lambda r: r.id).message_id
        sent = next(m for m in self.mails_to(address) if m["Message-ID"].strip("<>") == newest)
        return newest, getaddresses([str(sent["Reply-To"])])[0][1]


def test_a_stranger_trying_every_way_into_a_ticket_learns_nothing_and_changes_nothing(tmp_path, database_url):
    port = free_port()
    service_config(tmp_path, port, database_url, extra=f'[gateway]\nauthserv_id = "{MTA}"\n')
    service = Service(tmp_path, port)
    desk = Desk(tmp_path, port)
    try:
        # Dana's ticket: her mail (authenticated), the agent asks her a question.
        desk.send(mail(DANA, f"{TITLE} ##{REFERENCE}##", "Bonjour,\r\n\r\nMon salaire de mars n'a pas été versé.",
                       top=verdict("pass", "acme.test"), name="Dana Martin"), DANA)
        desk.agent("INC-000001", "In progress")
        desk.agent("INC-000001", "Waiting", "--waiting-reason", "customer-feedback", "--note", "Quel compte ?")
        # What eve has got hold of: a notification Dana received (its Message-ID and
        # its signed reply address), the ticket's number and Dana's reference.
        seen_id, seen_reply_to = desk.latest_to(DANA)
        genuine = verdict("pass", "evil.test")

        def eve_writes(subject: str, body: str, headers: str = "", rcpt: str = "helpdesk@localhost", **kw) -> None:
            desk.send(mail(EVE, subject, body, top=genuine, headers=headers, **kw), EVE, rcpt)

        # 1. The subject tag.
        eve_writes("RE: [INC-000001] une question", "Pouvez-vous m'envoyer le dossier ?")
        # 2. References (and In-Reply-To) of the notification she saw.
        eve_writes("Re: votre dossier", "Je reprends ce dossier.",
                   headers=f"In-Reply-To: <{seen_id}>\r\nReferences: <{seen_id}>\r\n")
        # 3. The personal reference.
        eve_writes(f"Suivi ##{REFERENCE}##", "Où en est ma demande ?")
        # 4. The signed reply address, as To and as the envelope recipient.
        desk.send(mail(EVE, "Re: dossier", "Le compte est BE00 0000 0000 0000.", top=genuine, to=seen_reply_to),
                  EVE, seen_reply_to)
        # 5. A spoofed From that our MTA says fails DMARC, eve in Cc: held.  (The red
        #    team's way in: the held mail's Cc made eve one of the thread.)
        spoof = (f"In-Reply-To: <{seen_id}>\r\nReferences: <{seen_id}>\r\nReply-To: {EVE}\r\n"
                 f"Cc: Eve <{EVE}>\r\n")
        desk.send(mail(DANA, "Re: dossier", "Eve s'occupe de mon dossier.", top=verdict("fail", "acme.test"),
                       headers=spoof, name="Dana Martin"), EVE)
        # Then eve, as if on the thread, answers the notification while Dana's answer is
        # awaited: the ticket must go on waiting for Dana.
        eve_writes("Re: dossier", "Le compte est BE00 0000 0000 0000, merci.",
                   headers=f"In-Reply-To: <{seen_id}>\r\nReferences: <{seen_id}>\r\n", to=seen_reply_to,
                   rcpt=seen_reply_to)
        assert desk.status("INC-000001") == "Waiting"
        # 6. A spoofed From with no DMARC verdict against it (acme.test publishes none):
        #    it passes for Dana's (and may answer for her), with eve in Cc and as Reply-To.
        desk.send(mail(DANA, "Re: dossier", "Merci d'envoyer les suites à ma collègue Eve.",
                       top=verdict("none", "acme.test"), headers=spoof, name="Dana Martin"), EVE)
        # 7. A forged Authentication-Results in our MTA's name (dmarc=pass) under the one
        #    our MTA really put on top: the Cc still counts for nothing.
        forged = f"Authentication-Results: {MTA}; dmarc=pass header.from=acme.test\r\n"
        desk.send(mail(DANA, "Re: dossier", "Eve est autorisée à suivre ce dossier.",
                       top=verdict("none", "acme.test") + forged, headers=spoof, name="Dana Martin"), EVE)
        eve_writes("Re: dossier", "Alors, ce virement ?", to=seen_reply_to, rcpt=seen_reply_to,
                   headers=f"In-Reply-To: <{seen_id}>\r\nReferences: <{seen_id}>\r\n")
        # Once it is Solved, eve's empty reply (which from Dana would ask for a comment).
        desk.agent("INC-000001", "Solved", "--solution", "Le virement a été refait.")
        seen_id, seen_reply_to = desk.latest_to(DANA)
        eve_writes("Re: [INC-000001]", "", headers=f"In-Reply-To: <{seen_id}>\r\nReferences: <{seen_id}>\r\n",
                   to=seen_reply_to, rcpt=seen_reply_to)
        assert desk.status("INC-000001") == "Solved"
        mails_to_eve = desk.mails_to(EVE)
        with session_for(desk.app.engine) as s:
            victim = s.exec(select(Ticket).where(Ticket.number == "INC-000001")).one()
            thread = s.exec(select(TicketMessage).where(TicketMessage.ticket_id == victim.id)
                            .order_by(col(TicketMessage.id))).all()
            ids = {m.message_id for m in thread if m.message_id}
            moved_by = {h.by for h in s.exec(select(StatusChange).where(StatusChange.ticket_id == victim.id))}
            eves = s.exec(select(Ticket.number).join(TicketMessage, col(TicketMessage.ticket_id) == col(Ticket.id))
                          .where(TicketMessage.from_addr == EVE, TicketMessage.direction == "in")).all()
            with_reference = s.exec(select(Ticket.number).where(Ticket.personal_reference == REFERENCE,
                                                                Ticket.number != "INC-000001")).all()
            outcomes = s.exec(select(InboundMessage.outcome).order_by(col(InboundMessage.id))).all()
    finally:
        desk.app.engine.dispose()
        assert service.stop() == 0

    # Nothing eve sent acted on Dana's ticket: it moved by the agent's hand (and the spoof
    # that passed for Dana's, which the gateway cannot tell from her), eve's own mails
    # are on tickets of her own, and the spoofs enrolled nobody.
    assert moved_by <= {"agent", DANA}
    assert len(eves) == 7 and "INC-000001" not in eves
    assert outcomes.count("held") == 1
    assert EVE not in {m.from_addr for m in thread}
    # Eve got mails (her own tickets' confirmations), and none of them names Dana's
    # ticket, title or Message-IDs; the reference only as the one she typed herself, on
    # the ticket she opened with it.
    assert len(mails_to_eve) >= 7
    secrets = {"INC-000001", TITLE, *ids}
    for sent in mails_to_eve:
        text = sent.as_string() + "".join(part.get_content() for part in sent.walk()
                                          if part.get_content_maintype() == "text")
        assert [s for s in secrets if s in text] == [], sent["Subject"]
        assert REFERENCE not in text or any(f"[{n}]" in str(sent["Subject"]) for n in with_reference), \
            sent["Subject"]
    # No mail went to an address the spoofs named (Cc, Reply-To) but on eve's own tickets.
    for sent in desk.mails_to(DANA):
        assert EVE not in sent.as_string()
