"""The door's write-ahead journal: a mail answered 250 is a line of this file (its blob's
sha256 and envelope), fsynced before the answer, until the spool (gateway.ingest.spool)
has recorded it in the database; a journal left by a crash is read at the next start and
its mails recorded (``recover_journals``; a mail recorded twice finds its own row)."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from gateway.errors import StoreFailed
from gateway.ingest.inbound import record_inbound
from store.blobs import BlobStore, _fsync_dir

log = logging.getLogger("gateway.spool")


class Journal:
    """An append-only file of mails answered 250 and not yet recorded in the database.

    One line of JSON a mail (its blob's sha256 and envelope), fsynced before the answer.
    The file is held with an exclusive lock while its door runs, so that another start
    on the same folder takes another file and never reads one being written."""

    def __init__(self, path: Path, handle):
        self.path = path
        self._fh = handle
        self._lock = threading.Lock()
        self._pending = 0  # appended and not yet recorded

    @classmethod
    def open(cls, folder: Path) -> "Journal":
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            path = folder / f"journal-{n}"
            handle = open(path, "ab")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.close()
                if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                    continue  # another running door's
                raise
            _fsync_dir(folder)  # the file's name is durable before any mail is answered
            if handle.tell():  # left by a crash and not recovered (another door held it): keep it
                log.warning("journal %s still holds mails; they are recorded at the next start", path)
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                handle.close()
                continue
            return cls(path, handle)
        raise StoreFailed(f"no free journal in {folder}")

    def append(self, entries: list[dict]) -> None:
        data = b"".join(json.dumps(e, separators=(",", ":"), ensure_ascii=True).encode() + b"\n" for e in entries)
        with self._lock:
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._pending += len(entries)

    def recorded(self, n: int) -> None:
        """``n`` mails are in the database; empty the file once all of them are.  The
        truncation is not fsynced: if a crash undoes it, the mails are recorded again at
        the next start, and each finds its own row."""
        with self._lock:
            self._pending -= n
            if self._pending == 0:
                self._fh.truncate(0)

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def read_journal(path: Path) -> list[dict]:
    """The entries of a journal file; a last line cut short by a crash is skipped (its
    fsync never returned, so its mail was never answered)."""
    entries = []
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries.append(entry if isinstance(entry, dict) and "sha256" in entry else None)
        except ValueError:
            entries.append(None)
        if entries[-1] is None:
            entries.pop()
            log.warning("skipped an unreadable line of %s: %r", path, line[:200])
    return entries


def hand_over(local: BlobStore, blobs, sha: str) -> None:
    """Copy blob ``sha`` from the door's folder ``local`` into ``blobs`` (the database),
    unless it is there already (another mail of the same bytes took it over, and removed
    the file).  Raises when it is in neither: the journal names a mail nobody kept."""
    path = local.path(sha)
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size <= _WHOLE:
                blobs.put(fh.read())
                return
            with blobs.writer() as writer:  # a large mail, a piece at a time
                for piece in iter(lambda: fh.read(1 << 20), b""):
                    writer.write(piece)
                writer.commit()
    except FileNotFoundError:
        if not blobs.exists(sha):
            raise


# A blob up to this size is copied in one piece (hand_over).
_WHOLE = 1 << 20
# Small blobs copied together in one transaction, up to this many bytes (hand_over_many).
_TOGETHER = 4 << 20


def hand_over_many(local: BlobStore, blobs, shas: list[str]) -> None:
    """``hand_over`` of several blobs: the small ones (up to _WHOLE) read and stored
    together, one transaction for up to _TOGETHER bytes (a recorder's batch of small
    mails was a transaction a mail: the PostgreSQL server's commit for each); the large
    ones one by one, a piece at a time."""
    group: list[bytes] = []
    size = 0
    for sha in dict.fromkeys(shas):
        try:
            with open(local.path(sha), "rb") as fh:
                length = os.fstat(fh.fileno()).st_size
                data = fh.read() if length <= _WHOLE else None
        except FileNotFoundError:
            data = None  # taken over already, or missing: hand_over says which
        if data is None:
            hand_over(local, blobs, sha)
            continue
        if group and size + len(data) > _TOGETHER:
            blobs.put_many(group)
            group, size = [], 0
        group.append(data)
        size += len(data)
    if group:
        blobs.put_many(group)


def recover_journals(folder: Path, engine: Engine, blobs: BlobStore, local: BlobStore | None = None) -> int:
    """Record the mails of every journal in ``folder`` that no running door holds (left
    by a crash), then empty those journals.  Returns how many mails were recorded.
    ``local``: the door's folder of blobs, when the blob store is the database: each
    mail's bytes are copied from it before its row, and removed from it after."""
    if not folder.is_dir():
        return 0
    count = 0
    for path in sorted(folder.glob("journal-*")):
        with open(path, "r+b") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a running door's
            entries = read_journal(path)
            for entry in entries:
                if local is not None and local.exists(entry["sha256"]):
                    hand_over(local, blobs, entry["sha256"])
                if not blobs.exists(entry["sha256"]):
                    log.error("journal %s names a mail whose blob is missing: %s", path, entry)
                    continue
                stored = record_inbound(engine, entry["sha256"], int(entry.get("size", 0)),
                                        str(entry.get("message_id", "")), source=str(entry.get("source", "smtp")),
                                        mail_from=str(entry.get("mail_from", "")),
                                        rcpt_to=tuple(entry.get("rcpt_to", ())),
                                        received_at=_when(entry.get("received_at")),
                                        peer=str(entry.get("peer", "")), helo=str(entry.get("helo", "")))
                count += not stored.duplicate
            handle.truncate(0)
            os.fsync(handle.fileno())
            for entry in entries if local is not None else ():
                local.path(entry["sha256"]).unlink(missing_ok=True)
        if entries:
            log.info("recovered %d mails from %s (%d were recorded already)", len(entries), path,
                     len(entries) - count)
    return count


def _when(value) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None
