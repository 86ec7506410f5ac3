"""Errors of the API as ``application/problem+json`` (RFC 9457): ``type``, ``title``,
``status`` and ``detail``, a sentence an agent can read, and where it helps the field
at fault (``field``) or the two statuses of a refused move (``from_status``,
``to_status``).

The actions raise typed errors (gateway.errors, store.lifecycle); this module is the one
place that turns them into HTTP statuses:

- NotFound (a ticket, a mail, a notification, a person): 404;
- TransitionRefused (a move the manual forbids), TicketClosed and Refused: 409;
- MissingData (a move without what it needs), LifecycleError, invalid JSON or fields: 422.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gateway.errors import NotFound, Refused
from store.lifecycle import LifecycleError, MissingData, TicketClosed, TransitionRefused
from store.tickets import NotFound as TicketNotFound

MEDIA_TYPE = "application/problem+json"
TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
          405: "Method not allowed", 409: "Conflict", 413: "Content too large", 415: "Unsupported media type",
          422: "Unprocessable content", 429: "Too many requests", 500: "Internal server error"}


class Problem(Exception):
    """Raised by a route or a dependency: answered as a problem document."""

    def __init__(self, status: int, detail: str, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extra = status, detail, headers or {}, extra


def problem(status: int, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status, "detail": detail,
            **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _field(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or "body"


def install(app) -> None:
    """The handlers, for every route of ``app`` (the ops routes raise none of these)."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem(exc.status, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return problem(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "the request is not valid"
        return problem(422, detail, field=errors[0]["field"] if errors else None, errors=errors)

    @app.exception_handler(NotFound)
    @app.exception_handler(TicketNotFound)
    async def _missing(request: Request, exc: Exception):
        return problem(404, str(exc).strip("'\""))

    @app.exception_handler(TransitionRefused)
    async def _refused_move(request: Request, exc: TransitionRefused):
        return problem(409, str(exc), from_status=exc.current, to_status=exc.target)

    @app.exception_handler(Refused)
    @app.exception_handler(TicketClosed)
    async def _refused(request: Request, exc: Exception):
        return problem(409, str(exc))

    @app.exception_handler(MissingData)
    async def _missing_data(request: Request, exc: MissingData):
        return problem(422, str(exc), field=exc.field)

    @app.exception_handler(LifecycleError)
    async def _lifecycle(request: Request, exc: LifecycleError):
        return problem(422, str(exc))
