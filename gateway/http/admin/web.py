"""What every page of the console shares: its Jinja2 pages in the admin's language, the
session cookie, the CSRF check of every form, the headers that keep a page to itself.

- The pages are ``templates/admin/*.html.j2`` (shipped in the wheel as the mail
  templates are), their words gettext messages of the ``console`` catalogs
  (``templates/admin/locale/<lang>/LC_MESSAGES/console.po``), compiled in memory.
- ``signed_in``: the admin of the session cookie; without one, a GET is sent to the
  sign-in page (302) and anything else is refused (401).
- ``form``: a POST's fields, once its ``csrf`` field is the session's token (403
  otherwise); the sign-in form, before any session, checks its token against a cookie
  of its own (double submit).
- The cookie is HttpOnly, SameSite=Strict, for /admin only, and Secure when the request
  came over TLS (or a trusted proxy says it did) or ``[admin] secure_cookies = "always"``.
"""

from __future__ import annotations

import functools
import hmac
import io
import secrets
from pathlib import Path
from urllib.parse import quote

import jinja2
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.actions import admins
from gateway.http.deps import gateway_app

COOKIE = "gw_admin"
PRE_COOKIE = "gw_admin_pre"  # the sign-in form's CSRF token, before any session
PATH = "/admin"
LANGUAGES = ("fr", "nl", "en", "de")
LANGUAGE_NAMES = {"fr": "Français", "nl": "Nederlands", "en": "English", "de": "Deutsch"}
# The console's own pages: its scripts and styles only, framed by nobody; the preview
# of a mail's HTML is the one frame, from this origin, under its own policy (PREVIEW_CSP).
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# A mail's HTML as the customer's mail program shows it: sandboxed (an origin of its own,
# no script, no form, no navigation of the console), nothing fetched from anywhere.
PREVIEW_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


def admin_dir() -> Path:
    """templates/admin: in the installed package (a wheel), else in the checkout."""
    import importlib.resources

    installed = importlib.resources.files("gateway") / "templates" / "admin"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[3] / "templates" / "admin"


ADMIN_DIR = admin_dir()
STATIC_DIR = ADMIN_DIR / "static"


@functools.lru_cache(maxsize=8)
def translations(lang: str) -> Translations:
    po = ADMIN_DIR / "locale" / lang / "LC_MESSAGES" / "console.po"
    if not po.is_file():
        return Translations()
    with open(po, "rb") as fh:
        catalog = read_po(fh, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(buf)


@functools.lru_cache(maxsize=8)
def environment(lang: str) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ADMIN_DIR)), autoescape=True,
                             undefined=jinja2.StrictUndefined, extensions=["jinja2.ext.i18n"],
                             trim_blocks=True, lstrip_blocks=True)
    env.install_gettext_translations(translations(lang), newstyle=True)
    env.globals["language"] = lang
    env.globals["language_names"] = LANGUAGE_NAMES
    return env


def negotiated(request: Request) -> str:
    """The language of a page without a session: the browser's first of fr, nl, en, de."""
    header = request.headers.get("accept-language", "")
    ranked = []
    for i, item in enumerate(header.split(",")):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((-q, i, tag.strip().lower()[:2]))
    for _, _, tag in sorted(ranked):
        if tag in LANGUAGES:
            return tag
    return "en"


def gettext(lang: str, message: str, **values) -> str:
    text = translations(lang).gettext(message)
    return text % values if values else text


def secure(request: Request) -> bool:
    setting = gateway_app(request).config.admin
    if setting.secure_cookies != "auto":
        return setting.secure_cookies == "always"
    if request.url.scheme == "https":
        return True
    return setting.trust_proxy and request.headers.get("x-forwarded-proto", "").lower() == "https"


def client(request: Request) -> str:
    if gateway_app(request).config.admin.trust_proxy:
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded:
            return forwarded.split(",")[0].strip()
    return request.client.host if request.client else ""


def headers(response: Response, csp: str = CONSOLE_CSP) -> Response:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    if csp == CONSOLE_CSP:
        response.headers["X-Frame-Options"] = "DENY"
    return response


def page(request: Request, template: str, *, status: int = 200, who: admins.Current | None = None,
         **values) -> HTMLResponse:
    ui = who.language if who else negotiated(request)
    html = environment(ui).get_template(template).render(
        who=who, csrf=who.csrf if who else values.pop("csrf", ""), path=request.url.path, **values)
    return headers(HTMLResponse(html, status_code=status))


def signed_in(request: Request) -> admins.Current:
    """A FastAPI dependency: the admin of the session, else 302 to sign-in (GET) or 401."""
    who = admins.current(gateway_app(request), request.cookies.get(COOKIE))
    if who is None:
        if request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise HTTPException(302, "sign in first",
                                headers={"Location": f"{PATH}/sign-in?next={quote(target, safe='')}",
                                         "Cache-Control": "no-store"})
        raise HTTPException(401, "sign in first", headers={"Cache-Control": "no-store"})
    return who


async def form(request: Request) -> dict[str, str]:
    """A POST's fields, refused (403) unless its csrf field is the session's token."""
    who = signed_in(request)
    fields = await request.form()
    sent = str(fields.get("csrf", ""))
    if not sent or not hmac.compare_digest(sent, who.csrf):
        raise HTTPException(403, "this form has expired or did not come from the console: load the page again")
    return {key: str(value) for key, value in fields.items()}


def set_session(response: Response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(COOKIE, token, max_age=max_age, path=PATH, httponly=True, samesite="strict",
                        secure=secure(request))


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict", secure=secure(request))


def pre_token(request: Request, response: Response | None = None) -> str:
    token = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(24)
    return token


def set_pre(response: Response, request: Request, token: str) -> None:
    response.set_cookie(PRE_COOKIE, token, max_age=3600, path=PATH, httponly=True, samesite="strict",
                        secure=secure(request))


def redirect(url: str) -> RedirectResponse:
    return headers(RedirectResponse(url, status_code=303))


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of the console only (no open redirect)."""
    value = value or ""
    if value.startswith(PATH + "/") or value == PATH:
        if "//" not in value and "\\" not in value:
            return value
    return PATH + "/"
