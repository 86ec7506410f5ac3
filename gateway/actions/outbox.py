"""Notifications: send again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.errors import Refused
from gateway.outbound.outbox import requeue


@dataclass(frozen=True)
class Retried:
    """The notifications made pending again, and the ids asked for that are none."""

    ids: list[int]
    missing: list[int]


def retry(app, ids: list[int] | None = None, *, failed: bool = False, now: datetime | None = None) -> Retried:
    """Make notifications pending and due now again, the give-up clock restarted: the
    mails ``ids`` (pending, failed, or sent: an operator may want a copy sent again), or
    every failed one (``failed``).  An id that names no notification is reported, the
    others are sent again."""
    if not failed and not ids:
        raise Refused("name the notifications to send again (ids) or ask for every failed one")
    done = requeue(app.engine, None if failed else list(ids or []), failed=failed, now=now)
    return Retried(done, [] if failed else sorted(set(ids or []) - set(done)))
