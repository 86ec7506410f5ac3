"""Which ticket a mail answers, and whether its sender may write into that ticket.

Finding the ticket, in this order (the first key that names a ticket wins):

1. ``In-Reply-To``, then ``References`` from the newest: a Message-ID that the gateway sent
   or received on a ticket.
2. A signed reply address (``helpdesk+INC-000001.<token>@…``) among the envelope
   recipients, To and Cc; a token that does not verify counts for nothing.
3. The subject tag ``[INC-000001]``, whatever prefixes mail programs put before it.

The personal reference ``##…##`` is not a thread key: two customers may use the same one.

Every key can be copied by someone else (a forwarded notification, a guessed number, a
References header pasted from another mail), so finding a ticket proves nothing about the
sender.  ``permission`` then says whether the sender may write into it, from facts the
gateway trusts only: the Reporting or Affected Person, someone granted access to their
company's tickets, the sender of a mail accepted publicly on the ticket, an address the
gateway itself mailed on it, and the To and Cc of an accepted mail whose From our MTA
authenticated (DMARC pass).  Never the headers of a mail it held, quarantined or ignored:
a forged mail kept for the agents must not enrol its Cc.  Everyone else gets a ticket of
their own (``gateway.ingest.decide``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterator

from sqlalchemy import bindparam
from sqlmodel import Session, select

from gateway.ingest.parse import ParsedMail
from gateway.ingest.references import ticket_tags
from gateway.tokens import Secrets, marked_addresses, verified_reply
from store.addresses import all_addresses, key as address_key, strip_tag
from store.db import Prepared
from store.models import Person, Ticket, TicketMessage
from store.tickets import find_ticket_by_number, load_row

# The ticket of a mail on its thread, as an id (a statement built once, run through
# store.db.Prepared); the ticket itself comes from the session (load_row).
TICKET_ID_BY_MESSAGE_ID = Prepared(select(TicketMessage.__table__.c.ticket_id)
                                   .where(TicketMessage.__table__.c.message_id == bindparam("b_mid"),
                                          TicketMessage.__table__.c.direction != "note")
                                   .order_by(TicketMessage.__table__.c.id.desc()).limit(1))

log = logging.getLogger("gateway.ingest")

# A References header can be long; a real thread never needs more than its newest ids.
MAX_REFERENCES = 50


@dataclass(frozen=True)
class Permission:
    allowed: bool
    approver: bool  # Reporting or Affected Person: may approve or refuse by mail
    why: str  # reporting | affected | thread | company | own | stranger


def _ticket_by_number(session: Session, number: str) -> Ticket | None:
    return find_ticket_by_number(session, number)


def _ticket_by_message_id(session: Session, message_id: str) -> Ticket | None:
    # Mails that are notes of a stranger's new ticket carry no thread; only mails that
    # were on a ticket's thread (in or out) count.
    return load_row(session, Ticket, TICKET_ID_BY_MESSAGE_ID.execute(session, {"b_mid": message_id}))


def is_own(address: str, own: tuple[str, ...]) -> bool:
    """One of our addresses, with or without a ``+`` tag, in any case of the domain."""
    plain = strip_tag(address)
    return plain in {strip_tag(a) for a in own}


def find_ticket(session: Session, mail: ParsedMail, recipients: list[str], secret: Secrets,
                own: tuple[str, ...]) -> tuple[Ticket, str] | None:
    """The ticket the mail answers and the key that found it (message-id | token | tag)."""
    ids = [m for m in mail.in_reply_to if m] + [m for m in reversed(mail.references) if m][:MAX_REFERENCES]
    seen: set[str] = set()
    for mid in ids:
        if mid in seen:
            continue
        seen.add(mid)
        ticket = _ticket_by_message_id(session, mid)
        if ticket is not None:
            return ticket, "message-id"
    ticket = _ticket_by_token(session, recipients, secret, own)
    if ticket is not None:
        return ticket, "token"
    for number in ticket_tags(mail.subject):
        ticket = _ticket_by_number(session, number)
        if ticket is not None:
            return ticket, "tag"
    # Last: the signed reply address hidden in our HTML, quoted by the reply (a client
    # that dropped the headers, a new subject, the plain address).
    ticket = _ticket_by_token(session, marked_addresses(mail.html or ""), secret, own)
    if ticket is not None:
        return ticket, "marker"
    return None


def signed_replies(addresses: list[str], secret: Secrets, own: tuple[str, ...]) -> Iterator[tuple[str, int | None]]:
    """(ticket number, approval request or None) of each of ``addresses`` that is a
    signed reply address of ours and verifies, in order."""
    for addr in addresses:
        # Only a token on one of our own addresses: the same local part elsewhere is not ours.
        if not is_own(addr, own):
            continue
        found = verified_reply(secret, address_key(addr))
        if found:
            yield found


def _ticket_by_token(session: Session, addresses: list[str], secret: Secrets, own: tuple[str, ...]) -> Ticket | None:
    """The ticket of the first signed reply address among ``addresses`` that verifies."""
    for number, _request in signed_replies(addresses, secret, own):
        ticket = _ticket_by_number(session, number)
        if ticket is not None:
            return ticket
    return None


_DMARC = re.compile(r"(?:^|[;\s])dmarc\s*=\s*([a-z]+)", re.IGNORECASE)


def _our_results(mail: ParsedMail, authserv_id: str) -> list[str]:
    """The DMARC results of the Authentication-Results headers our own MTA
    (``authserv_id``) wrote, topmost first, lower case ("" where it wrote none)."""
    if not authserv_id:
        return []
    found = []
    for value in mail.header_all("authentication-results"):
        served_by = value.split(";", 1)[0].split()
        if not served_by or served_by[0].lower() != authserv_id.lower():
            continue
        m = _DMARC.search(value)
        found.append(m.group(1).lower() if m else "")
    return found


def dmarc_failed(mail: ParsedMail, authserv_id: str) -> bool:
    """True when our own MTA (``authserv_id``) says the mail failed DMARC.

    Only Authentication-Results headers that carry our authserv-id count: anyone can write
    the header, and RFC 8601 §5 has our MTA remove forged ones with its id.  No result, or
    no id configured, is not a failure: the permission check still applies.  A
    ``temperror`` (the DNS did not answer in time) is held as a failure: it is never a pass.
    """
    return any(result in ("fail", "temperror") for result in _our_results(mail, authserv_id))


def dmarc_passed(mail: ParsedMail, authserv_id: str) -> bool:
    """True when our own MTA says the mail's From passed DMARC: the topmost
    Authentication-Results header (the one our MTA adds last, RFC 8601 §5) is ours and
    says pass, and none of ours says fail.  A pass written lower down, by the sender,
    proves nothing."""
    headers = mail.header_all("authentication-results")
    served_by = headers[0].split(";", 1)[0].split() if headers else []
    if not authserv_id or not served_by or served_by[0].lower() != authserv_id.lower():
        return False
    results = _our_results(mail, authserv_id)
    return results[0] == "pass" and "fail" not in results


def permission(session: Session, ticket: Ticket, sender: str, own: tuple[str, ...]) -> Permission:
    """May ``sender`` write into ``ticket``?  Addresses are compared as mail does: the
    display name and the case do not matter.

    The people of the thread are read from the ticket's public messages only: a mail
    kept internal (held for a failed DMARC check, a reply that could not reopen, a read
    receipt, a loop's repeat) grants nobody anything, and the To and Cc of an accepted
    mail count only when our MTA authenticated its From: a spoofed mail that passed for
    the customer's must not enrol the stranger it copies."""
    sender = address_key(sender)
    if not sender:
        return Permission(False, False, "stranger")
    if is_own(sender, own):
        # Our own address, tagged or not: our mail coming back, never a person's reply.
        return Permission(False, False, "own")
    reporter = session.get(Person, ticket.reporting_person_id)
    affected = session.get(Person, ticket.affected_person_id)
    if reporter is not None and address_key(reporter.email) == sender:
        return Permission(True, True, "reporting")
    if affected is not None and address_key(affected.email) == sender:
        return Permission(True, True, "affected")
    public = session.exec(select(TicketMessage.direction, TicketMessage.from_addr, TicketMessage.to_addrs,
                                 TicketMessage.cc_addrs, TicketMessage.authenticated)
                          .where(TicketMessage.ticket_id == ticket.id, TicketMessage.direction != "note",
                                 TicketMessage.internal == False))  # noqa: E712 - SQL, not Python
    for direction, from_addr, to_addrs, cc_addrs, authenticated in public:
        if direction == "out":
            # The person we mailed on it: one address a copy (store.notifications), taken
            # whole (its quoted local part may hold commas); a copy queued before one row
            # a recipient may name several, joined by commas.
            on_thread = [address_key(to_addrs), *all_addresses(to_addrs.replace(",", ", "))]
        else:
            on_thread = [address_key(from_addr)]
            if authenticated:
                on_thread += all_addresses(to_addrs.replace(",", ", "), cc_addrs.replace(",", ", "))
        # Our own addresses on a thread grant nothing to anyone.
        if sender in [a for a in on_thread if not is_own(a, own)]:
            return Permission(True, False, "thread")
    person = session.exec(select(Person).where(Person.email == sender)).first()
    if person is not None and person.company_access and person.company:
        if any(p is not None and p.company == person.company for p in (reporter, affected)):
            return Permission(True, False, "company")
    return Permission(False, False, "stranger")
