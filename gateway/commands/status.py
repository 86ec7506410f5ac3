"""status: is mail flowing?  For a person, and for a monitoring system (exit 1).

Helpdesks lose mail silently more than any other way: a mailbox whose password expired,
a relay that refuses, a worker that stopped.  ``gateway status`` reads the database
(and nothing else) and says, for each way in and out, when it last moved and what is
stuck, and exits 1 when something needs a person:

- a stored mail has waited longer than ``--max-wait`` minutes to be processed (no
  worker, or a worker stuck);
- a notification is overdue by more than ``--max-wait`` minutes (the relay refuses, or
  no deliverer runs), or one failed for good in the last 24 hours;
- with ``--quiet-hours H``: a way in (SMTP, each mailbox) has brought no mail for H hours;
- with ``--max-quarantined N``: more than N mails were quarantined in the last 24 hours.

The counts read the state indexes; "last mail in" reads the newest rows first and stops
at that way in's newest, so it costs little while mail flows (a way in that never brought
any is read to the end of the table: the cost of saying "never").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from gateway.app import App
from store.db import reader
from store.models import InboundMessage, Outbox, aware, utcnow


def register(sub, common) -> None:
    p = sub.add_parser("status", parents=[common],
                       help="is mail flowing: what came in and went out last, what waits; exit 1 if stuck")
    p.add_argument("--max-wait", type=float, default=10.0, metavar="MINUTES",
                   help="a mail waiting or a notification overdue longer than this is a problem (default 10)")
    p.add_argument("--quiet-hours", type=float, default=None, metavar="HOURS",
                   help="a way in (SMTP, a mailbox) with no mail for this long is a problem (default: not checked)")
    p.add_argument("--max-quarantined", type=int, default=None, metavar="N",
                   help="more mails quarantined in the last 24 hours than this is a problem (default: not checked)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


@dataclass
class Status:
    now: str
    last_received: dict[str, str | None]  # by way in: smtp, imap:<name>; None: never
    waiting: int  # stored, not processed yet
    oldest_waiting: str | None
    retrying: int  # waiting after a failed attempt
    quarantined: int
    quarantined_24h: int
    outbox_pending: int
    outbox_overdue: int  # pending and due for longer than --max-wait
    outbox_failed: int
    outbox_failed_24h: int
    problems: list[str] = field(default_factory=list)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _last_from(session: Session, source: str) -> datetime | None:
    """When ``source`` last brought a mail: the newest rows first, by id (no index on
    source needed: it stops at the first one)."""
    return aware(session.exec(select(InboundMessage.received_at).where(InboundMessage.source == source)
                               .order_by(col(InboundMessage.id).desc()).limit(1)).first())


def _count(session: Session, *where) -> int:
    return session.exec(select(func.count()).select_from(InboundMessage).where(*where)).one()


def gather(app: App, *, max_wait: float = 10.0, quiet_hours: float | None = None,
           max_quarantined: int | None = None, now: datetime | None = None) -> Status:
    now = now or utcnow()
    day = now - timedelta(days=1)
    late = now - timedelta(minutes=max_wait)
    sources = ["smtp", *(["lmtp"] if app.config.lmtp.enabled else []),
               *(f"imap:{box.name}" for box in app.config.mailboxes)]
    with reader(app.engine) as session:
        last = {source: _last_from(session, source) for source in sources}
        waiting = _count(session, InboundMessage.state == "received")
        oldest = aware(session.exec(select(func.min(InboundMessage.received_at))
                                     .where(InboundMessage.state == "received")).one())
        retrying = _count(session, InboundMessage.state == "received", col(InboundMessage.attempts) > 0)
        quarantined = _count(session, InboundMessage.state == "quarantined")
        quarantined_24h = _count(session, InboundMessage.state == "quarantined",
                                 col(InboundMessage.processed_at) >= day)

        def outbox(*where) -> int:
            return session.exec(select(func.count()).select_from(Outbox).where(*where)).one()

        pending = outbox(Outbox.state == "pending")
        overdue = outbox(Outbox.state == "pending", col(Outbox.next_attempt_at) < late)
        failed = outbox(Outbox.state == "failed")
        # Failed, and queued or last tried (next_attempt_at stays at the try that failed
        # for good, outbox.record) in the last 24 hours; a bounce marks its mail failed too.
        failed_24h = outbox(Outbox.state == "failed",
                            (col(Outbox.next_attempt_at) >= day) | (col(Outbox.created_at) >= day))
    status = Status(_iso(now), {s: _iso(t) for s, t in last.items()}, waiting, _iso(oldest), retrying,
                    quarantined, quarantined_24h, pending, overdue, failed, failed_24h)
    if oldest is not None and oldest < late:
        status.problems.append(f"{waiting} mail(s) waiting to be processed, the oldest since {_iso(oldest)} "
                               f"(over {max_wait:g} min): is a worker running? (gateway serve's log)")
    if retrying:
        status.problems.append(f"{retrying} mail(s) failed to be processed and wait for another attempt "
                               f"(gateway inbound list --state received)")
    if overdue:
        status.problems.append(f"{overdue} notification(s) overdue by over {max_wait:g} min: does the relay "
                               f"answer? (gateway outbox list --state pending)")
    if failed_24h:
        status.problems.append(f"{failed_24h} notification(s) failed for good in the last 24 hours "
                               f"(gateway outbox list --state failed; gateway outbox retry --failed)")
    if quiet_hours is not None:
        quiet = now - timedelta(hours=quiet_hours)
        for source, at in last.items():
            if at is None or at < quiet:
                status.problems.append(f"{source}: no mail for over {quiet_hours:g} h (last: {_iso(at) or 'never'})"
                                       + (f": gateway imap check {source[5:]}" if source.startswith("imap:") else ""))
    if max_quarantined is not None and quarantined_24h > max_quarantined:
        status.problems.append(f"{quarantined_24h} mails quarantined in the last 24 hours (over {max_quarantined}): "
                               f"gateway inbound list --state quarantined")
    return status


def cmd_status(config, args) -> int:
    status = gather(App(config), max_wait=args.max_wait, quiet_hours=args.quiet_hours,
                    max_quarantined=args.max_quarantined)
    if args.json:
        print(json.dumps(asdict(status), indent=2, ensure_ascii=False))
        return 1 if status.problems else 0
    for source, at in status.last_received.items():
        print(f"{'last mail in, ' + source + ':':<32} {at or 'never'}")
    print(f"{'waiting to be processed:':<32} {status.waiting}"
          + (f" (oldest since {status.oldest_waiting})" if status.oldest_waiting else "")
          + (f", {status.retrying} after a failed attempt" if status.retrying else ""))
    print(f"{'quarantined:':<32} {status.quarantined} ({status.quarantined_24h} in the last 24 hours)")
    print(f"{'notifications pending:':<32} {status.outbox_pending} ({status.outbox_overdue} overdue)")
    print(f"{'notifications failed:':<32} {status.outbox_failed} ({status.outbox_failed_24h} in the last 24 hours)")
    print()
    print("\n".join(f"PROBLEM: {p}" for p in status.problems) if status.problems else "OK")
    return 1 if status.problems else 0
