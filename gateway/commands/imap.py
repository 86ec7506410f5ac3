"""imap check NAME, imap backfill NAME [--since DATE], imap retry-failed NAME."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import date

from gateway.app import App
from gateway.config import ConfigError
from gateway.errors import CommandError
from gateway.ingest import imap


def register(sub, common) -> None:
    p = sub.add_parser("imap", parents=[common], help="mailboxes read over IMAP")
    isub = p.add_subparsers(dest="imap_command", metavar="ACTION")
    isub.required = True
    s = isub.add_parser("check", parents=[common],
                        help="try DNS, TCP, TLS, login and the folders of a mailbox; say which step fails")
    s.add_argument("name", help="the mailbox's name in [[mailboxes]]")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)
    s = isub.add_parser("backfill", parents=[common],
                        help="import what is in a mailbox's folder now, once, with progress and a summary")
    s.add_argument("name", help="the mailbox's name in [[mailboxes]]")
    s.add_argument("--since", type=_date, metavar="YYYY-MM-DD",
                   help="only messages the server received on or after this day (IMAP SINCE)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_backfill)
    s = isub.add_parser("retry-failed", parents=[common],
                        help="move back to the mailbox's folder what its failed folder holds that could not be "
                             "stored (after an outage); quarantined and too-large mail stays")
    s.add_argument("name", help="the mailbox's name in [[mailboxes]]")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_retry_failed)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _mailbox(config, name: str):
    try:
        return config.mailbox(name)
    except ConfigError as exc:
        raise CommandError(str(exc), status=2) from None


def cmd_check(config, args) -> int:
    box = _mailbox(config, args.name)
    steps = imap.check(box)
    failed = next((s for s in steps if not s.ok), None)
    if args.json:
        print(json.dumps({"mailbox": box.name, "ok": failed is None,
                          "failed_step": failed.name if failed else None,
                          "steps": [{"step": s.name, "ok": s.ok, "detail": s.detail} for s in steps]}, indent=2))
    else:
        for s in steps:
            print(f"{s.name:<12} {'ok' if s.ok else 'FAILED':<6} {s.detail}")
        if failed:
            print(f"mailbox {box.name}: FAILED at step {failed.name}: {failed.detail}")
        else:
            print(f"mailbox {box.name}: all checks passed")
    return 1 if failed else 0


def cmd_backfill(config, args) -> int:
    from tqdm import tqdm

    box = _mailbox(config, args.name)
    app = App(config)
    criteria = ["SINCE", args.since] if args.since else []
    try:
        client = imap.open_mailbox(box)
    except imap.ImapConfigError as exc:
        raise CommandError(f"mailbox {box.name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - say what failed; `imap check` says where
        raise CommandError(f"mailbox {box.name}: cannot connect or log in: {type(exc).__name__}: {exc} "
                           f"(run `gateway imap check {box.name}` to see which step fails)") from None
    counts: Counter[str] = Counter()
    folders: Counter[str] = Counter()
    tickets: set[str] = set()
    try:
        importer = imap.Importer(box, app.engine, app.blobs, process=app.processor.process,
                                 max_size=config.smtp.max_message_size,
                                 too_large_notice=app.processor.notify_too_large)
        importer.prepare(client)
        uids = importer.pending(client, criteria)
        # The bar goes to stderr, so the summary on stdout stays clean for scripts.
        with tqdm(total=len(uids), desc=f"{box.name}", unit="mail", file=sys.stderr,
                  disable=args.no_progress, mininterval=0.5) as bar:
            for uid in uids:
                item = importer.take(client, uid)
                counts["already stored" if item.duplicate else item.outcome] += 1
                if item.moved_to:
                    folders[item.moved_to] += 1
                if item.ticket:
                    tickets.add(item.ticket)
                bar.update(1)
    finally:
        imap.close_quietly(client)
    summary = {"mailbox": box.name, "messages": sum(counts.values()), "outcomes": dict(sorted(counts.items())),
               "moved_to": dict(sorted(folders.items())), "tickets": len(tickets)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"mailbox {box.name}: {summary['messages']} message(s) read from {box.folder!r}"
              + (f" since {args.since.isoformat()}" if args.since else ""))
        for outcome, n in sorted(counts.items()):
            print(f"  {outcome:<16} {n}")
        for folder, n in sorted(folders.items()):
            print(f"  moved to {folder!r}: {n}")
        print(f"  tickets touched: {len(tickets)}")
    return 1 if counts.get("store-failed") else 0


def cmd_retry_failed(config, args) -> int:
    box = _mailbox(config, args.name)
    app = App(config)
    try:
        results = imap.retry_failed(box, app.engine, max_size=config.smtp.max_message_size)
    except imap.ImapConfigError as exc:
        raise CommandError(f"mailbox {box.name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - say what failed; `imap check` says where
        raise CommandError(f"mailbox {box.name}: {type(exc).__name__}: {exc} "
                           f"(run `gateway imap check {box.name}` to see which step fails)") from None
    if args.json:
        print(json.dumps([{"uid": r.uid, "message_id": r.message_id, "outcome": r.outcome, "moved_to": r.moved_to,
                           "detail": r.detail} for r in results], indent=2))
    else:
        for r in results:
            where = f"moved back to {r.moved_to!r}" if r.moved_to else f"left in {box.failed_folder!r}"
            print(f"UID {r.uid} <{r.message_id}>: {where}{f' ({r.detail})' if r.detail else ''}")
        moved = sum(1 for r in results if r.moved_to)
        print(f"mailbox {box.name}: {moved} of {len(results)} message(s) in {box.failed_folder!r} moved back "
              f"to {box.folder!r}; the running gateway takes them again")
    return 0
