"""Gathering the facts about a mail from the database: the ticket it answers and what its
sender may do there, the sender, a copy already received, a repeat or a flood, the mails of
ours a bounce names.  Reads only; what they mean is decided in ``gateway.ingest.decide``."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, select

from gateway.ingest.automatic import TEXT_KEY_CHARS, Automatic, classify, subject_key, text_key
from gateway.ingest.bounces import Report
from gateway.ingest.decide import BouncedMail, Facts, Repeat, ThreadHit
from gateway.ingest.language import mail_language
from gateway.ingest.parse import ParsedMail
from gateway.ingest.references import find_reference
from gateway.ingest.statements import PERSON_BY_EMAIL, REPEAT_LOOKBACK, SAME_MESSAGE_ID
from gateway.ingest.threads import dmarc_failed, find_ticket, permission, signed_replies
from gateway.tokens import marked_addresses, verified_bounce
from store import lifecycle
from store.addresses import key as address_key
from store.models import Attachment, InboundMessage, Outbox, Person, StatusChange, Ticket, TicketMessage, utcnow
from store.tickets import new_row

log = logging.getLogger("gateway.ingest")

# ``sender`` not looked up yet (gather and apply then read it themselves).
UNKNOWN = object()


class Gather:
    """The facts of a mail (a part of ``gateway.ingest.process.Processor``: it reads
    ``self.config`` and ``self.own``)."""

    def route(self, inbound: InboundMessage, mail: ParsedMail) -> str:
        if inbound.process:
            return inbound.process
        routes = {address_key(k): v for k, v in self.config.routing.routes.items()}
        for addr in [a for a in inbound.rcpt_to.split(",") if a] + list(mail.to) + list(mail.cc):
            k = address_key(addr)
            local, _, domain = k.rpartition("@")
            plain = f"{local.split('+', 1)[0]}@{domain}"
            if plain in routes:
                return routes[plain]
        return self.config.routing.default_process

    def find_thread(self, session: Session, inbound: InboundMessage, mail: ParsedMail) -> ThreadHit | None:
        """The ticket the mail answers (``gateway.ingest.threads``) and what its sender may do."""
        recipients = [a for a in inbound.rcpt_to.split(",") if a] + list(mail.to) + list(mail.cc)
        found = find_ticket(session, mail, recipients, self.config.gateway.verifying_secrets(), self.own)
        if found is None:
            return None
        ticket, via = found
        may = permission(session, ticket, mail.from_addr, self.own)
        if not may.allowed:
            log.warning("<%s> %s referred to %s by %s but may not write into it: a ticket of their own",
                        mail.message_id, mail.from_addr, ticket.number, via)
        stale = (self._stale_request(session, ticket, mail, recipients)
                 if ticket.status == lifecycle.APPROVAL else None)
        # A reply to a Closed ticket opens a new one, titled after it (decide.title_from_closed).
        subjects = (tuple(session.exec(select(TicketMessage.subject).where(TicketMessage.ticket_id == ticket.id,
                                                                           TicketMessage.direction == "out")))
                    if ticket.status == lifecycle.CLOSED and may.allowed else ())
        return ThreadHit(ticket.number, ticket.status, via, may.allowed, ticket.waiting_reason,
                         may.approver, may.why, dmarc_failed(mail, self.config.trusted_authserv_id), stale,
                         ticket.title, subjects)

    def _stale_request(self, session: Session, ticket: Ticket, mail: ParsedMail, recipients: list[str]) -> str | None:
        """When the mail answers one of the ticket's approval requests that is not open:
        an earlier one than the latest, or one decided since it was sent (the ticket came
        back to Approval without a new request).  The request is the one its In-Reply-To
        names, else the one whose reply address (``+CHG-000001.a2.<token>``) it was sent
        to or quotes in our HTML.  A mail that names no request (a new mail with the
        ticket's tag) answers the open question.  None when the request is open."""
        # Every copy of a request carries its number (one copy a recipient).
        copies = session.exec(select(Outbox.message_id, Outbox.created_at, Outbox.approval_request)
                              .where(Outbox.ticket_id == ticket.id, Outbox.event == "approval")
                              .order_by(col(Outbox.id))).all()
        if not copies:
            return None
        asked_at: dict[int, datetime] = {}
        for _mid, at, number in copies:
            asked_at.setdefault(number, at)
        latest = max(asked_at)
        answered = {mid for mid in mail.in_reply_to if mid}
        request = next((number for mid, _at, number in copies if mid in answered), None)
        if request is None:
            addresses = [*recipients, *marked_addresses(mail.html or "")]
            secrets = self.config.gateway.verifying_secrets()
            request = next((request for number, request in signed_replies(addresses, secrets, self.own)
                            if number == ticket.number and request is not None), None)
        if request is None:
            return None
        if request not in asked_at:  # signed by us, yet no such request: not this question
            return f"answers approval request {request}, which this ticket never had"
        asked = asked_at[request]
        if request < latest:
            return f"answers the earlier approval request of {asked:%Y-%m-%d %H:%M} UTC"
        decided = session.exec(select(StatusChange.at).where(StatusChange.ticket_id == ticket.id,
                                                             StatusChange.from_status == lifecycle.APPROVAL,
                                                             StatusChange.at > asked)
                               .order_by(col(StatusChange.at))).first()
        if decided is not None:
            return (f"answers the approval request of {asked:%Y-%m-%d %H:%M} UTC, already decided on "
                    f"{decided:%Y-%m-%d %H:%M} UTC")
        return None

    def sender_of(self, session: Session, mail: ParsedMail) -> Person | None:
        """The sender's Person, read once a mail: gather needs to know them, apply uses them.

        Read with a Prepared statement and joined to the session as a loaded row (the
        ORM's query machinery for it was ~11 % of the worker's time); a Person the
        session holds already (created by an earlier mail of the batch) is that one."""
        if not mail.from_addr:
            return None
        rows = PERSON_BY_EMAIL.rows(session, {"b_email": address_key(mail.from_addr)})
        if not rows:
            return None
        pid, email, name, language, company, access, tz, bounces, undeliverable = rows[0]
        known = session.identity_map.get(identity_key(Person, pid))
        if known is not None:
            return known
        person = new_row(Person, id=pid, email=email, name=name, language=language, company=company,
                         company_access=bool(access), timezone=tz, hard_bounces=bounces,
                         undeliverable=bool(undeliverable))
        make_transient_to_detached(person)
        session.add(person)
        session.expire(person, ["created_at"])  # not read here: loaded if anyone asks
        return person

    def gather(self, session: Session, inbound: InboundMessage, mail: ParsedMail, sender=UNKNOWN) -> Facts:
        duplicate_of = None
        if mail.message_id:
            # The same mail delivered twice (other Received lines, so other bytes) has the
            # same Message-ID and sender.  A different sender reusing a Message-ID is not a
            # copy: dropping it would let anyone silence a mail by sending its ID first.
            # Core on the session's connection (no ORM result machinery for two columns);
            # the mails before this one in the batch are flushed (Apply.mark).
            rows = SAME_MESSAGE_ID.rows(session, {"b_mid": mail.message_id})
            duplicate_of = next((n for n, f in rows if address_key(f) == address_key(mail.from_addr)), None)
        automatic = self._with_bounce_address(inbound, mail, classify(mail, self.own, self.config.message_id_domain))
        # Automatic mail finds no ticket, but for a read receipt, noted on the ticket it names.
        thread = None if automatic and not automatic.noted else self.find_thread(session, inbound, mail)
        if sender is UNKNOWN:
            sender = self.sender_of(session, mail)
        known = sender is not None
        # Whether it repeats: asked only of a known sender's mail that may open a ticket.
        may_open = thread is None or not thread.sender_allowed or thread.status == lifecycle.CLOSED
        process = self.route(inbound, mail)
        repeat = self.repeat(session, mail, sender, process) if known and not automatic and may_open else None
        return Facts(
            process=process,
            duplicate_of=duplicate_of,
            automatic=automatic,
            thread=thread,
            reference=None if automatic else find_reference(mail),
            sender_known=known,
            unknown_senders=self.config.gateway.unknown_senders,
            flood=self.flood(session, sender) if known and not automatic else None,
            repeat=repeat,
            bounced=self.bounced_mails(session, automatic) if automatic else None,
        )

    def bounced_mails(self, session: Session, automatic: Automatic) -> tuple[BouncedMail, ...] | None:
        """The mails of ours a delivery report names, by the outbox id of its bounce
        address, then by the Message-IDs it returns (decide.bounce); None for any other
        automatic mail, or a report that names none."""
        report = automatic.report
        if (automatic.kind != "bounce" or report is None or report.kind != "bounce"
                or not (report.original_message_ids or report.outbox_ids)):
            return None
        columns = select(Outbox.id, Outbox.message_id, Outbox.recipient, Outbox.state, Ticket.number) \
            .join(Ticket, col(Ticket.id) == col(Outbox.ticket_id), isouter=True)
        rows = list(session.exec(columns.where(col(Outbox.id).in_(report.outbox_ids)).order_by(Outbox.id))) \
            if report.outbox_ids else []
        if report.original_message_ids:
            rows += [r for r in session.exec(columns.where(col(Outbox.message_id).in_(report.original_message_ids)))
                     if r[0] not in report.outbox_ids]
        return tuple(BouncedMail(i, mid, address_key(to), state, number) for i, mid, to, state, number in rows)

    def _with_bounce_address(self, inbound, mail: ParsedMail, automatic: Automatic | None) -> Automatic | None:
        """A mail to the bounce address of one of our mails ([outbound] verp) is a report
        about that mail: the report gets its outbox id, and a mail nothing else recognises
        as a report becomes one (soft: only a real delivery report fails the mail)."""
        addresses = [*(inbound.rcpt_to or "").split(","), *mail.to, *mail.cc]
        secrets = self.config.gateway.verifying_secrets()
        ids = tuple(dict.fromkeys(i for i in (verified_bounce(secrets, a) for a in addresses if a) if i is not None))
        if not ids:
            return automatic
        if automatic is not None and automatic.report is not None and automatic.kind == "bounce":
            return replace(automatic, report=replace(automatic.report, outbox_ids=ids))
        if automatic is None:
            detail = f"mail to the bounce address of outbox mail #{ids[0]}"
            return Automatic("bounce", detail, Report("bounce", detail, False, (), (), ids))
        return automatic

    def flood(self, session: Session, sender: Person) -> str | None:
        """Why a new ticket from ``sender`` is held: they reported
        limits.new_tickets_per_sender tickets in the last new_tickets_window seconds
        already; None under the limit (or with no limit, 0)."""
        limits = self.config.limits
        if not limits.new_tickets_per_sender:
            return None
        since = utcnow() - timedelta(seconds=limits.new_tickets_window)
        recent = session.exec(select(Ticket.id).where(Ticket.reporting_person_id == sender.id,
                                                      col(Ticket.created_at) >= since)
                              .limit(limits.new_tickets_per_sender)).all()
        if len(recent) < limits.new_tickets_per_sender:
            return None
        return (f"flood: {sender.email} opened {len(recent)} tickets in the last {limits.new_tickets_window} s "
                f"([limits] new_tickets_per_sender = {limits.new_tickets_per_sender}); held for an agent "
                f"(gateway inbound reprocess takes it once the rate falls)")

    def repeat(self, session: Session, mail: ParsedMail, sender: Person, process: str) -> Repeat | None:
        """The facts of decide's loop rule: within [limits] loop_window, a mail of the
        same sender to the same desk (a ticket of ``process``) that said the same
        (``automatic.text_key``: the same subject and text but for ticket numbers,
        addresses, Message-IDs, dates and times; the same attachments), or one of our
        mails to the sender whose Message-ID this one names in its text (``_named_mail``).
        None when neither, or the rule is off.  One indexed query a mail; more only when a
        subject matches."""
        window = self.config.limits.loop_window
        if not window:
            return None
        since = utcnow() - timedelta(seconds=window)
        session.flush()  # an earlier mail of the batch counts (Core below does not autoflush)
        recent = session.exec(
            select(TicketMessage.id, Ticket.number, TicketMessage.subject)
            .join(Ticket, col(Ticket.id) == col(TicketMessage.ticket_id))
            .where(TicketMessage.direction == "in", TicketMessage.from_addr == mail.from_addr,
                   col(TicketMessage.created_at) >= since, Ticket.process == process)
            .order_by(col(TicketMessage.id).desc()).limit(REPEAT_LOOKBACK)).all()
        # The subjects first (a person's mails seldom share one); the texts of those that match.
        subject = subject_key(mail.subject)
        alike = [(message_id, number) for message_id, number, said in recent if subject_key(said) == subject]
        if alike:
            key = text_key(mail.subject, mail.text)
            files = sorted(att.sha256 for att in mail.attachments)
            texts = dict(session.exec(select(TicketMessage.id, func.substr(TicketMessage.body_full, 1, TEXT_KEY_CHARS))
                                      .where(col(TicketMessage.id).in_([m for m, _n in alike]))).all())
            for message_id, number in alike:
                if text_key(mail.subject, texts.get(message_id) or "") != key:
                    continue
                stored = sorted(session.exec(select(Attachment.sha256).where(Attachment.message_id == message_id)))
                if stored == files:
                    return Repeat(number, f"the same text as {mail.from_addr}'s mail on {number} in the last "
                                          f"{window} s: a loop; kept on {number}, no new ticket, no answer")
        return self._named_mail(session, mail, sender, since)

    def _named_mail(self, session: Session, mail: ParsedMail, sender: Person, since: datetime) -> Repeat | None:
        """A mail of ours, sent since ``since`` on a ticket of ``sender``'s, whose
        Message-ID ``mail`` names in its text ("your message <…@our domain> was received")
        rather than in In-Reply-To: a machine quoting our header.  People do not write
        Message-IDs; they do write ticket numbers, which therefore are no such sign (a
        robot that quotes a varying number is caught by text_key, which leaves it out)."""
        domain = self.config.message_id_domain.lower()
        if f"@{domain}" not in mail.text.lower():
            return None
        ours = re.compile(r"[^\s<>\"'@]+@" + re.escape(domain) + r"\b", re.IGNORECASE)
        ids = {m.lower() for m in ours.findall(mail.text[:TEXT_KEY_CHARS])}
        if not ids:
            return None
        number = session.exec(
            select(Ticket.number).join(TicketMessage, col(TicketMessage.ticket_id) == col(Ticket.id))
            .where(col(TicketMessage.message_id).in_(ids), TicketMessage.direction == "out",
                   col(TicketMessage.created_at) >= since,
                   (col(Ticket.reporting_person_id) == sender.id) | (col(Ticket.affected_person_id) == sender.id))
        ).first()
        if number is None:
            return None
        return Repeat(number, f"names the Message-ID of our mail on {number} in its text, not in In-Reply-To: "
                              f"a machine answering it; kept on {number}, no new ticket, no answer")


    def language_of(self, mail: ParsedMail) -> str:
        """Content-Language, else the language of the text when it is clear, else the default."""
        return mail_language(mail, self.config.gateway.default_language)
