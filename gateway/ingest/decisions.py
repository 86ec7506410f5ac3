"""Single-use approval decisions (issue 19): an approval request is approved or refused
once, whatever instance reads the answer.

Two answers to one request read at once by two instances (the approver's mail delivered
twice through two relays, an "approved" and a "refused" from two approvers) each found
the ticket in Approval and each decided it: two status changes, two confirmations.  A
decision now makes an ``approvaldecision`` row keyed by (ticket, request) in the
transaction that applies it.  The second transaction's insert waits for the first and
then fails on the key: it is rolled back whole and its mail taken again, when the ticket
has left Approval and the answer is read as what it now is (a comment).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlmodel import Session

from store.models import ApprovalDecision, Outbox, Ticket


def open_request(session: Session, ticket: Ticket) -> int:
    """The number of the ticket's open approval request: its latest mailed one (0: none
    was), unless that one is decided already: the ticket came back to Approval without a
    new request mailed (nobody could be asked), and the question open now takes the
    number after every one used, so that its answer is not taken for a second decision
    of the first."""
    conn = session.connection()
    latest = int(conn.execute(select(func.max(Outbox.approval_request))
                              .where(Outbox.ticket_id == ticket.id, Outbox.event == "approval")).scalar() or 0)
    decided = conn.execute(select(func.max(ApprovalDecision.request))
                           .where(ApprovalDecision.ticket_id == ticket.id)).scalar()
    return latest if decided is None or decided < latest else int(decided) + 1


def spend(session: Session, ticket: Ticket, decision: str, inbound_id: int | None) -> None:
    """Record that ``ticket``'s open approval request is decided (``approve`` or
    ``refuse``), in the caller's transaction; flushed now, so that a concurrent decision
    of the same request makes this transaction fail (IntegrityError) before anything
    else of it is kept."""
    session.add(ApprovalDecision(ticket_id=ticket.id, request=open_request(session, ticket), decision=decision,
                                 inbound_id=inbound_id))
    session.flush()
