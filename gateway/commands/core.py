"""serve, ingest, process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.errors import StoreFailed

# What a command needs is imported when it runs (``gateway --help`` and the parser of
# another command import none of it).


def register(sub, common) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the SMTP listener and the worker")
    p.add_argument("--accept-only", action="store_true",
                   help="only accept and store mail (no processing, no delivery): a listener-only node")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ingest", parents=[common], help="feed raw messages from files or stdin (-)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a .eml file, or - for standard input")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--no-deliver", action="store_true", help="leave notifications in the outbox")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("process", parents=[common], help="process stored mail that is waiting, now")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_process)


def cmd_serve(config, args) -> int:
    from gateway.service import serve

    return serve(config, accept_only=args.accept_only, log_level=args.log_level)


def _print_outcome(outcome: Outcome, as_json: bool) -> None:
    if as_json:
        print(json.dumps(outcome.as_dict(), ensure_ascii=False), flush=True)
    else:
        parts = [outcome.source, outcome.outcome]
        if outcome.ticket:
            parts.append(outcome.ticket)
        if outcome.detail:
            parts.append(f"({outcome.detail})")
        print(" ".join(parts), flush=True)


def cmd_ingest(config, args) -> int:
    from gateway import metrics
    from gateway.app import App
    from gateway.ingest.inbound import store_raw
    from gateway.ingest.process import Outcome

    app = App(config)
    status = 0
    for path in args.paths:
        source = "stdin" if path == "-" else path
        try:
            raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            _print_outcome(Outcome(source, "", "error", None, f"cannot read: {exc.strerror}"), args.json)
            status = 1
            continue
        size = len(raw)
        try:
            stored = store_raw(app.engine, app.blobs, raw, source=f"ingest:{source}")
            metrics.received("ingest")
        except StoreFailed as exc:
            _print_outcome(Outcome(source, "", "error", None, str(exc)), args.json)
            status = 1
            continue
        finally:
            # Processing reads the mail back from its blob: not two copies of a large one.
            raw = None
        # A new row is known to wait: processing need not read it back first.
        known = None if stored.duplicate else {stored.id: (stored.sha256, size)}
        outcome = app.processor.process_batch([stored.id], known=known)[0]
        if stored.duplicate:
            outcome = Outcome(source, stored.message_id, "duplicate", outcome.ticket,
                              f"already stored as #{stored.id}")
        else:
            outcome = Outcome(source, outcome.message_id, outcome.outcome, outcome.ticket, outcome.detail)
        _print_outcome(outcome, args.json)
    if not args.no_deliver:
        from gateway.outbound.outbox import deliver_pending

        deliver_pending(app.engine, app.config, app.transport())
    return status


def cmd_process(config, args) -> int:
    from gateway.app import App
    from gateway.outbound.outbox import deliver_pending

    app = App(config)
    for outcome in app.processor.process_pending(limit=10_000):
        _print_outcome(outcome, args.json)
    deliver_pending(app.engine, app.config, app.transport())
    return 0
