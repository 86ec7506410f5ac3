"""/api/v1/outbox: notifications with their state, one with every delivery attempt, and
sending again (gateway.actions.outbox, as ``gateway outbox``).  Admin only: the outbox
is every customer's mail."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from gateway.actions import outbox
from gateway.app import App
from gateway.http.api.auth import actor_of, require
from gateway.http.deps import gateway_app
from store import audit
from gateway.actions.api_tokens import Caller
from store.db import session_for

router = APIRouter(prefix="/outbox", tags=["outbox"])


class RetryIn(BaseModel):
    ids: list[int] = []
    failed: bool = False


@router.get("", summary="Notifications, oldest first (cursor: the id of the last of the previous page)")
def list_outbox(app: App = Depends(gateway_app), _: Caller = Depends(require("admin")),
                state: Literal["pending", "sent", "failed"] | None = None, cursor: int | None = None,
                limit: int = Query(100, ge=1, le=500)) -> dict:
    rows = outbox.listing(app, state=state, after_id=cursor, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next_cursor": rows[-1]["id"] if more and rows else None}


@router.get("/{outbox_id}", summary="One notification with every delivery attempt")
def show_outbox(outbox_id: int, app: App = Depends(gateway_app), _: Caller = Depends(require("admin"))) -> dict:
    return outbox.show(app, outbox_id)


@router.post("/retry", summary="Send again: the ids given, or every failed one")
def retry(body: RetryIn, request: Request, app: App = Depends(gateway_app),
          caller: Caller = Depends(require("admin"))) -> dict:
    done = outbox.retry(app, body.ids, failed=body.failed)
    actor = actor_of(request, caller)
    with session_for(app.engine) as session:
        for outbox_id in done.ids:
            audit.record(session, actor.name, "outbox.retry", f"outbox:{outbox_id}", client=actor.client)
        session.commit()
    return {"ids": done.ids, "missing": done.missing}
