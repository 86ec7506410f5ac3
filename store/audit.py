"""The audit log: who changed what, when, with the state before and after.

``record`` writes one entry in the caller's transaction, so a change and its entry land
together or not at all.  The faces that act for someone (the HTTP API for a token, the
admin console for an admin, the customer pages for a customer) record every write they
make; an entry never holds a secret (a token is named, never written).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session, col, select

from store.db import Prepared
from store.models import AuditEntry, utcnow

_INSERT = Prepared(insert(AuditEntry.__table__))


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def record(session: Session, actor: str, action: str, target: str = "", *, before: Any = None, after: Any = None,
           client: str = "", at: datetime | None = None) -> None:
    """One entry: ``actor`` did ``action`` to ``target``; ``before`` and ``after`` are any
    JSON-able values (a dict of the fields that changed, a template's text...)."""
    _INSERT.execute(session, dict(at=at or utcnow(), actor=actor, action=action, target=target,
                                               before=_json(before), after=_json(after), client=client))


def entries(session: Session, *, target: str | None = None, actor: str | None = None,
            limit: int = 100) -> list[AuditEntry]:
    """The newest entries first, of ``target`` and/or ``actor`` when given."""
    query = select(AuditEntry)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    return list(session.exec(query.order_by(col(AuditEntry.id).desc()).limit(limit)))
