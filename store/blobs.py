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
        # The 256 folders a blob can go to, made once (and made durable) rather than
        # looked for before every blob: a mkdir a mail was ~7 % of the SMTP door's CPU on
        # a new store (perf, small mails).
        self._folders: set[str] = set()
        try:
            present = set(os.listdir(self.root))
        except OSError:
            present = set()
        missing = [f"{i:02x}" for i in range(256) if f"{i:02x}" not in present]
        for name in missing:
            try:
                (self.root / name).mkdir(exist_ok=True)
            except OSError:  # read-only or full: each blob will say so when written
                break
        else:
            if missing:
                _fsync_dir(self.root)
            self._folders.update(f"{i:02x}" for i in range(256))

    def _mkstemp(self, target: Path) -> tuple[int, str]:
        try:
            return tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        except FileNotFoundError:  # its folder was removed while we ran
            self._folders.discard(target.parent.name)
            self.folder(target)
            return tempfile.mkstemp(dir=target.parent, prefix=".tmp-")

    def replace(self, src, target: Path) -> None:
        """Rename ``src`` to ``target``, making its folder again if it went missing."""
        try:
            os.replace(src, target)
        except FileNotFoundError:
            if target.parent.is_dir():
                raise
            self._folders.discard(target.parent.name)
            self.folder(target)
            os.replace(src, target)

    def folder(self, target: Path) -> None:
        """Make sure ``target``'s folder exists, durably (its entry in the root fsynced)."""
        if target.parent.name in self._folders and target.parent.parent == self.root:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        _fsync_dir(target.parent.parent)
        if target.parent.parent == self.root:
            self._folders.add(target.parent.name)

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
        self.folder(target)
        fd, tmp = self._mkstemp(target)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            self.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        if durable:
            _fsync_dir(target.parent)
        return digest

    def put_many(self, blobs: list[bytes]) -> list[str]:
        """Store several blobs (as ``put`` each: a file is its own commit); their sha256s."""
        return [self.put(data) for data in blobs]

    def put_file(self, src: Path, digest: str, durable: bool = True) -> str:
        """Move an already-written file whose sha256 is ``digest`` into the store."""
        target = self.path(digest)
        if target.exists():
            os.unlink(src)
            return digest
        self.folder(target)
        if durable:
            with open(src, "rb") as fh:
                os.fsync(fh.fileno())
        self.replace(src, target)
        if durable:
            _fsync_dir(target.parent)
        return digest

    def writer(self, durable: bool = True) -> "BlobWriter":
        """A blob written piece by piece (a large attachment decoded as it is read), hashed
        as it goes; ``commit()`` installs it under its sha256 like ``put``."""
        return BlobWriter(self, durable)

    def get_small(self, shas: list[str]) -> dict[str, bytes]:
        """The database store reads a batch's small blobs at once; a file is read when
        needed (``get``): nothing here."""
        return {}

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
            self.store.folder(target)
            self.store.replace(self._tmp, target)
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
