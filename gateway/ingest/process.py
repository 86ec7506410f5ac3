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

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from gateway.config import Config
from gateway.errors import Quarantine
from gateway.ingest.automatic import classify
from gateway.ingest.decide import Facts, FollowUp, Ignore, NewTicket, QuarantineIt, ThreadHit, decide
from gateway.ingest.parse import Limits, ParsedMail, parse
from gateway.ingest.references import find_reference, ticket_tags
from gateway.outbound.notify import Notifier
from gateway.tokens import verify_reply_address
from store.addresses import key as address_key
from store.blobs import BlobStore
from store.db import session_for
from store.models import Attachment, InboundMessage, Person, Ticket, TicketMessage, utcnow
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
        self.own = tuple(a.lower() for a in config.gateway.addresses)

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
        automatic = classify(mail, self.own)
        thread = None if automatic else self.find_thread(session, inbound, mail)
        return Facts(
            process=self.route(inbound, mail),
            duplicate_of=duplicate_of,
            automatic=automatic,
            thread=thread,
            reference=find_reference(mail),
        )

    # Applying -------------------------------------------------------------------------
    def language_of(self, mail: ParsedMail) -> str:
        lang = (mail.content_language or "").split("-")[0].lower()
        return lang if lang in ("fr", "nl", "en", "de") else self.config.gateway.default_language

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
        self.notifier.enqueue(session, ticket, "new", in_reply_to=mail.message_id or None,
                              auto_submitted="auto-replied")
        return Outcome(source, mid, "created", ticket.number, None)

    # Driving --------------------------------------------------------------------------
    def process(self, inbound_id: int) -> Outcome:
        """Process one stored mail; the result is committed with the inbound row's state."""
        # Read and parse before the write transaction: on SQLite a transaction holds the
        # database's write lock (BEGIN IMMEDIATE), and the SMTP door waits for that lock
        # before it may answer 250.  Attachment blobs are content-addressed, so storing
        # them early is harmless if the transaction is later rolled back.
        mail: ParsedMail | None = None
        quarantine: Quarantine | None = None
        with session_for(self.engine) as session:
            inbound = session.get(InboundMessage, inbound_id)
            if inbound is None:
                raise LookupError(f"no inbound message {inbound_id}")
            pending = inbound.state == "received"
            sha = inbound.sha256
        if pending:
            try:
                mail = parse(self.blobs.get(sha), self.limits)
                for att in mail.attachments:
                    self.blobs.put(att.data)
            except Quarantine as exc:
                quarantine = exc
            except Exception:  # noqa: BLE001 - done again, and counted, in the transaction below
                mail = None
        with session_for(self.engine) as session:
            # Claim the row: on PostgreSQL several workers run at once, and one that finds
            # the row locked leaves it to the other (SQLite: the write lock does this).
            inbound = session.get(InboundMessage, inbound_id, with_for_update={"skip_locked": True})
            if inbound is None:
                return Outcome("", "", "busy", None, "being processed by another worker")
            if inbound.state != "received":
                return Outcome(inbound.source, inbound.message_id, inbound.outcome or inbound.state,
                               inbound.ticket_number, inbound.detail)
            try:
                try:
                    if quarantine is not None:
                        raise quarantine
                    if mail is None:
                        mail = parse(self.blobs.get(inbound.sha256), self.limits)
                except Quarantine as exc:
                    return self._finish(session, inbound, Outcome(inbound.source, inbound.message_id,
                                                                  "quarantined", None, exc.reason), "quarantined")
                facts = self.gather(session, inbound, mail)
                outcome = self.apply(session, inbound, mail, decide(mail, facts))
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
