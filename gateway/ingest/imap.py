"""Reading mailboxes over IMAP: the other door, for desks whose address is a mailbox.

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

Connections: IDLE where the server offers it (re-issued well within RFC 2177's 29
minutes), polling every ``poll_interval`` seconds otherwise.  A dropped connection or a
restarted server is retried with exponential backoff; an outage is logged once when it
starts and once when it ends, not at every retry.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import imaplib
import logging
import os
import re
import shlex
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientError, LoginError
from sqlalchemy.engine import Engine

from gateway.config import MailboxSection
from gateway import metrics
from gateway.errors import GatewayError, StoreFailed
from gateway.heartbeat import record_poll
from gateway.ingest.inbound import Stored, find_stored, header_message_id, record_inbound, store_raw
from gateway.ingest.parse import decode_header_value, raw_header
from gateway.lease import RETRY_EVERY, Lease, holder_name
from store.blobs import BlobStore
from store.db import session_for
from store.models import InboundMessage

log = logging.getLogger("gateway.imap")

# RFC 2177: a client should re-issue IDLE at least every 29 minutes; some providers
# drop an idle connection sooner (about 23 minutes seen), so renew well before that.
IDLE_RENEW_SECONDS = 20 * 60
# A poller records a pass that worked at most this often (seconds); a failure at once.
RECORD_SUCCESS_EVERY = 60.0
# How often a waiting poller looks at its stop flag.
STOP_CHECK_SECONDS = 1.0
TIMEOUT = SocketTimeout(connect=15.0, read=120.0)
# The outcome of the inbound row kept for a message above max_size: its header only, never
# processed (gateway inbound reprocess refuses it).
TOO_LARGE = "too-large"
# At most this much of a too-large message's header is fetched (a header can be huge too).
HEADER_CAP = 256 * 1024


class ImapConfigError(GatewayError):
    """The mailbox's settings cannot work (no password, token command failed)."""


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


# Credentials ------------------------------------------------------------------------------
def secret_for(box: MailboxSection, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """("password"|"xoauth2", secret) for ``box``; ImapConfigError saying what is missing."""
    env = os.environ if env is None else env
    if box.oauth2_token_command:
        try:
            proc = subprocess.run(shlex.split(box.oauth2_token_command), capture_output=True, timeout=60, text=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ImapConfigError(f"oauth2_token_command could not run: {exc}") from exc
        token = proc.stdout.strip()
        if proc.returncode != 0 or not token:
            raise ImapConfigError(f"oauth2_token_command exited {proc.returncode} without a token: "
                                  f"{proc.stderr.strip()[:300]}")
        return "xoauth2", token
    if box.password_env:
        value = env.get(box.password_env)
        if not value:
            raise ImapConfigError(f"environment variable {box.password_env} (password_env) is not set")
        return "password", value
    if box.password_file:
        try:
            with open(os.path.expanduser(box.password_file), encoding="utf-8") as fh:
                value = fh.readline().rstrip("\r\n")
        except OSError as exc:
            raise ImapConfigError(f"password_file {box.password_file} cannot be read: {exc.strerror}") from exc
        if not value:
            raise ImapConfigError(f"password_file {box.password_file} is empty")
        return "password", value
    raise ImapConfigError("no password_env, password_file or oauth2_token_command is set")


# Connecting -------------------------------------------------------------------------------
def connect(box: MailboxSection, ssl_context: ssl.SSLContext | None = None) -> IMAPClient:
    """A connected (not logged in) client: TCP, TLS as configured, greeting read."""
    context = ssl_context or ssl.create_default_context()
    if box.security == "tls":
        return IMAPClient(box.host, port=box.port, ssl=True, ssl_context=context, timeout=TIMEOUT)
    client = IMAPClient(box.host, port=box.port, ssl=False, timeout=TIMEOUT)
    if box.security == "starttls":
        client.starttls(context)
    return client


def login(client: IMAPClient, box: MailboxSection, env: Mapping[str, str] | None = None) -> None:
    kind, secret = secret_for(box, env)
    if kind == "xoauth2":
        client.oauth2_login(box.user, secret)
    else:
        client.login(box.user, secret)


def open_mailbox(box: MailboxSection, env: Mapping[str, str] | None = None) -> IMAPClient:
    client = connect(box)
    try:
        login(client, box, env)
    except BaseException:
        close_quietly(client)
        raise
    return client


def close_quietly(client: IMAPClient) -> None:
    """Log out if the connection still works; just drop it otherwise."""
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - the connection may be gone already
        try:
            client.shutdown()
        except Exception:  # noqa: BLE001
            pass


def _drop(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except Exception:  # noqa: BLE001
        pass


def ensure_folder(client: IMAPClient, folder: str) -> None:
    if not client.folder_exists(folder):
        log.info("creating IMAP folder %r", folder)
        try:
            client.create_folder(folder)
        except IMAPClientError:
            if not client.folder_exists(folder):  # another poller may have made it meanwhile
                raise


def move(client: IMAPClient, uid: int, folder: str) -> None:
    """Move one message: MOVE where offered; else COPY, flag \\Deleted, and expunge that
    message only (UID EXPUNGE, RFC 4315) or, without UIDPLUS, the folder's deleted ones."""
    if client.has_capability("MOVE"):
        client.move([uid], folder)
        return
    client.copy([uid], folder)
    client.delete_messages([uid], silent=True)
    if client.has_capability("UIDPLUS"):
        client.uid_expunge([uid])
    else:
        client.expunge()


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
        target = box.failed_folder if outcome == "quarantined" else box.processed_folder
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


# The long-running poller ------------------------------------------------------------------
class Poller:
    """Keeps one mailbox empty: drain, wait (IDLE or poll), drain again; reconnect on loss."""

    def __init__(self, importer: Importer, *, env: Mapping[str, str] | None = None,
                 backoff_start: float = 1.0, backoff_max: float = 60.0):
        self.importer = importer
        self.box = importer.box
        self.env = env
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.uidvalidity: int | None = None
        self.outage_since: float | None = None
        self.connected = threading.Event()  # set while a session is up (for tests and status)
        # When a pass that worked was last recorded (gateway.heartbeat.record_poll), and
        # whether the last one recorded failed: a pass that works is written at most
        # every RECORD_SUCCESS_EVERY seconds, a change at once.
        self._recorded_ok_at: float | None = None
        self._recorded_failure = False
        # One poller at a time on a mailbox, whatever the number of instances (gateway.lease).
        self.lease = Lease(importer.engine, f"imap:{self.box.name}", holder_name(f"imap:{self.box.name}"))

    def run(self, stop: threading.Event) -> None:
        delay = self.backoff_start
        log.info("mailbox %s: reading %s@%s:%s/%s", self.box.name, self.box.user, self.box.host, self.box.port,
                 self.box.folder)
        waiting = False
        while not stop.is_set():
            if not self.lease.acquire():
                if not waiting:
                    log.info("mailbox %s: another instance reads it; taking over if it stops", self.box.name)
                waiting = True
                stop.wait(RETRY_EVERY)
                continue
            if waiting:
                log.info("mailbox %s: taken over (its lease was free)", self.box.name)
            waiting = False
            # The session ends when the lease is lost as when the service stops.
            keeper = self.lease.keep(stop)
            client = None
            try:
                client = open_mailbox(self.box, self.env)
                if self.outage_since is not None:
                    log.warning("mailbox %s: connected again after %.0f s", self.box.name,
                                time.monotonic() - self.outage_since)
                    self.outage_since = None
                delay = self.backoff_start
                self.session(client, keeper.lost)
            except Exception as exc:  # noqa: BLE001 - every failure means: reconnect later
                self.connected.clear()
                self._outage(exc)
                if client is not None:
                    # No LOGOUT on a broken connection: it could wait for the read timeout.
                    _drop(client)
                    client = None
            finally:
                self.connected.clear()
                if client is not None:
                    close_quietly(client)
                keeper.end()
            if not stop.is_set() and not keeper.lost.is_set():
                stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
        self.lease.release()
        log.info("mailbox %s: poller stopped", self.box.name)

    def _record(self, error: str | None) -> None:
        """Keep the pass's result in the database (mailboxpoll), for gateway status: a
        mailbox failing at every pass must not look like a quiet one."""
        if error is None and not self._recorded_failure and self._recorded_ok_at is not None \
                and time.monotonic() - self._recorded_ok_at < RECORD_SUCCESS_EVERY:
            return
        try:
            record_poll(self.importer.engine, self.box.name, error)
        except Exception as exc:  # noqa: BLE001 - the database is down: the store fails too, and says so
            log.debug("mailbox %s: could not record the poll: %s", self.box.name, exc)
            return
        self._recorded_failure = error is not None
        self._recorded_ok_at = time.monotonic() if error is None else None

    def _outage(self, exc: Exception) -> None:
        self._record(f"{type(exc).__name__}: {exc}")
        if self.outage_since is not None:
            log.debug("mailbox %s: still unreachable: %s", self.box.name, exc)
            return
        self.outage_since = time.monotonic()
        network = isinstance(exc, (OSError, imaplib.IMAP4.abort, IMAPClientError, LoginError, ImapConfigError))
        log.warning("mailbox %s: %s: %s; retrying with backoff (logged again when it works)",
                    self.box.name, "connection failed or lost" if network else "unexpected error",
                    f"{type(exc).__name__}: {exc}", exc_info=not network)

    def session(self, client: IMAPClient, stop: threading.Event) -> None:
        uidvalidity = self.importer.prepare(client)
        if self.uidvalidity is not None and uidvalidity != self.uidvalidity:
            # Every UID we knew is meaningless now; we keep none, so just say so.
            log.warning("mailbox %s: UIDVALIDITY of %r changed from %s to %s; the folder is read again, "
                        "messages already stored are recognised and not taken twice",
                        self.box.name, self.box.folder, self.uidvalidity, uidvalidity)
        self.uidvalidity = uidvalidity
        use_idle = self.box.idle and client.has_capability("IDLE")
        self.connected.set()
        while not stop.is_set():
            self.importer.drain(client, stop=stop)
            self._record(None)
            if stop.is_set():
                return
            if use_idle:
                self.wait_idle(client, stop)
            else:
                stop.wait(self.box.poll_interval)

    def wait_idle(self, client: IMAPClient, stop: threading.Event) -> None:
        """Wait in IDLE until the server reports something, stop is asked, or it is time
        to renew; then leave IDLE (which raises if the connection died meanwhile)."""
        client.idle()
        started = time.monotonic()
        try:
            while not stop.is_set():
                if time.monotonic() - started >= IDLE_RENEW_SECONDS:
                    log.debug("mailbox %s: renewing IDLE", self.box.name)
                    return
                t0 = time.monotonic()
                responses = client.idle_check(timeout=STOP_CHECK_SECONDS)
                if responses:
                    return
                if time.monotonic() - t0 < STOP_CHECK_SECONDS / 2:
                    # idle_check returns at once with nothing when the peer closed the
                    # socket (it swallows the EOF); idle_done below raises on it.
                    return
        finally:
            client.idle_done()


def pollers_for(config, engine: Engine, blobs: BlobStore, process: ProcessFn | None = None,
                env: Mapping[str, str] | None = None, too_large_notice: NoticeFn | None = None) -> list[Poller]:
    return [Poller(Importer(box, engine, blobs, process=process, max_size=config.smtp.max_message_size,
                            too_large_notice=too_large_notice), env=env)
            for box in config.mailboxes]


def start_pollers(pollers: list[Poller], stop: threading.Event) -> list[threading.Thread]:
    threads = []
    for poller in pollers:
        thread = threading.Thread(target=poller.run, args=(stop,), name=f"imap-{poller.box.name}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


# Check: each step of the way, to say exactly what fails ------------------------------------
@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str


def check(box: MailboxSection, env: Mapping[str, str] | None = None,
          ssl_context: ssl.SSLContext | None = None) -> list[Step]:
    """Try credentials, DNS, TCP, TLS/greeting, login and folders; stop at the first failure."""
    steps: list[Step] = []

    def fail(name: str, detail: str) -> list[Step]:
        steps.append(Step(name, False, detail))
        return steps

    try:
        kind, _secret = secret_for(box, env)
        steps.append(Step("credentials", True, "OAuth2 token obtained" if kind == "xoauth2" else "password found"))
    except ImapConfigError as exc:
        return fail("credentials", str(exc))
    try:
        infos = socket.getaddrinfo(box.host, box.port, type=socket.SOCK_STREAM)
        addresses = sorted({info[4][0] for info in infos})
        steps.append(Step("dns", True, f"{box.host} -> {', '.join(addresses)}"))
    except socket.gaierror as exc:
        return fail("dns", f"{box.host} does not resolve: {exc.strerror or exc}")
    try:
        with socket.create_connection((box.host, box.port), timeout=15):
            steps.append(Step("tcp", True, f"port {box.port} open"))
    except OSError as exc:
        return fail("tcp", f"cannot connect to {box.host}:{box.port}: {exc.strerror or exc}")
    tls_step = {"tls": "tls", "starttls": "starttls"}.get(box.security, "greeting")
    try:
        client = connect(box, ssl_context)
    except ssl.SSLError as exc:
        return fail(tls_step, f"TLS handshake failed: {exc.reason or exc}")
    except ssl.CertificateError as exc:  # pragma: no cover - a subclass of SSLError on 3.7+
        return fail(tls_step, f"certificate rejected: {exc}")
    except (OSError, IMAPClientError, imaplib.IMAP4.error) as exc:
        what = "no IMAP greeting" if box.security != "starttls" else "STARTTLS failed"
        return fail(tls_step, f"{what}: {type(exc).__name__}: {exc}")
    try:
        clear = "IMAP greeting received (no TLS" + (
            ")" if _loopback(box.host) else ": the password crosses the network unencrypted)")
        steps.append(Step(tls_step, True, {"tls": "TLS established", "starttls": "STARTTLS established"}
                          .get(box.security, clear)))
        try:
            login(client, box, env)
            steps.append(Step("login", True, f"logged in as {box.user}"))
        except (LoginError, IMAPClientError, imaplib.IMAP4.error) as exc:
            return fail("login", f"the server refused {box.user}: {_text(exc)}")
        if not client.folder_exists(box.folder):
            return fail("folder", f"folder {box.folder!r} does not exist")
        info = client.select_folder(box.folder, readonly=True)
        steps.append(Step("folder", True, f"{box.folder!r}: {info.get(b'EXISTS', 0)} message(s)"))
        for name in (box.processed_folder, box.failed_folder):
            steps.append(Step("folder", True, f"{name!r} exists" if client.folder_exists(name)
                              else f"{name!r} missing: it will be created on the first run"))
        caps = client.capabilities()
        steps.append(Step("capabilities", True, ", ".join(
            f"{c} {'yes' if c.encode() in caps else 'no'}" for c in ("IDLE", "MOVE", "UIDPLUS"))))
        return steps
    finally:
        close_quietly(client)


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _text(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return text
