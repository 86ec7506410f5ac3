"""Applying a decision (gateway.ingest.decide) in the caller's transaction: the ticket, its
message and attachments, the status change, the notification queued for the outbound side
(store.notifications), the bounce's marks, and the inbound row's new state.  Only what the
decision says is written; no rule is read here."""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from datetime import timedelta

from sqlmodel import Session, col, select

from gateway.ingest import decisions
from gateway.ingest.decide import (APPROVE, HOLD, NEEDS_COMMENT, REFUSE, BounceEffects, FollowUp, Ignore, NewTicket,
                                   QuarantineIt, rate_exceeded, reply_effects, unanswerable_sender, undeliverable)
from gateway.ingest.gather import UNKNOWN
from gateway.ingest.parse import ParsedMail
from gateway.ingest.statements import INSERT_RECEIVED, MARK, RECENT_FROM
from gateway.ingest.threads import dmarc_passed
from store import webhooks
from store.addresses import key as address_key
from store.models import Attachment, InboundMessage, Outbox, Person, Ticket, TicketMessage, utcnow
from store.notifications import KnownThread, queue
from store.tickets import add_person, change_status, create_ticket, get_or_create_person, get_ticket
from store.vocabulary import FAILED, QUARANTINED


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


def with_defects(detail: str | None, defects: tuple[str, ...]) -> str:
    """The outcome's detail and what was wrong with the mail as it came (a missing
    boundary, a charset that did not decode, broken base64...): the agent who finds its
    text garbled sees why in ``gateway inbound show``, without opening the raw mail."""
    words = [re.sub(r"(?<=[a-z])(?=[A-Z])", " ", d[:-len("Defect")]).lower() if d.endswith("Defect") else d
             for d in defects]
    read = "as read: " + "; ".join(words)
    return f"{detail}; {read}" if detail else read


class Apply:
    """Writing a decision (a part of ``gateway.ingest.process.Processor``: it reads
    ``self.config``, ``self.notices`` and ``self.blobs``)."""

    def add_message(self, session: Session, ticket: Ticket, inbound: InboundMessage, mail: ParsedMail,
                    body_text: str | None = None, internal: bool = False) -> int:
        """The received mail as a message of ``ticket``, with its attachments; its id.

        A Core insert in the session's transaction (or savepoint): the message is not read
        back as an object here, and the ORM's model construction and flush cost more than
        the insert on every mail."""
        msg_id = INSERT_RECEIVED.execute(session, dict(
            ticket_id=ticket.id,
            direction="in",
            internal=internal,
            # Whether its To and Cc may join the thread (threads.permission).
            authenticated=dmarc_passed(mail, self.config.trusted_authserv_id),
            from_addr=mail.from_addr,
            to_addrs=",".join(mail.to),
            cc_addrs=",".join(mail.cc),
            subject=mail.subject,
            body_text=mail.text if body_text is None else body_text,
            body_full=mail.text,
            body_html=mail.html,
            message_id=mail.message_id or None,
            inbound_id=inbound.id,
            outbox_id=None,
            created_at=utcnow(),
        ))
        for att in mail.attachments:
            sha = att.blob or self.blobs.put(att.data)  # a large one is stored while parsed
            session.add(Attachment(message_id=msg_id, filename=att.filename, content_type=att.content_type,
                                   size=att.size, sha256=sha, inline=att.inline, content_id=att.content_id))
        return msg_id

    def _person(self, session: Session, mail: ParsedMail, sender) -> Person:
        """The sender as a Person, created on their first mail (``sender``: from sender_of)."""
        if sender is UNKNOWN:
            return get_or_create_person(session, mail.from_addr, mail.from_name, self.language_of(mail))[0]
        if sender is None:
            return add_person(session, mail.from_addr, mail.from_name, self.language_of(mail))
        if mail.from_name and not sender.name:
            sender.name = mail.from_name
            session.add(sender)
        return sender

    def apply(self, session: Session, inbound: InboundMessage, mail: ParsedMail, decision, sender=UNKNOWN) -> Outcome:
        source, mid = inbound.source, mail.message_id
        if isinstance(decision, Ignore):
            if decision.bounce is not None:
                self.write_bounce(session, decision.bounce)
            if decision.note and decision.ticket:
                # Kept where the agents look, internal: no answer, no change, and (being
                # internal) no thread membership for its addresses, no place in References.
                self.add_message(session, get_ticket(session, decision.ticket), inbound, mail, internal=True)
            return Outcome(source, mid, decision.outcome, decision.ticket, decision.detail)
        if isinstance(decision, QuarantineIt):
            return Outcome(source, mid, QUARANTINED, None, decision.reason)
        if isinstance(decision, FollowUp):
            return self.apply_reply(session, inbound, mail, decision, sender)
        assert isinstance(decision, NewTicket)
        return self.apply_new(session, inbound, mail, decision, sender)

    def apply_new(self, session: Session, inbound: InboundMessage, mail: ParsedMail, decision: NewTicket,
                  sender=UNKNOWN) -> Outcome:
        """Open the ticket the decision describes, with the mail as its first message, and
        queue its confirmation."""
        person = self._person(session, mail, sender)
        linked = get_ticket(session, decision.linked_to) if decision.linked_to else None
        ticket = create_ticket(
            session,
            process=decision.process,
            title=decision.title,
            description=mail.text if decision.description is None else decision.description,
            reporter=person,
            reference=decision.reference.value if decision.reference else None,
            reference_source=decision.reference.source if decision.reference else None,
            by=person.email,
            linked=linked,
        )
        self.add_message(session, ticket, inbound, mail, body_text=decision.description)
        # The ticket is new: its thread is this mail, its latest update this mail's text,
        # and no change can be linked to it yet (nothing to read back for the notification).
        known = KnownThread((mail.message_id,) if mail.message_id else (),
                            mail.text if decision.description is None else decision.description)
        if decision.refers_to:
            session.add(TicketMessage(ticket_id=ticket.id, direction="note", internal=True,
                                      body_text=f"The sender referred to {decision.refers_to} (by {decision.refers_via}), "
                                                f"which they may not write into; this new ticket was opened instead."))
        if linked is not None:
            session.add(TicketMessage(ticket_id=ticket.id, direction="note", internal=True,
                                      body_text=f"Opened from a reply to {linked.number}, which is Closed."))
            self.notify(session, ticket, "closed-new-ticket", mail, extra={"closed_ticket": linked}, known=known)
        else:
            self.notify(session, ticket, "new", mail, known=known)
        detail = f"follows {linked.number}, which is Closed" if linked is not None else (
            f"sender may not write into {decision.refers_to}" if decision.refers_to else None)
        return Outcome(inbound.source, mail.message_id, decision.outcome, ticket.number, detail)

    def apply_reply(self, session: Session, inbound: InboundMessage, mail: ParsedMail, reply: FollowUp,
                    sender=UNKNOWN) -> Outcome:
        """Add an allowed sender's reply to its ticket and do what it asks
        (decide.reply_effects), in the caller's transaction: the comment, the status change
        and the mail land together or not at all."""
        ticket = get_ticket(session, reply.number)
        by = address_key(mail.from_addr)
        # A reply that cannot reopen, or whose sender is not proven, is kept for the agents,
        # not shown as a public comment.
        self.add_message(session, ticket, inbound, mail, body_text=reply.comment,
                         internal=reply.action in (NEEDS_COMMENT, HOLD))
        ticket.updated_at = utcnow()
        session.add(ticket)
        hooks = self.config.webhooks  # the integrations told of a reply and what it moved (store.webhooks)
        if hooks:
            webhooks.queue(session, hooks, "ticket.comment_added", webhooks.ticket_data(
                ticket, internal=reply.action in (NEEDS_COMMENT, HOLD), by=by, channel="mail"))
        effects = reply_effects(reply, by, mail.from_name)
        if reply.action in (APPROVE, REFUSE):
            decisions.spend(session, ticket, reply.action, inbound.id)  # once, whatever instance reads it
        if effects.status is not None:
            change = change_status(session, ticket, effects.status, effects.data, by=by)
            if hooks:
                webhooks.queue(session, hooks, "ticket.status_changed", webhooks.ticket_data(
                    ticket, from_status=change.from_status, to_status=change.to_status, by=by, channel="mail"))
        if effects.notice is not None:
            only = {"only": [self._person(session, mail, sender)]} if effects.to_sender_only else {}
            extra = {"extra": effects.extra} if effects.extra is not None else {}
            self.notify(session, ticket, effects.notice, mail, **only, **extra)
        log.info("<%s> %s %s: %s", mail.message_id, ticket.number, reply.action, reply.detail)
        return Outcome(inbound.source, mail.message_id, reply.outcome, ticket.number, reply.detail)

    def notify(self, session: Session, ticket: Ticket, event: str, mail: ParsedMail, **kwargs) -> None:
        """Queue the notification answering a customer's mail, unless it is withheld: the
        sender is over the rate limit (decide.rate_exceeded), or an address no automatic
        answer goes to (decide.unanswerable_sender)."""
        session.flush()
        if self.over_rate(session, mail.from_addr):
            log.warning("<%s> %s: %s is over the rate limit, no %s notification", mail.message_id, ticket.number,
                        mail.from_addr, event)
            return
        unanswerable = unanswerable_sender(mail)
        if unanswerable:
            log.info("<%s> %s: no %s notification: %s", mail.message_id, ticket.number, event, unanswerable)
            return
        queue(session, self.notices, ticket, event, in_reply_to=mail.message_id or None,
              auto_submitted="auto-replied", **kwargs)

    def write_bounce(self, session: Session, bounce: BounceEffects) -> None:
        """What a delivery report does to the mails of ours it names (decide.bounce)."""
        for row in session.exec(select(Outbox).where(col(Outbox.id).in_(bounce.outbox_ids)).order_by(Outbox.id)):
            row.last_answer = bounce.answer
            if row.id in bounce.failed:
                row.state = FAILED
            session.add(row)
        for address in bounce.hard_bounced:
            person = session.exec(select(Person).where(Person.email == address)).first()
            if person is not None:
                person.hard_bounces += 1
                if undeliverable(person.hard_bounces, self.config.outbound.undeliverable_after):
                    person.undeliverable = True
                session.add(person)

    def over_rate(self, session: Session, sender: str) -> bool:
        """Whether ``sender`` is over the rate limit (decide.rate_exceeded), counting their
        mails of the last [limits] rate_window seconds (at most rate_limit + 1)."""
        since = utcnow() - timedelta(seconds=self.config.limits.rate_window)
        session.flush()  # the mail being processed counts (Core below does not autoflush)
        recent = RECENT_FROM.rows(
            session, {"b_from": sender, "b_since": since, "b_limit": self.config.limits.rate_limit + 1})
        # The mail being processed is already among them.
        return rate_exceeded(len(recent), self.config.limits.rate_limit)

    @staticmethod
    def mark(session: Session, inbound: InboundMessage, outcome: Outcome, state: str) -> Outcome:
        """The inbound row's new state, in the caller's transaction (a Core UPDATE: the
        unit of work's flush of the one row cost more than the statement)."""
        session.flush()  # the mail's own rows first, so the statement order stays that of the work
        MARK.execute(session, {"b_id": inbound.id, "state": state, "outcome": outcome.outcome,
                                             "ticket_number": outcome.ticket, "detail": outcome.detail,
                                             "processed_at": utcnow()})
        return outcome
