"""The notification mails' templates: which file each event uses, a preview (an event x
language x waiting reason on sample data, or the next mail of a real ticket), and the
check that renders every case.  For the command line (gateway templates) and the API
(/api/v1/templates), and the admin console next."""

from __future__ import annotations

from gateway.errors import NotFound, Refused
from gateway.outbound.notify import sample_context
from gateway.actions.preview import NobodyToMail, preview_sample, preview_ticket
from gateway.outbound.render import EVENTS, LANGUAGES, TICKETLESS, RenderError, check_templates, template_files
from store.db import session_for
from store.lifecycle import WAITING_REASONS
from store.tickets import NotFound as TicketNotFound


def listing(app) -> list[dict]:
    """Every event and kind (text, html, subject...) with the file in use: override or shipped."""
    renderer = app.renderer
    rows = []
    for event, kind, path in template_files(renderer):
        origin = None if path is None else (
            "override" if renderer.override_dir and path.parent == renderer.override_dir else "shipped")
        # The languages an admin overrode it in alone (<override_dir>/<lang>/, the console's).
        alone = [lang for lang in LANGUAGES if renderer.override_dir
                 and (renderer.override_dir / lang / f"{event}.{kind}.j2").is_file()]
        rows.append({"event": event, "kind": kind, "path": str(path) if path else None, "origin": origin,
                     "overridden_in": alone})
    return rows


def preview(app, event: str, language: str = "en", *, ticket: str | None = None, waiting_reason: str | None = None):
    """The mail as the customer gets it (gateway.outbound.preview's Composed): on sample
    data, or the next mail of ``event`` for ``ticket``.  Refused for an event about no
    ticket asked on a ticket, or a template that cannot be rendered; NotFound for an
    unknown ticket."""
    if event not in EVENTS:
        raise Refused(f"unknown event {event!r}; one of {', '.join(EVENTS)}")
    if language not in LANGUAGES:
        raise Refused(f"unknown language {language!r}; one of {', '.join(LANGUAGES)}")
    if waiting_reason is not None and waiting_reason not in WAITING_REASONS:
        raise Refused(f"unknown waiting reason {waiting_reason!r}; one of {', '.join(WAITING_REASONS)}")
    try:
        if ticket and event in TICKETLESS:
            raise Refused(f"{event} is about no ticket: preview it without a ticket")
        if ticket:
            with session_for(app.engine) as session:
                try:
                    return preview_ticket(app.notifier, session, ticket, event)
                except TicketNotFound as exc:
                    raise NotFound(str(exc).strip("'\"")) from None
                except NobodyToMail as exc:
                    raise Refused(str(exc)) from None
                finally:
                    session.rollback()  # a preview writes nothing
        return preview_sample(app.notifier, event, language, waiting_reason)
    except RenderError as exc:
        raise Refused(f"cannot render {event}: {exc}") from None


def preview_json(composed) -> dict:
    mail, msg = composed.mail, composed.message
    headers = {k: str(v) for k, v in msg.items() if not k.lower().startswith("content-")}
    return {"event": mail.event, "language": mail.language, "headers": headers, "subject": str(msg["Subject"]),
            "action": mail.action, "text": mail.text, "html": mail.html,
            "raw": composed.raw.decode("utf-8", "replace")}


def check(app, events: tuple[str, ...] = EVENTS):
    """Render every event x language x waiting reason on sample data: the failures."""
    notifier = app.notifier
    return check_templates(app.renderer, lambda e, lang, reason: sample_context(notifier, e, lang, reason),
                           events=events, waiting_reasons=WAITING_REASONS)


def cases(events: tuple[str, ...] = EVENTS) -> int:
    return sum(len(WAITING_REASONS) if e == "waiting" else 1 for e in events) * len(LANGUAGES)


def check_json(app) -> dict:
    failures = check(app)
    return {"cases": cases(), "failures": [
        {"event": f.event, "language": f.language, "waiting_reason": f.waiting_reason, "error": f.error}
        for f in failures]}
