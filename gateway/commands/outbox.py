"""outbox list, outbox flush."""

from __future__ import annotations

import json

from sqlmodel import col, select

from gateway.app import App
from gateway.outbound.outbox import deliver_pending
from store.db import session_for
from store.models import Outbox, Ticket


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


def outbox_json(row: Outbox, number: str | None) -> dict:
    return {
        "id": row.id,
        "ticket": number,
        "event": row.event,
        "to": [r for r in row.recipients.split(",") if r],
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
    results = deliver_pending(app.engine, config, app.transport(), limit=100_000)
    sent = sum(1 for _, r in results if r.outcome == "sent")
    print(f"{sent} sent, {len(results) - sent} not sent")
    return 0
