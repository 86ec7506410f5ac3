"""The routes of the customers' pages: each reads the form, calls the action that knows the
rule (gateway.actions.portal) and shapes the answer (a page, or a redirect after a
POST that worked).

No GET changes anything: a link in a mail (a ticket's, a sign-in's) leads to a page
whose button posts the form that signs in; a mail scanner that opens every link signs
nobody in and spends no sign-in link.  Every POST checks its CSRF token before reading
anything else.  A ticket, a file or a form the person may not reach answers 404, the
same as one that does not exist.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from gateway.actions import portal as actions
from gateway.errors import NotFound, Refused
from gateway.http.deps import gateway_app
from gateway.http.portal import session as sessions
from gateway.http.portal.pages import LANGUAGES, Pages
from gateway.ingest.htmltext import sanitize_html
from gateway.tokens import verified_ticket_link
from store import lifecycle
from store.db import reader
from store.models import Person, utcnow
from store.notifications import language_for

log = logging.getLogger("gateway.portal")

router = APIRouter(prefix="/portal", tags=["customers"])

# No script runs on these pages, whatever a mail's HTML holds (it is sanitized too); no
# image, font or frame from elsewhere; forms post here only; the page is never framed;
# the address (a ticket's link carries a token) is never sent on as a Referer.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# Files are downloaded, never shown: a customer's .html or .svg runs nothing here.
DOWNLOAD_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'",
                    "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
INLINE_UNSAFE = ("text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml",
                 "text/javascript", "application/javascript")


class Portal:
    """What a route knows of the request: the gateway, who is signed in, the language,
    the CSRF token of its forms."""

    def __init__(self, request: Request, app):
        self.request, self.app, self.config = request, app, app.config
        state = request.app.state
        if getattr(state, "portal_pages", None) is None:
            state.portal_pages = Pages(app.renderer)
        self.pages: Pages = state.portal_pages
        self.now = utcnow()
        self.session = sessions.read(request, self.config, self.now)
        self.person: Person | None = None
        if self.session is not None:
            with reader(app.engine) as db:
                self.person = db.get(Person, self.session.person_id)
                self.default_language = language_for(db, self.person, self.config.gateway.default_language) \
                    if self.person else ""
            if self.person is None:
                self.session = None
        self.lang = self._language()
        self.nonce, self.new_nonce = sessions.csrf_nonce(request)
        self.csrf = sessions.csrf_token(self.config, self.nonce)

    @property
    def client(self) -> str:
        return self.request.client.host if self.request.client else ""

    def _language(self) -> str:
        chosen = self.request.cookies.get(sessions.LANGUAGE_COOKIE, "")
        if chosen in LANGUAGES:
            return chosen
        if self.person is not None:
            return self.default_language
        for part in self.request.headers.get("accept-language", "").split(","):
            code = part.split(";")[0].strip().lower()[:2]
            if code in LANGUAGES:
                return code
        return self.config.gateway.default_language

    @property
    def timezone(self) -> str:
        return (self.person.timezone if self.person is not None else "") or "Europe/Brussels"

    def page(self, name: str, status: int = 200, **context) -> HTMLResponse:
        html = self.pages.render(name, self.lang, csrf=self.csrf, person=self.person, session=self.session,
                                 here=self.request.url.path, tz=self.timezone, helpdesk=self.config.gateway.name,
                                 request_done=self.request.query_params.get("done", ""),
                                 minutes=self.config.portal.sign_in_minutes, **context)
        response = HTMLResponse(html, status_code=status, headers=HEADERS)
        if self.new_nonce:
            sessions.keep_csrf(response, self.config, self.nonce)
        return response

    def problem(self, status: int, message: str) -> HTMLResponse:
        return self.page("problem.html", status, message=message)

    def not_found(self) -> HTMLResponse:
        tr = self.pages.gettext(self.lang)
        return self.problem(404, tr("There is no such page, or it is not yours to see."))

    def forbidden(self) -> HTMLResponse:
        tr = self.pages.gettext(self.lang)
        return self.problem(403, tr("This form is out of date: go back, reload the page and try again."))

    def checked(self, token: str) -> bool:
        return sessions.csrf_ok(self.request, self.config, token)


def portal(request: Request, app=Depends(gateway_app)) -> Portal:
    return Portal(request, app)


def see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers=HEADERS)


def _uploads(files: list[UploadFile] | None) -> list[actions.Upload]:
    return [actions.Upload(f.filename or "", f.content_type or "", f.file.read()) for f in (files or [])
            if f.filename]


# Signing in -----------------------------------------------------------------------------------
@router.api_route("", methods=["GET", "HEAD"], response_class=HTMLResponse)
@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
def home(p: Portal = Depends(portal)):
    if p.session is not None and p.session.everything:
        return see_other("/portal/tickets")
    return p.page("sign_in.html")


@router.post("/sign-in")
def ask_sign_in(email: str = Form(""), csrf: str = Form(""), p: Portal = Depends(portal)):
    if not p.checked(csrf):
        return p.forbidden()
    base = p.config.public_url
    try:
        actions.request_sign_in(p.app, email, client=p.client, link_for=lambda t: f"{base}/portal/sign-in/{t}")
    except actions.RateLimited:
        tr = p.pages.gettext(p.lang)
        return p.problem(429, tr("Too many sign-in requests: please wait a while and try again."))
    # The same answer whether the address is known or not.
    return p.page("sign_in_sent.html", email=email.strip())


@router.api_route("/sign-in/{token}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def sign_in_link(token: str, p: Portal = Depends(portal)):
    # A page only: a scanner opening the link spends nothing.
    return p.page("link.html", action=f"/portal/sign-in/{quote(token)}", number=None,
                  valid=actions.sign_in_state(p.app, token, p.now), sign_in=True)


@router.post("/sign-in/{token}")
def use_sign_in_link(token: str, csrf: str = Form(""), p: Portal = Depends(portal)):
    if not p.checked(csrf):
        return p.forbidden()
    try:
        person_id = actions.use_sign_in(p.app, token, client=p.client, now=p.now)
    except Refused:
        return p.page("link.html", 400, action="", number=None, valid=False, sign_in=True)
    response = see_other("/portal/tickets")
    sessions.start(response, p.config, person_id, sessions.ALL, p.now)
    return response


@router.api_route("/t/{token}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def ticket_link(token: str, p: Portal = Depends(portal)):
    found = verified_ticket_link(p.config.gateway.verifying_secrets(), token, p.now)
    if found is None:
        return p.page("link.html", 404, action="", number=None, valid=False, sign_in=False)
    return p.page("link.html", action=f"/portal/t/{quote(token)}", number=found[0], valid=True, sign_in=False)


@router.post("/t/{token}")
def open_ticket_link(token: str, csrf: str = Form(""), p: Portal = Depends(portal)):
    if not p.checked(csrf):
        return p.forbidden()
    found = verified_ticket_link(p.config.gateway.verifying_secrets(), token, p.now)
    if found is None:
        return p.page("link.html", 404, action="", number=None, valid=False, sign_in=False)
    number, person_id = found
    response = see_other(f"/portal/tickets/{number}")
    if not (p.session is not None and p.session.person_id == person_id and p.session.everything):
        sessions.start(response, p.config, person_id, number, p.now)
    return response


@router.post("/sign-out")
def sign_out(csrf: str = Form(""), p: Portal = Depends(portal)):
    if not p.checked(csrf):
        return p.forbidden()
    response = see_other("/portal")
    sessions.end(response, p.config)
    return response


@router.post("/language")
def choose_language(lang: str = Form(""), back: str = Form("/portal"), csrf: str = Form(""),
                    p: Portal = Depends(portal)):
    if not p.checked(csrf):
        return p.forbidden()
    # Back to the page it was chosen on, never elsewhere.
    response = see_other(back if back.startswith("/portal") and "//" not in back else "/portal")
    if lang in LANGUAGES:
        response.set_cookie(sessions.LANGUAGE_COOKIE, lang, max_age=365 * 86400, httponly=True, samesite="lax",
                            path="/portal", secure=p.config.public_url.startswith("https://"))
    return response


# Tickets --------------------------------------------------------------------------------------
@router.api_route("/tickets", methods=["GET", "HEAD"], response_class=HTMLResponse)
def ticket_list(q: str = "", closed: str = "", p: Portal = Depends(portal)):
    if p.session is None or not p.session.everything:
        return see_other("/portal")
    with reader(p.app.engine) as db:
        rows = actions.my_tickets(db, p.person, text=q, statuses=p.pages.statuses_named(p.lang, q),
                                  include_closed=bool(closed))
        return p.page("tickets.html", tickets=rows, q=q, closed=bool(closed))


def _ticket_page(p: Portal, number: str, status: int = 200, error: str = "", form: dict | None = None):
    if p.session is None or not p.session.allows(number):
        return p.not_found()
    with reader(p.app.engine) as db:
        try:
            ticket = actions.visible_ticket(db, p.person, number)
        except NotFound:
            return p.not_found()
        messages = []
        for message, files in actions.public_messages(db, ticket):
            html = Markup(sanitize_html(message.body_html)) if message.body_html else None
            messages.append({"message": message, "files": files, "html": html,
                             "duplicate": message.direction == "in" and message.body_text.strip()
                             == ticket.description.strip() and not html})
        return p.page("ticket.html", status, ticket=ticket, messages=messages,
                      assessments=actions.assessments(db, ticket), error=error, form=form or {},
                      can_comment=ticket.status not in (lifecycle.SOLVED, lifecycle.CLOSED),
                      solved=ticket.status == lifecycle.SOLVED, levels=actions.LEVELS)


@router.api_route("/tickets/{number}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def ticket_page(number: str, p: Portal = Depends(portal)):
    return _ticket_page(p, number)


@router.api_route("/tickets/{number}/files/{attachment_id}", methods=["GET", "HEAD"])
def download(number: str, attachment_id: int, p: Portal = Depends(portal)):
    if p.session is None or not p.session.allows(number):
        return p.not_found()
    with reader(p.app.engine) as db:
        try:
            att = actions.visible_attachment(db, p.person, number, attachment_id)
        except NotFound:
            return p.not_found()
    try:
        data = p.app.blobs.get(att.sha256)
    except FileNotFoundError:
        return p.not_found()
    kind = att.content_type if att.content_type not in INLINE_UNSAFE else "application/octet-stream"
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;' else "_" for ch in att.filename)
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(att.filename)}"
    return Response(data, media_type=kind, headers={**DOWNLOAD_HEADERS, "Content-Disposition": disposition})


@router.post("/tickets/{number}/comment")
def add_comment(number: str, text: str = Form(""), csrf: str = Form(""),
                files: list[UploadFile] | None = File(None), p: Portal = Depends(portal)):
    if not p.checked(csrf):
        return p.forbidden()
    if p.session is None or not p.session.allows(number):
        return p.not_found()
    try:
        actions.comment(p.app, p.person.id, number, text, _uploads(files), client=p.client)
    except NotFound:
        return p.not_found()
    except Refused as exc:
        return _ticket_page(p, number, 400, error=_said(p, exc), form={"text": text})
    return see_other(f"/portal/tickets/{number.upper()}?done=comment")


@router.post("/tickets/{number}/assessment")
def assess(number: str, answer: str = Form(""), level: str = Form(""), text: str = Form(""), csrf: str = Form(""),
           p: Portal = Depends(portal)):
    if not p.checked(csrf):
        return p.forbidden()
    if p.session is None or not p.session.allows(number):
        return p.not_found()
    try:
        actions.assess(p.app, p.person.id, number, solved=answer != "not-solved",
                       level=int(level) if level.isdigit() else None, text=text, client=p.client)
    except NotFound:
        return p.not_found()
    except Refused as exc:
        return _ticket_page(p, number, 400, error=_said(p, exc), form={"answer": answer, "text": text})
    return see_other(f"/portal/tickets/{number.upper()}?done=assessment")


@router.api_route("/new", methods=["GET", "HEAD"], response_class=HTMLResponse)
def new_ticket_form(process: str = "incident", p: Portal = Depends(portal)):
    if p.session is None:
        return see_other("/portal")
    return p.page("new.html", form={"process": process if process in actions.WEB_PROCESSES else "incident"},
                  error="", processes=actions.WEB_PROCESSES)


@router.post("/new")
def new_ticket(process: str = Form(""), title: str = Form(""), description: str = Form(""),
               reference: str = Form(""), csrf: str = Form(""), files: list[UploadFile] | None = File(None),
               p: Portal = Depends(portal)):
    if not p.checked(csrf):
        return p.forbidden()
    if p.session is None:
        return see_other("/portal")
    try:
        number = actions.create(p.app, p.person.id, process=process, title=title, description=description,
                                reference=reference, uploads=_uploads(files), client=p.client)
    except Refused as exc:
        return p.page("new.html", 400, error=_said(p, exc), processes=actions.WEB_PROCESSES,
                      form={"process": process, "title": title, "description": description, "reference": reference})
    response = see_other(f"/portal/tickets/{number}?done=created")
    if not p.session.everything:
        # A session opened by one ticket's link now follows the new ticket too: its own.
        sessions.start(response, p.config, p.person.id, number, p.now)
    return response


def _(text: str) -> str:  # marks a sentence for the catalog (pybabel extract); translated by ``_said``
    return text


# The actions' refusals, in the customer's language (the catalog holds these sentences).
_REFUSALS = {
    "write a comment or add a file": _("Write a comment or add a file."),
    "choose a satisfaction level from 1 to 5": _("Choose a satisfaction level from 1 to 5."),
    "say in a comment": _("Please say in a comment what is still wrong: without a comment the ticket cannot be "
                        "reopened."),
    "a ticket needs a title": _("A ticket needs a title."),
    "a ticket needs a description": _("A ticket needs a description."),
    "choose an Incident": _("Choose an Incident or a Service Request."),
    "is Closed": _("This ticket is closed: a new problem needs a new ticket."),
    "is Solved": _("This ticket is solved: say below whether the problem is solved."),
    "is not Solved": _("This ticket is not solved: there is nothing to assess."),
    "files are too large": _("The files are too large together."),
    "files at once": _("Too many files at once."),
}


def _said(p: Portal, exc: Exception) -> str:
    tr = p.pages.gettext(p.lang)
    for start, sentence in _REFUSALS.items():
        if start in str(exc):
            return tr(sentence)
    return str(exc)
