"""status: is mail flowing?  For a person, and for a monitoring system (exit 1).

Helpdesks lose mail silently more than any other way: a mailbox whose password expired,
a relay that refuses, a worker that stopped.  ``gateway status`` reads the database
(and nothing else) and says, for each way in and out, when it last moved and what is
stuck, and exits 1 when something needs a person.  With no option it catches:

- gateway serve not running: no process has beaten its heartbeat lately, or one of a
  running instance's processes died or went silent (gateway.heartbeat);
- a mailbox whose last poll failed (its password, its server; recorded by the poller);
- the relay refused or did not answer the last ``[monitoring] relay_failures`` attempts;
- a mail quarantined in the last 24 hours (``--max-quarantined N`` allows N);
- a stored mail waiting longer than ``--max-wait`` minutes (``[monitoring] max_wait``)
  to be processed, or one waiting for another attempt after a failure;
- a notification overdue by more than ``--max-wait`` minutes, or one failed for good in
  the last 24 hours;
- with ``--quiet-hours H``: a way in (SMTP, each mailbox) has brought no mail for H hours.

The figures come from gateway.health (shared with /readyz and /metrics): indexes and the
newest rows.  "Last mail in" reads the newest rows first and stops at that way in's
newest, so it costs little while mail flows (a way in that never brought any is read to
the end of the table: the cost of saying "never").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from gateway import health
from gateway.ingest import faults
from gateway.app import App
from store.db import reader
from store.models import InboundMessage, aware, utcnow


def register(sub, common) -> None:
    p = sub.add_parser("status", parents=[common],
                       help="is mail flowing: what came in and went out last, what waits; exit 1 if stuck")
    p.add_argument("--max-wait", type=float, default=None, metavar="MINUTES",
                   help="a mail waiting or a notification overdue longer than this is a problem "
                        "(default: [monitoring] max_wait, 10 minutes)")
    p.add_argument("--quiet-hours", type=float, default=None, metavar="HOURS",
                   help="a way in (SMTP, a mailbox) with no mail for this long is a problem (default: not checked)")
    p.add_argument("--max-quarantined", type=int, default=0, metavar="N",
                   help="more mails quarantined in the last 24 hours than this is a problem (default 0)")
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
    relay_failures: int = 0  # the newest delivery attempts in a row that failed
    processes: list[dict] = field(default_factory=list)  # gateway serve's, by instance
    mailboxes: dict[str, dict] = field(default_factory=dict)  # the last poll of each
    problems: list[str] = field(default_factory=list)
    instances: list[dict] = field(default_factory=list)  # every gateway serve on this database


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _last_from(session: Session, source: str) -> datetime | None:
    """When ``source`` last brought a mail: the newest rows first, by id (no index on
    source needed: it stops at the first one)."""
    return aware(session.exec(select(InboundMessage.received_at).where(InboundMessage.source == source)
                               .order_by(col(InboundMessage.id).desc()).limit(1)).first())


# complex: one independent figure or threshold after another (the status page's list), read top to bottom
def gather(app: App, *, max_wait: float | None = None, quiet_hours: float | None = None,
           max_quarantined: int | None = 0, now: datetime | None = None) -> Status:
    """The figures and the problems; ``max_wait`` in minutes (None: the config's),
    ``max_quarantined`` None: not checked."""
    now = now or utcnow()
    monitoring = app.config.monitoring
    max_wait = monitoring.max_wait / 60 if max_wait is None else max_wait
    late = now - timedelta(minutes=max_wait)
    sources = ["smtp", *(["lmtp"] if app.config.lmtp.enabled else []),
               *(f"imap:{box.name}" for box in app.config.mailboxes)]
    with reader(app.engine) as session:
        last = {source: _last_from(session, source) for source in sources}
        inbound = health.inbound_figures(session, now)
        outbox = health.outbox_figures(session, now, late, with_failed=True)
        relay = health.relay_figures(session, monitoring.relay_failures)
        procs = health.processes(session, now, monitoring.heartbeat_interval)
        polls = health.mailbox_polls(session, [box.name for box in app.config.mailboxes])
    status = Status(_iso(now), {s: _iso(t) for s, t in last.items()}, inbound.waiting, _iso(inbound.oldest_waiting),
                    inbound.retrying, inbound.quarantined, inbound.quarantined_last_day, outbox.pending,
                    outbox.overdue, outbox.failed, outbox.failed_last_day, relay.failures,
                    [{"instance": p.instance, "role": p.role, "pid": p.pid, "host": p.host, "version": p.version,
                      "started_at": _iso(p.started_at), "last_seen": _iso(p.last_seen), "alive": p.alive,
                      "stopped_at": _iso(p.stopped_at), "exit_reason": p.exit_reason} for p in procs],
                    {name: {"last_success_at": _iso(p.last_success_at), "last_failure_at": _iso(p.last_failure_at),
                            "last_error": p.last_error, "failing": p.failing} for name, p in polls.items()})
    status.instances = health.instances(procs)
    status.problems += health.service_problems(procs)
    if (short := faults.short_of_space(app.config)) is not None:
        status.problems.append(f"disk: {short}: the doors answer 452, the worker and the deliverer wait; free "
                               f"some space")
    if inbound.stalled:
        status.problems.append(f"{inbound.stalled} mail(s) wait after a fault of the surroundings, not theirs "
                               f"(the last: {inbound.stalled_detail}); they are taken again by themselves")
    for name, poll in polls.items():
        if poll.failing:
            status.problems.append(f"mailbox {name}: its last poll failed at {_iso(poll.last_failure_at)} "
                                   f"({poll.last_error}); last one that worked: {_iso(poll.last_success_at) or 'never'}"
                                   f": gateway imap check {name}")
    if relay.failures >= monitoring.relay_failures:
        status.problems.append(f"the relay refused or did not answer the last {relay.failures} delivery attempts "
                               f"(the last at {_iso(relay.last_at)}: {relay.last_answer}): check [outbound.smtp] "
                               f"and the relay (gateway outbox list --state pending)")
    oldest = inbound.oldest_waiting
    if oldest is not None and oldest < late:
        status.problems.append(f"{inbound.waiting} mail(s) waiting to be processed, the oldest since {_iso(oldest)} "
                               f"(over {max_wait:g} min): is a worker running? (gateway serve's log)")
    if inbound.retrying:
        status.problems.append(f"{inbound.retrying} mail(s) failed to be processed and wait for another attempt "
                               f"(gateway inbound list --state received)")
    if outbox.overdue:
        status.problems.append(f"{outbox.overdue} notification(s) overdue by over {max_wait:g} min: does the relay "
                               f"answer? (gateway outbox list --state pending)")
    if outbox.failed_last_day:
        status.problems.append(f"{outbox.failed_last_day} notification(s) failed for good in the last 24 hours "
                               f"(gateway outbox list --state failed; gateway outbox retry --failed)")
    if quiet_hours is not None:
        quiet = now - timedelta(hours=quiet_hours)
        for source, at in last.items():
            if at is None or at < quiet:
                status.problems.append(f"{source}: no mail for over {quiet_hours:g} h (last: {_iso(at) or 'never'})"
                                       + (f": gateway imap check {source[5:]}" if source.startswith("imap:") else ""))
    if max_quarantined is not None and inbound.quarantined_last_day > max_quarantined:
        status.problems.append(f"{inbound.quarantined_last_day} mail(s) quarantined in the last 24 hours "
                               f"(over {max_quarantined}): gateway inbound list --state quarantined")
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
    print(f"{'relay, failed attempts in a row:':<32} {status.relay_failures}")
    for name, poll in status.mailboxes.items():
        print(f"{'mailbox ' + name + ', last poll:':<32} "
              + ("failed " + str(poll["last_failure_at"]) if poll["failing"] else f"ok {poll['last_success_at'] or 'never'}"))
    for inst in status.instances:
        print(f"{'instance ' + inst['instance'] + ':':<32} "
              + ("running" if inst["running"] else "not running")
              + f", version {inst['version']}, started {inst['started_at']}, last heartbeat {inst['last_seen']}")
    for proc in status.processes:
        print(f"{proc['role'] + ' of ' + proc['instance'] + ':':<32} "
              + ("running" if proc["alive"] else "stopped" if proc["stopped_at"] and not proc["exit_reason"]
                 else "NOT RUNNING") + f" (pid {proc['pid']}, last heartbeat {proc['last_seen']})")
    print()
    print("\n".join(f"PROBLEM: {p}" for p in status.problems) if status.problems else "OK")
    return 1 if status.problems else 0
