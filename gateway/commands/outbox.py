"""outbox list, outbox show, outbox flush, outbox retry."""

from __future__ import annotations

import json
import sys

from sqlmodel import col, select

from gateway.app import App
from gateway.outbound.outbox import deliver_pending
from store.db import session_for
from store.models import DeliveryAttempt, Outbox, Ticket


def register(sub, common) -> None:
    p = sub.add_parser("outbox", parents=[common], help="notifications waiting, sent or failed")
    osub = p.add_subparsers(dest="outbox_command", metavar="ACTION")
    osub.required = True
    s = osub.add_parser("list", parents=[common], help="every outbox mail with its state and last answer")
    s.add_argument("--state", choices=("pending", "sent", "failed"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)
    s = osub.add_parser("flush", parents=[common], help="deliver what is pending and due, now")
    s.set_defaults(func=cmd_flush)
    s = osub.add_parser("show", parents=[common], help="one outbox mail with every delivery attempt")
    s.add_argument("id", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)
    s = osub.add_parser("retry", parents=[common],
                        help="send again: make the mail(s) pending and due now, the give-up clock restarted")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="*", default=[], help="outbox id(s)")
    which.add_argument("--failed", action="store_true", help="every failed mail")
    s.set_defaults(func=cmd_retry)


def outbox_json(row: Outbox, number: str | None) -> dict:
    return {
        "id": row.id,
        "ticket": number,
        "event": row.event,
        "to": [row.recipient],
        "language": row.language,
        "subject": row.subject,
        "message_id": row.message_id,
        "state": row.state,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat() if row.state == "pending" else None,
        "last_answer": row.last_answer,
    }


def cmd_list(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        query = select(Outbox, Ticket.number).join(Ticket, col(Ticket.id) == col(Outbox.ticket_id), isouter=True)
        if args.state:
            query = query.where(Outbox.state == args.state)
        rows = [outbox_json(o, n) for o, n in session.exec(query.order_by(col(Outbox.id)))]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for r in rows:
        print(f"{r['id']:>5} {r['state']:<8} {r['attempts']:>2} {r['ticket'] or '-':<11} {r['event']:<12} "
              f"{','.join(r['to'])}  {r['last_answer'] or ''}")
    return 0


def cmd_flush(config, args) -> int:
    app = App(config)
    results = deliver_pending(app.engine, app.config, app.transport(), limit=100_000, notifier=app.notifier)
    sent = sum(1 for _, r in results if r.outcome == "sent")
    print(f"{sent} sent, {len(results) - sent} not sent")
    return 0


def cmd_show(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        row = session.get(Outbox, args.id)
        if row is None:
            print(f"no outbox mail {args.id}", file=sys.stderr)
            return 1
        ticket = session.get(Ticket, row.ticket_id) if row.ticket_id else None
        data = outbox_json(row, ticket.number if ticket else None)
        data["attempts_log"] = [
            {"at": a.at.isoformat(), "outcome": a.outcome, "answer": a.answer}
            for a in session.exec(select(DeliveryAttempt).where(DeliveryAttempt.outbox_id == row.id)
                                  .order_by(col(DeliveryAttempt.at), col(DeliveryAttempt.id)))
        ]
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    print(f"{data['id']} {data['state']} {data['ticket'] or '-'} {data['event']} <{data['message_id']}>")
    print(f"to: {', '.join(data['to'])}\nsubject: {data['subject']}")
    if data["next_attempt_at"]:
        print(f"next attempt: {data['next_attempt_at']}")
    for a in data["attempts_log"]:
        print(f"  {a['at']}  {a['outcome']:<9} {a['answer']}")
    return 0


def cmd_retry(config, args) -> int:
    """Send again (gateway.actions.outbox.retry)."""
    from gateway.actions.outbox import retry

    if not args.failed and not args.id:
        print("give outbox id(s) or --failed", file=sys.stderr)
        return 2
    done = retry(App(config), args.id, failed=args.failed)
    for i in done.missing:
        print(f"no outbox mail {i}", file=sys.stderr)
    print(f"{len(done.ids)} mail(s) pending again: {' '.join(str(i) for i in done.ids)}".rstrip(": "))
    return 1 if done.missing else 0
