"""Importing a mailbox's messages: the other door, for desks whose address is a mailbox.

The folder is the queue.  Every message still in the configured folder is fetched
whole (``BODY.PEEK[]``, so nothing is marked read), stored through the same path as
SMTP (``store_raw``: fsynced blob + committed row, deduplicated on Message-ID and
sha256), processed, and only then moved out: to ``processed_folder``, or to
``failed_folder`` when it could not be stored or its processing quarantined it.  A
message is never deleted before its bytes are committed, and never deleted at all
except as the second half of a move.

What "failed" means, for the person who looks at that folder: the message could not be
stored (it is not in the gateway at all: ``gateway imap retry-failed`` moves such
messages back to the folder to be taken again, and the store recognises what it already
has), it was larger than ``[smtp] max_message_size`` (not fetched: only its header is,
and kept as a quarantined inbound row with outcome ``too-large``, committed before the
move, so ``gateway inbound list`` shows it; ``retry-failed`` moves it back once the limit
allows it, and it is then taken in full as a new row), or processing quarantined it (it
is in the gateway, quarantined with the reason, and made no ticket).  A processing error
that will be retried (the worker quarantines after ``max_attempts``) does not count: the
mail is stored, so it goes to ``processed``.  Without a worker (``serve --accept-only``)
nothing is processed here, so every stored message goes to ``processed``.

Why there is no UID cursor: a crash between the commit and the move leaves the message
in the folder, and the next pass fetches it again; the store recognises the bytes and
hands back the first row, so it becomes no second ticket.  The same holds when the
server changes UIDVALIDITY (a rebuilt index renumbers everything): nothing is skipped
because nothing is skipped by UID, and nothing is doubled because the store dedupes.

The connection is client.py's, the IDLE poller poller.py's, ``gateway imap check``
check.py's.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import imaplib
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy.engine import Engine

from gateway import metrics
from gateway.config import MailboxSection
from gateway.errors import StoreFailed
from gateway.ingest.imap.client import close_quietly, ensure_folder, move, open_mailbox
from gateway.ingest.inbound import Stored, find_stored, header_message_id, record_inbound, store_raw
from gateway.ingest.parse import decode_header_value, raw_header
from store.blobs import BlobStore
from store.db import session_for
from store.models import InboundMessage
from store.vocabulary import QUARANTINED


log = logging.getLogger("gateway.imap")

# The outcome of the inbound row kept for a message above max_size: its header only, never
# processed (gateway inbound reprocess refuses it).
TOO_LARGE = "too-large"
# At most this much of a too-large message's header is fetched (a header can be huge too).
HEADER_CAP = 256 * 1024


# What a processing step returns, as far as the poller needs it (gateway.ingest.process.Outcome).
ProcessFn = Callable[[int], "object"]
NoticeFn = Callable[[bytes, int, int], str]


@dataclass(frozen=True)
class ItemResult:
    """What happened to one IMAP message."""

    uid: int
    message_id: str
    outcome: str  # the processing outcome, "stored", "store-failed", "too-large" or "vanished"
    ticket: str | None
    moved_to: str | None  # the folder it was moved to; None: left where it was
    duplicate: bool = False
    detail: str | None = None


def retry_failed(box: MailboxSection, engine: Engine, *, max_size: int | None = None,
                 env: Mapping[str, str] | None = None) -> list[ItemResult]:
    """Move back to the mailbox's folder the messages of its failed folder that are not
    in the gateway: those that could not be stored (the database or the disk was down),
    for the poller to take again.  A message the gateway holds (it was quarantined: the
    gateway says why) and one over ``max_size`` stay (``moved_to`` None)."""
    client = open_mailbox(box, env)
    results: list[ItemResult] = []
    try:
        client.select_folder(box.failed_folder)
        for uid in sorted(client.search(["UNDELETED"])):
            if max_size:
                info = client.fetch([uid], ["RFC822.SIZE"]).get(uid) or {}
                size = int(info.get(b"RFC822.SIZE", 0))
                if size > max_size:
                    results.append(ItemResult(uid, "", TOO_LARGE, None, None,
                                              detail=f"{size} bytes > {max_size}"))
                    continue
            data = client.fetch([uid], ["BODY.PEEK[]"]).get(uid)
            raw = None if data is None else data.get(b"BODY[]")
            if raw is None:
                continue  # expunged meanwhile
            mid = header_message_id(raw)
            with session_for(engine) as session:
                held = find_stored(session, mid, hashlib.sha256(raw).hexdigest())
            if held is not None:
                results.append(ItemResult(uid, mid, "kept", None, None, duplicate=True,
                                          detail=f"in the gateway as #{held.id} ({held.state})"))
                continue
            move(client, uid, box.folder)
            log.info("<%s> mailbox %s: UID %s moved back from %r to %r to be taken again", mid, box.name, uid,
                     box.failed_folder, box.folder)
            results.append(ItemResult(uid, mid, "moved-back", None, box.folder))
    finally:
        close_quietly(client)
    return results


# One pass over a folder -------------------------------------------------------------------
class Importer:
    """Takes the messages of one mailbox folder into the store, one at a time."""

    def __init__(self, box: MailboxSection, engine: Engine, blobs: BlobStore, *,
                 process: ProcessFn | None = None, max_size: int | None = None,
                 too_large_notice: NoticeFn | None = None):
        self.box = box
        self.engine = engine
        self.blobs = blobs
        self.process = process
        self.max_size = max_size
        # (header, size, limit) -> what was done: tells the sender of a mail above
        # max_size that it was not read (Processor.notify_too_large).
        self.too_large_notice = too_large_notice
        self.source = f"imap:{box.name}"

    def prepare(self, client: IMAPClient) -> int:
        """Create the target folders, select the source folder; return its UIDVALIDITY."""
        ensure_folder(client, self.box.processed_folder)
        ensure_folder(client, self.box.failed_folder)
        info = client.select_folder(self.box.folder)
        return int(info.get(b"UIDVALIDITY", 0))

    def pending(self, client: IMAPClient, criteria: list | None = None) -> list[int]:
        # UNDELETED: a message another client flagged for deletion is not ours to take.
        return sorted(client.search(["UNDELETED", *(criteria or [])]))

    def drain(self, client: IMAPClient, criteria: list | None = None,
              stop: threading.Event | None = None) -> list[ItemResult]:
        results = []
        for uid in self.pending(client, criteria):
            if stop is not None and stop.is_set():
                break
            results.append(self.take(client, uid))
        return results

    def take(self, client: IMAPClient, uid: int) -> ItemResult:
        """Fetch, store, process and move one message."""
        box = self.box
        if self.max_size:
            size_info = client.fetch([uid], ["RFC822.SIZE"]).get(uid)
            if size_info is None:
                return self._vanished(uid)
            size = int(size_info.get(b"RFC822.SIZE", 0))
            if size > self.max_size:
                return self._too_large(client, uid, size)
        data = client.fetch([uid], ["BODY.PEEK[]"]).get(uid)
        raw = None if data is None else data.get(b"BODY[]")
        if raw is None:
            return self._vanished(uid)
        try:
            stored = store_raw(self.engine, self.blobs, raw, source=self.source, process=box.process or None)
        except StoreFailed as exc:
            mid = header_message_id(raw)
            if not self._move(client, uid, box.failed_folder):
                return self._vanished(uid, f"after it could not be stored ({exc})", mid)
            log.error("<%s> mailbox %s: UID %s could not be stored (%s); moved to %r", mid, box.name, uid, exc,
                      box.failed_folder)
            return ItemResult(uid, mid, "store-failed", None, box.failed_folder, detail=str(exc))
        # The bytes are committed: from here on the IMAP copy may go.
        metrics.received(self.source)
        outcome, ticket, detail = "stored", None, None
        if self.process is not None:
            result = self.process(stored.id)
            outcome, ticket, detail = result.outcome, result.ticket, result.detail
        target = box.failed_folder if outcome == QUARANTINED else box.processed_folder
        if not self._move(client, uid, target):
            # Another client expunged it after we committed it: the gateway has it, nothing is lost.
            log.info("<%s> mailbox %s: UID %s %s%s%s, then vanished before it was moved to %r (another client "
                     "expunged it; it is stored)", stored.message_id, box.name, uid, outcome,
                     f" {ticket}" if ticket else "", " (already stored)" if stored.duplicate else "", target)
            return ItemResult(uid, stored.message_id, outcome, ticket, None, stored.duplicate,
                              "; ".join(filter(None, [detail, "expunged by another client before it was moved"])))
        log.info("<%s> mailbox %s: UID %s %s%s%s, moved to %r", stored.message_id, box.name, uid, outcome,
                 f" {ticket}" if ticket else "", " (already stored)" if stored.duplicate else "", target)
        return ItemResult(uid, stored.message_id, outcome, ticket, target, stored.duplicate, detail)

    def _too_large(self, client: IMAPClient, uid: int, size: int) -> ItemResult:
        """A message above max_size: not fetched, only its header (BODY.PEEK[HEADER], at
        most HEADER_CAP bytes).  The header is kept as a quarantined inbound row (outcome
        too-large), committed before the message is moved to the failed folder, so the
        desk has a record of it; the same message seen again gets the same row."""
        box = self.box
        data = client.fetch([uid], [f"BODY.PEEK[HEADER]<0.{HEADER_CAP}>"]).get(uid)
        header = None if data is None else next(
            (v for k, v in data.items() if k.startswith(b"BODY[HEADER]")), None)
        if header is None:
            return self._vanished(uid)
        mid = header_message_id(header)
        limit = f"{size} bytes > {self.max_size} ([smtp] max_message_size)"
        kept = "only its header is kept" + (f" (its first {HEADER_CAP} bytes)" if len(header) >= HEADER_CAP else "")
        detail = (f"too large: {limit}; not fetched, left in folder {box.failed_folder!r}; {kept}"
                  + _from_and_subject(header))
        try:
            stub = record_too_large(self.engine, self.blobs, header, size=size, message_id=mid, source=self.source,
                                    process=box.process or None, detail=detail)
        except StoreFailed as exc:
            # As for a message that could not be stored: into the failed folder, never lost.
            if not self._move(client, uid, box.failed_folder):
                return self._vanished(uid, f"after its record could not be stored ({exc}; {size} bytes)", mid)
            log.error("<%s> mailbox %s: UID %s is %s bytes, above the limit of %s, and its record could not be "
                      "stored (%s); moved to %r unread", mid, box.name, uid, size, self.max_size, exc,
                      box.failed_folder)
            return ItemResult(uid, mid, "store-failed", None, box.failed_folder,
                              detail=f"too large: {limit}; its record could not be stored: {exc}")
        seen = " (seen before)" if stub.duplicate else ""
        if self.too_large_notice is not None:
            # After the record (committed), before the move: a crash in between finds the
            # message again, and the notice's once-a-day rule keeps it to one.
            try:
                told = self.too_large_notice(header, size, self.max_size)
            except Exception as exc:  # noqa: BLE001 - the record stands; the desk can still answer
                log.exception("<%s> mailbox %s: UID %s: the sender's notice failed", mid, box.name, uid)
                told = f"no notice: {type(exc).__name__}: {exc}"
            _note_on(self.engine, stub.id, told)
        if not self._move(client, uid, box.failed_folder):
            # Another client expunged it after its record was committed: the row stays, saying so.
            note = f"expunged by another client before it was moved to {box.failed_folder!r}"
            _note_on(self.engine, stub.id, note)
            log.info("<%s> mailbox %s: UID %s is %s bytes, above the limit of %s, kept as inbound #%s%s, then "
                     "vanished before it was moved to %r (another client expunged it)", mid, box.name, uid, size,
                     self.max_size, stub.id, seen, box.failed_folder)
            return ItemResult(uid, mid, TOO_LARGE, None, None, stub.duplicate, f"{limit}; inbound #{stub.id}; {note}")
        log.error("<%s> mailbox %s: UID %s is %s bytes, above the limit of %s; moved to %r unread, its header "
                  "kept as inbound #%s%s (gateway inbound show %s)", mid, box.name, uid, size, self.max_size,
                  box.failed_folder, stub.id, seen, stub.id)
        return ItemResult(uid, mid, TOO_LARGE, None, box.failed_folder, stub.duplicate,
                          f"{limit}; inbound #{stub.id}" + (f"; {told}" if self.too_large_notice else ""))

    def _move(self, client: IMAPClient, uid: int, folder: str) -> bool:
        """move(); False if the message is no longer there to move: another client
        expunged it meanwhile (Dovecot refuses with NO [EXPUNGEISSUED], RFC 5530).  Any
        other failure is raised (the poller reconnects)."""
        try:
            move(client, uid, folder)
            return True
        except imaplib.IMAP4.abort:
            raise
        except IMAPClientError:
            # A server reports another session's expunges between commands: NOOP first.
            client.noop()
            if client.search(["UID", str(uid)]):
                raise
            return False

    def _vanished(self, uid: int, when: str = "before it was fetched", message_id: str = "") -> ItemResult:
        # Another client expunged it: between SEARCH and FETCH nothing of ours is lost; an
        # unstored message gone from the folder is the other client's doing, not ours to keep.
        log.info("%smailbox %s: UID %s vanished %s", f"<{message_id}> " if message_id else "", self.box.name,
                 uid, when)
        return ItemResult(uid, message_id, "vanished", None, None, detail=f"expunged by another client {when}")


def record_too_large(engine: Engine, blobs: BlobStore, header: bytes, *, size: int, message_id: str, source: str,
                     process: str | None, detail: str) -> Stored:
    """The inbound row of a too-large message: its header in the blob store (fsynced),
    the row committed already quarantined (outcome too-large), so no worker ever takes it
    for a mail to process.  Its key is (Message-ID, sha256 of the header): the same
    message seen again gets the first row (``duplicate``).  StoreFailed if it could not
    be stored."""
    try:
        sha = blobs.put(header)
    except Exception as exc:
        raise StoreFailed(f"could not store the message's header: {type(exc).__name__}: {exc}") from exc
    return record_inbound(engine, sha, size, message_id, source=source, process=process,
                          quarantined=(TOO_LARGE, detail))


def _note_on(engine: Engine, inbound_id: int | None, note: str) -> None:
    """Add ``note`` to a too-large row's detail (best effort: the row is the record already)."""
    try:
        with session_for(engine) as session:
            row = session.get(InboundMessage, inbound_id)
            if row is not None and row.outcome == TOO_LARGE and note not in (row.detail or ""):
                row.detail = f"{row.detail}; {note}" if row.detail else note
                session.add(row)
                session.commit()
    except Exception as exc:  # noqa: BLE001 - the row exists; only its wording is older
        log.warning("inbound #%s: could not add %r to its detail: %s", inbound_id, note, exc)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _from_and_subject(header: bytes) -> str:
    """ "; from X; subject 'Y'" of a raw header, for the row's detail (what an agent needs
    to answer the sender); "" if neither can be read."""
    try:
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
        parts = []
        for name in ("From", "Subject"):
            value = _CONTROL.sub(" ", decode_header_value(raw_header(msg, name))).strip()
            if value:
                cut = value if len(value) <= 200 else value[:200] + "…"
                parts.append(f"from {cut}" if name == "From" else f"subject {cut!r}")
        return "".join(f"; {p}" for p in parts)
    except Exception:  # noqa: BLE001 - a header too broken to read: the blob keeps it as it came
        return ""
