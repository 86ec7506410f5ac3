"""What a customer does on the customers' pages (gateway.http.portal), and who may see what.

The rules of manual §2 and §3, once, for the pages (and any other face that acts for a
customer):

- **Who sees a ticket**: its Reporting and its Affected Person, and whoever an operator
  granted the company (or division) of either (``grant``, ``gateway persons grant``).
  Everything else, an existing ticket included, is ``NotFound``: guessing a number tells
  nothing.
- **Sign-in links**: asked for by address; a mail goes (through the outbox) only to a
  known, deliverable address, under the per-address limit; the client is refused past
  its own limit.  Each link is single use and short-lived; only its hash is kept.
- **A comment** reaches the ticket as a mail reply does: a public message from the
  customer, with its attachments (the mail's limits and file-name cleaning), and the
  same effect: a ticket Waiting for the customer resumes (In progress).
- **Solved** (§2.2): an assessment (level 1-5, a comment), or "not solved", which needs
  a comment and sets the ticket back to In progress.
- **Create** (§3): an Incident or a Service Request, title and description mandatory,
  with the same confirmation mail as every new ticket (gateway.actions.tickets).

Every write leaves an audit entry (store.audit) as ``customer:<email>``, with the client.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from gateway.errors import NotFound, Refused
from gateway.ingest.parse import clean_filename
from store import audit, lifecycle
from store.addresses import key as address_key
from store.db import session_for
from store.lifecycle import LifecycleError, StatusData
from store.models import (Assessment, Attachment, Person, PortalGrant, SignInToken, Ticket, TicketMessage, aware,
                          utcnow)
from store.notifications import queue_notice
from store.tickets import change_status, find_person

log = logging.getLogger("gateway.portal")

# The processes a customer may open on the web (§3): a Change is the provider's to open.
WEB_PROCESSES = ("incident", "service-request")
LEVELS = (1, 2, 3, 4, 5)


class RateLimited(Refused):
    """Too many sign-in requests from one client: try again later."""


@dataclass(frozen=True)
class Upload:
    """A file a customer sent with a form."""

    filename: str
    content_type: str
    data: bytes


# Who sees what ------------------------------------------------------------------------------
def granted_companies(session: Session, person: Person) -> list[str]:
    """The companies (or divisions) whose tickets ``person`` may see besides their own."""
    names = list(session.exec(select(PortalGrant.company).where(PortalGrant.person_id == person.id)))
    if person.company_access and person.company:
        names.append(person.company)
    return sorted(set(names))


def _visible(session: Session, person: Person):
    """The condition on Ticket of the tickets ``person`` may see."""
    own = or_(Ticket.reporting_person_id == person.id, Ticket.affected_person_id == person.id)
    companies = granted_companies(session, person)
    if not companies:
        return own
    members = select(Person.id).where(col(Person.company).in_(companies))
    return or_(own, col(Ticket.reporting_person_id).in_(members), col(Ticket.affected_person_id).in_(members))


def visible_ticket(session: Session, person: Person, number: str) -> Ticket:
    """Ticket ``number`` if ``person`` may see it; NotFound otherwise, as for one that
    does not exist."""
    ticket = session.exec(select(Ticket).where(Ticket.number == (number or "").strip().upper(),
                                               _visible(session, person))).first()
    if ticket is None:
        raise NotFound(f"no ticket {number}")
    return ticket


def my_tickets(session: Session, person: Person, *, text: str = "", statuses: tuple[str, ...] = (),
               include_closed: bool = False, limit: int = 200) -> list[Ticket]:
    """The tickets ``person`` may see, newest change first: open ones unless
    ``include_closed``; with ``text``, those whose number, title, personal reference,
    Reporting or Affected Person's name or address holds it, or whose status is one of
    ``statuses`` (the statuses whose name, in the customer's language, the text names)."""
    query = select(Ticket).where(_visible(session, person))
    text = " ".join((text or "").split())
    if text:
        like = f"%{text.lower()}%"
        people = select(Person.id).where(or_(func.lower(Person.name).like(like), func.lower(Person.email).like(like)))
        found = [func.lower(Ticket.number).like(like), func.lower(Ticket.title).like(like),
                 func.lower(func.coalesce(Ticket.personal_reference, "")).like(like),
                 col(Ticket.reporting_person_id).in_(people), col(Ticket.affected_person_id).in_(people)]
        if statuses:
            found.append(col(Ticket.status).in_(statuses))
        query = query.where(or_(*found))
    if not include_closed and not (text and statuses and lifecycle.CLOSED in statuses):
        query = query.where(Ticket.status != lifecycle.CLOSED)
    return list(session.exec(query.order_by(col(Ticket.updated_at).desc(), col(Ticket.id).desc()).limit(limit)))


def public_messages(session: Session, ticket: Ticket) -> list[tuple[TicketMessage, list[Attachment]]]:
    """The ticket's messages a customer sees, oldest first, with their attachments: the
    mails received and accepted on it, the public comments, the mails an agent sent;
    never an internal note, a held mail, or a notification."""
    rows = list(session.exec(select(TicketMessage).where(TicketMessage.ticket_id == ticket.id,
                                                         col(TicketMessage.internal).is_(False))
                             .order_by(col(TicketMessage.created_at), col(TicketMessage.id))))
    # Our notifications are left out: the customer has them, and each holds its
    # recipient's own signed link, which nobody else who sees the ticket may read.
    rows = [m for m in rows if m.direction in ("in", "note")
            or (m.direction == "out" and m.outbox_id is None and m.body_text.strip())]
    ids = [m.id for m in rows]
    attachments: dict[int, list[Attachment]] = {i: [] for i in ids}
    if ids:
        for att in session.exec(select(Attachment).where(col(Attachment.message_id).in_(ids),
                                                         col(Attachment.inline).is_(False))
                                .order_by(col(Attachment.id))):
            attachments[att.message_id].append(att)
    return [(m, attachments[m.id]) for m in rows]


def visible_attachment(session: Session, person: Person, number: str, attachment_id: int) -> Attachment:
    """Attachment ``attachment_id`` of ticket ``number`` when ``person`` may see both and
    it belongs to a public message of that ticket; NotFound otherwise."""
    ticket = visible_ticket(session, person, number)
    att = session.get(Attachment, attachment_id)
    message = session.get(TicketMessage, att.message_id) if att is not None else None
    if message is None or message.ticket_id != ticket.id or message.internal:
        raise NotFound(f"no attachment {attachment_id} on {ticket.number}")
    return att


def assessments(session: Session, ticket: Ticket) -> list[Assessment]:
    return list(session.exec(select(Assessment).where(Assessment.ticket_id == ticket.id)
                             .order_by(col(Assessment.created_at), col(Assessment.id))))


# Grants -------------------------------------------------------------------------------------
def grant(app, email: str, company: str, *, by: str = "cli") -> bool:
    """Let the person ``email`` see every ticket of ``company``; False if they already
    could.  NotFound when no such person exists."""
    company = (company or "").strip()
    if not company:
        raise Refused("name the company or division to grant")
    with session_for(app.engine) as session:
        person = find_person(session, email)
        if person is None:
            raise NotFound(f"no person {email}")
        exists = session.exec(select(PortalGrant).where(PortalGrant.person_id == person.id,
                                                        PortalGrant.company == company)).first()
        if exists is not None:
            return False
        session.add(PortalGrant(person_id=person.id, company=company, granted_by=by))
        audit.record(session, by, "person.grant", person.email, after={"company": company})
        session.commit()
        return True


def revoke(app, email: str, company: str, *, by: str = "cli") -> bool:
    """Take back a grant; False if there was none."""
    with session_for(app.engine) as session:
        person = find_person(session, email)
        if person is None:
            raise NotFound(f"no person {email}")
        found = session.exec(select(PortalGrant).where(PortalGrant.person_id == person.id,
                                                       PortalGrant.company == (company or "").strip())).first()
        if found is None:
            return False
        session.delete(found)
        audit.record(session, by, "person.revoke", person.email, before={"company": found.company})
        session.commit()
        return True


# Sign-in links ------------------------------------------------------------------------------
def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def request_sign_in(app, email: str, *, client: str, link_for, now: datetime | None = None) -> bool:
    """Someone asks for a sign-in link for ``email`` from ``client``.  Raises RateLimited
    when the client asked too often; otherwise records the request and, when ``email``
    is a known, deliverable person's and under its own limit, queues the mail with
    ``link_for(token)``.  Returns whether a mail was queued (never shown to the client:
    the page answers the same either way)."""
    portal = app.config.portal
    now = now or utcnow()
    since = now - timedelta(seconds=portal.sign_in_window)
    address = address_key(email or "")
    with session_for(app.engine) as session:
        by_client = session.exec(select(func.count()).select_from(SignInToken)
                                 .where(SignInToken.client == client, SignInToken.created_at >= since)).one()
        if by_client >= portal.sign_ins_per_client:
            raise RateLimited("too many sign-in requests from this address: try again later")
        by_address = session.exec(select(func.count()).select_from(SignInToken)
                                  .where(SignInToken.email == address, SignInToken.created_at >= since)).one()
        person = find_person(session, address) if "@" in address else None
        token = secrets.token_urlsafe(32)
        send = person is not None and not person.undeliverable and by_address < portal.sign_ins_per_address
        session.add(SignInToken(token_hash=_hash(token), email=address[:320], person_id=person.id if send else None,
                                client=client, created_at=now,
                                expires_at=now + timedelta(minutes=portal.sign_in_minutes)))
        queued = None
        if send:
            from store.notifications import language_for

            queued = queue_notice(session, app.notices, "sign-in", to=(person.name, person.email),
                                  language=language_for(session, person, app.config.gateway.default_language),
                                  extra={"sign_in_link": link_for(token), "minutes": portal.sign_in_minutes},
                                  now=now)
        session.commit()
    log.info("sign-in asked for %s from %s: %s", address, client,
             "link mailed" if queued else "no mail (unknown, undeliverable or over the limit)")
    return queued is not None


def sign_in_state(app, token: str, now: datetime | None = None) -> bool:
    """Whether ``token`` would sign someone in now (reads only: a page may say so)."""
    now = now or utcnow()
    with session_for(app.engine) as session:
        row = session.exec(select(SignInToken).where(SignInToken.token_hash == _hash(token))).first()
        return (row is not None and row.person_id is not None and row.used_at is None
                and aware(row.expires_at) > now)


def use_sign_in(app, token: str, *, client: str = "", now: datetime | None = None) -> int:
    """Spend the sign-in link ``token``: the id of the person it signs in.  Refused when
    it is unknown, used or out of date.  One statement marks it used, so two tabs (or
    two instances) posting the same link at once sign in once."""
    now = now or utcnow()
    with session_for(app.engine) as session:
        table = SignInToken.__table__
        done = session.connection().execute(
            update(table).where(table.c.token_hash == _hash(token), table.c.used_at.is_(None),
                               table.c.person_id.is_not(None), table.c.expires_at > now)
            .values(used_at=now))
        if done.rowcount != 1:
            raise Refused("this sign-in link is not valid any more: it was used, or it is out of date")
        row = session.exec(select(SignInToken).where(SignInToken.token_hash == _hash(token))).one()
        person = session.get(Person, row.person_id)
        audit.record(session, f"customer:{person.email}", "portal.sign-in", person.email, client=client, at=now)
        session.commit()
        return person.id


# What a customer does to a ticket -------------------------------------------------------------
_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")


def checked_uploads(app, uploads: list[Upload]) -> list[Upload]:
    """The files with a name, their names cleaned as a mail's are (gateway.ingest.parse),
    within the mail's limits (their total under [smtp] max_message_size, at most
    [limits] max_parts); Refused otherwise."""
    files = [u for u in uploads if u.filename or u.data]
    if len(files) > app.config.limits.max_parts:
        raise Refused(f"at most {app.config.limits.max_parts} files at once")
    total = sum(len(u.data) for u in files)
    if total > app.config.smtp.max_message_size:
        raise Refused(f"the files are too large together ({total} bytes; at most "
                      f"{app.config.smtp.max_message_size})")
    cleaned = []
    for u in files:
        kind = (u.content_type or "").split(";")[0].strip().lower()
        cleaned.append(Upload(clean_filename(u.filename or ""), kind if _CONTENT_TYPE.match(kind)
                              else "application/octet-stream", u.data))
    return cleaned


def _attach(app, session: Session, message_id: int, uploads: list[Upload]) -> None:
    for u in uploads:
        session.add(Attachment(message_id=message_id, filename=u.filename, content_type=u.content_type,
                               size=len(u.data), sha256=app.blobs.put(u.data)))


def _customer(session: Session, person_id: int) -> Person:
    person = session.get(Person, person_id)
    if person is None:
        raise NotFound("no such person")
    return person


def comment(app, person_id: int, number: str, text: str, uploads: list[Upload] = (), *, client: str = "",
            now: datetime | None = None) -> str:
    """Add the customer's comment (and files) to ticket ``number``, as a mail reply does:
    a ticket Waiting for the customer resumes.  Returns the ticket's status after it."""
    text = (text or "").strip()
    uploads = checked_uploads(app, list(uploads))
    if not text and not uploads:
        raise Refused("write a comment or add a file")
    now = now or utcnow()
    with session_for(app.engine) as session:
        person = _customer(session, person_id)
        number = visible_ticket(session, person, number).number
        ticket = session.exec(select(Ticket).where(Ticket.number == number).with_for_update()).one()
        if ticket.status == lifecycle.CLOSED:
            raise Refused(f"{ticket.number} is Closed: a new problem needs a new ticket")
        if ticket.status == lifecycle.SOLVED:
            raise Refused(f"{ticket.number} is Solved: say whether it is solved, below")
        message = TicketMessage(ticket_id=ticket.id, direction="in", internal=False, from_addr=person.email,
                                subject="(web)", body_text=text, created_at=now)
        session.add(message)
        session.flush()
        _attach(app, session, message.id, uploads)
        ticket.updated_at = now
        session.add(ticket)
        if ticket.status == lifecycle.WAITING and ticket.waiting_reason in lifecycle.CUSTOMER_WAITING_REASONS:
            # The same as a mail reply's RESUME (gateway.ingest.decide): the customer answered.
            change_status(session, ticket, lifecycle.IN_PROGRESS,
                          StatusData(note=f"The customer answered on the web ({person.email}); the work resumes."),
                          by=person.email, now=now)
        audit.record(session, f"customer:{person.email}", "ticket.comment", ticket.number,
                     after={"files": [u.filename for u in uploads], "status": ticket.status}, client=client, at=now)
        session.commit()
        log.info("%s: comment by %s on the web (%d files)", ticket.number, person.email, len(uploads),
                 extra={"ticket": ticket.number})
        return ticket.status


def assess(app, person_id: int, number: str, *, solved: bool, level: int | None, text: str, client: str = "",
           now: datetime | None = None) -> str:
    """The customer's assessment of Solved ticket ``number`` (§2.2): solved with a level
    1-5 and a comment, or not solved, which needs a comment and sets the ticket back to
    In progress (the comment is the reopening's mandatory note).  Returns the status."""
    from gateway.actions.tickets import _move

    text = (text or "").strip()
    now = now or utcnow()
    if solved and level not in LEVELS:
        raise Refused("choose a satisfaction level from 1 to 5")
    if not solved and not text:
        raise Refused("say in a comment what is still wrong: a ticket that is not solved cannot be reopened "
                      "without one")
    with session_for(app.engine) as session:
        person = _customer(session, person_id)
        number = visible_ticket(session, person, number).number
        ticket = session.exec(select(Ticket).where(Ticket.number == number).with_for_update()).one()
        if ticket.status != lifecycle.SOLVED:
            raise Refused(f"{ticket.number} is not Solved: there is nothing to assess")
        session.add(Assessment(ticket_id=ticket.id, person_id=person.id, solved=solved,
                               level=level if solved else None, comment=text, created_at=now))
        if not solved:
            try:
                _move(app, session, ticket, lifecycle.IN_PROGRESS, StatusData(note=text), by=person.email, now=now)
            except LifecycleError as exc:
                raise Refused(str(exc)) from None
        else:
            ticket.updated_at = now
            session.add(ticket)
        audit.record(session, f"customer:{person.email}", "ticket.assess", ticket.number,
                     after={"solved": solved, "level": level if solved else None}, client=client, at=now)
        session.commit()
        return ticket.status


def create(app, person_id: int, *, process: str, title: str, description: str, reference: str = "",
           uploads: list[Upload] = (), client: str = "", now: datetime | None = None) -> str:
    """A new Incident or Service Request from the web (§3); the customer is its Reporting
    and Affected Person, and gets the same confirmation mail.  Returns its number."""
    from gateway.actions.tickets import create_ticket

    if process not in WEB_PROCESSES:
        raise Refused("choose an Incident or a Service Request")
    if not (title or "").strip():
        raise Refused("a ticket needs a title")
    if not (description or "").strip():
        raise Refused("a ticket needs a description")
    uploads = checked_uploads(app, list(uploads))
    with session_for(app.engine) as session:
        email = _customer(session, person_id).email

    def attach(session: Session, ticket: Ticket) -> None:
        # The description as the customer's first message, holding their files.
        message = TicketMessage(ticket_id=ticket.id, direction="in", internal=False, from_addr=email,
                                subject="(web)", body_text=description.strip(), created_at=ticket.created_at)
        session.add(message)
        session.flush()
        _attach(app, session, message.id, uploads)
        audit.record(session, f"customer:{email}", "ticket.create", ticket.number,
                     after={"process": process, "files": [u.filename for u in uploads]}, client=client)

    try:
        done = create_ticket(app, process=process, reporter=email, title=title, description=description,
                             reference=reference, by=email, now=now, within=attach)
    except LifecycleError as exc:
        raise Refused(str(exc)) from None
    return done.number
