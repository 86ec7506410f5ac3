"""The gateway's Prometheus metrics: what each process counts, and where it keeps it.

``gateway serve`` is several processes (the door, the workers, the deliverer, the HTTP
server), and ``gateway ingest`` others still, so each counts in a file of its own:
prometheus_client's multiprocess mode, under ``<data_dir>/metrics/``.  The HTTP
process adds the files up at every scrape (gateway.http.ops).  What is a state rather
than an event (queue depths and ages, the relay's run of failures, heartbeats) is read
from the database at scrape time instead (gateway.health), so it is right even about
what happened while no process was counting.

A process takes a name for its file (``door``, ``worker-0``, ``deliverer``, ``http``,
``cli``, then ``cli.1``... for commands running side by side), held by a lock on
``<name>.lock`` for as long as it lives.  A process started again under the same name
(a worker serve restarted, the next ``gateway ingest``) takes up the file where the last
one left it, so the totals survive restarts and the folder holds a file per name, not
per process that ever ran.

Until ``enable`` is called the functions below do nothing: the tests that drive the
code in their own process and the commands that count nothing never write a file.
Counting never fails a mail: a folder that cannot be written turns counting off, with a
warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from store.vocabulary import PROCESS_PREFIX

log = logging.getLogger("gateway.metrics")

# The label values every scrape shows from the start (at 0), so that a rate or an alert
# has a series to read before the first event.
DOORS = ("smtp", "lmtp", "imap", "ingest")
OUTCOMES = ("created", "appended", "reopened", "approval", "new-from-closed", "needs-comment", "duplicate",
            "auto-reply", "bounce", "feedback", "loop", "rejected", "held", "ignored", "quarantined")
PROCESSES = {prefix: process for process, prefix in PROCESS_PREFIX.items()}  # INC -> incident
NOTIFICATION_STATES = ("sent", "failed", "retried")
# Why the SMTP door refused: a closed set (gateway.ingest.smtp).
REFUSALS = ("unknown-recipient", "too-many-recipients", "bad-address", "too-large", "line-too-long",
            "structure", "loop", "too-many-connections", "store-failed")
# 250 -> committed: milliseconds when the workers keep up, minutes when they do not.
PROCESSING_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# Queued -> the relay's 250: seconds, or hours of retries.
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)

_metrics: "_Metrics | None" = None
_locks: list = []  # the lock files held for this process's name


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        # registry=None: the writers only write their file; the HTTP process collects.
        self.received = Counter("gateway_mails_received", "Mails taken in by a door: answered 250 (SMTP, LMTP), "
                                "stored from a mailbox (IMAP) or by gateway ingest", ["door"], registry=None)
        self.processed = Counter("gateway_mails_processed", "Mails processed, by outcome", ["outcome"],
                                 registry=None)
        self.errors = Counter("gateway_processing_errors", "Processing attempts that failed (the mail is tried "
                              "again, and quarantined after [limits] max_attempts)", registry=None)
        self.tickets = Counter("gateway_tickets_created", "Tickets created, by process", ["process"], registry=None)
        self.notifications = Counter("gateway_notifications", "Delivery attempts of notifications, by result: sent, "
                                     "failed (for good) or retried (to be tried again)", ["state"], registry=None)
        self.refused = Counter("gateway_smtp_refused", "SMTP commands or connections the door refused, by reason",
                               ["reason"], registry=None)
        self.processing = Histogram("gateway_processing_seconds", "From a mail's 250 (or storing) to the commit of "
                                    "its processing", buckets=PROCESSING_BUCKETS, registry=None)
        self.delivery = Histogram("gateway_delivery_seconds", "From a notification's queueing to the relay's 250",
                                  buckets=DELIVERY_BUCKETS, registry=None)

    def zeros(self) -> None:
        """Every known label value, at 0 (only adds a key to this process's file)."""
        for door in DOORS:
            self.received.labels(door)
        for outcome in OUTCOMES:
            self.processed.labels(outcome)
        for process in PROCESSES.values():
            self.tickets.labels(process)
        for state in NOTIFICATION_STATES:
            self.notifications.labels(state)
        for reason in REFUSALS:
            self.refused.labels(reason)


def folder(data_dir: Path) -> Path:
    return Path(data_dir) / "metrics"


def enable(directory: Path, role: str) -> bool:
    """Count in this process from now on, in ``directory``, under ``role`` (or the first
    free ``role.N``).  False (and a warning) when the folder cannot be used."""
    global _metrics
    if _metrics is not None:
        return True
    try:
        directory.mkdir(parents=True, exist_ok=True)
        name = _claim(directory, role)
        # prometheus_client reads the folder from the environment when a value is made;
        # the name of the file comes from the identifier given here instead of the pid.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        from prometheus_client import values

        values.ValueClass = values.MultiProcessValue(lambda: name)
        _metrics = _Metrics()
    except OSError as exc:
        log.warning("metrics are not counted by this process: %s", exc)
        return False
    return True


def enabled() -> bool:
    return _metrics is not None


def _claim(directory: Path, role: str) -> str:
    for n in range(10_000):
        # No "_" in a name: prometheus_client splits the file's name on it.
        name = role.replace("_", "-") if n == 0 else f"{role.replace('_', '-')}.{n}"
        handle = open(directory / f"{name}.lock", "a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _locks.append(handle)
        return name
    raise OSError(f"no free metrics file name for {role} in {directory}")


def door_of(source: str) -> str:
    """The door label of an inbound row's source (smtp, imap:<mailbox>, ingest:<path>)."""
    door = source.split(":", 1)[0]
    return door if door in DOORS else "ingest"


# What the processes count -----------------------------------------------------------------
def received(source: str) -> None:
    if _metrics is not None:
        _metrics.received.labels(door_of(source)).inc()


def refused(reason: str) -> None:
    if _metrics is not None:
        _metrics.refused.labels(reason).inc()


def processed(outcome: str, ticket: str | None, seconds: float | None) -> None:
    """A mail's processing was committed: its outcome, the ticket it made (for the
    tickets counted by process) and the time since it was received."""
    if _metrics is None:
        return
    _metrics.processed.labels(outcome).inc()
    if outcome in ("created", "new-from-closed") and ticket:
        ticket_created(PROCESSES.get(ticket.split("-", 1)[0], "incident"))
    if seconds is not None:
        _metrics.processing.observe(max(seconds, 0.0))


def processing_failed() -> None:
    if _metrics is not None:
        _metrics.errors.inc()


def ticket_created(process: str) -> None:
    if _metrics is not None:
        _metrics.tickets.labels(process).inc()


def notification(state: str, seconds: float | None = None) -> None:
    """A delivery attempt's result: sent (``seconds`` since it was queued), failed, retried."""
    if _metrics is None:
        return
    _metrics.notifications.labels(state).inc()
    if state == "sent" and seconds is not None:
        _metrics.delivery.observe(max(seconds, 0.0))


def zeros() -> None:
    if _metrics is not None:
        _metrics.zeros()
