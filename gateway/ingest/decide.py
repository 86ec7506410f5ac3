"""Pure decisions: given a parsed mail and what the store knows about it, what to do.

Nothing here touches the database or the network; ``gateway.ingest.process`` gathers the
facts into a ``Facts`` and applies the ``Decision`` in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ingest.automatic import Automatic
from gateway.ingest.parse import ParsedMail
from gateway.ingest.references import Reference, title_from_subject


@dataclass(frozen=True)
class ThreadHit:
    """A ticket the mail refers to, and how it was found."""

    number: str
    status: str
    via: str  # message-id | token | tag
    sender_allowed: bool


@dataclass(frozen=True)
class Facts:
    process: str
    duplicate_of: str | None  # ticket that already holds this Message-ID
    automatic: Automatic | None
    thread: ThreadHit | None
    reference: Reference | None
    # The sender is a known Person, and the policy for unknown ones (create, reject, quarantine).
    sender_known: bool = True
    unknown_senders: str = "create"


@dataclass(frozen=True)
class NewTicket:
    process: str
    title: str
    reference: Reference | None
    refers_to: str | None = None  # a ticket the sender referred to but may not write into


@dataclass(frozen=True)
class FollowUp:
    number: str
    via: str


@dataclass(frozen=True)
class Ignore:
    outcome: str  # duplicate | auto-reply | bounce | rejected
    detail: str
    ticket: str | None = None


@dataclass(frozen=True)
class QuarantineIt:
    reason: str


Decision = NewTicket | FollowUp | Ignore | QuarantineIt


def decide(mail: ParsedMail, facts: Facts) -> Decision:
    if facts.duplicate_of:
        return Ignore("duplicate", f"Message-ID already on {facts.duplicate_of}", facts.duplicate_of)
    if facts.automatic is not None:
        return Ignore(facts.automatic.outcome, facts.automatic.detail)
    if not mail.from_addr:
        return QuarantineIt("no sender address (From) to answer or to file the ticket under")
    if facts.thread is not None and facts.thread.sender_allowed:
        return FollowUp(facts.thread.number, facts.thread.via)
    # Never answer an unknown sender that the policy refuses: that would be backscatter.
    if not facts.sender_known and facts.unknown_senders == "reject":
        return Ignore("rejected", f"unknown sender {mail.from_addr} (gateway.unknown_senders = reject)")
    if not facts.sender_known and facts.unknown_senders == "quarantine":
        return QuarantineIt(f"unknown sender {mail.from_addr} (gateway.unknown_senders = quarantine)")
    refers_to = facts.thread.number if facts.thread is not None else None
    return NewTicket(facts.process, title_from_subject(mail.subject), facts.reference, refers_to)
