"""The admin console, /admin: server-rendered pages for the admins who tune the mails.

- ``auth``: sign-in (rate limited, accounts locked after failures), sign-out, language;
- ``notifications``: the grid of every mail, its preview as the customer gets it, the
  editor of an override (check, save, versions, diff, revert, a test sent to oneself);
- ``operations``: the quarantine (reprocess), failed notifications (retry), the
  instances and /readyz's checks, people's and companies' languages.

Every page but the sign-in page and the static files needs a session (web.signed_in);
every form carries the session's CSRF token (web.form); every change is audited
(store.audit) by the actions the routes call.  The console calls gateway.actions and
gateway.outbound directly, as the command line does.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse, Response

from gateway.http.admin import auth, notifications, operations, web

STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}

router = APIRouter(prefix=web.PATH, include_in_schema=False)
router.include_router(auth.router)

protected = APIRouter(dependencies=[Depends(web.signed_in)])
protected.include_router(notifications.router)
protected.include_router(operations.router)


@protected.get("/")
def home() -> Response:
    return web.redirect(f"{web.PATH}/notifications")


router.include_router(protected)


@router.get("", dependencies=[Depends(web.signed_in)])
def bare() -> Response:
    return web.redirect(f"{web.PATH}/notifications")


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404)
    response = FileResponse(web.STATIC_DIR / name, media_type=STATIC[name])
    response.headers["Cache-Control"] = "max-age=300"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
