"""The statuses of a ticket, the moves allowed between them and what each move needs.

This table is the only place that says which move is allowed; ``check_transition``
is the only place that enforces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

NEW = "New"
CLASSIFICATION = "Classification"
IN_PROGRESS = "In progress"
PLANNED = "Planned"
WAITING = "Waiting"
POSTPONED = "Postponed"
APPROVAL = "Approval"
SOLVED = "Solved"
REJECTED = "Rejected"
CLOSED = "Closed"

STATUSES = (NEW, CLASSIFICATION, IN_PROGRESS, PLANNED, WAITING, POSTPONED, APPROVAL, SOLVED, REJECTED, CLOSED)
OPEN_STATUSES = tuple(s for s in STATUSES if s != CLOSED)

_WORKING = (CLASSIFICATION, IN_PROGRESS, PLANNED, WAITING, POSTPONED, APPROVAL, SOLVED, REJECTED)

TRANSITIONS: dict[str, frozenset[str]] = {
    NEW: frozenset(_WORKING),
    CLASSIFICATION: frozenset(_WORKING) - {CLASSIFICATION},
    POSTPONED: frozenset({CLASSIFICATION, IN_PROGRESS, PLANNED, WAITING, REJECTED, POSTPONED}),
    IN_PROGRESS: frozenset({PLANNED, WAITING, POSTPONED, APPROVAL, SOLVED, REJECTED}),
    PLANNED: frozenset({IN_PROGRESS, PLANNED, WAITING, POSTPONED, SOLVED}),
    WAITING: frozenset({IN_PROGRESS, PLANNED, WAITING, SOLVED, APPROVAL, REJECTED}),
    APPROVAL: frozenset({IN_PROGRESS, PLANNED, WAITING, REJECTED, SOLVED}),
    # Back to In progress only with a comment (manual §2.2); Closed after close_after_days.
    SOLVED: frozenset({IN_PROGRESS, CLOSED}),
    REJECTED: frozenset({CLOSED}),
    # Closed is final (manual §1.4.2).
    CLOSED: frozenset(),
}

WAITING_REASONS = (
    "third-party",
    "customer-feedback",
    "customer-financial-approval",
    "customer-hardware-arrival",
    "customer-hardware-return",
    "final-solution",
    "rfc",
)
# Waiting reasons where the next move is the customer's: their reply resumes the work.
CUSTOMER_WAITING_REASONS = (
    "customer-feedback",
    "customer-financial-approval",
    "customer-hardware-arrival",
    "customer-hardware-return",
)
APPROVAL_PROCESSES = ("service-request", "change")
# The provider may turn an Incident or a complex Service Request into a Non-Standard Change.
CONVERTIBLE_PROCESSES = ("incident", "service-request")

# Statuses whose arrival mails the customer (manual §1.5), and the template event of each.
NOTIFIED = {NEW: "new", REJECTED: "rejected", WAITING: "waiting", POSTPONED: "postponed",
            PLANNED: "planned", SOLVED: "solved", APPROVAL: "approval"}


class LifecycleError(ValueError):
    """A move that the rules refuse; the message says why, in words for an agent."""


class TransitionRefused(LifecycleError):
    """The manual forbids this move from ``current`` to ``target`` (whatever is given)."""

    def __init__(self, message: str, current: str, target: str):
        super().__init__(message)
        self.current, self.target = current, target


class TicketClosed(LifecycleError):
    """The ticket is Closed: nothing is added to it, nothing moves it (manual §1.4.2)."""


class MissingData(LifecycleError):
    """The move is allowed, but ``field`` (a StatusData field) is missing or wrong."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class StatusData:
    """What an agent gives with a move."""

    reason: str | None = None
    waiting_reason: str | None = None
    at: datetime | None = None
    place: str | None = None
    solution: str | None = None
    approval_text: str | None = None
    note: str | None = None


def canonical_status(name: str) -> str:
    """Accept ``in-progress``, ``in progress``, ``IN_PROGRESS``... for ``In progress``."""
    wanted = name.strip().lower().replace("-", " ").replace("_", " ")
    for status in STATUSES:
        if status.lower() == wanted:
            return status
    raise LifecycleError(f"unknown status {name!r}; statuses are: {', '.join(STATUSES)}")


def check_transition(process: str, current: str, target: str, data: StatusData) -> None:
    """Raise LifecycleError unless ``current`` -> ``target`` is allowed with ``data``."""
    if target not in TRANSITIONS.get(current, frozenset()):
        if current == CLOSED:
            raise TransitionRefused(f"cannot move from {current} to {target}: a Closed ticket is final",
                                    current, target)
        raise TransitionRefused(f"cannot move from {current} to {target}: not an allowed transition", current, target)
    if target == REJECTED and not (data.reason or "").strip():
        raise MissingData(f"cannot move from {current} to {target}: a rejection needs a reason", "reason")
    if target == WAITING:
        if not data.waiting_reason:
            raise MissingData(
                f"cannot move from {current} to {target}: a waiting reason is needed ({', '.join(WAITING_REASONS)})", "waiting_reason")
        if data.waiting_reason not in WAITING_REASONS:
            raise MissingData(
                f"cannot move from {current} to {target}: unknown waiting reason {data.waiting_reason!r} "
                f"(one of {', '.join(WAITING_REASONS)})", "waiting_reason")
    if target == POSTPONED and not (data.reason or "").strip():
        raise MissingData(f"cannot move from {current} to {target}: postponing needs a reason", "reason")
    if target == PLANNED:
        if data.at is None:
            raise MissingData(f"cannot move from {current} to {target}: an appointment date and time is needed", "at")
        if data.at.tzinfo is None or data.at.utcoffset() is None:
            raise MissingData(f"cannot move from {current} to {target}: the appointment needs a time zone", "at")
    if target == SOLVED and not (data.solution or "").strip():
        raise MissingData(f"cannot move from {current} to {target}: a solution description is needed", "solution")
    if target == APPROVAL:
        if process not in APPROVAL_PROCESSES:
            raise TransitionRefused(
                f"cannot move from {current} to {target}: only Service Requests and Changes need approval",
                current, target)
        if not (data.approval_text or "").strip():
            raise MissingData(f"cannot move from {current} to {target}: say what is to be approved", "approval_text")
    if current == SOLVED and target == IN_PROGRESS and not (data.note or "").strip():
        raise MissingData(
            f"cannot move from {current} to {target}: reopening a solved ticket needs a comment saying why", "note")
