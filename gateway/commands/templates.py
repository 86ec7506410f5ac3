"""templates list|preview|check|compile: the admin's view of the notification mails."""

from __future__ import annotations

import json
import sys

from gateway.app import App
from gateway.errors import CommandError
from gateway.outbound.notify import sample_context
from gateway.actions.preview import NobodyToMail, preview_sample, preview_ticket
from gateway.outbound.render import EVENTS, LANGUAGES, TICKETLESS, RenderError, check_templates, compile_catalogs, template_files
from store.db import session_for
from store.lifecycle import WAITING_REASONS
from store.tickets import NotFound, get_ticket


def register(sub, common) -> None:
    p = sub.add_parser("templates", parents=[common], help="list, preview, check and compile the mail templates")
    tsub = p.add_subparsers(dest="templates_command", metavar="ACTION")
    tsub.required = True

    s = tsub.add_parser("list", parents=[common], help="every event and the template file in use (override or shipped)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = tsub.add_parser("preview", parents=[common],
                        help="print a mail as the customer gets it: headers, text and HTML (--raw: its bytes)")
    s.add_argument("event", choices=EVENTS)
    s.add_argument("--lang", default="en", choices=LANGUAGES)
    s.add_argument("--ticket", metavar="NUMBER", help="use this ticket's data instead of sample data")
    s.add_argument("--waiting-reason", choices=WAITING_REASONS, help="for the waiting mail with sample data")
    s.add_argument("--raw", action="store_true",
                   help="the message exactly as sent (an .eml: every header, encoded), not decoded for reading")
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
    """The mail as the customer gets it, made by the outbox's own composition
    (gateway.actions.preview): the same bytes but the Date and the Message-ID."""
    app = App(config)
    try:
        if args.ticket and args.event in TICKETLESS:
            raise CommandError(f"{args.event} is about no ticket: preview it without --ticket")
        if args.ticket:
            with session_for(app.engine) as session:
                try:
                    composed = preview_ticket(app.notifier, session, args.ticket, args.event)
                except (NotFound, NobodyToMail) as exc:
                    raise CommandError(str(exc)) from None
                finally:
                    session.rollback()  # a preview writes nothing
        else:
            composed = preview_sample(app.notifier, args.event, args.lang, args.waiting_reason)
    except RenderError as exc:
        raise CommandError(f"cannot render {args.event}: {exc}") from None
    mail, msg = composed.mail, composed.message
    if args.raw:
        sys.stdout.flush()
        sys.stdout.buffer.write(composed.raw)
        sys.stdout.buffer.flush()
        return 0
    if args.json:
        headers = {k: str(v) for k, v in msg.items() if not k.lower().startswith("content-")}
        print(json.dumps({"event": mail.event, "language": mail.language, "headers": headers,
                          "subject": str(msg["Subject"]), "action": mail.action, "text": mail.text,
                          "html": mail.html, "raw": composed.raw.decode("utf-8", "replace")},
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
