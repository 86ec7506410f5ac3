"""Delivering webhook events (queued by store.webhooks in the transaction of each
change): claimed by the deliverer, POSTed signed as the Standard Webhooks specification
says (https://www.standardwebhooks.com): ``webhook-id`` (the event's id, the same on every
attempt: a receiver drops what it has seen), ``webhook-timestamp`` (Unix seconds of this
attempt), ``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256, keyed with the
base64-decoded secret after ``whsec_``, of ``id.timestamp.body``).  A 2xx answer
delivers the event; any other answer, or none, schedules the next attempt by the
webhook's retry_schedule, and fails it after the last.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from gateway import metrics
from store.db import session_for
from store.models import WebhookEvent, utcnow
from store.webhooks import DELIVERED, FAILED, PENDING

log = logging.getLogger("gateway.webhooks")

# A claimed event is this deliverer's until then (another instance's deliverer skips it);
# a restarted deliverer on the same host takes a dead one's claims at once.
CLAIM_LEASE = timedelta(minutes=5)
TIMEOUT = 10  # seconds a receiver has to answer
_TABLE = WebhookEvent.__table__


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header's value (Standard Webhooks, v1)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass(frozen=True)
class Answer:
    ok: bool
    text: str


def post(url: str, secret: str, event_id: str, body: bytes, now: datetime) -> Answer:
    """One attempt: POST the signed body; ok for a 2xx answer."""
    timestamp = int(now.timestamp())
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "helpdesk-mail-gateway",
        "webhook-id": event_id, "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, event_id, timestamp, body)})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - http(s) only (config)
            return Answer(200 <= response.status < 300, f"{response.status} {response.reason}")
    except urllib.error.HTTPError as exc:
        return Answer(False, f"{exc.code} {exc.reason}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer(False, f"no answer: {reason}")


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _running(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def release_dead_claims(engine: Engine) -> int:
    """Give back the events claimed by a deliverer of this host that is gone (killed
    mid-delivery): they are sent again now, with the same id."""
    host = socket.gethostname()
    with session_for(engine) as session:
        holders = set(session.exec(select(WebhookEvent.claimed_by).where(
            col(WebhookEvent.claimed_by).is_not(None), WebhookEvent.state == PENDING)))
        dead = [h for h in holders if h and h.rpartition(":")[0] == host and not _running(h.rpartition(":")[2])]
        if not dead:
            return 0
        done = session.execute(update(_TABLE).where(_TABLE.c.claimed_by.in_(dead))
                               .values(claimed_by=None, claimed_until=None))
        session.commit()
        return done.rowcount or 0


def _claim(engine: Engine, now: datetime, limit: int, me: str) -> list[WebhookEvent]:
    with session_for(engine) as session:
        ids = list(session.exec(
            select(WebhookEvent.id)
            .where(WebhookEvent.state == PENDING, col(WebhookEvent.next_attempt_at) <= now,
                   or_(col(WebhookEvent.claimed_until).is_(None), col(WebhookEvent.claimed_until) < now))
            .order_by(col(WebhookEvent.id)).limit(limit).with_for_update(skip_locked=True)))
        if not ids:
            return []
        session.execute(update(_TABLE).where(_TABLE.c.id.in_(ids))
                        .values(claimed_by=me, claimed_until=now + CLAIM_LEASE))
        rows = list(session.exec(select(WebhookEvent).where(col(WebhookEvent.id).in_(ids))
                                 .order_by(col(WebhookEvent.id))))
        session.commit()
        return rows


def deliver_due(engine: Engine, hooks, limit: int = 50, now=None, send=post) -> int:
    """Deliver the events that are due, oldest first; returns how many were tried.  A
    2xx answer delivers the event; any other answer (or none) schedules the next attempt
    by the webhook's retry_schedule, and fails it after the last."""
    by_url = {hook.url: hook for hook in hooks}
    me = _holder()
    rows = _claim(engine, now or utcnow(), limit, me)
    for row in rows:
        hook = by_url.get(row.url)
        at = now or utcnow()
        if hook is None:
            answer = Answer(False, "this webhook is no longer in the configuration")
        else:
            answer = send(row.url, hook.secret, row.event_id, row.payload.encode("utf-8"), at)
        attempts = row.attempts + 1
        values = dict(attempts=attempts, last_answer=answer.text, claimed_by=None, claimed_until=None)
        if answer.ok:
            values.update(state=DELIVERED, delivered_at=at)
        elif hook is None or attempts > len(hook.retry_schedule):
            values.update(state=FAILED)
        else:
            values.update(next_attempt_at=at + timedelta(seconds=hook.retry_schedule[attempts - 1]))
        with engine.begin() as conn:
            conn.execute(update(_TABLE).where(_TABLE.c.id == row.id, _TABLE.c.claimed_by == me).values(**values))
        log.info("webhook %s %s to %s: %s (attempt %d)", row.event_id, row.event, row.url,
                 values.get("state", "retry"), attempts)
        metrics.webhook(values.get("state", "retry"))
    return len(rows)
