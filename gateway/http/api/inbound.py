"""/api/v1/inbound: mail received, its outcome and reason, its raw bytes, and
reprocessing quarantined mail (gateway.actions.inbound, as ``gateway inbound``).  Admin
only: a received mail is anyone's, whatever ticket it went to."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gateway.actions import inbound
from gateway.app import App
from gateway.http.api.auth import actor_of, require
from gateway.http.deps import gateway_app
from store import audit
from gateway.actions.api_tokens import Caller
from store.db import session_for

router = APIRouter(prefix="/inbound", tags=["inbound"])


class ReprocessIn(BaseModel):
    ids: list[int] = []
    quarantined: bool = False


@router.get("", summary="Received mail, newest first (cursor: the id of the last of the previous page)")
def list_inbound(app: App = Depends(gateway_app), _: Caller = Depends(require("admin")),
                 state: Literal["received", "processed", "quarantined"] | None = None,
                 outcome: str | None = None, cursor: int | None = None,
                 limit: int = Query(100, ge=1, le=500)) -> dict:
    rows = inbound.listing(app, state=state, outcome=outcome, before_id=cursor, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next_cursor": rows[-1]["id"] if more and rows else None}


@router.get("/{inbound_id}", summary="One received mail: envelope, state, outcome, reason and parser findings")
def show_inbound(inbound_id: int, app: App = Depends(gateway_app), _: Caller = Depends(require("admin"))) -> dict:
    return inbound.show(app, inbound_id)


@router.get("/{inbound_id}/raw", summary="The mail's bytes as received (message/rfc822, as a download)",
            response_class=Response)
def raw_inbound(inbound_id: int, app: App = Depends(gateway_app), _: Caller = Depends(require("admin"))):
    return Response(inbound.raw(app, inbound_id), media_type="message/rfc822",
                    headers={"Content-Disposition": f'attachment; filename="inbound-{inbound_id}.eml"',
                             "X-Content-Type-Options": "nosniff"})


@router.post("/reprocess", summary="Process quarantined mail again: by ids, or every quarantined one")
def reprocess(body: ReprocessIn, request: Request, app: App = Depends(gateway_app),
              caller: Caller = Depends(require("admin"))) -> dict:
    done = inbound.reprocess(app, body.ids, quarantined=body.quarantined)
    actor = actor_of(request, caller)
    with session_for(app.engine) as session:
        for inbound_id, outcome in done.outcomes:
            audit.record(session, actor.name, "inbound.reprocess", f"inbound:{inbound_id}",
                         after=outcome.as_dict(), client=actor.client)
        session.commit()
    return {"outcomes": [{"id": i, **o.as_dict()} for i, o in done.outcomes], "skipped": done.skipped,
            "skipped_help": done.skipped_help or None}


