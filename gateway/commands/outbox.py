"""outbox list, outbox show, outbox flush, outbox retry."""

from __future__ import annotations

import json
import sys

from gateway.app import App
from gateway.outbound.outbox import deliver_pending


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


from gateway.actions.outbox import outbox_json  # noqa: E402,F401 - the views live there


def cmd_list(config, args) -> int:
    from gateway.actions import outbox

    rows = outbox.listing(App(config), state=args.state)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for r in rows:
        print(f"{r['id']:>5} {r['state']:<8} {r['attempts']:>2} {r['ticket'] or '-':<11} {r['event']:<12} "
              f"{','.join(r['to'])}  {r['last_answer'] or ''}")
    return 0


def cmd_flush(config, args) -> int:
    app = App(config)
    results = deliver_pending(app.engine, app.config, app.transport(), limit=None, notifier=app.notifier)
    sent = sum(1 for _, r in results if r.outcome == "sent")
    print(f"{sent} sent, {len(results) - sent} not sent")
    return 0


def cmd_show(config, args) -> int:
    from gateway.actions import outbox
    from gateway.errors import NotFound

    try:
        data = outbox.show(App(config), args.id)
    except NotFound:
        print(f"no outbox mail {args.id}", file=sys.stderr)
        return 1
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
