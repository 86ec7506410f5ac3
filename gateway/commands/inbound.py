"""inbound list, inbound show, inbound reprocess: every mail received, with its outcome;
quarantined mail shown with its reason and replayed when the cause is fixed."""

from __future__ import annotations

import json
import sys

from gateway.app import App
from gateway.errors import CommandError

from gateway.actions.inbound import STATES, inbound_json  # noqa: E402,F401 - the rules live there


def register(sub, common) -> None:
    p = sub.add_parser("inbound", parents=[common], help="mail received: outcome, quarantine, replay")
    isub = p.add_subparsers(dest="inbound_command", metavar="ACTION")
    isub.required = True
    s = isub.add_parser("list", parents=[common], help="received mail, newest first")
    s.add_argument("--state", choices=STATES, help="only this state (quarantined: what needs a look)")
    s.add_argument("--outcome", help="only this outcome (created, appended, bounce, auto-reply...)")
    s.add_argument("--limit", type=int, default=100)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)
    s = isub.add_parser("show", parents=[common], help="one received mail: envelope, outcome, reason")
    s.add_argument("id", type=int)
    s.add_argument("--raw", action="store_true", help="print the raw message as received")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)
    s = isub.add_parser("reprocess", parents=[common],
                        help="process quarantined mail again (after a fix): by id, or every quarantined one")
    s.add_argument("ids", type=int, nargs="*")
    s.add_argument("--quarantined", action="store_true", help="every quarantined mail")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_reprocess)


def cmd_list(config, args) -> int:
    from gateway.actions import inbound

    rows = inbound.listing(App(config), state=args.state, outcome=args.outcome, limit=max(1, args.limit))
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no mail")
    for r in rows:
        print(f"{r['id']:>6} {r['received_at'][:19]} {r['state']:<11} {r['outcome'] or '-':<14} "
              f"{r['ticket'] or '-':<11} {r['mail_from'] or '-':<30} {r['detail'] or ''}")
    return 0


def cmd_show(config, args) -> int:
    from gateway.actions import inbound

    app = App(config)
    if args.raw:
        sys.stdout.buffer.write(inbound.raw(app, args.id))
        return 0
    data = inbound.show(app, args.id)
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    for key, value in data.items():
        print(f"{key + ':':<14} {value if value is not None else '-'}")
    return 0


def cmd_reprocess(config, args) -> int:
    """Process quarantined mail again (gateway.actions.inbound.reprocess)."""
    from gateway.actions.inbound import reprocess

    if not args.quarantined and not args.ids:
        raise CommandError("name the mails to reprocess (ids) or give --quarantined")
    done = reprocess(App(config), args.ids, quarantined=args.quarantined)
    if done.skipped:
        # On stderr: with --json, stdout stays one JSON object a mail.
        n = len(done.skipped)
        print(f"skipped {n} too-large mail(s) ({', '.join(f'#{i}' for i in done.skipped)}): only the header is "
              f"stored, the mail was not fetched; to take {'it' if n == 1 else 'them'}, {done.skipped_help}",
              file=sys.stderr)
    status = 0
    for inbound_id, outcome in done.outcomes:
        if outcome.outcome == "quarantined":
            status = 1
        if args.json:
            print(json.dumps({"id": inbound_id, **outcome.as_dict()}, ensure_ascii=False))
        else:
            print(f"#{inbound_id} {outcome.outcome}" + (f" {outcome.ticket}" if outcome.ticket else "")
                  + (f" ({outcome.detail})" if outcome.detail else ""))
    return status
