"""templates list|preview|check|compile: the admin's view of the notification mails."""

from __future__ import annotations

import json
import sys

from gateway.app import App
from gateway.errors import CommandError
from gateway.outbound.notify import sample_context, sample_row
from gateway.outbound.render import EVENTS, LANGUAGES, TICKETLESS, RenderError, check_templates, compile_catalogs, template_files
from store.db import session_for
from store.lifecycle import WAITING_REASONS
from store.models import Outbox
from store.notifications import plan
from store.tickets import NotFound, get_ticket


def register(sub, common) -> None:
    p = sub.add_parser("templates", parents=[common], help="list, preview, check and compile the mail templates")
    tsub = p.add_subparsers(dest="templates_command", metavar="ACTION")
    tsub.required = True

    s = tsub.add_parser("list", parents=[common], help="every event and the template file in use (override or shipped)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = tsub.add_parser("preview", parents=[common], help="print a rendered mail: headers, text and HTML")
    s.add_argument("event", choices=EVENTS)
    s.add_argument("--lang", default="en", choices=LANGUAGES)
    s.add_argument("--ticket", metavar="NUMBER", help="use this ticket's data instead of sample data")
    s.add_argument("--waiting-reason", choices=WAITING_REASONS, help="for the waiting mail with sample data")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_preview)

    s = tsub.add_parser("check", parents=[common],
                        help="render every event x language x waiting reason with sample data; "
                             "undefined variables are errors")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)

    s = tsub.add_parser("compile", parents=[common], help="write the .mo files of the shipped and override catalogs")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_compile)


def cmd_list(config, args) -> int:
    renderer = App(config).renderer
    rows = []
    for event, kind, path in template_files(renderer):
        origin = None if path is None else (
            "override" if renderer.override_dir and path.parent == renderer.override_dir else "shipped")
        rows.append({"event": event, "kind": kind, "path": str(path) if path else None, "origin": origin})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['event']:<22} {r['kind']:<5} {r['origin'] or 'MISSING':<9} {r['path'] or ''}")
    return 0


def cmd_preview(config, args) -> int:
    app = App(config)
    notifier = app.notifier
    try:
        if args.ticket and args.event in TICKETLESS:
            raise CommandError(f"{args.event} is about no ticket: preview it without --ticket")
        # The row the outbox would hold, composed as the deliverer composes it: the
        # preview is the mail the customer gets, but for its Date and Message-ID.
        if args.ticket:
            with session_for(app.engine) as session:
                try:
                    ticket = get_ticket(session, args.ticket)
                except NotFound as exc:
                    raise CommandError(str(exc)) from None
                rows = plan(session, app.notices, ticket, args.event)
                session.rollback()  # a preview writes nothing
            if not rows:
                raise CommandError(f"{ticket.number}: nobody to mail (every recipient is undeliverable)")
            row = Outbox(**rows[0])
        else:
            row = sample_row(config, args.event, args.lang, args.waiting_reason)
        composed = notifier.compose(row, safe=False)
        mail, msg = composed.mail, composed.message
    except RenderError as exc:
        raise CommandError(f"cannot render {args.event}: {exc}") from None
    if args.json:
        headers = {k: str(v) for k, v in msg.items() if not k.lower().startswith("content-")}
        print(json.dumps({"event": mail.event, "language": mail.language, "headers": headers,
                          "subject": str(msg["Subject"]), "text": mail.text, "html": mail.html},
                         ensure_ascii=False, indent=2))
        return 0
    for key, value in msg.items():
        if not key.lower().startswith("content-") and key.lower() != "mime-version":
            print(f"{key}: {value}")
    print(f"Content-Language: {mail.language}")
    print("\n--- text/plain ---")
    print(mail.text)
    print("--- text/html ---")
    print(mail.html)
    return 0


def run_check(app: App, events: tuple[str, ...] = EVENTS):
    notifier = app.notifier
    return check_templates(app.renderer, lambda e, lang, reason: sample_context(notifier, e, lang, reason),
                           events=events, waiting_reasons=WAITING_REASONS)


def cmd_check(config, args) -> int:
    app = App(config)
    failures = run_check(app)
    cases = sum(len(WAITING_REASONS) if e == "waiting" else 1 for e in EVENTS) * len(LANGUAGES)
    if args.json:
        print(json.dumps({"cases": cases, "failures": [
            {"event": f.event, "language": f.language, "waiting_reason": f.waiting_reason, "error": f.error}
            for f in failures]}, ensure_ascii=False, indent=2))
    else:
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        print(f"{cases - len(failures)} of {cases} renderings passed")
    return 1 if failures else 0


def cmd_compile(config, args) -> int:
    renderer = App(config).renderer
    written = compile_catalogs(renderer.shipped_dir)
    if renderer.override_dir:
        written += compile_catalogs(renderer.override_dir)
    if args.json:
        print(json.dumps([str(p) for p in written], indent=2))
    else:
        for p in written:
            print(f"wrote {p}")
    return 0
