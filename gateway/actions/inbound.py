"""Mail received: list, show (the outcome and its reason, the parser's findings among
them), the raw bytes, and process quarantined mail again once the cause is fixed.

Only quarantined mail: a processed one already did its work, and doing it again would
act twice.  Never a too-large IMAP message's row: it holds the header only (the mail was
not fetched); raising the limit and ``gateway imap retry-failed`` takes it whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import col, select

from gateway.errors import NotFound, Refused
from gateway.ingest.imap import TOO_LARGE
from gateway.ingest.process import Outcome
from store.db import session_for
from store.models import InboundMessage

STATES = ("received", "processed", "quarantined")


def inbound_json(row: InboundMessage) -> dict:
    return {
        "id": row.id,
        "received_at": row.received_at.isoformat() if row.received_at else None,
        "source": row.source,
        "mail_from": row.mail_from,
        "rcpt_to": [r for r in row.rcpt_to.split(",") if r],
        "message_id": row.message_id,
        "size": row.size,
        "sha256": row.sha256,
        "state": row.state,
        "outcome": row.outcome,
        "ticket": row.ticket_number,
        "detail": row.detail,
        "attempts": row.attempts,
        "processed_at": row.processed_at.isoformat() if row.processed_at else None,
    }


def listing(app, *, state: str | None = None, outcome: str | None = None, before_id: int | None = None,
            limit: int = 100) -> list[dict]:
    """Received mail, newest first."""
    with session_for(app.engine) as session:
        query = select(InboundMessage)
        if state:
            query = query.where(InboundMessage.state == state)
        if outcome:
            query = query.where(InboundMessage.outcome == outcome)
        if before_id is not None:
            query = query.where(col(InboundMessage.id) < before_id)
        return [inbound_json(r) for r in session.exec(query.order_by(col(InboundMessage.id).desc()).limit(limit))]


def _row(session, inbound_id: int) -> InboundMessage:
    row = session.get(InboundMessage, inbound_id)
    if row is None:
        raise NotFound(f"no received mail #{inbound_id}")
    return row


def show(app, inbound_id: int) -> dict:
    """One received mail: envelope, state, outcome and its reason (``detail``: the
    quarantine's reason, the parser's findings)."""
    with session_for(app.engine) as session:
        return inbound_json(_row(session, inbound_id))


def raw(app, inbound_id: int) -> bytes:
    """The mail's bytes as received."""
    with session_for(app.engine) as session:
        sha = _row(session, inbound_id).sha256
    return app.blobs.get(sha)


@dataclass(frozen=True)
class Reprocessed:
    """What ``reprocess`` did: each mail's new outcome, in order, and the too-large mails
    it left alone (with what to do about them)."""

    outcomes: list[tuple[int, Outcome]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    skipped_help: str = ""


def too_large_help(config, sources: list[str]) -> str:
    """What to do about too-large rows (a mailbox's, source imap:NAME): raise the limit
    and move the messages back from the failed folder."""
    names = sorted({s.partition(":")[2] for s in sources if s.startswith("imap:")}) or ["MAILBOX"]
    retry = " and ".join(f"`gateway imap retry-failed {n}`" for n in names)
    one = len(sources) == 1
    return (f"raise [smtp] max_message_size (now {config.smtp.max_message_size} bytes) above "
            f"{'its size' if one else 'their sizes'}, then run {retry}: the whole "
            f"{'mail is' if one else 'mails are'} fetched and taken as {'a new row' if one else 'new rows'}")


def reprocess(app, ids: list[int] | None = None, *, quarantined: bool = False) -> Reprocessed:
    """Put quarantined mail back in the queue and process it now: the mails ``ids``, or
    every quarantined one (``quarantined``, too-large ones skipped and said).  A mail
    that does not exist is NotFound, one that is not quarantined (or too large) Refused;
    nothing is put back unless all of them may be."""
    config = app.config
    skipped: list[int] = []
    help_text = ""
    with session_for(app.engine) as session:
        if quarantined:
            rows = list(session.exec(select(InboundMessage.id, InboundMessage.outcome, InboundMessage.source)
                                     .where(InboundMessage.state == "quarantined").order_by(col(InboundMessage.id))))
            ids = [i for i, outcome, _ in rows if outcome != TOO_LARGE]
            skipped = [i for i, outcome, _ in rows if outcome == TOO_LARGE]
            if skipped:
                help_text = too_large_help(config, [src for _, outcome, src in rows if outcome == TOO_LARGE])
        ids = list(ids or [])
        if not ids:
            if skipped:
                return Reprocessed([], skipped, help_text)
            raise Refused("name the mails to reprocess (ids) or ask for every quarantined one")
        for inbound_id in ids:
            row = session.get(InboundMessage, inbound_id)
            if row is None:
                raise NotFound(f"no received mail #{inbound_id}")
            if row.state == "quarantined" and row.outcome == TOO_LARGE:
                raise Refused(f"#{inbound_id} was too large to be fetched ({row.size} bytes; only its header is "
                              f"stored): it is not processed as a mail; to take it, "
                              f"{too_large_help(config, [row.source])}")
            if row.state != "quarantined":
                raise Refused(f"#{inbound_id} is {row.state}, not quarantined: it is not processed again")
            row.state, row.attempts, row.outcome, row.detail = "received", 0, None, None
            row.deaths, row.waits, row.not_before = 0, 0, None  # counted afresh (gateway.ingest.faults)
            session.add(row)
        session.commit()
    return Reprocessed([(inbound_id, app.processor.process(inbound_id)) for inbound_id in ids], skipped, help_text)
