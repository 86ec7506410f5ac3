"""inbound list, inbound show, inbound reprocess: every mail received, with its outcome;
quarantined mail shown with its reason and replayed when the cause is fixed."""

from __future__ import annotations

import json
import sys

from sqlmodel import col, select

from gateway.app import App
from gateway.errors import CommandError
from store.db import session_for
from store.models import InboundMessage

STATES = ("received", "processed", "quarantined")


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


def inbound_json(row: InboundMessage) -> dict:
    return {
        "id": row.id,
        "received_at": row.received_at.isoformat() if row.received_at else None,
        "source": row.source,
        "mail_from": row.mail_from,
        "rcpt_to": [r for r in row.rcpt_to.split(",") if r],
        "message_id": row.message_id,
        "size": row.size,
        "sha256": row.sha256,
        "state": row.state,
        "outcome": row.outcome,
        "ticket": row.ticket_number,
        "detail": row.detail,
        "attempts": row.attempts,
        "processed_at": row.processed_at.isoformat() if row.processed_at else None,
    }


def cmd_list(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        query = select(InboundMessage)
        if args.state:
            query = query.where(InboundMessage.state == args.state)
        if args.outcome:
            query = query.where(InboundMessage.outcome == args.outcome)
        rows = [inbound_json(r) for r in session.exec(query.order_by(col(InboundMessage.id).desc())
                                                      .limit(max(1, args.limit)))]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no mail")
    for r in rows:
        print(f"{r['id']:>6} {r['received_at'][:19]} {r['state']:<11} {r['outcome'] or '-':<14} "
              f"{r['ticket'] or '-':<11} {r['mail_from'] or '-':<30} {r['detail'] or ''}")
    return 0


def _get(session, inbound_id: int) -> InboundMessage:
    row = session.get(InboundMessage, inbound_id)
    if row is None:
        raise CommandError(f"no received mail #{inbound_id}")
    return row


def cmd_show(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        row = _get(session, args.id)
        data = inbound_json(row)
    if args.raw:
        sys.stdout.buffer.write(app.blobs.get(data["sha256"]))
        return 0
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
