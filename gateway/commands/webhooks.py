"""webhooks list: the events queued for the configured webhooks, and how each went."""

from __future__ import annotations

import json

from gateway.app import App
from store import webhooks
from store.db import session_for


def register(sub, common) -> None:
    p = sub.add_parser("webhooks", parents=[common], help="webhook events: pending, delivered, failed")
    wsub = p.add_subparsers(dest="webhooks_command", metavar="ACTION")
    wsub.required = True
    s = wsub.add_parser("list", parents=[common], help="the newest events with their state and last answer")
    s.add_argument("--state", choices=(webhooks.PENDING, webhooks.DELIVERED, webhooks.FAILED))
    s.add_argument("--limit", type=int, default=100)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)


def cmd_list(config, args) -> int:
    app = App(config)
    with session_for(app.engine) as session:
        rows = [{"id": r.event_id, "event": r.event, "url": r.url, "state": r.state, "attempts": r.attempts,
                 "created_at": r.created_at.isoformat(), "next_attempt_at": r.next_attempt_at.isoformat(),
                 "last_answer": r.last_answer}
                for r in webhooks.listing(session, args.state, args.limit)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not config.webhooks:
        print("no [[webhooks]] in the configuration")
    if not rows:
        print("no webhook events")
    for r in rows:
        print(f"{r['id']}  {r['event']:<22} {r['state']:<9} {r['attempts']} attempt(s)  {r['url']}  "
              f"{r['last_answer'] or ''}")
    return 0
