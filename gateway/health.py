"""How the gateway is doing, read from the database: the figures ``gateway status``,
/readyz and /metrics share, each read once here.

Every query reads an index or a few of the newest rows, never the whole of a table:
/metrics runs them at every scrape (every 15 s or so) against a store of a million
mails.  The waiting mails and the pending notifications are few and found by their
state's index; the quarantine is counted from the (state, processed_at) index
(revision 0007); the relay's last attempts are the newest rows by primary key.

The outbox is read in ``outbox_figures`` and ``relay_figures`` only, through the columns
it has had from the start (state, attempts, next_attempt_at, created_at, sent_at) and
its DeliveryAttempt rows, so a new shape of the outbox changes these two functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, select

from gateway.heartbeat import MISSED_BEATS
from gateway.ingest import faults
from gateway.outbound.outbox import NOT_SENT, REQUEUED
from store.db import reader
from store.models import DeliveryAttempt, InboundMessage, MailboxPoll, Outbox, ServiceProcess, aware
from store.models import utcnow as utcnow_aware

# A mail in the door's journal (answered 250, not yet in the database) older than this
# means its recorder is stuck: the database is down or locked (seconds).
JOURNAL_MAX_AGE = 60.0


def _count(session: Session, model, *where) -> int:
    return session.exec(select(func.count()).select_from(model).where(*where)).one()


# Inbound ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class InboundFigures:
    waiting: int  # stored, not processed yet
    oldest_waiting: datetime | None  # received_at of the oldest of them
    retrying: int  # waiting after a failed attempt
    quarantined: int
    oldest_quarantined: datetime | None  # when the longest-held was quarantined
    quarantined_last_day: int
    # waiting after a failure of the surroundings (a full disk, the database away), not
    # yet processed since (gateway.ingest.faults)
    stalled: int = 0
    stalled_detail: str | None = None


def inbound_figures(session: Session, now: datetime) -> InboundFigures:
    waiting = InboundMessage.state == "received"
    held = InboundMessage.state == "quarantined"
    return InboundFigures(
        waiting=_count(session, InboundMessage, waiting),
        oldest_waiting=aware(session.exec(select(func.min(InboundMessage.received_at)).where(waiting)).one()),
        retrying=_count(session, InboundMessage, waiting, col(InboundMessage.attempts) > 0),
        quarantined=_count(session, InboundMessage, held),
        oldest_quarantined=aware(session.exec(select(func.min(InboundMessage.processed_at)).where(held)).one()),
        quarantined_last_day=_count(session, InboundMessage, held,
                                    col(InboundMessage.processed_at) >= now - timedelta(days=1)),
        stalled=_count(session, InboundMessage, waiting, col(InboundMessage.waits) > 0),
        stalled_detail=session.exec(select(InboundMessage.detail).where(waiting, col(InboundMessage.waits) > 0)
                                    .order_by(col(InboundMessage.id).desc()).limit(1)).first(),
    )


# Outbox -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutboxFigures:
    pending: int
    oldest_pending: datetime | None  # when the longest-waiting pending one was queued
    oldest_due: datetime | None  # since when the pending one due longest has been due
    overdue: int  # pending and due since before ``late``
    failed: int | None = None  # (with_failed only: they are not a scrape's business)
    failed_last_day: int | None = None


def outbox_figures(session: Session, now: datetime, late: datetime, with_failed: bool = False) -> OutboxFigures:
    pending = Outbox.state == "pending"
    failed = failed_day = None
    if with_failed:
        day = now - timedelta(days=1)
        failed = _count(session, Outbox, Outbox.state == "failed")
        # Failed, and queued or last tried (next_attempt_at stays at the try that failed
        # for good, outbox.record) in the last 24 hours; a bounce marks its mail failed too.
        failed_day = _count(session, Outbox, Outbox.state == "failed",
                            (col(Outbox.next_attempt_at) >= day) | (col(Outbox.created_at) >= day))
    return OutboxFigures(
        pending=_count(session, Outbox, pending),
        oldest_pending=aware(session.exec(select(func.min(Outbox.created_at)).where(pending)).one()),
        oldest_due=aware(session.exec(select(func.min(Outbox.next_attempt_at))
                                      .where(pending, col(Outbox.next_attempt_at) <= now)).one()),
        overdue=_count(session, Outbox, pending, col(Outbox.next_attempt_at) < late),
        failed=failed,
        failed_last_day=failed_day,
    )


@dataclass(frozen=True)
class RelayFigures:
    failures: int  # how many of the newest attempts in a row failed (at most ``window``)
    last_at: datetime | None
    last_answer: str | None


def relay_figures(session: Session, window: int) -> RelayFigures:
    """The relay's newest delivery attempts: how many in a row were refused (4xx, 5xx)
    or not answered (a timeout, a connection refused).  Operator retries and mails never
    offered to the relay (every recipient undeliverable) are not the relay's answers."""
    rows = session.exec(select(DeliveryAttempt.outcome, DeliveryAttempt.at, DeliveryAttempt.answer)
                        .where(DeliveryAttempt.outcome != REQUEUED)
                        .order_by(col(DeliveryAttempt.id).desc()).limit(window + 10)).all()
    rows = [r for r in rows if not (r[2] or "").startswith(NOT_SENT)][:window]
    failures = 0
    for outcome, _at, _answer in rows:
        if outcome == "sent":
            break
        failures += 1
    last = rows[0] if rows else None
    return RelayFigures(failures, aware(last[1]) if last else None, last[2] if last else None)


# Processes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessState:
    """A row of serviceprocess and what it means now."""

    host: str
    pid: int
    instance: str
    role: str
    version: str
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None
    exit_reason: str | None
    alive: bool  # beating: not stopped, and heard from within MISSED_BEATS intervals

    @property
    def describe(self) -> str:
        if self.alive:
            return f"pid {self.pid} on {self.host}, heartbeat at {_iso(self.last_seen)}"
        if self.exit_reason:
            return f"pid {self.pid} on {self.host} {self.exit_reason} at {_iso(self.stopped_at)}"
        if self.stopped_at:
            return f"pid {self.pid} on {self.host} stopped at {_iso(self.stopped_at)}"
        return f"pid {self.pid} on {self.host}: no heartbeat since {_iso(self.last_seen)}"


def processes(session: Session, now: datetime, interval: float) -> list[ProcessState]:
    """Every process of every instance of gateway serve, oldest instance first."""
    stale = now - timedelta(seconds=interval * MISSED_BEATS)
    rows = session.exec(select(ServiceProcess).order_by(col(ServiceProcess.id))).all()
    return [ProcessState(r.host, r.pid, r.instance, r.role, r.version, aware(r.started_at), aware(r.last_seen),
                         aware(r.stopped_at), r.exit_reason,
                         r.stopped_at is None and aware(r.last_seen) >= stale) for r in rows]


def latest_by_role(rows: list[ProcessState], instance: str) -> dict[str, ProcessState]:
    """The newest process of each role of ``instance`` (a restarted worker replaces its row)."""
    latest: dict[str, ProcessState] = {}
    for row in rows:
        if row.instance == instance:
            latest[row.role] = row
    return latest


def service_problems(rows: list[ProcessState]) -> list[str]:
    """What ``gateway status`` says about the processes: nothing running at all; a process
    that died or went silent in an instance that was not stopped.  An instance stopped
    cleanly is an operator's decision, not a problem, while another one runs."""
    if not rows:
        return ["gateway serve has never run against this database (no heartbeat): nothing receives, processes "
                "or delivers mail"]
    if not any(row.alive for row in rows):
        last = max(rows, key=lambda r: r.last_seen)
        return [f"gateway serve is not running: the last heartbeat came at {_iso(last.last_seen)} from "
                f"{last.role} of {last.instance}"
                + (f" ({last.exit_reason})" if last.exit_reason else " (stopped)" if last.stopped_at else "")]
    problems = []
    for instance in dict.fromkeys(row.instance for row in rows):
        latest = latest_by_role(rows, instance)
        if all(r.stopped_at is not None and not r.exit_reason for r in latest.values()):
            continue
        for role, row in latest.items():
            if not row.alive and not (row.stopped_at and not row.exit_reason):
                problems.append(f"{role} of gateway serve {instance}: {row.describe}")
    return problems


def instances(rows: list[ProcessState]) -> list[dict]:
    """Every instance of gateway serve the heartbeats know, oldest first: its host, the
    version it runs, since when, when it was last heard from, whether it runs (a process
    of it beats) and its processes' roles (those beating)."""
    out: dict[str, dict] = {}
    for row in rows:
        entry = out.setdefault(row.instance, {"instance": row.instance, "host": row.host, "version": row.version,
                                              "started_at": _iso(row.started_at), "last_seen": _iso(row.last_seen),
                                              "running": False, "roles": []})
        entry["started_at"] = min(entry["started_at"], _iso(row.started_at))
        entry["last_seen"] = max(entry["last_seen"], _iso(row.last_seen))
        if row.alive:
            entry["running"] = True
            entry["roles"].append(row.role)
            entry["version"] = row.version
    return list(out.values())


def instance_list(config, engine, now: datetime | None = None) -> list[dict]:
    """``instances`` read from the database; empty when it cannot be read."""
    now = now or utcnow_aware()
    try:
        with reader(engine) as session:
            return instances(processes(session, now, config.monitoring.heartbeat_interval))
    except Exception:  # noqa: BLE001 - the database check says why
        return []


# Mailboxes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PollState:
    mailbox: str
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None

    @property
    def failing(self) -> bool:
        """The last pass failed (none worked since)."""
        return self.last_failure_at is not None and (self.last_success_at is None
                                                     or self.last_failure_at > self.last_success_at)


def mailbox_polls(session: Session, names: list[str]) -> dict[str, PollState]:
    rows = {r.mailbox: r for r in session.exec(select(MailboxPoll)).all()} if names else {}
    return {name: PollState(name, aware(rows[name].last_success_at), aware(rows[name].last_failure_at),
                            rows[name].last_error) if name in rows else PollState(name, None, None, None)
            for name in names}


# The door's journal -----------------------------------------------------------------------
@dataclass(frozen=True)
class JournalState:
    size: int  # bytes not yet recorded, all journals
    oldest: datetime | None  # the first mail of the fullest-waiting journal


def journal_state(folder: Path, now: datetime) -> JournalState:
    """Mails answered 250 whose row is not in the database yet (gateway.ingest.spool):
    each journal's first line is its oldest mail; nothing else is read."""
    size, oldest = 0, None
    for path in sorted(folder.glob("journal-*")) if folder.is_dir() else []:
        try:
            length = path.stat().st_size
            if not length:
                continue
            with open(path, "rb") as fh:
                first = fh.readline(64 * 1024)
        except OSError:
            continue
        size += length
        try:
            when = aware(datetime.fromisoformat(json.loads(first)["received_at"]))
        except (ValueError, KeyError, TypeError):
            when = aware(datetime.fromtimestamp(path.stat().st_mtime, now.tzinfo))
        oldest = when if oldest is None or when < oldest else oldest
    return JournalState(size, oldest)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


# Readiness (/readyz) ----------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def probe_door(port: int, host: str, timeout: float = 2.0) -> Check:
    """The door answers a new connection with its 220 greeting (a real SMTP client,
    which then says QUIT): it accepts, and its event loop is not stuck."""
    import smtplib

    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        client = smtplib.SMTP(timeout=timeout)
        code, banner = client.connect(target, port)
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()
    except (smtplib.SMTPException, OSError) as exc:
        return Check("door", False, f"no greeting on {target}:{port}: {type(exc).__name__}: {exc}")
    text = banner.decode("utf-8", "replace")
    return Check("door", code == 220, f"{target}:{port} answered {code} {text}")


def readiness(config, engine, *, instance: str, roles: list[str], doors: dict[str, int],
              now: datetime | None = None) -> list[Check]:
    """Every check of /readyz, in order; each names what it found.

    database reachable; each door accepting; each of this instance's processes beating
    (a worker that was killed fails here until the one started in its place beats);
    the journal drained (nothing in it older than JOURNAL_MAX_AGE); the oldest stored
    mail not yet processed and the pending notification due longest younger than
    ``[monitoring] max_wait``; the relay not failing its last ``relay_failures`` attempts."""
    now = now or utcnow_aware()
    monitoring = config.monitoring
    checks: list[Check] = []
    try:
        with reader(engine) as session:
            session.exec(select(1)).one()
            inbound = inbound_figures(session, now)
            outbox = outbox_figures(session, now, now)
            relay = relay_figures(session, monitoring.relay_failures)
            procs = processes(session, now, monitoring.heartbeat_interval)
        checks.append(Check("database", True, "reachable"))
    except Exception as exc:  # noqa: BLE001 - the answer is the check
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        checks.append(Check("database", False, f"{type(exc).__name__}: {reason}"))
        inbound = outbox = relay = None
        procs = []
    for name, port in doors.items():
        host = getattr(getattr(config, name, None), "host", "127.0.0.1")
        found = probe_door(port, host)
        checks.append(Check(f"door:{name}", found.ok, found.detail))
    latest = latest_by_role(procs, instance)
    for role in roles:
        row = latest.get(role)
        if inbound is None:
            checks.append(Check(role, False, "unknown: the database cannot be read"))
        elif row is None:
            checks.append(Check(role, False, "no heartbeat yet (starting?)"))
        else:
            checks.append(Check(role, row.alive, row.describe + ("" if row.alive or not row.exit_reason
                                                                 else "; being started again")))
    journal = journal_state(config.data_dir / "spool", now)
    journal_age = (now - journal.oldest).total_seconds() if journal.oldest else 0.0
    checks.append(Check("journal", journal_age < JOURNAL_MAX_AGE,
                        "drained" if journal.oldest is None else
                        f"{journal.size} bytes waiting to be recorded, the oldest for {journal_age:.0f} s"))
    short = faults.short_of_space(config)
    checks.append(Check("disk", short is None, short or "above the reserve"))
    limit = monitoring.max_wait
    if inbound is not None:
        checks.append(Check("surroundings", not inbound.stalled,
                            "no mail waits for them" if not inbound.stalled else
                            f"{inbound.stalled} mail(s) wait after a fault that is not theirs: {inbound.stalled_detail}"))
        waited = (now - inbound.oldest_waiting).total_seconds() if inbound.oldest_waiting else 0.0
        checks.append(Check("inbound", waited < limit,
                            f"{inbound.waiting} waiting to be processed"
                            + (f", the oldest for {waited:.0f} s (limit {limit} s)" if inbound.waiting else "")))
        due = (now - outbox.oldest_due).total_seconds() if outbox.oldest_due else 0.0
        checks.append(Check("outbox", due < limit,
                            f"{outbox.pending} pending" + (f", one due for {due:.0f} s (limit {limit} s)"
                                                           if outbox.oldest_due else "")))
        checks.append(Check("relay", relay.failures < monitoring.relay_failures,
                            "answering" if not relay.failures else
                            f"{relay.failures} of the last attempts failed in a row (limit "
                            f"{monitoring.relay_failures}); the last at {_iso(relay.last_at)}: {relay.last_answer}"))
    return checks
