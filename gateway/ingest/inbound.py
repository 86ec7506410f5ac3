"""The inbound store: a raw mail is written to the blob store (fsynced) and recorded in
the database (committed) before anyone is told it was received.  Processing happens
later, from here, so a crash after the answer loses nothing.

Deduplication is a unique constraint on (normalised Message-ID, sha256 of the raw
bytes), not a check in code: the same bytes stored twice give the first row back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from gateway.errors import StoreFailed
from store.addresses import normalize_message_id
from store.blobs import BlobStore
from store.db import session_for
from store.models import InboundMessage, utcnow
from store.vocabulary import QUARANTINED


_MID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Stored:
    id: int | None  # None: journaled, its row not yet recorded (gateway.ingest.spool)
    duplicate: bool
    message_id: str
    sha256: str = ""


def header_message_id(raw: bytes) -> str:
    """The Message-ID of a raw mail, read from its header block only."""
    end = raw.find(b"\n\n")
    head = raw if end < 0 else raw[: end + 1]
    m = _MID.search(head)
    if not m:
        return ""
    value = re.sub(rb"\s+", b" ", m.group(1)).decode("ascii", "replace")
    return normalize_message_id(value)[:500]


def store_raw(
    engine: Engine,
    blobs: BlobStore,
    raw: bytes,
    *,
    source: str,
    mail_from: str = "",
    rcpt_to: tuple[str, ...] | list[str] = (),
    process: str | None = None,
) -> Stored:
    """Store ``raw`` durably; raise StoreFailed if it could not be."""
    message_id = header_message_id(raw)
    try:
        sha = blobs.put(raw)
        return record_inbound(engine, sha, len(raw), message_id, source=source, mail_from=mail_from,
                              rcpt_to=rcpt_to, process=process)
    except StoreFailed:
        raise
    except Exception as exc:
        raise StoreFailed(f"could not store the message: {type(exc).__name__}: {exc}") from exc


def record_inbound(
    engine: Engine,
    sha: str,
    size: int,
    message_id: str,
    *,
    source: str,
    mail_from: str = "",
    rcpt_to: tuple[str, ...] | list[str] = (),
    process: str | None = None,
    received_at: datetime | None = None,
    quarantined: tuple[str, str] | None = None,
) -> Stored:
    """The inbound row of a mail whose blob is stored already (a large mail the SMTP door
    wrote to the blob store as it arrived, or a journaled one); a duplicate gets the
    first row.  ``quarantined`` (outcome, detail): a row that is a record, never a mail
    for the workers (a too-large IMAP message's header, gateway.ingest.imap)."""
    try:
        with session_for(engine) as session:
            row = InboundMessage(
                source=source[:500],
                mail_from=mail_from[:500],
                rcpt_to=",".join(rcpt_to)[:2000],
                process=process,
                message_id=message_id,
                sha256=sha,
                size=size,
                received_at=received_at or utcnow(),
            )
            if quarantined is not None:
                row.state, (row.outcome, row.detail), row.processed_at = QUARANTINED, quarantined, utcnow()
            session.add(row)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                existing = find_stored(session, message_id, sha)
                assert existing is not None  # the unique key refused this very row
                return Stored(existing.id, True, message_id, sha)
            return Stored(row.id, False, message_id, sha)
    except Exception as exc:
        raise StoreFailed(f"could not store the message: {type(exc).__name__}: {exc}") from exc


def find_stored(session, message_id: str, sha: str) -> InboundMessage | None:
    """The inbound row of these bytes (``sha``) with this Message-ID: the store's unique
    key, so at most one."""
    return session.exec(
        select(InboundMessage).where(InboundMessage.message_id == message_id, InboundMessage.sha256 == sha)
    ).first()
