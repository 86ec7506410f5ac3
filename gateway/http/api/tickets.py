"""/api/v1/tickets: list and search, one ticket, its attachments, create (the phone
channel), change status, comment.  Each route parses, calls the action the command line
calls (gateway.actions), and shapes the answer; the rules live there."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from gateway import actions
from gateway.actions.tickets import NewFile
from gateway.actions.views import iso, ticket_json
from gateway.app import App
from gateway.http.api import pagination
from gateway.http.api.auth import actor_of, require
from gateway.http.api.problems import Problem
from gateway.http.deps import gateway_app
from gateway.actions.api_tokens import Caller
from store.db import reader
from store.lifecycle import StatusData
from store.models import Attachment, Person, Ticket, TicketMessage
from store.tickets import TicketQuery, find_tickets, get_ticket

router = APIRouter(prefix="/tickets", tags=["tickets"])

# Types a browser may be told a download is: they show as what they are and run
# nothing; any other type is sent as application/octet-stream (a file to save).
SAFE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"})


class TicketSummary(BaseModel):
    number: str
    process: str
    status: str
    waiting_reason: str | None
    title: str
    personal_reference: str | None
    reporting_person: str | None
    affected_person: str | None
    created_at: str | None
    updated_at: str | None


class TicketPage(BaseModel):
    items: list[TicketSummary]
    next_cursor: str | None


class Done(BaseModel):
    number: str
    status: str
    mails: list[str] = Field(description="the notifications queued, e.g. [\"waiting\"]")
    recipients: list[str]
    linked: str | None = None


class NewTicket(BaseModel):
    process: Literal["incident", "service-request", "change"]
    reporter: str = Field(description="the Reporting Person's e-mail address")
    affected: str | None = Field(None, description="the Affected Person's (default: the reporter)")
    title: str
    description: str
    reference: str | None = Field(None, description="the customer's personal reference, e.g. PO1234")


class StatusChangeIn(BaseModel):
    """The same fields as ``gateway ticket set-status``."""

    status: str = Field(description="New, Classification, In progress, Planned, Waiting, Postponed, Approval, "
                                    "Solved, Rejected, Closed (in-progress etc. accepted)")
    reason: str | None = Field(None, description="Rejected, Postponed: the reason")
    waiting_reason: str | None = Field(None, description="Waiting: why (third-party, customer-feedback, ...)")
    at: datetime | None = Field(None, description="Planned: the appointment, with its offset")
    place: str | None = None
    solution: str | None = Field(None, description="Solved: the solution")
    approval_text: str | None = Field(None, description="Approval: what is to be approved")
    note: str | None = Field(None, description="a note for the history; Solved -> In progress: the mandatory "
                                               "comment")


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _summary(ticket: Ticket, people: dict[int, str]) -> dict:
    return {"number": ticket.number, "process": ticket.process, "status": ticket.status,
            "waiting_reason": ticket.waiting_reason, "title": ticket.title,
            "personal_reference": ticket.personal_reference,
            "reporting_person": people.get(ticket.reporting_person_id),
            "affected_person": people.get(ticket.affected_person_id),
            "created_at": iso(ticket.created_at), "updated_at": iso(ticket.updated_at)}


def _done(result) -> dict:
    return {"number": result.number, "status": result.status, "mails": list(result.mails),
            "recipients": list(result.recipients), "linked": result.linked}


@router.get("", response_model=TicketPage, summary="List and search tickets (open ones unless asked)")
def list_tickets(
    app: App = Depends(gateway_app), _: Caller = Depends(require("read")),
    q: str | None = Query(None, description="the manual's search: number, title, status, name, e-mail, reference"),
    number: str | None = None, title: str | None = Query(None, description="part of the title"),
    status: Annotated[list[str] | None, Query(description="one or more statuses (Closed only when named)")] = None,
    person: str | None = Query(None, description="part of the e-mail or name of the reporting or affected person"),
    reference: str | None = Query(None, description="the personal reference"),
    process: Literal["incident", "service-request", "change"] | None = None,
    created_from: datetime | None = None, created_to: datetime | None = None,
    updated_from: datetime | None = None, updated_to: datetime | None = None,
    all: bool = Query(False, description="Closed tickets too"),
    cursor: str | None = None, limit: int = Query(50, ge=1, le=pagination.MAX_LIMIT),
) -> dict:
    query = TicketQuery(text=q, number=number, title=title, statuses=tuple(status or ()), person=person,
                        reference=reference, process=process, created_from=_utc(created_from),
                        created_to=_utc(created_to), updated_from=_utc(updated_from), updated_to=_utc(updated_to),
                        include_closed=all, after_id=pagination.decode(cursor), limit=limit + 1)
    with reader(app.engine) as session:
        tickets = find_tickets(session, query)
        ids = {t.reporting_person_id for t in tickets} | {t.affected_person_id for t in tickets}
        people = ({i: e for i, e in session.exec(select(Person.id, Person.email).where(col(Person.id).in_(ids)))}
                  if ids else {})
        return pagination.page([_summary(t, people) for t in tickets], [t.id for t in tickets], limit)


@router.get("/{number}", summary="One ticket with its mails, comments, attachments and history")
def show_ticket(number: str, app: App = Depends(gateway_app), _: Caller = Depends(require("read"))) -> dict:
    with reader(app.engine) as session:
        return ticket_json(session, get_ticket(session, number))


def _disposition(filename: str) -> str:
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in filename) or "attachment"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get("/{number}/attachments/{attachment_id}", summary="An attachment's bytes, as a download",
            response_class=StreamingResponse)
def download(number: str, attachment_id: int, app: App = Depends(gateway_app),
             _: Caller = Depends(require("read"))) -> StreamingResponse:
    with reader(app.engine) as session:
        ticket = get_ticket(session, number)
        found = session.exec(select(Attachment).join(TicketMessage, TicketMessage.id == Attachment.message_id)
                             .where(Attachment.id == attachment_id, TicketMessage.ticket_id == ticket.id)).first()
    if found is None:
        raise Problem(404, f"{ticket.number} has no attachment #{attachment_id}")
    kind = found.content_type.split(";")[0].strip().lower()
    try:
        handle = app.blobs.open(found.sha256)
    except FileNotFoundError:
        raise Problem(404, f"the bytes of attachment #{attachment_id} are missing from the store") from None

    def chunks():
        with handle:
            while block := handle.read(64 * 1024):
                yield block

    return StreamingResponse(chunks(), media_type=kind if kind in SAFE_TYPES else "application/octet-stream",
                             headers={"Content-Disposition": _disposition(found.filename),
                                      "Content-Length": str(found.size),
                                      "X-Content-Type-Options": "nosniff",
                                      "Content-Security-Policy": "default-src 'none'; sandbox",
                                      "Cache-Control": "private, no-store"})


@router.post("", status_code=201, response_model=Done, summary="Register a ticket (the phone channel) and confirm it")
def create(body: NewTicket, request: Request, app: App = Depends(gateway_app),
           caller: Caller = Depends(require("agent"))) -> dict:
    return _done(actions.create_ticket(app, process=body.process, reporter=body.reporter, affected=body.affected,
                                       title=body.title, description=body.description, reference=body.reference,
                                       by=caller.actor, actor=actor_of(request, caller)))


@router.post("/{number}/status", response_model=Done,
             summary="Move a ticket to another status (mails the customer when the manual says so)")
def set_status(number: str, body: StatusChangeIn, request: Request, app: App = Depends(gateway_app),
               caller: Caller = Depends(require("agent"))) -> dict:
    from store.lifecycle import LifecycleError, canonical_status

    try:
        status = canonical_status(body.status)
    except LifecycleError as exc:
        raise Problem(422, str(exc), field="status") from None
    data = StatusData(reason=body.reason, waiting_reason=body.waiting_reason, at=body.at, place=body.place,
                      solution=body.solution, approval_text=body.approval_text, note=body.note)
    return _done(actions.set_status(app, number, status, data, by=caller.actor,
                                    actor=actor_of(request, caller)))


class CommentIn(BaseModel):
    text: str
    internal: bool = Field(False, description="an internal note, never shown to the customer")


@router.post("/{number}/comments", status_code=201, response_model=Done,
             summary="A public comment or an internal note; JSON, or multipart/form-data with files",
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/CommentIn"}},
                 "multipart/form-data": {"schema": {"type": "object", "required": ["text"], "properties": {
                     "text": {"type": "string"}, "internal": {"type": "boolean"},
                     "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})
async def comment(number: str, request: Request, app: App = Depends(gateway_app),
                  caller: Caller = Depends(require("agent"))) -> dict:
    kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    files: list[NewFile] = []
    if kind == "multipart/form-data":
        limit = app.config.smtp.max_message_size
        if int(request.headers.get("content-length") or 0) > limit + 64 * 1024:
            raise Problem(413, f"more than a mail may carry ([smtp] max_message_size, {limit} bytes)")
        async with request.form(max_files=app.config.limits.max_parts, max_fields=20) as form:
            text = form.get("text")
            internal = str(form.get("internal") or "").lower() in ("1", "true", "yes", "on")
            for item in form.getlist("files"):
                if isinstance(item, str):
                    raise Problem(422, "files: each must be a file part", field="files")
                files.append(NewFile(item.filename or "", item.content_type or "", await item.read()))
        if not isinstance(text, str):
            raise Problem(422, "text: a comment needs a text", field="text")
    elif kind == "application/json":
        try:
            parsed = CommentIn.model_validate_json(await request.body())
        except ValueError as exc:
            errors = getattr(exc, "errors", lambda: [])()
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "body"
            raise Problem(422, f"{where}: {errors[0]['msg'] if errors else exc}", field=where) from None
        text, internal = parsed.text, parsed.internal
    else:
        raise Problem(415, "send application/json ({\"text\": ..., \"internal\": false}) or multipart/form-data "
                           "(text, internal, files)")
    done = await run_in_threadpool(actions.comment, app, number, text, internal=internal, by=caller.actor,
                                   files=files, actor=actor_of(request, caller))
    return _done(done)
