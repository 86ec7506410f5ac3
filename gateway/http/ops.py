"""Operations: /healthz, /readyz and /metrics, for a monitoring system.

- ``GET /healthz``: 200 while the HTTP process runs (a liveness probe);
- ``GET /readyz``: 200 when every check passes, else 503; the JSON body names each
  check with ``ok`` and a ``detail`` (gateway.health.readiness);
- ``GET /metrics``: Prometheus's text format: the counters and histograms every process
  of this instance writes (gateway.metrics, multiprocess mode), added up, and the states
  read from the database at the scrape (OpsCollector).

No password: keep ``[http] host`` on loopback, or behind a proxy that only lets the
monitoring system through.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.engine import Engine

from gateway import health
from gateway.config import Config
from store import webhooks
from store.db import reader
from store.models import utcnow

log = logging.getLogger("gateway.http")

router = APIRouter(tags=["operations"])


@dataclass
class Ops:
    """What the operations routes read."""

    config: Config
    engine: Engine
    instance: str  # this gateway serve (gateway.heartbeat.instance_of)
    roles: tuple[str, ...]  # the processes it runs: door, worker-0, deliverer, http
    doors: dict[str, int]  # door name -> the port it listens on
    metrics_dir: Path | None
    registry: object = field(default=None)

    def __post_init__(self) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        if self.metrics_dir is not None and self.metrics_dir.is_dir():
            MultiProcessCollector(self.registry, path=str(self.metrics_dir))
        self.registry.register(OpsCollector(self))


def ops(request: Request) -> Ops:
    return request.app.state.ops


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(context: Ops = Depends(ops)) -> JSONResponse:
    checks = health.readiness(context.config, context.engine, instance=context.instance,
                              roles=[r for r in context.roles if r != "http"], doors=context.doors)
    ready = all(check.ok for check in checks)
    return JSONResponse({"ready": ready,
                         "failing": [check.name for check in checks if not check.ok],
                         "checks": {check.name: {"ok": check.ok, "detail": check.detail} for check in checks},
                         # Every instance on this database, for the reader (issue 19); each
                         # one's own /readyz judges it.
                         "instances": health.instance_list(context.config, context.engine)},
                        status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(context: Ops = Depends(ops)) -> Response:
    from prometheus_client import generate_latest

    return Response(generate_latest(context.registry), media_type=TEXT_FORMAT)


# Prometheus's text format as every Prometheus 2 server names it (prometheus_client's
# newest name, version=1.0.0, is the same text, which only Prometheus 3 knows by it).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


class OpsCollector:
    """The gauges read from the database at each scrape (gateway.health: indexes and the
    newest rows only).  If the database cannot be read, gateway_database_up is 0 and
    the others are left out rather than shown as zeros that look healthy."""

    def __init__(self, context: Ops):
        self.context = context

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        context, config = self.context, self.context.config
        now = utcnow()
        up = GaugeMetricFamily("gateway_database_up", "1 when the database answered this scrape's queries")
        started = time.monotonic()
        try:
            with reader(context.engine) as session:
                inbound = health.inbound_figures(session, now)
                outbox = health.outbox_figures(session, now, now)
                relay = health.relay_figures(session, config.monitoring.relay_failures)
                procs = health.processes(session, now, config.monitoring.heartbeat_interval)
                polls = health.mailbox_polls(session, [box.name for box in config.mailboxes])
                hooks = webhooks.counts(session)
        except Exception as exc:  # noqa: BLE001 - a scrape says the database is down, it does not fail
            log.warning("metrics: the database could not be read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        scrape = GaugeMetricFamily("gateway_database_scrape_seconds", "Time this scrape's database queries took")
        scrape.add_metric([], time.monotonic() - started)
        yield scrape

        def age(since: datetime | None) -> float:
            return max((now - since).total_seconds(), 0.0) if since is not None else 0.0

        depth = GaugeMetricFamily("gateway_queue_depth", "Mails waiting: inbound (stored, not processed), outbox "
                                  "(notifications pending), quarantine (held for a person)", labels=["queue"])
        oldest = GaugeMetricFamily("gateway_queue_oldest_seconds", "Age of the oldest in each queue (since it was "
                                   "received, queued, quarantined); 0 when empty", labels=["queue"])
        for queue, count, since in (("inbound", inbound.waiting, inbound.oldest_waiting),
                                    ("outbox", outbox.pending, outbox.oldest_pending),
                                    ("quarantine", inbound.quarantined, inbound.oldest_quarantined)):
            depth.add_metric([queue], count)
            oldest.add_metric([queue], age(since))
        yield depth
        yield oldest
        due = GaugeMetricFamily("gateway_outbox_oldest_due_seconds", "How long the pending notification due longest "
                                "has been due (a retry waiting for its time is not due); 0 when none")
        due.add_metric([], age(outbox.oldest_due))
        yield due
        day = GaugeMetricFamily("gateway_quarantined_last_day", "Mails quarantined in the last 24 hours")
        day.add_metric([], inbound.quarantined_last_day)
        yield day
        failing = GaugeMetricFamily("gateway_relay_failed_attempts", "The relay's newest delivery attempts that "
                                    "failed in a row (refused or not answered), up to [monitoring] relay_failures")
        failing.add_metric([], relay.failures)
        yield failing
        latest = health.latest_by_role(procs, context.instance)
        process_up = GaugeMetricFamily("gateway_process_up", "1 when this instance's process of that role beats its "
                                       "heartbeat", labels=["role"])
        for role in context.roles:
            process_up.add_metric([role], 1 if role == "http" or (role in latest and latest[role].alive) else 0)
        yield process_up
        poll_failing = GaugeMetricFamily("gateway_mailbox_poll_failing", "1 when the mailbox's last poll failed",
                                         labels=["mailbox"])
        poll_ok = GaugeMetricFamily("gateway_mailbox_last_success_timestamp_seconds",
                                    "When the mailbox's last poll that worked ended (Unix time); 0: never",
                                    labels=["mailbox"])
        for name, poll in polls.items():
            poll_failing.add_metric([name], 1 if poll.failing else 0)
            poll_ok.add_metric([name], poll.last_success_at.timestamp() if poll.last_success_at else 0)
        yield poll_failing
        yield poll_ok
        events = GaugeMetricFamily("gateway_webhook_events", "Webhook events by state: pending (to be delivered), "
                                   "delivered, failed (the schedule exhausted)", labels=["state"])
        for state, count in hooks.items():
            events.add_metric([state], count)
        yield events
        journal = health.journal_state(config.data_dir / "spool", now)
        journal_age = GaugeMetricFamily("gateway_journal_oldest_seconds", "Age of the oldest mail answered 250 and "
                                        "not yet recorded in the database (the door's journal); 0 when none")
        journal_age.add_metric([], age(journal.oldest))
        yield journal_age
