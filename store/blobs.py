"""Content-addressed blob store: raw mails and attachments on disk, by sha256.

A blob is written to a temporary file, fsynced, renamed into place and its directory
fsynced, so that once ``put`` returns the bytes survive a crash.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put(self, data: bytes, durable: bool = True) -> str:
        """Store ``data``; return its sha256.  Storing the same bytes twice is a no-op."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        if durable:
            _fsync_dir(target.parent)
        return digest

    def put_file(self, src: Path, digest: str, durable: bool = True) -> str:
        """Move an already-written file whose sha256 is ``digest`` into the store."""
        target = self.path(digest)
        if target.exists():
            os.unlink(src)
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        if durable:
            with open(src, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(src, target)
        if durable:
            _fsync_dir(target.parent)
        return digest

    def writer(self, durable: bool = True) -> "BlobWriter":
        """A blob written piece by piece (a large attachment decoded as it is read), hashed
        as it goes; ``commit()`` installs it under its sha256 like ``put``."""
        return BlobWriter(self, durable)

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")


class BlobWriter:
    """Write to a temporary file in the store while hashing; ``commit`` fsyncs it and
    renames it into place (or drops it when the same bytes are already stored)."""

    def __init__(self, store: BlobStore, durable: bool = True):
        self.store = store
        self.durable = durable
        self.size = 0
        self._committing = False
        self._hash = hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(dir=store.root, prefix=".tmp-")
        self._fh = os.fdopen(fd, "wb")
        self.path = Path(self._tmp)  # readable once flushed, until committed or aborted

    def write(self, data) -> None:
        self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)

    def flush(self) -> None:
        self._fh.flush()

    def commit(self) -> str:
        self._committing = True
        digest = self._hash.hexdigest()
        try:
            self._fh.flush()
            if self.durable:
                os.fsync(self._fh.fileno())
            self._fh.close()
            target = self.store.path(digest)
            if target.exists():
                os.unlink(self._tmp)
                return digest
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, target)
        except BaseException:
            self.abort(_from_commit=True)
            raise
        if self.durable:
            _fsync_dir(target.parent)
        return digest

    def abort(self, _from_commit: bool = False) -> None:
        if self._committing and not _from_commit:
            return  # the commit owns the file now (it cleans up itself if it fails)
        self._fh.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
