"""The notifications: every mail × language (× waiting reason), each as the customer gets
it, and the editor of an admin's override of one event in one language.

The preview is the outbox's own composition (gateway.actions.preview: the bytes the
deliverer would send, on the sample ticket or a real one); a draft being edited is a
layer in front of the override folder (gateway.outbound.render.Renderer's ``layers``),
kept per session under ``<data_dir>/admin-drafts/``.  Saving checks first
(gateway.outbound.overrides.check), then writes atomically with every version kept.
"Send me a test" queues the preview's bytes in the outbox, to the admin: the deliverer
sends it through the configured transport like any mail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from gateway.actions import admins
from gateway.errors import NotFound
from gateway.http.admin import web
from gateway.http.deps import gateway_app
from gateway.outbound import overrides
from gateway.outbound.notify import Notifier, sample_context
from gateway.actions.preview import NobodyToMail, preview_ticket, sample_row
from gateway.outbound.render import EVENTS, LANGUAGES, TICKETLESS, Renderer, RenderError, check_templates
from store import audit
from store.db import session_for
from store.lifecycle import WAITING_REASONS
from store.models import Outbox, utcnow
from store.tickets import NotFound as TicketNotFound

router = APIRouter()


def draft_dir(app, who: admins.Current) -> Path:
    return app.config.data_dir / "admin-drafts" / str(who.session_id)


def _has_draft(app, who, event: str, lang: str) -> bool:
    folder = draft_dir(app, who) / lang
    return all((folder / overrides.name(event, kind)).is_file() for kind in overrides.KINDS)


def _renderer(app, who, event: str, lang: str, draft: bool) -> Renderer:
    base = app.renderer
    layers = (draft_dir(app, who),) if draft and _has_draft(app, who, event, lang) else ()
    return Renderer(base.shipped_dir, base.override_dir, layers=layers)


def _case(event: str, lang: str, reason: str | None) -> tuple[str, str, str | None]:
    if event not in EVENTS or lang not in LANGUAGES:
        raise HTTPException(404, "no such notification")
    if event != "waiting":
        reason = None
    elif reason not in WAITING_REASONS:
        reason = "customer-feedback"
    return event, lang, reason


def _compose(app, who, event: str, lang: str, reason: str | None, ticket: str, draft: bool):
    """The mail as the customer gets it, or the error (a sentence) that stops it."""
    notifier = Notifier(app.config, _renderer(app, who, event, lang, draft))
    try:
        if ticket and event not in TICKETLESS:
            with session_for(app.engine) as session:
                try:
                    return preview_ticket(notifier, session, ticket, event, language=lang), ""
                finally:
                    session.rollback()  # a preview writes nothing
        return sample_row(notifier, event, lang, reason)[0], ""
    except (TicketNotFound, NotFound, NobodyToMail) as exc:
        return None, str(exc)
    except RenderError as exc:
        return None, str(exc)


def _state(app, event: str, lang: str, reasons) -> dict[str | None, str]:
    renderer = app.renderer
    notifier = app.notifier
    failures = check_templates(renderer, lambda e, lg, r: sample_context(notifier, e, lg, r), events=(event,),
                               languages=(lang,), waiting_reasons=tuple(r for r in reasons if r))
    broken = {f.waiting_reason for f in failures}
    shown = "overridden" if overrides.overridden(renderer, event, lang) else "shipped"
    return {reason: "broken" if reason in broken else shown for reason in reasons}


@router.get("/notifications")
def grid(request: Request, who: admins.Current = Depends(web.signed_in)) -> Response:
    app = gateway_app(request)
    rows = []
    for event in EVENTS:
        reasons = WAITING_REASONS if event == "waiting" else (None,)
        cells = {lang: _state(app, event, lang, reasons) for lang in LANGUAGES}
        for reason in reasons:
            rows.append({"event": event, "reason": reason, "cells": {lang: cells[lang][reason] for lang in LANGUAGES}})
    return web.page(request, "grid.html.j2", who=who, rows=rows, languages=LANGUAGES,
                    override_dir=app.renderer.override_dir)


@router.get("/notifications/{event}/{lang}")
def preview(request: Request, event: str, lang: str, reason: str = "", ticket: str = "",
            who: admins.Current = Depends(web.signed_in)) -> Response:
    event, lang, reason = _case(event, lang, reason)
    app = gateway_app(request)
    composed, error = _compose(app, who, event, lang, reason, ticket.strip(), draft=False)
    return web.page(request, "preview.html.j2", who=who, event=event, lang=lang, reason=reason, ticket=ticket.strip(),
                    composed=composed, error=error, reasons=WAITING_REASONS, languages=LANGUAGES,
                    ticketless=event in TICKETLESS, origin=_origin(app, event, lang))


def _origin(app, event: str, lang: str) -> str:
    return "overridden" if overrides.overridden(app.renderer, event, lang) else "shipped"


@router.get("/notifications/{event}/{lang}/html")
def html(request: Request, event: str, lang: str, reason: str = "", ticket: str = "", draft: str = "",
         who: admins.Current = Depends(web.signed_in)) -> Response:
    """The HTML part alone, for the preview's frame: sandboxed, nothing fetched."""
    event, lang, reason = _case(event, lang, reason)
    composed, error = _compose(gateway_app(request), who, event, lang, reason, ticket.strip(), draft=bool(draft))
    body = composed.mail.html if composed else f"<p>{_escape(error)}</p>"
    return web.headers(HTMLResponse(body), csp=web.PREVIEW_CSP)


def _escape(text: str) -> str:
    import html as html_module

    return html_module.escape(text)


def _editor(request: Request, who, event: str, lang: str, reason: str | None, *, texts: dict | None = None,
            draft: bool = False, errors: list[str] | None = None, notice: str = "", status: int = 200) -> Response:
    app = gateway_app(request)
    renderer = app.renderer
    if texts is None:
        if draft and _has_draft(app, who, event, lang):
            folder = draft_dir(app, who) / lang
            texts = {k: (folder / overrides.name(event, k)).read_text(encoding="utf-8") for k in overrides.KINDS}
        else:
            draft = False
            texts = {k: overrides.source(renderer, event, lang, k)[0] for k in overrides.KINDS}
    composed, error = _compose(app, who, event, lang, reason, "", draft=draft)
    return web.page(
        request, "edit.html.j2", status=status, who=who, event=event, lang=lang, reason=reason, texts=texts,
        draft=draft, errors=errors or [], notice=notice, composed=composed, error=error, reasons=WAITING_REASONS,
        diffs={k: overrides.diff(renderer, event, lang, k, texts[k]) for k in overrides.KINDS},
        versions={k: overrides.versions(renderer.override_dir, event, lang, k) for k in overrides.KINDS},
        origin=_origin(app, event, lang), override_dir=renderer.override_dir)


@router.get("/notifications/{event}/{lang}/edit")
def edit(request: Request, event: str, lang: str, reason: str = "", draft: str = "", done: str = "",
         who: admins.Current = Depends(web.signed_in)) -> Response:
    event, lang, reason = _case(event, lang, reason)
    notices = {"saved": web.gettext(who.language, "Saved: the next mail uses it."),
               "reverted": web.gettext(who.language, "Restored."),
               "sent": web.gettext(who.language, "A test mail is queued to %(address)s.", address=who.email)}
    return _editor(request, who, event, lang, reason, draft=bool(draft), notice=notices.get(done, ""))


def _texts(fields: dict) -> dict[str, str]:
    return {kind: fields.get(kind, "") for kind in overrides.KINDS}


def _where(event: str, lang: str, reason: str | None, **more) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"reason": reason or "", **more}.items() if v)
    return f"{web.PATH}/notifications/{event}/{lang}/edit" + (f"?{query}" if query else "")


@router.post("/notifications/{event}/{lang}/preview")
def preview_draft(request: Request, event: str, lang: str, fields: dict = Depends(web.form),
                  who: admins.Current = Depends(web.signed_in)) -> Response:
    event, lang, reason = _case(event, lang, fields.get("reason"))
    overrides.write_draft(draft_dir(gateway_app(request), who), event, lang, _texts(fields))
    return web.redirect(_where(event, lang, reason, draft="1"))


@router.post("/notifications/{event}/{lang}/save")
def save(request: Request, event: str, lang: str, fields: dict = Depends(web.form),
         who: admins.Current = Depends(web.signed_in)) -> Response:
    event, lang, reason = _case(event, lang, fields.get("reason"))
    app = gateway_app(request)
    texts = _texts(fields)
    folder = app.renderer.override_dir
    if folder is None:
        return _editor(request, who, event, lang, reason, texts=texts, status=409, errors=[
            web.gettext(who.language, "No override folder: set [templates] override_dir in the configuration.")])
    notifier = app.notifier
    failures = overrides.check(app.renderer, lambda e, lg, r: sample_context(notifier, e, lg, r), event, lang, texts)
    if failures:
        overrides.write_draft(draft_dir(app, who), event, lang, texts)
        return _editor(request, who, event, lang, reason, texts=texts, draft=True, errors=failures, status=422)
    before = overrides.save(folder, event, lang, texts)
    with session_for(app.engine) as session:
        audit.record(session, who.actor, "template.save", f"template:{event}/{lang}", before=before,
                     after={k: overrides.source(app.renderer, event, lang, k)[0] for k in overrides.KINDS},
                     client=web.client(request))
        session.commit()
    shutil.rmtree(draft_dir(app, who) / lang, ignore_errors=True)
    return web.redirect(_where(event, lang, reason, done="saved"))


@router.post("/notifications/{event}/{lang}/revert")
def revert(request: Request, event: str, lang: str, fields: dict = Depends(web.form),
           who: admins.Current = Depends(web.signed_in)) -> Response:
    event, lang, reason = _case(event, lang, fields.get("reason"))
    app = gateway_app(request)
    folder = app.renderer.override_dir
    chosen = fields.get("version", "")
    try:
        if chosen == "shipped":
            before = overrides.revert_to_shipped(folder, event, lang)
        else:
            kind = fields.get("kind", "")
            texts = {k: overrides.source(app.renderer, event, lang, k)[0] for k in overrides.KINDS}
            texts[kind] = overrides.version(folder, event, lang, kind, chosen)
            before = overrides.save(folder, event, lang, texts)
    except (overrides.OverrideError, KeyError) as exc:
        return _editor(request, who, event, lang, reason, status=400, errors=[str(exc)])
    with session_for(app.engine) as session:
        audit.record(session, who.actor, "template.revert", f"template:{event}/{lang}", before=before,
                     after={"version": chosen, **{k: overrides.source(app.renderer, event, lang, k)[0]
                                                  for k in overrides.KINDS}}, client=web.client(request))
        session.commit()
    shutil.rmtree(draft_dir(app, who) / lang, ignore_errors=True)
    return web.redirect(_where(event, lang, reason, done="reverted"))


@router.post("/notifications/{event}/{lang}/test")
def send_test(request: Request, event: str, lang: str, fields: dict = Depends(web.form),
              who: admins.Current = Depends(web.signed_in)) -> Response:
    """The draft (as in the form) on the sample ticket, to the admin, through the outbox."""
    event, lang, reason = _case(event, lang, fields.get("reason"))
    app = gateway_app(request)
    overrides.write_draft(draft_dir(app, who), event, lang, _texts(fields))
    notifier = Notifier(app.config, _renderer(app, who, event, lang, draft=True))
    try:
        composed, values = sample_row(notifier, event, lang, reason, to=("", who.email))
    except RenderError as exc:
        return _editor(request, who, event, lang, reason, draft=True, status=422, errors=[str(exc)])
    now = utcnow()
    row = Outbox(**{**values, "ticket_id": None, "person_id": None, "context": None, "raw": composed.raw,
                    "subject": composed.subject, "created_at": now, "next_attempt_at": now})
    with session_for(app.engine) as session:
        session.add(row)
        session.flush()
        audit.record(session, who.actor, "template.test", f"template:{event}/{lang}",
                     after={"outbox": row.id, "to": who.email, "reason": reason}, client=web.client(request))
        session.commit()
    return web.redirect(_where(event, lang, reason, draft="1", done="sent"))
