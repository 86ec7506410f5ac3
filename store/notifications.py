"""Notifications as the store keeps them: which mail, for whom, about what.

A customer's mail (gateway.ingest) or an agent's action (gateway.actions) decides that
the people of a ticket are to be told something; ``queue`` writes that decision into the
outbox in the caller's transaction, so the change and its mail land together or not at
all.  Rendering and sending are gateway.outbound's, later, in the deliverer.

- One row a recipient: the Reporting and the Affected Person, once each, each greeted by
  name in their own copy; never an undeliverable person, never an address that does not
  check (store.addresses.mailbox), and the envelope names that one address and no other.
- The language is the Affected Person's, else their company's, else the config's default
  (manual §1.5), for every copy; dates are shown in each recipient's own time zone.
- Fixed now, not when the mail is rendered: the Message-ID, In-Reply-To and References
  (the ticket's public thread: never a held or internal message), the approval request's
  number, and ``context``, a snapshot of the ticket and of what the template shows, so
  that a mail says what was true when it was decided, however late it is sent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from email.utils import make_msgid
from types import SimpleNamespace
from typing import Any, Callable

from sqlalchemy import func, insert
from sqlmodel import Session, col, select

from store.addresses import InvalidAddress, mailbox
from store.db import Prepared, connection_of
from store.models import ApprovalDecision, Company, Outbox, Person, Ticket, TicketMessage, utcnow
from store.tickets import latest_public_update
from store.vocabulary import FALLBACK_LANGUAGE, LANGUAGES, PENDING

log = logging.getLogger("gateway.outbound")

# References keep the root and the latest ones (RFC 5322 3.6.4: trim from the middle).
MAX_REFERENCES = 20


@dataclass(frozen=True)
class Settings:
    """What queueing needs of the configuration."""

    default_language: str
    message_id_domain: str
    helpdesk_address: str
    # (ticket number, person id, now) -> the recipient's signed link to the ticket on the
    # customers' pages (gateway.tokens.ticket_link); None: mails carry no link.
    ticket_link: Callable[[str, int, datetime], str] | None = None


@dataclass(frozen=True)
class KnownThread:
    """What ``queue`` would otherwise read back from the database, when the caller knows
    it: for a ticket created in the same transaction, its one mail's Message-ID, that
    mail's text as the latest update, and no change linked to it yet."""

    message_ids: tuple[str, ...]
    latest_update: str
    change_number: str = ""


@dataclass(frozen=True)
class Queued:
    """One copy written to the outbox."""

    outbox_id: int
    event: str
    recipient: str
    language: str
    message_id: str


# Snapshots -------------------------------------------------------------------------------
# The fields of a ticket a mail may show, and of the person it is for.
TICKET_FIELDS = ("number", "process", "status", "waiting_reason", "title", "description", "personal_reference",
                 "reference_source", "status_reason", "appointment_at", "appointment_place", "solution",
                 "approval_text", "solved_at", "created_at", "updated_at")
PERSON_FIELDS = ("email", "name", "language", "company", "timezone")


def ticket_snapshot(ticket: Ticket | SimpleNamespace) -> dict:
    return {name: getattr(ticket, name, None) for name in TICKET_FIELDS}


def person_snapshot(person: Person | SimpleNamespace) -> dict:
    return {name: getattr(person, name, None) or "" for name in PERSON_FIELDS}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, Ticket):
        return {"$ticket": _jsonable(ticket_snapshot(value))}
    if isinstance(value, Person):
        return {"$person": _jsonable(person_snapshot(value))}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"a notification's context cannot hold a {type(value).__name__}")


def _revive(obj: dict) -> Any:
    if "$datetime" in obj and len(obj) == 1:
        return datetime.fromisoformat(obj["$datetime"])
    if "$ticket" in obj and len(obj) == 1:
        return SimpleNamespace(**obj["$ticket"])
    if "$person" in obj and len(obj) == 1:
        return SimpleNamespace(**obj["$person"])
    return obj


def dump_context(context: dict) -> str:
    """``context`` as the outbox keeps it: JSON, with times, tickets and persons tagged."""
    return json.dumps(_jsonable(context), ensure_ascii=False, separators=(",", ":"))


def load_context(text: str) -> dict:
    """The context as it was queued: times as aware datetimes, the ticket and the
    recipient (and any ticket or person among the extras) as objects with attributes."""
    data = json.loads(text, object_hook=_revive)
    if isinstance(data.get("ticket"), dict):
        data["ticket"] = SimpleNamespace(**data["ticket"])
    if isinstance(data.get("recipient"), dict):
        data["recipient"] = SimpleNamespace(**data["recipient"])
    return data


# Who, and in which language --------------------------------------------------------------
def language_for(session: Session | None, affected: Person, default: str) -> str:
    """The Affected Person's language, else their company's (looked up in ``session``),
    else ``default`` (the config's), else English."""
    candidates = [affected.language]
    if session is not None and affected.company:
        company = session.get(Company, affected.company)
        if company is not None:
            candidates.append(company.language)
    candidates.append(default)
    return next((lang for lang in candidates if lang in LANGUAGES), FALLBACK_LANGUAGE)


def recipients_for(session: Session, ticket: Ticket, only: list[Person] | None = None) -> list[Person]:
    """The Reporting and the Affected Person (or ``only``), once each."""
    if only is None:
        only = [session.get(Person, ticket.reporting_person_id), session.get(Person, ticket.affected_person_id)]
    people: list[Person] = []
    for person in only:
        if person is not None and all(person.id != p.id for p in people):
            people.append(person)
    return people


def envelope_address(address: str) -> str | None:
    """The address a copy goes to, checked; None (and a warning) for one that does not
    check: such a person gets no mail rather than a mail to somewhere else."""
    try:
        return mailbox(address).addr_spec
    except InvalidAddress as exc:
        log.warning("not mailing %r: %s", address, exc)
        return None


# The thread ------------------------------------------------------------------------------
def thread_references(thread: list[str], limit: int = MAX_REFERENCES) -> tuple[str, ...]:
    """The References of the next mail of a ticket: the root and the latest ones.

    Keeping the first (RFC 5322 3.6.4: trim from the middle) lets a client that saw only
    the start of the conversation still attach the mail to it."""
    ids = [m for m in thread if m]
    if len(ids) <= limit:
        return tuple(ids)
    return (ids[0], *ids[len(ids) - (limit - 1):])


def public_thread(session: Session, ticket: Ticket) -> list[str]:
    """The Message-IDs of the ticket's mails that its people saw, oldest first: the mails
    received and accepted on it and the mails sent; never a held (internal) mail, whose
    headers nobody vouched for, nor a note."""
    return list(session.exec(
        select(TicketMessage.message_id)
        .where(TicketMessage.ticket_id == ticket.id, col(TicketMessage.message_id).is_not(None),
               col(TicketMessage.internal).is_(False), col(TicketMessage.direction).in_(("in", "out")))
        .order_by(col(TicketMessage.created_at), col(TicketMessage.id))))


def _next_request(session: Session, ticket: Ticket) -> int:
    """The number of a new approval request of ``ticket``: 1, 2, ... (its reply address
    names it, gateway.tokens)."""
    last = session.exec(select(func.max(Outbox.approval_request)).where(Outbox.ticket_id == ticket.id,
                                                                        Outbox.event == "approval")).one()
    # A request decided without being mailed (gateway.ingest.decisions) took a number too.
    decided = session.exec(select(func.max(ApprovalDecision.request))
                           .where(ApprovalDecision.ticket_id == ticket.id)).one()
    return max(last or 0, decided or 0) + 1


# Writing ---------------------------------------------------------------------------------
_INSERT_OUTBOX = Prepared(insert(Outbox.__table__).returning(Outbox.__table__.c.id))
_INSERT_MESSAGE = Prepared(insert(TicketMessage.__table__))


def row_values(settings: Settings, *, event: str, ticket: Ticket | None, recipient: Person | SimpleNamespace,
               address: str, language: str, thread: list[str], in_reply_to: str | None, auto_submitted: str,
               latest_update: str = "", change_number: str = "", approval_request: int | None = None,
               extra: dict | None = None, now: datetime) -> dict:
    """The outbox row of one copy, as values: pure, so a preview builds the same row the
    outbox would hold (gateway templates preview)."""
    references = thread_references(thread)
    if in_reply_to is None and references:
        in_reply_to = references[-1]
    context = {
        "ticket": ticket_snapshot(ticket) if ticket is not None else None,
        "recipient": person_snapshot(recipient),
        "latest_update": latest_update,
        "change_number": change_number,
        "approval_request": approval_request,
        "extra": extra or {},
        # The recipient's own link to the ticket (signed for them, dated from now).
        "link": (settings.ticket_link(ticket.number, recipient.id, now)
                 if settings.ticket_link is not None and ticket is not None and getattr(recipient, "id", None)
                 else ""),
    }
    return dict(
        ticket_id=getattr(ticket, "id", None), event=event, recipient=address,
        recipient_name=getattr(recipient, "name", "") or "", person_id=getattr(recipient, "id", None) or None,
        language=language, subject="", message_id=make_msgid(domain=settings.message_id_domain)[1:-1],
        in_reply_to=in_reply_to, thread_ids=json.dumps(list(references)), auto_submitted=auto_submitted,
        context=dump_context(context), raw=None, approval_request=approval_request, state=PENDING, attempts=0,
        next_attempt_at=now, last_answer=None, created_at=now, sent_at=None, claimed_by=None, claimed_until=None)


def plan(session: Session, settings: Settings, ticket: Ticket, event: str, *, in_reply_to: str | None = None,
         auto_submitted: str = "auto-generated", extra: dict | None = None, only: list[Person] | None = None,
         now: datetime | None = None, known: KnownThread | None = None) -> list[dict]:
    """The rows ``queue`` would write for ``event`` about ``ticket``, one a recipient,
    without writing them (reads only)."""
    now = now or utcnow()
    people = recipients_for(session, ticket, only)
    skipped = [p.email for p in people if p.undeliverable]
    if skipped:
        log.info("%s: %s not mailed to undeliverable %s", ticket.number, event, ", ".join(skipped))
    people = [(p, envelope_address(p.email)) for p in people if not p.undeliverable]
    people = [(p, address) for p, address in people if address is not None]
    if not people:
        return []
    affected = session.get(Person, ticket.affected_person_id)
    language = language_for(session, affected or people[0][0], settings.default_language)
    if known is not None:
        change, latest, thread = known.change_number, known.latest_update, list(known.message_ids)
    else:
        change = session.exec(select(Ticket.number).where(Ticket.linked_ticket_id == ticket.id,
                                                          Ticket.process == "change")
                              .order_by(col(Ticket.id).desc())).first() if ticket.id is not None else None
        latest = latest_public_update(session, ticket)
        thread = public_thread(session, ticket) if ticket.id is not None else []
    if in_reply_to and in_reply_to not in thread:
        # The mail being answered is not (yet) a message of the ticket: still chain to it.
        thread.append(in_reply_to)
    request = _next_request(session, ticket) if event == "approval" and ticket.id is not None else None
    return [row_values(settings, event=event, ticket=ticket, recipient=person, address=address, language=language,
                       thread=thread, in_reply_to=in_reply_to, auto_submitted=auto_submitted,
                       latest_update=latest or "", change_number=change or "", approval_request=request,
                       extra=extra, now=now)
            for person, address in people]


def queue(session: Session, settings: Settings, ticket: Ticket, event: str, *, in_reply_to: str | None = None,
          auto_submitted: str = "auto-generated", extra: dict | None = None, only: list[Person] | None = None,
          now: datetime | None = None, known: KnownThread | None = None) -> list[Queued]:
    """Queue ``event`` about ``ticket`` in the caller's transaction (not committed here):
    an outbox row and a sent message on the ticket for each recipient.  Returns what was
    queued; empty when nobody can be mailed."""
    rows = plan(session, settings, ticket, event, in_reply_to=in_reply_to, auto_submitted=auto_submitted,
                extra=extra, only=only, now=now, known=known)
    queued = [_write(session, settings, values) for values in rows]
    for q in queued:
        log.info("%s: %s mail <%s> queued for %s in %s", ticket.number, event, q.message_id, q.recipient, q.language)
    return queued


def notice_values(settings: Settings, event: str, *, to: tuple[str, str], language: str,
                  in_reply_to: str | None = None, extra: dict | None = None, now: datetime | None = None) -> dict | None:
    """The outbox row of a mail about no ticket (``too-large``: a mail the desk could not
    read) to ``to`` = (name, address), in ``language``, as values (pure, as ``row_values``);
    None when the address does not check.

    It answers the sender's mail (In-Reply-To, ``Auto-Submitted: auto-replied``) and its
    replies go to the plain helpdesk address: no reply token, no [number] tag, no message
    on a ticket."""
    name, address = to
    checked = envelope_address(address)
    if checked is None:
        return None
    language = language if language in LANGUAGES else FALLBACK_LANGUAGE
    recipient = SimpleNamespace(id=None, email=checked, name=name or "", language=language, company="",
                                timezone="")
    return row_values(settings, event=event, ticket=None, recipient=recipient, address=checked,
                      language=language, thread=[in_reply_to] if in_reply_to else [], in_reply_to=in_reply_to,
                      auto_submitted="auto-replied", extra=extra, now=now or utcnow())


def queue_notice(session: Session, settings: Settings, event: str, *, to: tuple[str, str], language: str,
                 in_reply_to: str | None = None, extra: dict | None = None,
                 now: datetime | None = None) -> Queued | None:
    """``notice_values``, written to the outbox in the caller's transaction; None when the
    address does not check."""
    values = notice_values(settings, event, to=to, language=language, in_reply_to=in_reply_to, extra=extra, now=now)
    if values is None:
        return None
    queued = _write(session, settings, values)
    log.info("%s mail <%s> queued for %s in %s", event, queued.message_id, queued.recipient, queued.language)
    return queued


def _write(session: Session, settings: Settings, values: dict) -> Queued:
    # Core inserts on the session's connection, in its transaction: the unit of work's
    # flush for these two rows cost more than the statements.
    conn = connection_of(session)
    outbox_id = _INSERT_OUTBOX.execute(conn, values)
    if values["ticket_id"] is not None:
        _INSERT_MESSAGE.execute(conn, dict(
            ticket_id=values["ticket_id"], direction="out", internal=False, from_addr=settings.helpdesk_address,
            to_addrs=values["recipient"], cc_addrs="", subject="", body_text="", body_full=None, body_html=None,
            message_id=values["message_id"], inbound_id=None, outbox_id=outbox_id, created_at=values["created_at"]))
    return Queued(outbox_id, values["event"], values["recipient"], values["language"], values["message_id"])
