"""Blobs in the database: raw mails and attachments as rows, by sha256 (``[store] blobs =
"database"``, the default with PostgreSQL).

Instances on several hosts then share nothing but the database: a mail one door answered
``250`` for is read by the worker of another (issue 19).  The interface is
store.blobs.BlobStore's (``put``, ``put_file``, ``writer``, ``get``, ``open``,
``exists``), so nothing else knows where the bytes are.

- A blob is a ``blob`` row (sha256, size) and its ``blobchunk`` rows of at most CHUNK
  bytes, written in one transaction: once ``put`` returns, the commit is durable and
  every instance can read it.  The ``blob`` row goes first, with ON CONFLICT DO NOTHING:
  two instances storing the same bytes at once do it once (the second waits for the first
  one's commit, then finds the row), which is also how it stays deduplicated.
- A large mail is never whole in memory: the door and the parser write it through a
  ``writer`` (a temporary file of this host, hashed as it grows, readable by its path,
  as the file store's writer is), and ``commit`` copies the file into the database one
  chunk at a time; ``open`` reads one chunk at a time.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from sqlalchemy import and_, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from store.models import Blob, BlobChunk, utcnow

# Bytes a chunk row holds: a few round trips for a 25 MB mail, and a small piece of
# memory for each (the driver holds a chunk, and on the way in its escaped text).
CHUNK = 1 << 20
_BLOB = Blob.__table__
_CHUNK = BlobChunk.__table__


class DatabaseBlobStore:
    """The blob store of ``engine``.  ``scratch`` is a folder of this host for the
    temporary files of ``writer`` (nothing in it outlives the process's work)."""

    def __init__(self, engine: Engine, scratch: Path):
        self.engine = engine
        self.root = Path(scratch)
        self.root.mkdir(parents=True, exist_ok=True)
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._claim = insert(_BLOB).on_conflict_do_nothing(index_elements=["sha256"]).returning(_BLOB.c.sha256)
        # A blob's row with its first chunk (none for an empty blob), in the statements
        # below, built once (their cache keys are kept): its size and first chunk; the
        # one-chunk blobs among several.
        with_first = _BLOB.outerjoin(_CHUNK, and_(_CHUNK.c.sha256 == _BLOB.c.sha256, _CHUNK.c.seq == 0))
        self._first = select(_BLOB.c.size, _CHUNK.c.data).select_from(with_first) \
            .where(_BLOB.c.sha256 == bindparam("sha"))
        self._small = select(_BLOB.c.sha256, _CHUNK.c.data).select_from(with_first) \
            .where(_BLOB.c.sha256.in_(bindparam("shas", expanding=True)), _BLOB.c.size <= CHUNK)

    def __repr__(self) -> str:
        return f"DatabaseBlobStore({self.engine.url.render_as_string(hide_password=True)})"

    def exists(self, sha256: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(_BLOB.c.sha256).where(_BLOB.c.sha256 == sha256)).first() is not None

    def put(self, data: bytes, durable: bool = True) -> str:
        """Store ``data``; return its sha256.  Storing the same bytes twice is a no-op."""
        digest = hashlib.sha256(data).hexdigest()
        self._store(digest, len(data), _pieces(data))
        return digest

    def put_many(self, blobs: list[bytes]) -> list[str]:
        """Store several blobs in one transaction (one commit, one round of the server's
        WAL flush, instead of one each); their sha256s, in order.  The rows are claimed in
        the order of their hashes, so two instances storing some of the same bytes at
        once wait for each other instead of deadlocking."""
        digests = [hashlib.sha256(data).hexdigest() for data in blobs]
        with self.engine.begin() as conn:
            for digest, data in sorted(dict(zip(digests, blobs)).items()):
                self._write(conn, digest, len(data), _pieces(data))
        return digests

    def put_file(self, src: Path, digest: str, durable: bool = True) -> str:
        """Copy an already-written file whose sha256 is ``digest`` into the store, then
        remove it."""
        size = os.path.getsize(src)
        with open(src, "rb") as fh:
            self._store(digest, size, iter(lambda: fh.read(CHUNK), b""))
        os.unlink(src)
        return digest

    def writer(self, durable: bool = True) -> "DatabaseBlobWriter":
        """A blob written piece by piece, hashed as it goes; ``commit()`` stores it."""
        return DatabaseBlobWriter(self)

    def get(self, sha256: str) -> bytes:
        """The whole blob.  One of a chunk is that chunk; a larger one goes through a
        temporary file of this host and is read back in one allocation, so it is held
        once: gathering the chunks in memory held it twice at the peak (BytesIO: 63 MB
        for a 33 MB mail, measured)."""
        pieces = self._chunks(sha256)
        first = next(pieces, b"")
        second = next(pieces, None)
        if second is None:
            return first
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".get-")
        try:
            with os.fdopen(fd, "w+b") as fh:
                fh.write(first)
                del first
                fh.write(second)
                del second
                for piece in pieces:
                    fh.write(piece)
                fh.flush()
                size = fh.tell()
                fh.seek(0)
                data = os.read(fh.fileno(), size)
                return data if len(data) == size else data + fh.read()
        finally:
            os.unlink(tmp)

    def get_small(self, shas: list[str]) -> dict[str, bytes]:
        """The blobs among ``shas`` that are one chunk or less, read in one query (a
        batch of small mails: one round trip instead of one each); the others, and any
        not stored, are left out (``get`` them)."""
        if not shas:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(self._small, {"shas": list(dict.fromkeys(shas))}).all()
        return {sha: _bytes(data) for sha, data in rows}

    def open(self, sha256: str) -> BinaryIO:
        """The blob as a stream, read from the database one chunk at a time."""
        return io.BufferedReader(_ChunkReader(self, sha256), buffer_size=CHUNK)

    def sizes(self) -> Iterator[tuple[str, int]]:
        """(sha256, size) of every blob stored."""
        with self.engine.connect() as conn:
            yield from conn.execute(select(_BLOB.c.sha256, _BLOB.c.size).order_by(_BLOB.c.sha256)).all()

    # inside ----------------------------------------------------------------------------
    def _store(self, digest: str, size: int, pieces) -> None:
        with self.engine.begin() as conn:
            self._write(conn, digest, size, pieces)

    def _write(self, conn: Connection, digest: str, size: int, pieces) -> None:
        """The blob's row and chunks in ``conn``'s transaction, unless it is stored already."""
        if not self._claimed(conn, digest, size):
            return
        for seq, piece in enumerate(pieces):
            conn.execute(_CHUNK.insert().values(sha256=digest, seq=seq, data=bytes(piece)))

    def _claimed(self, conn: Connection, digest: str, size: int) -> bool:
        """Make the blob's row; False when it is there already (committed by another
        transaction, which this one waited for if it was under way)."""
        # RETURNING rather than rowcount, which the driver does not always know.
        made = conn.execute(self._claim.values(sha256=digest, size=size, created_at=utcnow())).first()
        return made is not None

    def _chunk(self, sha256: str, seq: int) -> bytes | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_CHUNK.c.data).where(_CHUNK.c.sha256 == sha256, _CHUNK.c.seq == seq)).first()
        if row is None:
            return None
        return _bytes(row[0])

    def _chunks(self, sha256: str) -> Iterator[bytes]:
        """The blob's chunks in order.  The first comes with the blob's size in one query
        (a small mail, one chunk, is one round trip); the next ones, one query each, until
        the size is reached."""
        with self.engine.connect() as conn:
            found = conn.execute(self._first, {"sha": sha256}).first()
        if found is None:
            raise FileNotFoundError(f"blob {sha256} is not in the database")
        size, first = found
        piece = _bytes(first)
        read, seq = len(piece), 1
        if piece:
            yield piece
        while read < size:
            piece = self._chunk(sha256, seq)
            if piece is None:  # a blob's chunks are written with its row: never short
                raise OSError(f"blob {sha256} is short in the database: {read} of {size} bytes")
            yield piece
            read += len(piece)
            seq += 1


def _pieces(data: bytes):
    """``data`` in chunks of at most CHUNK bytes (views, not copies)."""
    view = memoryview(data)
    return (view[i:i + CHUNK] for i in range(0, len(data), CHUNK))


def _bytes(value) -> bytes:
    """A chunk as the driver gives it (bytes, memoryview; None: no chunk) as bytes."""
    return b"" if value is None else value if isinstance(value, bytes) else bytes(value)


class _ChunkReader(io.RawIOBase):
    def __init__(self, store: DatabaseBlobStore, sha256: str):
        self._pieces = store._chunks(sha256)
        self._left = memoryview(b"")
        # A missing blob says so when opened, as open() of a missing file does.
        self._left = memoryview(next(self._pieces, b""))

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._left:
            self._left = memoryview(next(self._pieces, b""))
            if not self._left:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


class DatabaseBlobWriter:
    """Write to a temporary file of this host while hashing (``path`` is readable once
    flushed, until committed or aborted); ``commit`` copies it into the database chunk
    by chunk, or drops it when the same bytes are stored already."""

    def __init__(self, store: DatabaseBlobStore):
        self.store = store
        self.size = 0
        self._hash = hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(dir=store.root, prefix=".tmp-")
        self._fh = os.fdopen(fd, "w+b")
        self.path = Path(self._tmp)

    def write(self, data) -> None:
        self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)

    def flush(self) -> None:
        self._fh.flush()

    @property
    def digest(self) -> str:
        """The sha256 of what was written so far."""
        return self._hash.hexdigest()

    def commit(self) -> str:
        digest = self._hash.hexdigest()
        try:
            self._fh.flush()
            self._fh.seek(0)
            self.store._store(digest, self.size, iter(lambda: self._fh.read(CHUNK), b""))
        finally:
            self.abort()
        return digest

    def abort(self) -> None:
        self._fh.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "DatabaseBlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
