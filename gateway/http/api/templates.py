"""/api/v1/templates: the templates in use, a preview of a mail (an event x language x
waiting reason on sample data, or a ticket's next mail), and the check of every case
(gateway.actions.templates, as ``gateway templates``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from gateway.actions import templates
from gateway.app import App
from gateway.http.api.auth import require
from gateway.http.deps import gateway_app
from gateway.actions.api_tokens import Caller

router = APIRouter(prefix="/templates", tags=["templates"])


@router.get("", summary="Every event and the template file in use (override or shipped)")
def list_templates(app: App = Depends(gateway_app), _: Caller = Depends(require("read"))) -> list[dict]:
    return templates.listing(app)


@router.get("/check", summary="Render every event x language x waiting reason on sample data; the failures")
def check(app: App = Depends(gateway_app), _: Caller = Depends(require("read"))) -> dict:
    return templates.check_json(app)


@router.get("/{event}/preview", summary="The mail as the customer gets it: headers, text, HTML and raw bytes")
def preview(event: str, app: App = Depends(gateway_app), _: Caller = Depends(require("read")),
            language: str = Query("en", description="fr, nl, en or de (sample data)"),
            waiting_reason: str | None = Query(None, description="the waiting mail's reason (sample data)"),
            ticket: str | None = Query(None, description="a ticket's next mail instead of sample data")) -> dict:
    return templates.preview_json(templates.preview(app, event, language, ticket=ticket,
                                                    waiting_reason=waiting_reason))
