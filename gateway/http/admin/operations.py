"""Operations in the console: the quarantine (reason, what the parser finds, the raw mail
shown escaped, reprocess), failed notifications (send again), the instances and the
checks of /readyz, people's and companies' languages.  Writes go through the actions
(gateway.actions.inbound.reprocess, gateway.actions.outbox.retry) and are audited."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from sqlmodel import col, select

from gateway import health
from gateway.actions import admins
from gateway.actions.inbound import reprocess as reprocess_mail
from gateway.actions.outbox import retry as retry_mail
from gateway.errors import NotFound, Quarantine, Refused
from gateway.http.admin import web
from gateway.http.deps import gateway_app
from store import audit
from store.db import reader, session_for
from store.models import Company, InboundMessage, Outbox, Person, utcnow

router = APIRouter()
RAW_SHOWN = 256 * 1024  # bytes of a raw mail shown on its page


@router.get("/quarantine")
def quarantine(request: Request, done: str = "", who: admins.Current = Depends(web.signed_in)) -> Response:
    app = gateway_app(request)
    with reader(app.engine) as session:
        rows = list(session.exec(select(InboundMessage).where(InboundMessage.state == "quarantined")
                                 .order_by(col(InboundMessage.id).desc()).limit(500)))
    return web.page(request, "quarantine.html.j2", who=who, rows=rows, done=done)


def _findings(app, raw: bytes) -> dict:
    """What the parser makes of the mail now (with today's limits): its facts, or why it refuses it."""
    from gateway.ingest.parse import Limits, parse

    limits = app.config.limits
    try:
        parsed = parse(raw, Limits(max_parts=limits.max_parts, max_depth=limits.max_depth,
                                   max_header_length=limits.max_header_length))
    except Quarantine as exc:
        return {"refused": exc.reason}
    except Exception as exc:  # noqa: BLE001 - shown to the admin, never raised
        return {"refused": f"{type(exc).__name__}: {exc}"}
    return {"From": f"{parsed.from_name} <{parsed.from_addr}>".strip(), "Subject": parsed.subject,
            "To": ", ".join(parsed.to), "Cc": ", ".join(parsed.cc), "Message-ID": parsed.message_id,
            "Date": str(parsed.date or ""), "Content-Language": parsed.content_language or "",
            "Content-Type": parsed.content_type, "Parts": ", ".join(parsed.part_types),
            "Attachments": ", ".join(a.filename for a in parsed.attachments),
            "Defects": "; ".join(parsed.defects)}


@router.get("/quarantine/{inbound_id}")
def quarantined(request: Request, inbound_id: int, who: admins.Current = Depends(web.signed_in)) -> Response:
    app = gateway_app(request)
    with reader(app.engine) as session:
        row = session.get(InboundMessage, inbound_id)
    if row is None:
        raise HTTPException(404, f"no received mail #{inbound_id}")
    try:
        raw = app.blobs.get(row.sha256)
    except Exception as exc:  # noqa: BLE001 - a missing blob is said on the page
        raw, findings = b"", {"refused": f"the raw mail cannot be read: {exc}"}
    else:
        findings = _findings(app, raw)
    shown = raw[:RAW_SHOWN].decode("utf-8", "replace")
    return web.page(request, "quarantined.html.j2", who=who, row=row, findings=findings, raw=shown,
                    cut=len(raw) > RAW_SHOWN)


@router.post("/quarantine/{inbound_id}/reprocess")
def reprocess(request: Request, inbound_id: int, fields: dict = Depends(web.form),
              who: admins.Current = Depends(web.signed_in)) -> Response:
    app = gateway_app(request)
    try:
        done = reprocess_mail(app, [inbound_id])
    except (NotFound, Refused) as exc:
        return web.page(request, "message.html.j2", who=who, status=409, title="Quarantine", message=str(exc))
    outcome = done.outcomes[0][1] if done.outcomes else None
    with session_for(app.engine) as session:
        row = session.get(InboundMessage, inbound_id)
        audit.record(session, who.actor, "inbound.reprocess", f"inbound:{inbound_id}", before={"state": "quarantined"},
                     after={"state": row.state if row else None, "outcome": getattr(outcome, "outcome", None),
                            "ticket": row.ticket_number if row else None}, client=web.client(request))
        session.commit()
    return web.redirect(f"{web.PATH}/quarantine?done={inbound_id}")


@router.get("/outbox")
def outbox(request: Request, done: str = "", who: admins.Current = Depends(web.signed_in)) -> Response:
    app = gateway_app(request)
    with reader(app.engine) as session:
        rows = list(session.exec(select(Outbox.id, Outbox.event, Outbox.recipient, Outbox.language, Outbox.attempts,
                                        Outbox.last_answer, Outbox.created_at).where(Outbox.state == "failed")
                                 .order_by(col(Outbox.id).desc()).limit(500)))
    return web.page(request, "outbox.html.j2", who=who, rows=rows, done=done)


@router.post("/outbox/{outbox_id}/retry")
def retry(request: Request, outbox_id: int, fields: dict = Depends(web.form),
          who: admins.Current = Depends(web.signed_in)) -> Response:
    app = gateway_app(request)
    done = retry_mail(app, [outbox_id])
    if done.missing:
        raise HTTPException(404, f"no notification #{outbox_id}")
    with session_for(app.engine) as session:
        audit.record(session, who.actor, "outbox.retry", f"outbox:{outbox_id}", before={"state": "failed"},
                     after={"state": "pending"}, client=web.client(request))
        session.commit()
    return web.redirect(f"{web.PATH}/outbox?done={outbox_id}")


@router.get("/instances")
def instances(request: Request, who: admins.Current = Depends(web.signed_in)) -> Response:
    app = gateway_app(request)
    ops = request.app.state.ops
    checks = health.readiness(ops.config, ops.engine, instance=ops.instance,
                              roles=[r for r in ops.roles if r != "http"], doors=ops.doors)
    with reader(app.engine) as session:
        procs = health.processes(session, utcnow(), app.config.monitoring.heartbeat_interval)
    return web.page(request, "instances.html.j2", who=who, checks=checks, processes=procs, instance=ops.instance)


@router.get("/languages")
def languages(request: Request, q: str = "", who: admins.Current = Depends(web.signed_in)) -> Response:
    app = gateway_app(request)
    with reader(app.engine) as session:
        query = select(Person.email, Person.name, Person.language, Person.company).order_by(col(Person.email))
        if q.strip():
            query = query.where(col(Person.email).contains(q.strip().lower()) | col(Person.name).contains(q.strip()))
        people = list(session.exec(query.limit(500)))
        companies = list(session.exec(select(Company).order_by(col(Company.name))))
    return web.page(request, "languages.html.j2", who=who, people=people, companies=companies, q=q,
                    default=app.config.gateway.default_language)


@router.get("/wording")
def wording(request: Request, only: str = "", who: admins.Current = Depends(web.signed_in)) -> Response:
    """The mails' catalogs side by side (shipped, with the override catalog's words where
    it has them), each language's missing and fuzzy messages marked."""
    from babel.messages.pofile import read_po

    from gateway.outbound.render import LANGUAGES as MAIL_LANGUAGES

    renderer = gateway_app(request).renderer
    catalogs, problems = _catalogs(renderer, MAIL_LANGUAGES)
    with open(renderer.shipped_dir / "locale" / "mail.pot", "rb") as fh:
        ids = [m.id if isinstance(m.id, str) else m.id[0] for m in read_po(fh) if m.id]
    rows = []
    for msgid in ids:
        cells = {lang: _cell(catalogs[lang].get(msgid), lang) for lang in MAIL_LANGUAGES}
        if only and not any(state == only for _, state in cells.values()):
            continue
        rows.append((msgid, cells))
    return web.page(request, "wording.html.j2", who=who, rows=rows, languages=MAIL_LANGUAGES, only=only,
                    problems=problems)


def _catalogs(renderer, languages) -> tuple[dict, dict]:
    """Each language's messages by id (the override catalog's over the shipped one's), and
    the catalogs that could not be read, by language."""
    from babel.messages.pofile import read_po

    catalogs, problems = {}, {}
    for lang in languages:
        merged = {}
        for folder in (renderer.shipped_dir, renderer.override_dir):
            po = folder / "locale" / lang / "LC_MESSAGES" / "mail.po" if folder else None
            if po is None or not po.is_file():
                continue
            try:
                with open(po, "rb") as fh:
                    for message in read_po(fh, locale=lang):
                        if message.id:
                            merged[message.id if isinstance(message.id, str) else message.id[0]] = message
            except Exception as exc:  # noqa: BLE001 - an admin's broken catalog is shown, not raised
                problems[lang] = f"{po}: {exc}"
        catalogs[lang] = merged
    return catalogs, problems


def _cell(message, lang: str) -> tuple[str, str]:
    """A message's text in one language and its state: ok, missing or fuzzy."""
    text = (message.string if isinstance(message.string, str) else message.string[0]) if message else ""
    if not text and lang != "en":
        return text, "missing"
    return text, "fuzzy" if message is not None and message.fuzzy else "ok"
