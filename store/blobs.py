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

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def open(self, sha256: str) -> BinaryIO:
        return open(self.path(sha256), "rb")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
