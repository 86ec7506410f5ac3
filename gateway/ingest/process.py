"""Processing a stored mail: parse, gather the facts, decide, and apply the decision in
one transaction together with the inbound row's new state.

A crash anywhere before the commit leaves the inbound row ``received``: the next run
does the work again from the raw bytes, and nothing is done twice.  A mail that fails
``max_attempts`` times is quarantined with the error as its reason, so one poison mail
never blocks the queue.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from gateway.config import Config
from gateway.errors import Quarantine
from gateway.ingest.automatic import Automatic, classify
from gateway.ingest.decide import Facts, FollowUp, Ignore, NewTicket, QuarantineIt, ThreadHit, decide
from gateway.ingest.language import detect_language
from gateway.ingest.parse import Limits, ParsedMail, parse
from gateway.ingest.references import find_reference, ticket_tags
from gateway.outbound.notify import Notifier
from gateway.tokens import verify_reply_address
from store.addresses import key as address_key
from store.blobs import BlobStore
from store.db import session_for
from store.models import Attachment, InboundMessage, Outbox, Person, Ticket, TicketMessage, utcnow
from store.tickets import create_ticket, get_or_create_person

log = logging.getLogger("gateway.ingest")


@dataclass(frozen=True)
class Outcome:
    source: str
    message_id: str
    outcome: str
    ticket: str | None
    detail: str | None

    def as_dict(self) -> dict:
        return asdict(self)


class Processor:
    def __init__(self, config: Config, engine: Engine, blobs: BlobStore, notifier: Notifier):
        self.config = config
        self.engine = engine
        self.blobs = blobs
        self.notifier = notifier
        self.limits = Limits(config.limits.max_parts, config.limits.max_depth, config.limits.max_header_length)
        # Every address we answer for is ours: mail from any of them is our own coming back.
        self.own = tuple(dict.fromkeys(a.lower() for a in (*config.gateway.addresses, *config.routing.routes)))

    # Facts ----------------------------------------------------------------------------
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

    def may_write(self, session: Session, ticket: Ticket, sender: str) -> bool:
        """Reporting or Affected Person, someone on the thread, or someone with access to
        their company's tickets."""
        sender = address_key(sender)
        people = [session.get(Person, ticket.reporting_person_id), session.get(Person, ticket.affected_person_id)]
        if any(p is not None and p.email == sender for p in people):
            return True
        for msg in session.exec(select(TicketMessage).where(TicketMessage.ticket_id == ticket.id)):
            on_thread = [address_key(a) for a in (msg.to_addrs + "," + msg.cc_addrs).split(",") if a]
            if msg.direction == "in":
                on_thread.append(address_key(msg.from_addr))
            if sender in on_thread:
                return True
        person = session.exec(select(Person).where(Person.email == sender)).first()
        if person is not None and person.company_access and person.company:
            return any(p is not None and p.company == person.company for p in people)
        return False

    def find_thread(self, session: Session, inbound: InboundMessage, mail: ParsedMail) -> ThreadHit | None:
        def hit(ticket: Ticket, via: str) -> ThreadHit:
            return ThreadHit(ticket.number, ticket.status, via, self.may_write(session, ticket, mail.from_addr))

        ids = [m for m in (*mail.in_reply_to, *reversed(mail.references)) if m]
        if ids:
            row = session.exec(
                select(TicketMessage.ticket_id).where(col(TicketMessage.message_id).in_(ids)).order_by(
                    col(TicketMessage.id).desc())
            ).first()
            if row is not None:
                return hit(session.get(Ticket, row), "message-id")
        for addr in [a for a in inbound.rcpt_to.split(",") if a] + list(mail.to) + list(mail.cc):
            number = verify_reply_address(self.config.gateway.secret, addr)
            if number:
                ticket = session.exec(select(Ticket).where(Ticket.number == number)).first()
                if ticket is not None:
                    return hit(ticket, "token")
        for number in ticket_tags(mail.subject):
            ticket = session.exec(select(Ticket).where(Ticket.number == number)).first()
            if ticket is not None:
                return hit(ticket, "tag")
        return None

    def gather(self, session: Session, inbound: InboundMessage, mail: ParsedMail) -> Facts:
        duplicate_of = None
        if mail.message_id:
            row = session.exec(
                select(Ticket.number)
                .join(TicketMessage, col(TicketMessage.ticket_id) == col(Ticket.id))
                .where(TicketMessage.message_id == mail.message_id, TicketMessage.direction == "in")
            ).first()
            duplicate_of = row
        automatic = classify(mail, self.own, self.config.message_id_domain)
        thread = None if automatic else self.find_thread(session, inbound, mail)
        known = bool(mail.from_addr) and session.exec(
            select(Person.id).where(Person.email == address_key(mail.from_addr))).first() is not None
        return Facts(
            process=self.route(inbound, mail),
            duplicate_of=duplicate_of,
            automatic=automatic,
            thread=thread,
            reference=None if automatic else find_reference(mail),
            sender_known=known,
            unknown_senders=self.config.gateway.unknown_senders,
        )

    def over_rate(self, session: Session, sender: str) -> bool:
        """More than limits.rate_limit mails from ``sender`` in the last rate_window seconds:
        the sender still gets tickets but no notifications, so a storm (a loop with a
        machine we do not recognise, or a mail bomb) cannot make us send a storm back."""
        since = utcnow() - timedelta(seconds=self.config.limits.rate_window)
        recent = session.exec(
            select(TicketMessage.id).where(TicketMessage.direction == "in", TicketMessage.from_addr == sender,
                                           col(TicketMessage.created_at) >= since)
            .limit(self.config.limits.rate_limit + 1)
        ).all()
        # The mail being processed is already among them.
        return len(recent) > self.config.limits.rate_limit

    def record_report(self, session: Session, mail: ParsedMail, automatic: Automatic) -> tuple[str | None, str]:
        """A bounce: mark the outbox mail that bounced as failed (a permanent failure) and
        count a hard bounce on its recipients; after outbound.undeliverable_after hard
        bounces the address is marked undeliverable.  Returns (ticket number, detail)."""
        report = automatic.report
        if report is None or report.kind != "bounce" or not report.original_message_ids:
            return None, automatic.detail
        rows = session.exec(select(Outbox).where(col(Outbox.message_id).in_(report.original_message_ids))).all()
        if not rows:
            return None, automatic.detail + "; no outbox mail of ours among the returned Message-IDs"
        ticket_number = None
        reported = {address_key(a) for a in report.recipients}
        for row in rows:
            answer = f"bounce <{mail.message_id}>: {automatic.detail}"
            row.last_answer = answer[:2000]
            if report.hard and row.state != "failed":
                row.state = "failed"
                recipients = [address_key(a) for a in row.recipients.split(",") if a]
                # Count only the recipients the report names, when it names any of ours.
                hit = [a for a in recipients if a in reported] or recipients
                for addr in hit:
                    person = session.exec(select(Person).where(Person.email == addr)).first()
                    if person is None:
                        continue
                    person.hard_bounces += 1
                    if person.hard_bounces >= self.config.outbound.undeliverable_after:
                        person.undeliverable = True
                    session.add(person)
            session.add(row)
            if row.ticket_id is not None and ticket_number is None:
                ticket = session.get(Ticket, row.ticket_id)
                ticket_number = ticket.number if ticket else None
        state = "marked failed" if report.hard else "delayed, kept"
        return ticket_number, f"{automatic.detail}; outbox <{rows[0].message_id}> {state}"

    # Applying -------------------------------------------------------------------------
    def language_of(self, mail: ParsedMail) -> str:
        """Content-Language, else the language of the text when it is clear, else the default."""
        lang = (mail.content_language or "").split("-")[0].lower()
        if lang in ("fr", "nl", "en", "de"):
            return lang
        return detect_language(f"{mail.subject}\n{mail.text}") or self.config.gateway.default_language

    def add_message(self, session: Session, ticket: Ticket, inbound: InboundMessage, mail: ParsedMail,
                    body_text: str | None = None) -> TicketMessage:
        msg = TicketMessage(
            ticket_id=ticket.id,
            direction="in",
            from_addr=mail.from_addr,
            to_addrs=",".join(mail.to),
            cc_addrs=",".join(mail.cc),
            subject=mail.subject,
            body_text=mail.text if body_text is None else body_text,
            body_full=mail.text,
            body_html=mail.html,
            message_id=mail.message_id or None,
            inbound_id=inbound.id,
        )
        session.add(msg)
        session.flush()
        for att in mail.attachments:
            sha = self.blobs.put(att.data)
            session.add(Attachment(message_id=msg.id, filename=att.filename, content_type=att.content_type,
                                   size=att.size, sha256=sha, inline=att.inline, content_id=att.content_id))
        return msg

    def apply(self, session: Session, inbound: InboundMessage, mail: ParsedMail, decision) -> Outcome:
        source, mid = inbound.source, mail.message_id
        if isinstance(decision, Ignore):
            return Outcome(source, mid, decision.outcome, decision.ticket, decision.detail)
        if isinstance(decision, QuarantineIt):
            return Outcome(source, mid, "quarantined", None, decision.reason)
        if isinstance(decision, FollowUp):
            ticket = session.exec(select(Ticket).where(Ticket.number == decision.number)).one()
            self.add_message(session, ticket, inbound, mail)
            ticket.updated_at = utcnow()
            session.add(ticket)
            return Outcome(source, mid, "appended", ticket.number, f"found by {decision.via}")
        assert isinstance(decision, NewTicket)
        person, _created = get_or_create_person(session, mail.from_addr, mail.from_name, self.language_of(mail))
        ticket = create_ticket(
            session,
            process=decision.process,
            title=decision.title,
            description=mail.text,
            reporter=person,
            reference=decision.reference.value if decision.reference else None,
            reference_source=decision.reference.source if decision.reference else None,
            by=person.email,
        )
        self.add_message(session, ticket, inbound, mail)
        if decision.refers_to:
            session.add(TicketMessage(ticket_id=ticket.id, direction="note", internal=True,
                                      body_text=f"The sender referred to {decision.refers_to}, which they may not "
                                                f"write into; this new ticket was opened instead."))
        session.flush()
        # Counted on the From as stored on the ticket messages.
        if self.over_rate(session, mail.from_addr):
            log.warning("<%s> %s: %s is over the rate limit, no notification", mail.message_id, ticket.number,
                        person.email)
        else:
            self.notifier.enqueue(session, ticket, "new", in_reply_to=mail.message_id or None,
                                  auto_submitted="auto-replied")
        return Outcome(source, mid, "created", ticket.number, None)

    # Driving --------------------------------------------------------------------------
    def process(self, inbound_id: int) -> Outcome:
        """Process one stored mail; the result is committed with the inbound row's state."""
        with session_for(self.engine) as session:
            inbound = session.get(InboundMessage, inbound_id)
            if inbound is None:
                raise LookupError(f"no inbound message {inbound_id}")
            if inbound.state != "received":
                return Outcome(inbound.source, inbound.message_id, inbound.outcome or inbound.state,
                               inbound.ticket_number, inbound.detail)
            try:
                raw = self.blobs.get(inbound.sha256)
                try:
                    mail = parse(raw, self.limits)
                except Quarantine as exc:
                    return self._finish(session, inbound, Outcome(inbound.source, inbound.message_id,
                                                                  "quarantined", None, exc.reason), "quarantined")
                facts = self.gather(session, inbound, mail)
                decision = decide(mail, facts)
                if isinstance(decision, Ignore) and decision.outcome == "bounce" and facts.automatic is not None:
                    number, detail = self.record_report(session, mail, facts.automatic)
                    decision = Ignore("bounce", detail, number)
                outcome = self.apply(session, inbound, mail, decision)
                state = "quarantined" if outcome.outcome == "quarantined" else "processed"
                return self._finish(session, inbound, outcome, state)
            except Exception as exc:
                session.rollback()
                return self._failed(inbound_id, exc)

    def _finish(self, session: Session, inbound: InboundMessage, outcome: Outcome, state: str) -> Outcome:
        inbound.state = state
        inbound.outcome = outcome.outcome
        inbound.ticket_number = outcome.ticket
        inbound.detail = outcome.detail
        inbound.processed_at = utcnow()
        session.add(inbound)
        session.commit()
        log.info("<%s> %s%s%s", outcome.message_id, outcome.outcome,
                 f" {outcome.ticket}" if outcome.ticket else "", f" ({outcome.detail})" if outcome.detail else "")
        return outcome

    def _failed(self, inbound_id: int, exc: Exception) -> Outcome:
        """Count a failed attempt; quarantine after max_attempts so the queue moves on."""
        log.exception("processing inbound %s failed", inbound_id)
        with session_for(self.engine) as session:
            inbound = session.get(InboundMessage, inbound_id)
            inbound.attempts += 1
            detail = f"processing failed: {type(exc).__name__}: {exc}"
            if inbound.attempts >= self.config.limits.max_attempts:
                return self._finish(session, inbound, Outcome(inbound.source, inbound.message_id, "quarantined",
                                                              None, detail), "quarantined")
            inbound.detail = detail
            session.add(inbound)
            session.commit()
            return Outcome(inbound.source, inbound.message_id, "retry", None, detail)

    def pending_ids(self, limit: int = 100) -> list[int]:
        with session_for(self.engine) as session:
            return list(session.exec(select(InboundMessage.id).where(InboundMessage.state == "received")
                                     .order_by(col(InboundMessage.id)).limit(limit)))

    def process_pending(self, limit: int = 100) -> list[Outcome]:
        return [self.process(i) for i in self.pending_ids(limit)]
